"""Bad input stops the notebook early, in one paragraph that names the problem and says what to do.

Every case runs the whole notebook (notebook_runner.py) on a small checkpoint in Meta's layout, damaged in one
way, and checks the error the notebook stops with: its type, its words, and where it stopped. A bad setting
must stop before the checkpoint is touched: those runs point LLAMA3_DIR at a folder that does not exist, so
only the settings cell can have stopped them.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from nbclient.exceptions import CellExecutionError

from checkpoints import small_params, write_checkpoint
from notebook_runner import run_notebook
from rounding import assert_within_rounding, rounding_tolerance

TINY_PARAMS = small_params(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32)
CHECKPOINT_FILES = ("params.json", "consolidated.00.pth", "tokenizer.model")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-input")


@pytest.fixture(scope="module")
def tiny(scratch) -> Path:
    return write_checkpoint(scratch / "tiny", TINY_PARAMS, seed=3)


def copy_with(tiny: Path, folder: Path, **replaced: bytes) -> Path:
    """tiny's three files in folder (links), with the files named in replaced (params_json=..., ...) written anew."""
    folder.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        content = replaced.pop(name.replace(".", "_"), None)
        if content is None:
            os.symlink(tiny / name, folder / name)
        else:
            (folder / name).write_bytes(content)
    for name, content in replaced.items():  # other files: source_json=...
        (folder / name.replace("_", ".")).write_bytes(content)
    return folder


def stopped_with(folder: Path, **settings) -> CellExecutionError:
    with pytest.raises(CellExecutionError) as stopped:
        run_notebook(folder, max_new_tokens=settings.pop("max_new_tokens", 1), **settings)
    return stopped.value


# ---------------------------------------------------------------- settings


BAD_SETTINGS = {
    "negative temperature": ("temperature", "-1", "use 0 (greedy) or a positive number"),
    "temperature not a number": ("temperature", "warm", "use 0 (greedy) or a positive number"),
    "temperature nan": ("temperature", "nan", "use 0 (greedy) or a positive number"),
    "top_p zero": ("top_p", "0", "use a number above 0 and at most 1"),
    "top_p above one": ("top_p", "1.5", "use a number above 0 and at most 1"),
    "negative max_new_tokens": ("max_new_tokens", "-1", "use a whole number, 0 or more"),
    "fractional max_new_tokens": ("max_new_tokens", "2.5", "use a whole number, 0 or more"),
    "seed not a whole number": ("seed", "one", "use a whole number"),
    "unknown dtype": ("dtype", "float16", "use bfloat16 or float32"),
    "unknown stream": ("stream", "yes", "use auto, 0 or 1"),
    "unknown device": ("device", "tpu", "use cpu, or a device this machine has"),
    "zero rope scale factor": ("rope_scale_factor", "0", "use a positive number: 8 (Llama 3.1) or 32 (Llama 3.2)"),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_a_bad_setting_stops_before_the_checkpoint_is_touched(case, scratch):
    name, value, accepted = BAD_SETTINGS[case]
    error = stopped_with(scratch / "no-such-folder", **{name: value})
    assert error.ename == "ValueError"
    assert f"LLAMA3_{name.upper()}={value!r} is not accepted: {accepted}" in error.evalue


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_stops_in_the_settings(scratch):
    error = stopped_with(scratch / "no-such-folder", device="cuda")
    assert error.ename == "ValueError"
    assert "LLAMA3_DEVICE='cuda' is not accepted: use cpu, or a device this machine has (cuda: False" in error.evalue


# ---------------------------------------------------------------- the folder and its files


def test_a_missing_folder_says_how_to_fetch_one(scratch):
    error = stopped_with(scratch / "not-downloaded")
    assert error.ename == "FileNotFoundError"
    assert "has no params.json, consolidated.00.pth, tokenizer.model" in error.evalue
    assert "python download_weights.py --demo" in error.evalue


def test_a_hub_repository_root_is_read_from_its_original_folder(tiny, scratch):
    repository = scratch / "Meta-Llama-3-8B-hub"
    copy_with(tiny, repository / "original")
    (repository / "config.json").write_text("{}")
    results = run_notebook(repository, names=("checkpoint_dir", "next_token"), max_new_tokens=1)
    direct = run_notebook(tiny, names=("next_token",), max_new_tokens=1)
    assert results["checkpoint_dir"] == repository.resolve() / "original"
    assert results["next_token"] == direct["next_token"]


def test_a_hub_repository_root_without_its_files_points_at_original(tiny, scratch):
    repository = scratch / "half-downloaded-hub"
    (repository / "original").mkdir(parents=True)
    (repository / "config.json").write_text("{}")
    error = stopped_with(repository)
    assert error.ename == "FileNotFoundError"
    assert f"{repository.resolve() / 'original'} has no params.json" in error.evalue


PARAMS_TEXT = json.dumps(TINY_PARAMS)
BAD_PARAMS = {
    "not json": (PARAMS_TEXT[:-5], "params.json is not valid JSON"),
    "empty": ("", "params.json is empty"),
    "a list": ("[4096, 32]", "params.json holds a JSON list, not an object"),
    "dim as text": (json.dumps({**TINY_PARAMS, "dim": "64"}), "dim is '64', but must be a positive whole number"),
    "negative norm_eps": (json.dumps({**TINY_PARAMS, "norm_eps": -1e-5}), "norm_eps is -1e-05, but must be a positive number"),
    "use_scaled_rope as text": (json.dumps({**TINY_PARAMS, "use_scaled_rope": "yes"}), "use_scaled_rope is 'yes', but must be true or false"),
    "n_layers missing": (json.dumps({key: value for key, value in TINY_PARAMS.items() if key != "n_layers"}), "n_layers is missing"),
    "odd head width": (json.dumps({**TINY_PARAMS, "dim": 60}), "do not split into heads of an even width"),
}


@pytest.mark.parametrize("case", list(BAD_PARAMS))
def test_a_damaged_params_json_names_the_key_and_what_it_must_be(case, tiny, scratch):
    text, said = BAD_PARAMS[case]
    error = stopped_with(copy_with(tiny, scratch / f"params-{case.replace(' ', '-')}", params_json=text.encode()))
    assert error.ename == "ValueError"
    assert said in error.evalue
    assert "python download_weights.py" in error.evalue


def test_a_source_json_that_is_not_json_is_named(tiny, scratch):
    error = stopped_with(copy_with(tiny, scratch / "bad-source", source_json=b'{"kind": "demo",'))
    assert error.ename == "ValueError"
    assert "source.json is not valid JSON" in error.evalue


def test_a_truncated_weights_file_is_reported_as_such(tiny, scratch):
    weights = (tiny / "consolidated.00.pth").read_bytes()
    error = stopped_with(copy_with(tiny, scratch / "truncated-weights", consolidated_00_pth=weights[: len(weights) // 2]))
    assert error.ename == "RuntimeError"
    assert "consolidated.00.pth cannot be read" in error.evalue and "truncated or corrupt" in error.evalue


# ---------------------------------------------------------------- tokenizer.model


def tokenizer_lines(tiny: Path) -> list:
    return (tiny / "tokenizer.model").read_text().splitlines()


def damaged_tokenizers(lines: list) -> dict:
    """case -> (the file's bytes, what the message must say)"""
    token_of_rank_10 = lines[10].split()[0]
    return {
        "cut at line 100000": ("\n".join(lines[:100000]).encode(),
                               "its 100000 tokens leave 28256 of params.json's 128256 ids for special tokens, not 256"),
        "a token twice": ("\n".join(lines[:-1] + [f"{token_of_rank_10} {len(lines) - 1}"]).encode(),
                          "1 of its tokens appear twice"),
        "a rank skipped": ("\n".join(lines[:-1] + [f"{lines[-1].split()[0]} {len(lines)}"]).encode(),
                           "its ranks are not 0..127999, each once"),
        "a line without a rank": ("\n".join(lines[:5] + ["IQ=="] + lines[6:]).encode(),
                                  "line 6 is not a base64 token and a rank: 'IQ=='"),
        "a line that is not base64": ("\n".join(lines[:5] + ["not-base64! 5"] + lines[6:]).encode(),
                                      "line 6 is not a base64 token and a rank"),
        "binary": (bytes(range(128, 256)) * 100, "it is not a text file"),
        "empty": (b"", "it is empty"),
    }


@pytest.mark.parametrize("case", ["cut at line 100000", "a token twice", "a rank skipped", "a line without a rank",
                                  "a line that is not base64", "binary", "empty"])
def test_a_damaged_or_foreign_tokenizer_is_refused(case, tiny, scratch):
    content, said = damaged_tokenizers(tokenizer_lines(tiny))[case]
    error = stopped_with(copy_with(tiny, scratch / f"tokenizer-{case.replace(' ', '-')}", tokenizer_model=content))
    assert error.ename == "ValueError"
    assert "tokenizer.model is not the tokenizer of this Llama 3 checkpoint" in error.evalue
    assert said in error.evalue
    assert "python download_weights.py" in error.evalue


# ---------------------------------------------------------------- long prompts


def test_a_prompt_longer_than_the_context_is_refused(tiny):
    error = stopped_with(tiny, prompt="hello " * 8300)
    assert error.ename == "ValueError"
    assert "The prompt is 8302 tokens long, but this model reads at most 8192 positions" in error.evalue


def test_generation_stops_when_the_context_is_full(tiny):
    prompt = "hello " * 8188  # with <|begin_of_text|> and the last space, 8190 of the 8192 positions
    results = run_notebook(tiny, prompt=prompt, names=("n_tokens", "generated_tokens", "generated_logits"), max_new_tokens=5)
    assert results["n_tokens"] == 8190
    assert len(results["generated_tokens"]) == 2
    assert results["generated_logits"].shape[0] == 2


def test_attention_in_blocks_of_queries_equals_attention_in_one_block(tiny):
    """With a block budget of three query rows, the layer gives what the notebook's single block gave: both held
    to the same layer computed in float64 (tests/rounding.py), where .float() keeps float64."""
    in_blocks = ("SCORES_BLOCK_BYTES = 4 * n_heads * n_tokens * 3\n"
                 "layer0_in_blocks = transformer_layer(token_embeddings, 0)\n"
                 "SCORES_BLOCK_BYTES, compute_dtype = 64 * 2**20, torch.float64\n"
                 "weight = DeviceWeights(state_dict, device, torch.float64)\n"
                 "from unittest import mock\n"
                 "with mock.patch.object(torch.Tensor, 'float', torch.Tensor.double):\n"
                 "    layer0_float64 = transformer_layer(token_embeddings.double(), 0)")
    results = run_notebook(tiny, names=("layer0_output_batched", "layer0_in_blocks", "layer0_float64", "n_tokens",
                                        "ffn_dim"), extra_cells=[in_blocks], dtype="float32", max_new_tokens=1)
    assert results["n_tokens"] > 3 * 5  # several blocks
    truth = results["layer0_float64"]
    assert truth.dtype == torch.float64
    # the widest sum in a layer is the feed-forward's down projection, over ffn_dim terms
    tolerance = rounding_tolerance(results["layer0_output_batched"], truth, torch.float32, results["ffn_dim"])
    assert_within_rounding(results["layer0_in_blocks"], truth, tolerance, "layer 0 in blocks of queries - float64")
