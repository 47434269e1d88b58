"""A second, independent implementation agrees with the notebook: Hugging Face's LlamaForCausalLM.

Its weights are the checkpoint's, converted here from Meta's layout to Hugging Face's (transformers no
longer ships a conversion script). Besides renaming, one real change: Meta's RoPE turns the interleaved
pairs (0, 1), (2, 3), ... of each head, as complex numbers; Hugging Face's rotate_half turns the pairs
(i, i + head_dim/2). Reordering the rows of each head of wq and wk (the even rows first, then the odd ones)
makes both compute the same attention scores; wv and wo are unaffected, since a score is a dot product of a
query and a key and does not care how their coordinates are ordered, as long as both are ordered alike.

Tolerance (tests/rounding.py): both are held to the truth, Meta's logits in the next wider dtype. Each may be
SAFETY times its own rounding error from it: the notebook's is taken to be Meta's (test_fidelity.py holds
them to the same truth), and Hugging Face's is measured as its distance from itself computed in the wider
dtype (its bf16 rounds its RoPE cos/sin tables to bf16, Meta's turns queries and keys in float32: their
errors differ).
"""

import pytest
import torch

from fidelity_cases import checkpoint_folder, logit_terms, meta_prompt_tokens, notebook_run, reference_last_logits
from rounding import assert_within_rounding, rounding_tolerance

# one checkpoint with a key/value head per query head, one with groups of 4 query heads
PEER_CHECKPOINTS = ["mha-hd16", "gqa4-hd32"]
PROMPT = "default"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
WIDER_DTYPE = {"bfloat16": torch.float32, "float32": torch.float64}
REFERENCE_DTYPE = {"bfloat16": None, "float32": torch.float32}

META_TO_HF_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def interleaved_to_half_split(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head reordered from Meta's RoPE pairs (2i, 2i+1) to Hugging Face's (i, i + head_dim/2)."""
    rows, columns = weight.shape
    head_dim = rows // n_heads
    # per head: [pair i, member j] -> [member j, pair i]; row 2i+j moves to j*head_dim/2 + i
    return weight.view(n_heads, head_dim // 2, 2, columns).transpose(1, 2).reshape(rows, columns)


def hugging_face_model(folder, dtype: torch.dtype):
    """LlamaForCausalLM with the weights of Meta's checkpoint in folder, computing in dtype."""
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    params = json.loads((folder / "params.json").read_text())
    n_heads = params["n_heads"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    meta = torch.load(folder / "consolidated.00.pth", map_location="cpu", mmap=True, weights_only=True)

    converted = {"model.embed_tokens.weight": meta["tok_embeddings.weight"],
                 "model.norm.weight": meta["norm.weight"],
                 "lm_head.weight": meta.get("output.weight", meta["tok_embeddings.weight"])}
    for layer in range(params["n_layers"]):
        for meta_name, hf_name in META_TO_HF_LAYER_NAMES.items():
            tensor = meta[f"layers.{layer}.{meta_name}"]
            if meta_name == "attention.wq.weight":
                tensor = interleaved_to_half_split(tensor, n_heads)
            elif meta_name == "attention.wk.weight":
                tensor = interleaved_to_half_split(tensor, n_kv_heads)
            converted[f"model.layers.{layer}.{hf_name}"] = tensor

    config = LlamaConfig(
        vocab_size=params["vocab_size"], hidden_size=params["dim"], num_hidden_layers=params["n_layers"],
        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, head_dim=params["dim"] // n_heads,
        intermediate_size=meta["layers.0.feed_forward.w1.weight"].shape[0], hidden_act="silu",
        rms_norm_eps=params["norm_eps"], rope_theta=params["rope_theta"], max_position_embeddings=8192,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )
    model = LlamaForCausalLM(config)
    model.load_state_dict({name: tensor.to(dtype) for name, tensor in converted.items()}, strict=True)
    return model.to(dtype).eval()


def hugging_face_last_logits(folder, dtype: torch.dtype) -> torch.Tensor:
    """The peer's logits at the last prompt position (float32, or float64 for a float64 model)."""
    tokens = meta_prompt_tokens(folder, PROMPT)
    with torch.no_grad():
        logits = hugging_face_model(folder, dtype)(input_ids=tokens.view(1, -1)).logits[0, -1]
    return logits if dtype == torch.float64 else logits.float()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("checkpoint", PEER_CHECKPOINTS)
def test_hugging_face_llama_agrees_with_the_notebook(tmp_path_factory, checkpoint, dtype):
    folder = checkpoint_folder(tmp_path_factory, checkpoint)
    ours = notebook_run(folder, PROMPT, dtype)["logits"]
    truth = reference_last_logits(folder, PROMPT, WIDER_DTYPE[dtype])
    reference = reference_last_logits(folder, PROMPT, REFERENCE_DTYPE[dtype])
    peer, peer_wider = (hugging_face_last_logits(folder, d) for d in (DTYPES[dtype], WIDER_DTYPE[dtype]))
    terms = logit_terms(folder)
    our_tolerance = rounding_tolerance(reference, truth, DTYPES[dtype], terms)
    # the peer's error, measured against itself in the wider dtype, or Meta's where that is larger
    peer_tolerance = max(rounding_tolerance(peer, peer_wider, DTYPES[dtype], terms), our_tolerance)

    assert_within_rounding(peer_wider, truth, our_tolerance, f"transformers {WIDER_DTYPE[dtype]} - Meta {WIDER_DTYPE[dtype]}")
    assert_within_rounding(peer, truth, peer_tolerance, f"transformers {dtype} - Meta {WIDER_DTYPE[dtype]}")
    assert_within_rounding(ours, truth, our_tolerance, f"notebook {dtype} - Meta {WIDER_DTYPE[dtype]}")
    # the next token, wherever the true best logit is ahead of the second by more than either may err twice
    ordered = truth.sort(descending=True).values
    if ordered[0] - ordered[1] > 2 * peer_tolerance:
        assert notebook_run(folder, PROMPT, dtype)["next_token"] == int(peer.argmax()) == int(truth.argmax())
