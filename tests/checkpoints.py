"""Small checkpoints in Meta's layout in which every tensor is distinct, for the fidelity tests.

Unlike the demo, no two layers share weights, the norm weights are not all ones, and the output
projection is its own tensor unless a test asks for Llama 3.2's tying: a wrong layer index, a swapped
norm or a wrong key/value head then changes the result instead of hiding behind a copy of the right one.
The vocabulary is always Meta's full 128256 ids with Meta's real tokenizer.
"""

import json
import shutil
from pathlib import Path

import torch

import download_weights

LLAMA3_VOCAB_SIZE = 128256


def small_params(dim=256, n_layers=2, n_heads=8, n_kv_heads=2, multiple_of=64, ffn_dim_multiplier=1.3,
                 rope_theta=500000.0, norm_eps=1e-5, use_scaled_rope=None) -> dict:
    """A params.json for a small model; keys in Meta's order, ffn_dim_multiplier=None leaves it out."""
    params = {"dim": dim, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv_heads,
              "vocab_size": LLAMA3_VOCAB_SIZE, "multiple_of": multiple_of, "ffn_dim_multiplier": ffn_dim_multiplier,
              "norm_eps": norm_eps, "rope_theta": rope_theta}
    if ffn_dim_multiplier is None:
        del params["ffn_dim_multiplier"]
    if use_scaled_rope is not None:
        params["use_scaled_rope"] = use_scaled_rope
    return params


def distinct_state_dict(params: dict, seed: int, output: str = "own", query_key_gain: float = 1.0) -> dict:
    """Seeded random bf16 weights, every tensor its own.

    output: "own" (Llama 3, 3.1), "tied" (output.weight shares the embedding's storage) or
    "absent" (no output.weight at all; the embedding serves as the output projection).
    query_key_gain multiplies every wq and wk: the attention scores grow with its square, attention gets
    sharper, as in a trained model, and the angles RoPE turns by (its scaled slow pairs too) weigh more.
    """
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for name, shape in download_weights.checkpoint_shapes(params).items():
        if len(shape) == 1:  # RMSNorm weights: around 1, different in every norm
            values = 1 + 0.2 * torch.randn(shape, generator=generator)
        elif name == "tok_embeddings.weight":
            values = torch.randn(shape, generator=generator)
        else:  # 1/sqrt(fan_in) keeps every projection's output at its input's scale
            values = torch.randn(shape, generator=generator) * shape[1] ** -0.5
            if name.endswith((".wq.weight", ".wk.weight")):
                values = values * query_key_gain
        state_dict[name] = values.to(torch.bfloat16)
    if output == "tied":
        state_dict["output.weight"] = state_dict["tok_embeddings.weight"]
    elif output == "absent":
        del state_dict["output.weight"]
    elif output != "own":
        raise ValueError(f"output must be own, tied or absent, not {output!r}")
    return state_dict


def write_checkpoint(folder: Path, params: dict, seed: int = 0, output: str = "own", model: str = None,
                     query_key_gain: float = 1.0) -> Path:
    """params.json, Meta's tokenizer.model and consolidated.00.pth in folder; source.json names the model if given."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(params))
    shutil.copyfile(download_weights.bundled_tokenizer_path(), folder / "tokenizer.model")
    torch.save(distinct_state_dict(params, seed, output, query_key_gain), folder / "consolidated.00.pth")
    if model is not None:
        (folder / download_weights.SOURCE_FILE).write_text(json.dumps({"kind": "test", "model": model}) + "\n")
    return folder
