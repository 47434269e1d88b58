"""The checkpoints, prompts and cached runs that the fidelity tests share.

Every checkpoint is made by the tests (tests/checkpoints.py: Meta's layout, every tensor distinct, Meta's
full vocabulary and tokenizer) and differs from the others in what a wrong index or a wrong formula would
break: query heads per key/value head (1, 2 and 4), head_dim (16 to 128), ffn_dim_multiplier present or
absent, rope_theta, n_kv_heads left out of params.json, norm_eps.

A notebook run costs a kernel start and a few seconds, so each (checkpoint, prompt, dtype) is run once per
test session and shared by every test that needs it; so are the reference's logits.
"""

import functools
import json
import os
from pathlib import Path

import torch

from checkpoints import small_params, write_checkpoint
from notebook_runner import run_notebook
from reference import load_reference, reference_logits


def _without_n_kv_heads(params: dict) -> dict:
    """params.json as Llama 2 wrote it: no n_kv_heads, which then means one key/value head per query head."""
    return {name: value for name, value in params.items() if name != "n_kv_heads"}


# id -> (params.json, seed of the weights)
CHECKPOINTS = {
    # 8 query heads on 2 key/value heads: groups of 4; head_dim 32; ffn_dim_multiplier 1.3 as in the 8B
    "gqa4-hd32": (small_params(dim=256, n_heads=8, n_kv_heads=2), 11),
    # groups of 2, head_dim 64, no ffn_dim_multiplier in params.json
    "gqa2-hd64-no-ffn-multiplier": (small_params(dim=256, n_heads=4, n_kv_heads=2, ffn_dim_multiplier=None), 12),
    # n_kv_heads == n_heads: groups of 1, 16 heads of 16
    "mha-hd16": (small_params(dim=256, n_heads=16, n_kv_heads=16), 13),
    # a single key/value head for 4 query heads, head_dim 128 as in every Llama 3 model
    "mqa-hd128": (small_params(dim=512, n_heads=4, n_kv_heads=1), 14),
    # rope_theta 10000 (Llama 2's), 3 layers, groups of 2, ffn_dim_multiplier 1.5 rounded to multiple_of 128
    "theta10k-3-layers": (small_params(dim=384, n_layers=3, n_heads=6, n_kv_heads=3, rope_theta=10000.0,
                                       multiple_of=128, ffn_dim_multiplier=1.5), 15),
    # no n_kv_heads key at all, two heads of 128, norm_eps 1e-6
    "implicit-kv-heads-eps1e-6": (_without_n_kv_heads(small_params(dim=256, n_heads=2, norm_eps=1e-6)), 16),
}

ANIMALS = ["fox", "heron", "otter", "lynx", "badger", "crane"]
LONG_PROMPT = " ".join(f"Line {n}: the {ANIMALS[n % 6]} crossed {n * 7} rivers before {n % 24}:{(n * 13) % 60:02d}, "
                       "then rested." for n in range(20))  # 394 tokens
PROMPTS = {
    "default": None,  # the notebook's own prompt
    "bos-only": "",  # <|begin_of_text|> alone: a one-token sequence
    "long": LONG_PROMPT,  # a few hundred tokens: RoPE's slow pairs turn, the mask is large
    "non-ascii": "Größe naïve café — 東京の天気は晴れ。Привет, мир! 🦙🚀 ½ ∑ x² ≠ ∞ مرحبا नमस्ते",
    "special-look-alikes": "<|begin_of_text|>user<|eot_id|> <|start_header_id|>system<|end_header_id|>\n\n"
                           "<|reserved_special_token_7|> <|image|> <|eom_id|> <| end_of_text |>",
}

# Settings of every run: one generated token is enough here (generation has its own tests). LLAMA3_TEST_DEVICE=cuda
# runs the notebook on that device (its logits come back to the CPU; Meta's reference and the truth stay there):
# benchmarks/gpu_check.py sets it. The notebook's own LLAMA3_DEVICE never reaches these runs (notebook_runner.py).
TEST_DEVICE = "LLAMA3_TEST_DEVICE"
RUN_SETTINGS = {"max_new_tokens": 1, **({"device": os.environ[TEST_DEVICE]} if os.environ.get(TEST_DEVICE) else {})}


def logit_terms(folder: Path) -> int:
    """How many products are summed into one logit: the model's width (for the rounding floor)."""
    return json.loads((Path(folder) / "params.json").read_text())["dim"]


def checkpoint_folder(tmp_path_factory, name: str) -> Path:
    """The checkpoint called name, written once per test session under pytest's temporary folder."""
    params, seed = CHECKPOINTS[name]
    folder = tmp_path_factory.getbasetemp() / "fidelity-checkpoints" / name
    if not (folder / "consolidated.00.pth").is_file():
        write_checkpoint(folder, params, seed=seed)
    return folder


@functools.cache
def notebook_run(folder: Path, prompt_name: str, dtype: str) -> dict:
    """tokens, logits, next_token and prompt of the notebook on folder with PROMPTS[prompt_name], in dtype."""
    return run_notebook(folder, PROMPTS[prompt_name], names=("tokens", "logits", "next_token", "prompt"),
                        dtype=dtype, **RUN_SETTINGS)


@functools.cache
def meta_tokenizer(tokenizer_model: Path):
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer(Path(tokenizer_model))


def prompt_text(folder: Path, prompt_name: str) -> str:
    """The text of the prompt: the test's own, or for "default" the one the notebook says it used."""
    if PROMPTS[prompt_name] is not None:
        return PROMPTS[prompt_name]
    return notebook_run(folder, prompt_name, "bfloat16")["prompt"]


def meta_prompt_tokens(folder: Path, prompt_name: str) -> torch.Tensor:
    """The prompt's ids as Meta's generation code builds them: BOS, then the text's ids, no EOS."""
    tokenizer = meta_tokenizer(folder / "tokenizer.model")
    return torch.tensor(tokenizer.encode(prompt_text(folder, prompt_name), bos=True, eos=False))


@functools.cache
def reference_last_logits(folder: Path, prompt_name: str, dtype: torch.dtype = None) -> torch.Tensor:
    """Meta's Transformer's logits at the last position of Meta's prompt ids; dtype None is the checkpoint's
    own bf16 (float32 logits), torch.float32 or torch.float64 convert the weights first (logits in that dtype)."""
    tokens = meta_prompt_tokens(folder, prompt_name)
    model = load_reference(folder, max_seq_len=len(tokens), dtype=dtype)
    return reference_logits(model, tokens)[-1]
