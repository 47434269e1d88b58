"""Beyond one token: Llama 3.1 and 3.2 (scaled RoPE, tied output), generation with the KV cache, chat, and
the checkpoints the notebook must refuse.

Each run executes the whole notebook (notebook_runner.py) on a small checkpoint in Meta's layout whose tensors
are all distinct (checkpoints.py), and compares what its cells computed with Meta's reference Transformer
(reference.py) on the same weights.

Which reference. Llama 3.1 scales RoPE by 8, and so does Meta's code: the 3.1 checkpoints are compared with
Meta's Transformer as it is. Llama 3.2 scales by 32 (its published configuration), while Meta's code
hard-codes 8: the 3.2 checkpoints are compared with Meta's Transformer whose apply_scaling is given the factor
32 (load_reference(..., rope_scale_factor=32)), and Meta's unmodified code must then disagree with the notebook.
The scaled frequencies themselves are also compared with transformers' own "llama3" RoPE (factor 32 and 8),
which shares no code with Meta's or with that correction.

Making the factor matter. Scaling touches only the slow pairs, with wavelengths over 2048 positions, which
barely turn over a short prompt. So the prompt here is about a thousand tokens long and the checkpoints' wq
and wk are multiplied by 4 (query_key_gain): attention is sharp, as in a trained model, and the slow pairs'
angles move the logits. test_the_scale_factor_changes_the_logits_far_beyond_the_tolerance checks that they
do, by more than a hundred times the tolerance of the comparisons, or the agreement would prove nothing.

Which precision. Greedy token ids are compared in float32 (LLAMA3_DTYPE=float32 for the notebook, the same
weights converted to float32 for the reference) up to the first step whose choice is not clear of the rounding
error, which must come after at least MIN_DECIDED_FLOAT32_STEPS of the NEW_TOKENS steps (asserted). In bf16, Meta's own precision, random weights give
near-ties that rounding may flip: there every step's logits are compared within bf16's rounding error, on the
notebook's own tokens, and a step's token only where its choice is clear of that error; these checkpoints keep
wq and wk as drawn, so that bf16's error stays small. Tolerances follow tests/rounding.py: every computation is
held to the truth, Meta's model in the next wider dtype (float64 for float32) on the same tokens, within SAFETY
times Meta's own distance from it (never less than the rounding floor); a choice is clear where the truth's
best logit leads the second by more than two tolerances, so that no faithful computation can choose otherwise.
"""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from nbclient.exceptions import CellExecutionError

from checkpoints import distinct_state_dict, small_params, write_checkpoint
from fidelity_cases import logit_terms
from notebook_runner import run_notebook
from reference import (load_reference, project_last_position_only, reference_decoding, reference_greedy_generation,
                       reference_sampled_tokens)
from rounding import assert_within_rounding, decided, largest_difference, rounding_tolerance

NEW_TOKENS = 24
# about a thousand tokens: positions far enough apart for the scaled slow pairs of RoPE to turn
LONG_PROMPT = " ".join(f"step {step}: the answer moves {('left', 'right', 'up', 'down')[step * 7 % 4]}."
                       for step in range(120))
SHORT_PROMPT = "the answer to the ultimate question of life, the universe, and everything is "
# no surrounding whitespace; text that looks like a special token must stay text
CHAT_MESSAGE = "What does <|eot_id|> mean, and why is the answer 42?"
QUERY_KEY_GAIN = 4.0

# head_dim 128 and groups of 2 query heads, as in Llama 3.1 8B; ffn_dim_multiplier 1.3
LLAMA31_PARAMS = small_params(dim=256, n_layers=2, n_heads=2, n_kv_heads=1, multiple_of=64, ffn_dim_multiplier=1.3,
                              use_scaled_rope=True)
# head_dim 64 and groups of 2, as in Llama 3.2 1B (32 heads on 8); ffn_dim_multiplier 1.5, multiple_of 256
LLAMA32_PARAMS = small_params(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=256, ffn_dim_multiplier=1.5,
                              use_scaled_rope=True)
RUN_NAMES = ("tokens", "logits", "next_token", "rope_scale_factor", "base_rope_frequencies", "rope_frequencies")
GENERATION_NAMES = RUN_NAMES + ("generated_tokens", "generated_logits", "recomputed_logits", "chat_tokens",
                                "answer_tokens")
WIDER = {torch.bfloat16: torch.float32, torch.float32: torch.float64}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float32: "float32"}
EOS_ID, EOM_ID, EOT_ID = 128001, 128008, 128009  # <|end_of_text|>, <|eom_id|>, <|eot_id|>: Meta's stop set
MIN_CLEAR_BF16_STEPS = 4  # of NEW_TOKENS bf16 steps, at least this many must have a choice clear of rounding
MIN_DECIDED_FLOAT32_STEPS = 16  # in float32, at least the first this many steps must be clear of rounding


# ------------------------------------------------------------------ checkpoints and runs, once per session


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("family")


@pytest.fixture(scope="session")
def llama32_tied(family_dir) -> Path:
    """Llama 3.2 shapes, output.weight sharing the embedding's storage; source.json names Llama-3.2-1B."""
    return write_checkpoint(family_dir / "llama32-tied", LLAMA32_PARAMS, seed=32, output="tied", model="Llama-3.2-1B",
                            query_key_gain=QUERY_KEY_GAIN)


@pytest.fixture(scope="session")
def llama32_absent_in_hub_folder(family_dir) -> Path:
    """The same weights with no output.weight at all, and no source.json: laid out as the hub's
    meta-llama/Llama-3.2-1B repository downloaded into a folder of its name, files under original/."""
    folder = family_dir / "Llama-3.2-1B" / "original"
    return write_checkpoint(folder, LLAMA32_PARAMS, seed=32, output="absent", query_key_gain=QUERY_KEY_GAIN)


@pytest.fixture(scope="session")
def llama32_unnamed(family_dir, llama32_tied) -> Path:
    """The tied checkpoint's files in a folder whose name, like its missing source.json, names no model."""
    folder = family_dir / "unnamed-scaled-rope"
    folder.mkdir()
    for name in ("params.json", "tokenizer.model", "consolidated.00.pth"):
        os.symlink(llama32_tied / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def llama32_instruct(family_dir) -> Path:
    """Llama 3.2 shapes with an output.weight of its own: with random weights, a tied output projection mostly
    repeats the last token, which would make a poor test of generation (the tied case is tested above)."""
    return write_checkpoint(family_dir / "llama32-instruct", LLAMA32_PARAMS, seed=320, output="own",
                            model="Llama-3.2-3B-Instruct", query_key_gain=QUERY_KEY_GAIN)


@pytest.fixture(scope="session")
def llama31_instruct(family_dir) -> Path:
    return write_checkpoint(family_dir / "llama31-instruct", LLAMA31_PARAMS, seed=31, output="own",
                            model="Llama-3.1-8B-Instruct", query_key_gain=QUERY_KEY_GAIN)


# The same shapes with wq and wk as drawn (query_key_gain 1): attention less sharp, so that bf16's rounding
# error stays small enough for some steps' greedy choice to be clear of it.
@pytest.fixture(scope="session")
def llama32_instruct_gain1(family_dir) -> Path:
    return write_checkpoint(family_dir / "llama32-instruct-gain1", LLAMA32_PARAMS, seed=321, output="own",
                            model="Llama-3.2-3B-Instruct")


@pytest.fixture(scope="session")
def llama31_instruct_gain1(family_dir) -> Path:
    return write_checkpoint(family_dir / "llama31-instruct-gain1", LLAMA31_PARAMS, seed=311, output="own",
                            model="Llama-3.1-8B-Instruct")


@pytest.fixture(scope="session")
def llama32_tied_run(llama32_tied) -> dict:
    return run_notebook(llama32_tied, LONG_PROMPT, names=RUN_NAMES, dtype="float32", max_new_tokens=1)


@pytest.fixture(scope="session")
def llama32_tied_factor8_run(llama32_tied) -> dict:
    """LLAMA3_ROPE_SCALE_FACTOR=8 overrides what source.json says: Meta's factor, wrong for 3.2."""
    return run_notebook(llama32_tied, LONG_PROMPT, names=RUN_NAMES, dtype="float32", max_new_tokens=1,
                        rope_scale_factor=8)


@pytest.fixture(scope="session")
def llama32_absent_run(llama32_absent_in_hub_folder) -> dict:
    return run_notebook(llama32_absent_in_hub_folder, LONG_PROMPT, names=RUN_NAMES, dtype="float32", max_new_tokens=1)


GENERATION_CASES = {
    # id: (checkpoint fixture, the factor the reference must use, dtype)
    "llama32-float32": ("llama32_instruct", 32, torch.float32),
    "llama31-float32": ("llama31_instruct", None, torch.float32),
    "llama32-bfloat16": ("llama32_instruct_gain1", 32, torch.bfloat16),
    "llama31-bfloat16": ("llama31_instruct_gain1", None, torch.bfloat16),
}
FLOAT32_CASES = [case for case, (_, _, dtype) in GENERATION_CASES.items() if dtype == torch.float32]


@pytest.fixture(scope="session")
def generation_runs(request):
    """Each case's notebook run, greedy, NEW_TOKENS new tokens after LONG_PROMPT and a chat answer."""
    runs = {}

    def run(case: str) -> dict:
        if case not in runs:
            fixture, _, dtype = GENERATION_CASES[case]
            runs[case] = run_notebook(request.getfixturevalue(fixture), LONG_PROMPT, names=GENERATION_NAMES,
                                      dtype=DTYPE_NAMES[dtype], max_new_tokens=NEW_TOKENS, chat=CHAT_MESSAGE)
        return runs[case]

    return run


# ------------------------------------------------------------------ helpers


def reference_model(folder: Path, n_positions: int, factor, dtype: torch.dtype):
    """Meta's Transformer on folder computing in dtype (bf16: the checkpoint's own tensors), projecting only the
    last position onto the vocabulary (the only one compared)."""
    model = load_reference(folder, n_positions, rope_scale_factor=factor, dtype=None if dtype == torch.bfloat16 else dtype)
    return project_last_position_only(model)


def margins(logits: torch.Tensor) -> torch.Tensor:
    """Per row: how far the most likely token is ahead of the second."""
    top2 = logits.double().topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def decoding_comparison(folder: Path, run: dict, factor, dtype: torch.dtype) -> dict:
    """Meta's incremental decoding after the notebook's prompt: free (its own greedy tokens) in dtype, and fed
    with the notebook's tokens in dtype and in the wider dtype (the truth)."""
    tokens, generated = run["tokens"], run["generated_tokens"]
    n_positions = len(tokens) + NEW_TOKENS
    model = reference_model(folder, n_positions, factor, dtype)
    free_tokens, free_logits = reference_decoding(model, tokens, NEW_TOKENS)
    _, fed_logits = reference_decoding(model, tokens, len(generated), fed_tokens=generated)
    _, truth = reference_decoding(reference_model(folder, n_positions, factor, WIDER[dtype]), tokens,
                                  len(generated), fed_tokens=generated)
    return {"free_tokens": free_tokens, "free_logits": free_logits, "fed_logits": fed_logits, "truth": truth,
            "tolerance": rounding_tolerance(fed_logits, truth, dtype, logit_terms(folder))}


@pytest.fixture(scope="session")
def decoding(request, generation_runs):
    comparisons = {}

    def compare(case: str) -> dict:
        if case not in comparisons:
            fixture, factor, dtype = GENERATION_CASES[case]
            comparisons[case] = decoding_comparison(request.getfixturevalue(fixture), generation_runs(case), factor, dtype)
        return comparisons[case]

    return compare


def single_prediction_comparison(folder: Path, run: dict, factor) -> dict:
    """Meta's logits at the last prompt position in float32 and in float64 (the truth) with the factor given,
    and in float64 with Meta's own 8 (meta_unmodified_truth)."""
    runs = {"reference": (torch.float32, factor), "truth": (torch.float64, factor)}
    if factor is not None:
        runs["meta_unmodified_truth"] = (torch.float64, None)
    tokens = run["tokens"]
    last = {name: reference_model(folder, len(tokens), scale, dtype)(tokens.view(1, -1), 0)[0, -1]
            for name, (dtype, scale) in runs.items()}
    last.setdefault("meta_unmodified_truth", last["truth"])
    last["tolerance"] = rounding_tolerance(last["reference"], last["truth"], torch.float32, logit_terms(folder))
    return last


@pytest.fixture(scope="session")
def llama32_tied_reference(llama32_tied, llama32_tied_run) -> dict:
    return single_prediction_comparison(llama32_tied, llama32_tied_run, 32)


# ------------------------------------------------------------------ Llama 3.1 and 3.2: the RoPE scale factor


def test_scale_factor_comes_from_the_model_or_the_setting(llama32_tied_run, llama32_absent_run,
                                                          llama32_tied_factor8_run, generation_runs):
    assert llama32_tied_run["rope_scale_factor"] == 32.0  # source.json: Llama-3.2-1B
    assert llama32_absent_run["rope_scale_factor"] == 32.0  # no source.json: Llama-3.2-1B/original
    assert llama32_tied_factor8_run["rope_scale_factor"] == 8.0  # LLAMA3_ROPE_SCALE_FACTOR=8 overrides
    assert generation_runs("llama31-float32")["rope_scale_factor"] == 8.0  # source.json: Llama-3.1-8B-Instruct


def test_llama32_tied_prediction_matches_meta_with_factor_32(llama32_tied_run, llama32_tied_reference):
    truth, tolerance = llama32_tied_reference["truth"], llama32_tied_reference["tolerance"]
    assert_within_rounding(llama32_tied_run["logits"], truth, tolerance, "notebook float32 - Meta float64, factor 32")
    assert margins(truth).item() > 2 * tolerance  # the prediction is clear
    assert llama32_tied_run["next_token"] == int(truth.argmax()) == int(llama32_tied_reference["reference"].argmax())


def test_the_scale_factor_changes_the_logits_far_beyond_the_tolerance(llama32_tied_run, llama32_tied_factor8_run,
                                                                      llama32_tied_reference):
    """The wrong factor (Meta's 8, for a 3.2 checkpoint) must be caught by the comparisons above."""
    limit = llama32_tied_reference["tolerance"]
    meta_unmodified, truth = llama32_tied_reference["meta_unmodified_truth"], llama32_tied_reference["truth"]
    print(f"tolerance {limit:.3g}; notebook with 8 - truth with 32: "
          f"{largest_difference(llama32_tied_factor8_run['logits'], truth):.3g} (largest logit {truth.abs().max():.3g})")
    # the notebook told to use 8 computes what Meta's unmodified code computes...
    assert_within_rounding(llama32_tied_factor8_run["logits"], meta_unmodified, limit, "notebook factor 8 - Meta float64")
    # ...which is far from Llama 3.2's factor 32, for the notebook and for the reference alike
    assert largest_difference(llama32_tied_factor8_run["logits"], truth) > 100 * limit
    assert largest_difference(llama32_tied_run["logits"], meta_unmodified) > 100 * limit


def test_absent_output_weight_gives_the_tied_result(llama32_absent_run, llama32_tied_run, llama32_tied_reference):
    """No output.weight (the embedding serves) and an output.weight sharing the embedding's storage are the same model."""
    assert torch.equal(llama32_absent_run["tokens"], llama32_tied_run["tokens"])
    assert torch.equal(llama32_absent_run["logits"], llama32_tied_run["logits"])
    assert_within_rounding(llama32_absent_run["logits"], llama32_tied_reference["truth"],
                           llama32_tied_reference["tolerance"], "notebook without output.weight - Meta float64")


def test_llama32_without_a_model_name_stops_and_asks_for_the_factor(llama32_unnamed):
    with pytest.raises(CellExecutionError) as stopped:
        run_notebook(llama32_unnamed, max_new_tokens=1)
    assert stopped.value.ename == "ValueError"
    assert "use_scaled_rope" in stopped.value.evalue
    assert "LLAMA3_ROPE_SCALE_FACTOR=8 (Llama 3.1) or 32 (Llama 3.2)" in stopped.value.evalue


def test_a_scale_factor_that_is_not_a_number_stops(llama32_unnamed):
    with pytest.raises(CellExecutionError) as stopped:
        run_notebook(llama32_unnamed, max_new_tokens=1, rope_scale_factor="eight")
    assert stopped.value.ename == "ValueError"
    assert "LLAMA3_ROPE_SCALE_FACTOR='eight' is not accepted: use a positive number" in stopped.value.evalue


def hugging_face_llama3_frequencies(params: dict, factor: float) -> torch.Tensor:
    """transformers' own RoPE frequencies for rope_type "llama3" (what the hub's config.json of 3.1 and 3.2 asks for)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=params["dim"], num_attention_heads=params["n_heads"], rope_theta=params["rope_theta"],
                         max_position_embeddings=131072,
                         rope_scaling={"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    frequencies, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return frequencies


def test_scaled_frequencies_are_those_of_hugging_face_and_meta(llama32_tied_run, generation_runs):
    """An implementation independent of Meta's code and of this test's correction of it: transformers' llama3
    RoPE, with factor 32 for 3.2 and 8 for 3.1. Meta's apply_scaling (8) and its correction (32) agree with it."""
    from llama_models.llama3 import model as meta_model

    from reference import scaled_frequencies_with_factor

    for run, params, factor, meta_scaling in [
            (llama32_tied_run, LLAMA32_PARAMS, 32.0, scaled_frequencies_with_factor(32.0)),
            (generation_runs("llama31-float32"), LLAMA31_PARAMS, 8.0, meta_model.apply_scaling)]:
        base, scaled = run["base_rope_frequencies"], run["rope_frequencies"]
        torch.testing.assert_close(scaled, hugging_face_llama3_frequencies(params, factor), rtol=1e-6, atol=0)
        torch.testing.assert_close(scaled, meta_scaling(base), rtol=1e-6, atol=0)
        wavelengths = 2 * torch.pi / base
        fast, slow = wavelengths < 2048, wavelengths > 8192
        assert fast.any() and slow.any()
        assert torch.equal(scaled[fast], base[fast])  # short wavelengths are untouched, long ones divided
        assert torch.equal(scaled[slow], base[slow] / factor)


@pytest.mark.parametrize("case", FLOAT32_CASES)
def test_single_prediction_matches_meta(case, request, generation_runs):
    """The 3.1 checkpoint against Meta's code as it is; the 3.2 one against Meta's code with the factor 32."""
    fixture, factor, _ = GENERATION_CASES[case]
    run = generation_runs(case)
    meta = single_prediction_comparison(request.getfixturevalue(fixture), run, factor)
    assert_within_rounding(run["logits"], meta["truth"], meta["tolerance"], f"{case}: notebook - Meta float64")
    assert margins(meta["truth"]).item() > 2 * meta["tolerance"]  # the prediction is clear
    assert run["next_token"] == int(meta["truth"].argmax()) == int(meta["reference"].argmax())


# ------------------------------------------------------------------ generation with the KV cache


@pytest.mark.parametrize("case", FLOAT32_CASES)
def test_greedy_generation_equals_metas_incremental_decoding(case, generation_runs, decoding):
    run, meta = generation_runs(case), decoding(case)
    print(f"{case}: smallest margin of the true choices {margins(meta['truth']).min():.3g}")
    assert_within_rounding(run["generated_logits"], meta["truth"], meta["tolerance"],
                           f"{case}: notebook's {NEW_TOKENS} steps - Meta float64")
    # up to the first step whose choice is not clear of rounding, no faithful float32 computation can choose
    # otherwise (after it, a faithful one may take the other token and go on from there)
    clear = decided(meta["truth"], run["generated_logits"], meta["fed_logits"]).tolist() + [False]
    n_decided = clear.index(False)
    assert n_decided >= MIN_DECIDED_FLOAT32_STEPS
    true_choice = meta["truth"].argmax(dim=-1).tolist()
    assert run["generated_tokens"][:n_decided] == meta["free_tokens"][:n_decided] == true_choice[:n_decided]
    assert len(run["generated_tokens"]) == NEW_TOKENS


@pytest.mark.parametrize("case", ["llama32-bfloat16", "llama31-bfloat16"])
def test_bf16_generation_follows_metas_decoding_within_bf16_rounding(case, generation_runs, decoding):
    run, meta = generation_runs(case), decoding(case)
    assert len(run["generated_tokens"]) == NEW_TOKENS
    assert_within_rounding(run["generated_logits"], meta["truth"], meta["tolerance"], f"{case}: notebook - Meta float32")
    clear = decided(meta["truth"], run["generated_logits"], meta["fed_logits"])
    print(f"{case}: {int(clear.sum())} of {NEW_TOKENS} choices clear of rounding; "
          f"free-running tokens equal to Meta's: {run['generated_tokens'] == meta['free_tokens']}")
    assert clear.sum() >= MIN_CLEAR_BF16_STEPS
    true_choice = meta["truth"].argmax(dim=-1)
    assert torch.equal(torch.tensor(run["generated_tokens"])[clear], true_choice[clear])
    assert torch.equal(meta["fed_logits"].argmax(dim=-1)[clear], true_choice[clear])


@pytest.mark.parametrize("case", list(GENERATION_CASES))
def test_cached_decoding_equals_recomputing_the_whole_sequence(case, generation_runs, decoding):
    run, meta = generation_runs(case), decoding(case)
    assert torch.equal(run["generated_logits"][0], run["logits"])  # the prefill is section 9's prediction
    assert run["recomputed_logits"].shape == run["generated_logits"].shape
    # both held to the truth on the same tokens (never one to the other: that would add their errors)
    assert_within_rounding(run["recomputed_logits"], meta["truth"], meta["tolerance"], f"{case}: recomputed - Meta's truth")
    assert_within_rounding(run["generated_logits"], meta["truth"], meta["tolerance"], f"{case}: cached - Meta's truth")
    clear = decided(meta["truth"], run["generated_logits"], run["recomputed_logits"])
    assert clear.sum() >= (MIN_DECIDED_FLOAT32_STEPS if GENERATION_CASES[case][2] == torch.float32 else MIN_CLEAR_BF16_STEPS)
    true_choice = meta["truth"].argmax(dim=-1)
    assert torch.equal(torch.tensor(run["generated_tokens"])[clear], true_choice[clear])
    assert torch.equal(run["recomputed_logits"].argmax(dim=-1)[clear], true_choice[clear])


# ------------------------------------------------------------------ chat


@pytest.mark.parametrize("case", FLOAT32_CASES)
def test_chat_prompt_is_metas_chat_format(case, request, generation_runs):
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    folder = request.getfixturevalue(GENERATION_CASES[case][0])
    dialog = [RawMessage(role="user", content=CHAT_MESSAGE)]
    expected = ChatFormat(Tokenizer(folder / "tokenizer.model")).encode_dialog_prompt(dialog).tokens
    assert generation_runs(case)["chat_tokens"].tolist() == expected


@pytest.mark.parametrize("case", FLOAT32_CASES)
def test_chat_answer_is_metas_greedy_continuation(case, request, generation_runs):
    fixture, factor, dtype = GENERATION_CASES[case]
    folder, run = request.getfixturevalue(fixture), generation_runs(case)
    chat_tokens, answer = run["chat_tokens"], run["answer_tokens"]
    n_positions = len(chat_tokens) + NEW_TOKENS
    expected = reference_greedy_generation(reference_model(folder, n_positions, factor, dtype), chat_tokens, NEW_TOKENS)
    stops = [step for step, token in enumerate(expected) if token in (EOS_ID, EOM_ID, EOT_ID)]
    expected = expected[: stops[0] + 1] if stops else expected  # the answer ends at its first stop token
    # every choice of the answer is clear of float32 rounding: no faithful computation could choose otherwise
    _, fed = reference_decoding(reference_model(folder, n_positions, factor, dtype), chat_tokens, len(answer), answer)
    _, truth = reference_decoding(reference_model(folder, n_positions, factor, WIDER[dtype]), chat_tokens, len(answer),
                                  answer)
    assert (margins(truth) > 2 * rounding_tolerance(fed, truth, dtype, logit_terms(folder))).all()
    assert answer == expected


# ------------------------------------------------------------------ stopping and sampling


@pytest.fixture(scope="session")
def llama31_plain(family_dir) -> dict:
    """A base 3.1 checkpoint, SHORT_PROMPT's ids and Meta's float32 greedy decoding after them."""
    from llama_models.llama3.tokenizer import Tokenizer

    folder = write_checkpoint(family_dir / "llama31-plain", LLAMA31_PARAMS, seed=310, output="own", model="Llama-3.1-8B",
                              query_key_gain=QUERY_KEY_GAIN)
    prompt_tokens = torch.tensor(Tokenizer(folder / "tokenizer.model").encode(SHORT_PROMPT, bos=True, eos=False))
    model = load_reference(folder, len(prompt_tokens) + NEW_TOKENS, dtype=torch.float32)
    tokens, logits = reference_decoding(model, prompt_tokens, NEW_TOKENS)
    return {"folder": folder, "prompt_tokens": prompt_tokens, "tokens": tokens, "logits": logits}


@pytest.mark.parametrize("stop_id", [EOT_ID, EOS_ID, EOM_ID], ids=["eot_id", "end_of_text", "eom_id"])
def test_generation_stops_at_a_stop_token(stop_id, llama31_plain, family_dir):
    """A checkpoint made to write stop_id at a chosen step: its output row for stop_id is 1.1 times the row of
    the token that greedy decoding picks at that step, so that the stop token wins there (that token's logit is
    the largest and positive) and not at an earlier step (where that token's logit is below the step's best
    by more than a tenth). Meta's decoding on the modified checkpoint must confirm it."""
    boost, plain = 1.1, llama31_plain
    plain_tokens, plain_logits, prompt_tokens = plain["tokens"], plain["logits"], plain["prompt_tokens"]
    best = plain_logits.max(dim=-1).values
    stop_step = next(step for step in range(3, NEW_TOKENS)
                     if (boost * plain_logits[:step, plain_tokens[step]] < best[:step]).all())

    state_dict = distinct_state_dict(LLAMA31_PARAMS, seed=310, output="own", query_key_gain=QUERY_KEY_GAIN)
    state_dict["output.weight"][stop_id] = boost * state_dict["output.weight"][plain_tokens[stop_step]].float()
    folder = family_dir / f"llama31-stops-with-{stop_id}"
    folder.mkdir()
    for name in ("params.json", "tokenizer.model", "source.json"):
        shutil.copyfile(plain["folder"] / name, folder / name)
    torch.save(state_dict, folder / "consolidated.00.pth")
    n_positions = len(prompt_tokens) + NEW_TOKENS
    meta = reference_greedy_generation(load_reference(folder, n_positions, dtype=torch.float32), prompt_tokens, NEW_TOKENS)
    assert meta[: stop_step + 1] == plain_tokens[:stop_step] + [stop_id]  # the checkpoint does what it is made for

    run = run_notebook(folder, SHORT_PROMPT, names=("tokens", "generated_tokens"), dtype="float32",
                       max_new_tokens=NEW_TOKENS)
    assert run["tokens"].tolist() == prompt_tokens.tolist()
    assert run["generated_tokens"] == meta[: stop_step + 1]  # the stop token is the last one


SAMPLING = {"temperature": 0.9, "top_p": 0.8, "seed": 11}


@pytest.fixture(scope="session")
def sampling_runs(llama31_instruct):
    """The same sampled generation twice."""
    return [run_notebook(llama31_instruct, SHORT_PROMPT, names=("tokens", "generated_tokens", "generated_logits"),
                         max_new_tokens=NEW_TOKENS, **SAMPLING) for _ in range(2)]


def test_seeded_sampling_repeats_itself(sampling_runs):
    first, again = sampling_runs
    assert first["generated_tokens"] == again["generated_tokens"]
    assert torch.equal(first["generated_logits"], again["generated_logits"])


def test_sampling_draws_what_metas_top_p_sampler_draws(sampling_runs):
    """Meta's sample_top_p, with torch's generator seeded alike, draws the same tokens from the notebook's logits."""
    run = sampling_runs[0]
    temperature, top_p, seed = SAMPLING["temperature"], SAMPLING["top_p"], SAMPLING["seed"]
    assert run["generated_tokens"] == reference_sampled_tokens(run["generated_logits"], temperature, top_p, seed)
    # the draws are not the greedy choices, and another seed draws others
    assert run["generated_tokens"] != run["generated_logits"].argmax(dim=-1).tolist()
    assert run["generated_tokens"] != reference_sampled_tokens(run["generated_logits"], temperature, top_p, seed + 1)


# ------------------------------------------------------------------ checkpoints the notebook refuses, early

TINY_PARAMS = small_params(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32)


@pytest.fixture(scope="session")
def tiny(family_dir) -> Path:
    return write_checkpoint(family_dir / "tiny", TINY_PARAMS, seed=7)


def copy_of(tiny: Path, folder: Path, params: dict = None, state_dict: dict = None) -> Path:
    """tiny's files in folder, with params.json or consolidated.00.pth replaced when given."""
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(params or TINY_PARAMS))
    os.symlink(tiny / "tokenizer.model", folder / "tokenizer.model")
    if state_dict is None:
        os.symlink(tiny / "consolidated.00.pth", folder / "consolidated.00.pth")
    else:
        torch.save(state_dict, folder / "consolidated.00.pth")
    return folder


def tiny_state_dict() -> dict:
    return distinct_state_dict(TINY_PARAMS, seed=7)


def sharded(tiny, folder):
    """Two files that are both the whole model: copies, not Meta's slices of it."""
    copy_of(tiny, folder)
    os.symlink(tiny / "consolidated.00.pth", folder / "consolidated.01.pth")
    return folder


def vision(tiny, folder):
    return copy_of(tiny, folder, params={**TINY_PARAMS, "vision_chunk_size": 560, "vision_max_num_chunks": 4,
                                         "vision_num_cross_attention_layers": 8})


def unknown_tensor(tiny, folder):
    return copy_of(tiny, folder, state_dict={**tiny_state_dict(), "rope.freqs": torch.ones(8)})


def missing_tensor(tiny, folder):
    state_dict = tiny_state_dict()
    del state_dict["layers.1.attention.wv.weight"]
    return copy_of(tiny, folder, state_dict=state_dict)


def wrong_key_rows(tiny, folder):
    state_dict = tiny_state_dict()
    state_dict["layers.1.attention.wk.weight"] = state_dict["layers.1.attention.wq.weight"]  # n_heads rows of heads
    return copy_of(tiny, folder, state_dict=state_dict)


def feed_forward_of_another_width(tiny, folder):
    state_dict = tiny_state_dict()
    width = state_dict["layers.1.feed_forward.w2.weight"].shape[1]
    state_dict["layers.1.feed_forward.w2.weight"] = torch.zeros(TINY_PARAMS["dim"], width + 32, dtype=torch.bfloat16)
    return copy_of(tiny, folder, state_dict=state_dict)


# id: (how the folder is made, the check that must stop it, what the message must say)
REFUSED = {
    "sharded-copies": (sharded, "in load_sharded_weights",
                       ["every file holds the whole tensor, not 1/2 of it, so the 2 files are copies"]),
    "vision-params": (vision, "in check_params",
                      ["vision_chunk_size", "a vision model", "Point LLAMA3_DIR at one of those"]),
    "unknown-tensor": (unknown_tensor, "in check_tensors",
                       ["1 unknown ['rope.freqs']", "0 missing"]),
    "missing-tensor": (missing_tensor, "in check_tensors",
                       ["1 missing ['layers.1.attention.wv.weight']"]),
    "wrong-key-rows": (wrong_key_rows, "in check_tensors",
                       ["layers.1.attention.wk.weight has shape (64, 64), but params.json implies (32, 64)"]),
    "feed-forward-width": (feed_forward_of_another_width, "in check_tensors", ["layers.1.feed_forward.w2.weight has shape"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_checkpoint_stops_early_with_a_clear_message(case, tiny, family_dir):
    make, stopping_line, said = REFUSED[case]
    folder = make(tiny, family_dir / f"refused-{case}")
    with pytest.raises(CellExecutionError) as stopped:
        run_notebook(folder, max_new_tokens=1)
    assert stopped.value.ename == "ValueError"
    for words in said:
        assert words in stopped.value.evalue
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", stopped.value.traceback)  # without the terminal's colours
    assert stopping_line in traceback  # the check that stopped it is the early one (llama3_support/checkpoint_check.py)
