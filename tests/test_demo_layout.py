"""The demo checkpoint has exactly the layout of Meta-Llama-3-8B's: the notebook meets the same files.

Its params.json is Meta's file byte for byte, and its consolidated.00.pth holds exactly the tensors, shapes
and dtypes that Meta's Transformer, built from that params.json as Meta's generation code builds it (bf16 as
the default dtype), loads with strict=True.
"""

import json

import torch

from reference import ensure_model_parallel_group

# original/params.json of meta-llama/Meta-Llama-3-8B on the Hugging Face hub, byte for byte (no trailing newline)
META_LLAMA3_8B_PARAMS_JSON = (
    b'{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, '
    b'"multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}'
)


def meta_transformer_for_llama3_8b():
    """Meta's Transformer for Meta-Llama-3-8B's params.json, its weights uninitialised (no memory touched)."""
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer

    ensure_model_parallel_group()
    args = ModelArgs(**json.loads(META_LLAMA3_8B_PARAMS_JSON), max_batch_size=1, max_seq_len=8)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # as Meta's generation code does before building the model
    try:
        return Transformer(args)
    finally:
        torch.set_default_dtype(default_dtype)


def test_params_json_is_metas_byte_for_byte(demo_checkpoint):
    assert (demo_checkpoint / "params.json").read_bytes() == META_LLAMA3_8B_PARAMS_JSON


def test_params_are_llama_models_own_for_llama3_8b():
    """llama-models' registry of Meta's models has the same architecture for Llama 3 8B."""
    from llama_models.sku_list import resolve_model

    registered = dict(resolve_model("Llama-3-8B").arch_args)
    assert registered.pop("use_scaled_rope") is False  # absent from Meta's params.json: the default, off
    assert registered == json.loads(META_LLAMA3_8B_PARAMS_JSON)


def test_tensors_are_those_metas_transformer_loads_strictly(demo_checkpoint):
    demo = torch.load(demo_checkpoint / "consolidated.00.pth", map_location="cpu", mmap=True, weights_only=True)
    model = meta_transformer_for_llama3_8b()
    expected = {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in model.state_dict().items()}
    found = {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in demo.items()}

    assert len(expected) == 3 + 32 * 9  # embedding, final norm, output; 9 per layer
    assert sorted(found) == sorted(expected)
    assert {name: found[name] for name in expected if found[name] != expected[name]} == {}
    assert {dtype for _, dtype in found.values()} == {torch.bfloat16}
    result = model.load_state_dict(demo, strict=True, assign=True)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
