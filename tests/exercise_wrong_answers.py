"""Plausible wrong answers to the exercise copy's 18 blanks, kept as data, and a stand-in for the copy's cells.

Each answer is a learner's line (or lines) as typed into the blank; WRONG_ANSWERS pairs it with the words its
verdict must contain. tests/test_exercises.py runs every answer in a cell shaped like the copy's (the
`with exercise(...)` block, the check line) on three configurations (the demo's shapes, SmolLM2-135M's and a
small random model's) in bf16 and float32, and asserts the line, that nothing raises, and that what the lesson
goes on with equals what the right answer hands on. The closing table of docs/exercises.md is printed from it
by `python tests/exercise_wrong_answers.py`.
"""

import functools
import itertools
import json
import linecache
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llama3_support import exercises  # noqa: E402
from llama3_support.meta_layout import META_LLAMA3_8B_PARAMS_JSON  # noqa: E402
from llama3_support.vocabulary import LLAMA3_STOP_TOKENS, NAMED_SPECIAL_TOKENS  # noqa: E402

SMOLLM2_PARAMS_FILE = REPO / "checkpoints" / "SmolLM2-135M-Instruct" / "params.json"
# what llama3_support/smollm2_checkpoint.py writes into SmolLM2's params.json (test_exercises.py holds the two equal
# where the converted folder is there)
SMOLLM2_PARAMS = {"dim": 576, "n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "vocab_size": 49152, "multiple_of": 256,
                  "ffn_dim_multiplier": 1.0, "norm_eps": 1e-05, "rope_theta": 100000.0}
SMALL_PARAMS = {"dim": 64, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 300, "norm_eps": 1e-5,
                "rope_theta": 10000.0}
PROMPT_IDS = [128, 57, 3, 91, 210, 17]   # a 6-token prompt: with BOS, 7 tokens
ROWS_KEPT = 512                          # the embedding table and output matrix rows these tests build
FFN_DIM_KEPT = 256                       # the feed-forward width these tests build (the demo's is 14336)
LAYERS_KEPT = 3                          # layers of the layer loop and the cache
START_POSITION = 3                       # the cache is written as in decoding: after the first positions


@dataclass
class Configuration:
    name: str
    params: dict
    starts_with_bos: bool
    own_tokenizer: bool


def configurations() -> list:
    smollm2 = json.loads(SMOLLM2_PARAMS_FILE.read_text()) if SMOLLM2_PARAMS_FILE.is_file() else SMOLLM2_PARAMS
    return [Configuration("demo", json.loads(META_LLAMA3_8B_PARAMS_JSON), True, False),
            Configuration("smollm2", smollm2, False, True),
            Configuration("small", SMALL_PARAMS, True, False)]


def seeded(*shape, dtype=torch.float32, seed=0, scale=1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)).to(dtype)


def reference_rms_norm(x: torch.Tensor, norm_weight: torch.Tensor, norm_eps: float) -> torch.Tensor:
    x_float = x.float()
    return (x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + norm_eps)).type_as(x) * norm_weight


CLONED_BYTES = 4 * 2**20  # tensors up to this size are copied for each cell run; larger ones (weights) are shared


def cell_namespace(configuration: Configuration, dtype: torch.dtype) -> dict:
    """The notebook's variables that the exercises' cells read, on this configuration, in this compute dtype:
    a fresh copy of everything a line could change, the large weights shared."""
    namespace = dict(_cell_namespace(configuration.name, dtype))
    for name, value in namespace.items():
        if isinstance(value, torch.Tensor) and value.numel() * value.element_size() <= CLONED_BYTES:
            namespace[name] = value.clone()
        elif isinstance(value, list):
            namespace[name] = list(value)
        elif isinstance(value, dict):
            namespace[name] = {key: item.clone() if isinstance(item, torch.Tensor) else item
                               for key, item in value.items()}
    return namespace


@functools.lru_cache(maxsize=None)
def _cell_namespace(configuration_name: str, dtype: torch.dtype) -> dict:
    configuration = next(c for c in configurations() if c.name == configuration_name)
    params = configuration.params
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv_heads, head_dim = params.get("n_kv_heads") or n_heads, dim // n_heads
    norm_eps, rope_theta = params["norm_eps"], params["rope_theta"]
    bos_id = ROWS_KEPT - 2
    prompt_ids = list(PROMPT_IDS)
    tokens = torch.tensor([bos_id] * configuration.starts_with_bos + prompt_ids)
    n_tokens = len(tokens)
    weights = {
        "tok_embeddings.weight": seeded(ROWS_KEPT, dim, dtype=torch.bfloat16, seed=1, scale=0.5),
        "layers.0.attention.wq.weight": seeded(n_heads * head_dim, dim, dtype=dtype, seed=2, scale=dim ** -0.5),
        "layers.0.attention.wk.weight": seeded(n_kv_heads * head_dim, dim, dtype=dtype, seed=3, scale=dim ** -0.5),
        "layers.0.attention.wv.weight": seeded(n_kv_heads * head_dim, dim, dtype=dtype, seed=4, scale=dim ** -0.5),
        "layers.0.feed_forward.w1.weight": seeded(FFN_DIM_KEPT, dim, dtype=dtype, seed=5, scale=dim ** -0.5),
        "layers.0.feed_forward.w2.weight": seeded(dim, FFN_DIM_KEPT, dtype=dtype, seed=6, scale=FFN_DIM_KEPT ** -0.5),
        "layers.0.feed_forward.w3.weight": seeded(FFN_DIM_KEPT, dim, dtype=dtype, seed=7, scale=dim ** -0.5),
        "norm.weight": (1 + seeded(dim, dtype=torch.float64, seed=8, scale=0.1)).to(dtype),
        "output.weight": seeded(ROWS_KEPT, dim, dtype=dtype, seed=9, scale=dim ** -0.5),
    }
    pair_index = torch.arange(0, head_dim, 2).float()
    frequencies = 1.0 / (rope_theta ** (pair_index / head_dim))
    angles = torch.outer(torch.arange(n_tokens).float(), frequencies)
    q_per_token = seeded(n_tokens, head_dim, dtype=dtype, seed=10)
    k_per_token_rotated = seeded(n_tokens, head_dim, dtype=dtype, seed=11)
    scores = (q_per_token @ k_per_token_rotated.T / math.sqrt(head_dim)).to(dtype)
    causal_mask = torch.full((n_tokens, n_tokens), float("-inf"), dtype=dtype).triu(diagonal=1)
    token_embeddings = weights["tok_embeddings.weight"][tokens].to(dtype)
    cache_shape = (LAYERS_KEPT, START_POSITION + n_tokens + 2, n_kv_heads, head_dim)
    probabilities = torch.softmax(seeded(ROWS_KEPT, seed=12, scale=3.0), dim=-1)

    def transformer_layer(x: torch.Tensor, layer: int) -> torch.Tensor:  # a stand-in: each layer its own map
        return (x.float() + torch.tanh(x.float() * (layer + 1.5))).to(x.dtype)

    return {
        "torch": torch, "math": math, "bos_id": bos_id, "prompt_ids": prompt_ids,
        "prompt_starts_with_bos": configuration.starts_with_bos, "tokens": tokens, "n_tokens": n_tokens,
        "embedding_table": weights["tok_embeddings.weight"], "device": torch.device("cpu"), "compute_dtype": dtype,
        "x_float": token_embeddings.float(), "norm_eps": norm_eps, "dim": dim, "n_heads": n_heads,
        "n_kv_heads": n_kv_heads, "head_dim": head_dim, "heads_per_kv_head": n_heads // n_kv_heads,
        "wq": weights["layers.0.attention.wq.weight"], "wk": weights["layers.0.attention.wk.weight"],
        "wv": weights["layers.0.attention.wv.weight"], "pair_index": pair_index, "rope_theta": rope_theta,
        "q_per_token": q_per_token, "rope_rotations": torch.polar(torch.ones_like(angles), angles),
        "q_per_token_rotated": q_per_token, "k_per_token_rotated": k_per_token_rotated, "scores": scores,
        "masked_scores": scores + causal_mask, "token_embeddings": token_embeddings,
        "attention_output": seeded(n_tokens, dim, dtype=dtype, seed=13, scale=0.3),
        "after_attention": token_embeddings + seeded(n_tokens, dim, dtype=dtype, seed=13, scale=0.3),
        "ffn_input": seeded(n_tokens, dim, dtype=dtype, seed=14), "weight": weights.__getitem__,
        "silu": torch.nn.functional.silu, "ffn_output": seeded(n_tokens, dim, dtype=dtype, seed=15, scale=0.3),
        "n_layers": LAYERS_KEPT, "transformer_layer": transformer_layer,
        "rms_norm": lambda x, w: reference_rms_norm(x, w, norm_eps), "output_weight_name": "output.weight",
        "last_hidden": seeded(dim, dtype=dtype, seed=16, scale=6.0), "start_position": START_POSITION,
        "kv_cache": {"keys": torch.zeros(cache_shape, dtype=dtype), "values": torch.zeros(cache_shape, dtype=dtype)},
        "layer": 1, "k": seeded(n_tokens, n_kv_heads, head_dim, dtype=dtype, seed=17),
        "v": seeded(n_tokens, n_kv_heads, head_dim, dtype=dtype, seed=18),
        "NAMED_SPECIAL_TOKENS": NAMED_SPECIAL_TOKENS,
        "tokenizer_config": {"own": True} if configuration.own_tokenizer else None,
        "sorted_probabilities": torch.sort(probabilities, descending=True).values, "top_p": 0.9,
    }


# each exercise's cell, as the copy has it: {0}, {1}, ... are the learner's lines
CELLS = {
    "prompt_ids": 'with exercise("prompt_ids", prompt_ids=prompt_ids, bos_id=bos_id, starts_with_bos=prompt_starts_with_bos) as tokens:\n'
                  '    tokens = {0}\ntokens = check("prompt_ids", tokens)\n',
    "embedding": 'with exercise("embedding", embedding_table=embedding_table, tokens=tokens, device=device, dtype=compute_dtype) as token_embeddings:\n'
                 '    token_embeddings = {0}\ntoken_embeddings = check("embedding", token_embeddings)\n',
    "rms_norm": 'with exercise("rms_norm", x_float=x_float, norm_eps=norm_eps) as x_normed:\n'
                '    x_normed = {0}\nx_normed = check("rms_norm", x_normed)\n',
    "heads": 'with exercise("heads", wq=wq, wk=wk, wv=wv, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim) as (wq_per_head, wk_per_kv_head, wv_per_kv_head):\n'
             '    wq_per_head = {0}\n    wk_per_kv_head = {1}\n    wv_per_kv_head = {2}\n'
             'wq_per_head, wk_per_kv_head, wv_per_kv_head = check("heads", (wq_per_head, wk_per_kv_head, wv_per_kv_head))\n',
    "rope_frequencies": 'with exercise("rope_frequencies", pair_index=pair_index, rope_theta=rope_theta, head_dim=head_dim) as base_rope_frequencies:\n'
                        '    base_rope_frequencies = {0}\nbase_rope_frequencies = check("rope_frequencies", base_rope_frequencies)\n',
    "rope_rotation": 'with exercise("rope_rotation", q_per_token=q_per_token, rope_rotations=rope_rotations) as (q_per_token_as_complex, q_per_token_rotated):\n'
                     '    q_per_token_as_complex = {0}\n    q_per_token_rotated = {1}\n'
                     'q_per_token_as_complex, q_per_token_rotated = check("rope_rotation", (q_per_token_as_complex, q_per_token_rotated))\n',
    "scores": 'with exercise("scores", q=q_per_token_rotated, k=k_per_token_rotated, head_dim=head_dim) as scores:\n'
              '    scores = {0}\nscores = check("scores", scores)\n',
    "causal_mask": 'with exercise("causal_mask", n_tokens=n_tokens, device=device, dtype=compute_dtype) as causal_mask:\n'
                   '    causal_mask = {0}\ncausal_mask = check("causal_mask", causal_mask)\n',
    "softmax": 'with exercise("softmax", masked_scores=masked_scores) as attention_weights:\n'
               '    attention_weights = {0}\nattention_weights = check("softmax", attention_weights)\n',
    "kv_head": 'handed_on = []\nfor head in range(n_heads):\n'
               '    with exercise("kv_head", head=head, heads_per_kv_head=heads_per_kv_head, n_kv_heads=n_kv_heads, n_heads=n_heads) as kv_head_for_this_head:\n'
               '        kv_head_for_this_head = {0}\n    kv_head_for_this_head = check("kv_head", kv_head_for_this_head)\n'
               '    handed_on.append(kv_head_for_this_head)\n',
    "attention_residual": 'with exercise("attention_residual", residual=token_embeddings, branch=attention_output) as after_attention:\n'
                          '    after_attention = {0}\nafter_attention = check("attention_residual", after_attention)\n',
    "swiglu": 'with exercise("swiglu", ffn_input=ffn_input, w1=weight("layers.0.feed_forward.w1.weight"), w2=weight("layers.0.feed_forward.w2.weight"), w3=weight("layers.0.feed_forward.w3.weight")) as (gate, up, ffn_output):\n'
              '    gate = {0}\n    up = {1}\n    ffn_output = {2}\ngate, up, ffn_output = check("swiglu", (gate, up, ffn_output))\n',
    "layer_output": 'with exercise("layer_output", residual=after_attention, branch=ffn_output, layer_input=token_embeddings) as layer0_output:\n'
                    '    layer0_output = {0}\nlayer0_output = check("layer_output", layer0_output)\n',
    "layer_loop": 'hidden = token_embeddings\nhanded_on = []\nfor layer in range(n_layers):\n'
                  '    with exercise("layer_loop", layer=layer, first_input=token_embeddings, layer_function=transformer_layer) as hidden:\n'
                  '        hidden = {0}\n    hidden = check("layer_loop", hidden)\n    handed_on.append(hidden)\n',
    "logits": 'with exercise("logits", last_hidden=last_hidden, norm_weight=weight("norm.weight"), output_weight=weight(output_weight_name), norm_eps=norm_eps) as position_logits:\n'
              '    position_logits = {0}\nposition_logits = check("logits", position_logits)\n',
    "kv_cache": 'end_position = start_position + k.shape[0]\n'
                'with exercise("kv_cache", kv_cache=kv_cache, layer=layer, start_position=start_position, keys=k, values=v):\n'
                '    {0}\n    {1}\nkv_cache = check("kv_cache", kv_cache)\n',
    "stop_tokens": 'with exercise("stop_tokens", own_tokenizer=tokenizer_config is not None) as LLAMA3_STOP_TOKENS:\n'
                   '    LLAMA3_STOP_TOKENS = {0}\nLLAMA3_STOP_TOKENS = check("stop_tokens", LLAMA3_STOP_TOKENS)\n',
    "top_p": 'with exercise("top_p", sorted_probabilities=sorted_probabilities, top_p=top_p) as outside_nucleus:\n'
             '    outside_nucleus = {0}\noutside_nucleus = check("top_p", outside_nucleus)\n',
}
# what the lesson goes on with after each cell
HANDED_ON = {"prompt_ids": "tokens", "embedding": "token_embeddings", "rms_norm": "x_normed",
             "heads": ("wq_per_head", "wk_per_kv_head", "wv_per_kv_head"), "rope_frequencies": "base_rope_frequencies",
             "rope_rotation": ("q_per_token_as_complex", "q_per_token_rotated"), "scores": "scores",
             "causal_mask": "causal_mask", "softmax": "attention_weights", "kv_head": "handed_on",
             "attention_residual": "after_attention", "swiglu": ("gate", "up", "ffn_output"),
             "layer_output": "layer0_output", "layer_loop": "handed_on", "logits": "position_logits",
             "kv_cache": "kv_cache", "stop_tokens": "LLAMA3_STOP_TOKENS", "top_p": "outside_nucleus"}

# the walkthrough's own lines
RIGHT = {
    "prompt_ids": ("torch.tensor([bos_id] * prompt_starts_with_bos + prompt_ids)",),
    "embedding": ("embedding_table[tokens].to(device=device, dtype=compute_dtype)",),
    "rms_norm": ("x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + norm_eps)",),
    "heads": ("wq.view(n_heads, head_dim, dim)", "wk.view(n_kv_heads, head_dim, dim)", "wv.view(n_kv_heads, head_dim, dim)"),
    "rope_frequencies": ("1.0 / (rope_theta ** (pair_index / head_dim))",),
    "rope_rotation": ("torch.view_as_complex(q_per_token.float().view(n_tokens, -1, 2))",
                      "torch.view_as_real(q_per_token_as_complex * rope_rotations).view(n_tokens, head_dim).type_as(q_per_token)"),
    "scores": ("q_per_token_rotated @ k_per_token_rotated.T / math.sqrt(head_dim)",),
    "causal_mask": ('torch.full((n_tokens, n_tokens), float("-inf"), device=device, dtype=compute_dtype).triu(diagonal=1)',),
    "softmax": ("torch.softmax(masked_scores.float(), dim=-1).type_as(scores)",),
    "kv_head": ("head // heads_per_kv_head",),
    "attention_residual": ("token_embeddings + attention_output",),
    "swiglu": ('silu(ffn_input @ weight("layers.0.feed_forward.w1.weight").T)',
               'ffn_input @ weight("layers.0.feed_forward.w3.weight").T',
               '(gate * up) @ weight("layers.0.feed_forward.w2.weight").T'),
    "layer_output": ("after_attention + ffn_output",),
    "layer_loop": ("transformer_layer(hidden, layer)",),
    "logits": ('(rms_norm(last_hidden, weight("norm.weight")) @ weight(output_weight_name).T).float().cpu()',),
    "kv_cache": ('kv_cache["keys"][layer, start_position:end_position] = k',
                 'kv_cache["values"][layer, start_position:end_position] = v'),
    "stop_tokens": ('("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")',),
    "top_p": ("sorted_probabilities.cumsum(dim=-1) - sorted_probabilities > top_p",),
}


def _bf16(configuration, dtype):
    return dtype == torch.bfloat16


def _float32(configuration, dtype):
    return dtype == torch.float32


def _with_bos(configuration, dtype):
    return configuration.starts_with_bos


def _without_bos(configuration, dtype):
    return not configuration.starts_with_bos


@dataclass
class WrongAnswer:
    name: str           # the exercise
    lines: tuple        # the learner's lines
    said: tuple         # the verdict contains one of these
    where: callable = None  # where the answer is wrong (None: everywhere)
    mistake: str = ""   # what the learner did, for the table


RAISES = ("your line raised",)
W = WrongAnswer
WRONG_ANSWERS = [
    W("prompt_ids", ("torch.tensor(prompt_ids)",), ("the ids start with the text's first token",), _with_bos, "no BOS"),
    W("prompt_ids", ("torch.tensor([bos_id] + prompt_ids)",), ("start without a special token",), _without_bos,
      "BOS where the checkpoint has none"),
    W("prompt_ids", ("torch.tensor(prompt_ids + [bos_id] * prompt_starts_with_bos)",), ("but at the end",), _with_bos,
      "BOS at the end"),
    W("prompt_ids", ("[bos_id] * prompt_starts_with_bos + prompt_ids",), ("is a Python list",), None, "a list"),
    W("prompt_ids", ("torch.tensor([bos_id] * prompt_starts_with_bos + prompt_ids, dtype=torch.float32)",),
      ("ids are integers",), None, "float ids"),
    W("prompt_ids", ("torch.tensor([bos_id] * prompt_starts_with_bos + prompt_ids[::-1])",), ("reversed",), None,
      "the prompt reversed"),
    W("prompt_ids", ("torch.tensor([bos_id] * prompt_starts_with_bos + prompt_ids[0])",), RAISES, None,
      "a line that raises TypeError"),
    W("prompt_ids", ("torch.tensor(prompt_ids := [bos_id] * prompt_starts_with_bos + prompt_ids)",),
      ("your line changed prompt_ids",), None, "rebinds its input prompt_ids"),
    W("embedding", ("embedding_table[:len(tokens)].to(device=device, dtype=compute_dtype)",), ("row i is the table's row i",),
      None, "the first rows"),
    W("embedding", ("embedding_table[tokens]",), ("convert the rows to the compute dtype",), _float32, "no .to()"),
    W("embedding", ("embedding_table[tokens].T.to(device=device, dtype=compute_dtype)",), ("transposed",), None,
      "transposed"),
    W("embedding", ("embedding_table[tokens + 1].to(device=device, dtype=compute_dtype)",), ("the row after",), None,
      "ids shifted by one"),
    W("embedding", ("(embedding_table @ tokens).to(device=device, dtype=compute_dtype)",), RAISES, None,
      "a matrix product with the ids (raises)"),
    W("rms_norm", ("x_float * torch.rsqrt(x_float.pow(2).mean(dim=0, keepdim=True) + norm_eps)",),
      ("a mean over the tokens",), None, "mean over the tokens"),
    W("rms_norm", ("x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True))",), ("norm_eps is missing",), None,
      "no norm_eps"),
    W("rms_norm", ("x_float / (x_float.pow(2).mean(dim=-1, keepdim=True) + norm_eps)",), ("divide by the mean square itself",),
      None, "no square root"),
    W("rms_norm", ("x_float * torch.sqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + norm_eps)",),
      ("multiply by the root mean square",), None, "sqrt for rsqrt"),
    W("rms_norm", ("x_float / x_float.norm(dim=-1, keepdim=True)",), ("root of the sum of squares",), None,
      "the norm, not the RMS"),
    W("rms_norm", ("(x_float - x_float.mean(dim=-1, keepdim=True)) / torch.sqrt(x_float.var(dim=-1, keepdim=True, unbiased=False) + norm_eps)",),
      ("that is LayerNorm",), None, "LayerNorm"),
    W("rms_norm", ("x_float * torch.rsqrt(x_float.pow(2).mean(dim=2, keepdim=True) + norm_eps)",), RAISES, None,
      "a third axis (raises IndexError)"),
    W("heads", ("wq.T.reshape(n_heads, head_dim, dim)", "wk.view(n_kv_heads, head_dim, dim)", "wv.view(n_kv_heads, head_dim, dim)"),
      ("from the wrong axis",), None, "heads cut from the columns"),
    W("heads", ("wq.view(head_dim, n_heads, dim).transpose(0, 1)", "wk.view(n_kv_heads, head_dim, dim)", "wv.view(n_kv_heads, head_dim, dim)"),
      ("takes every",), None, "interleaved rows"),
    W("heads", ("wq.view(n_heads, head_dim, dim)", "wk.view(n_heads, head_dim, dim)", "wv.view(n_kv_heads, head_dim, dim)"),
      RAISES, None, "n_heads for the keys (raises)"),
    W("heads", ("wq.view(n_heads, head_dim, dim)", "wv.view(n_kv_heads, head_dim, dim)", "wk.view(n_kv_heads, head_dim, dim)"),
      ("the keys and the values are swapped",), None, "wk and wv swapped"),
    W("heads", ("wq.view(n_heads, head_dim, dim)", "wk.view(n_kv_heads, head_dim, dim)", "wv"), ("wv_per_kv_head has 2 axes",),
      None, "wv left whole"),
    W("rope_frequencies", ("rope_theta ** (pair_index / head_dim)",), ("grow from pair to pair",), None, "no reciprocal"),
    W("rope_frequencies", ("1.0 / (rope_theta ** (2 * pair_index / head_dim))",), ("counts each pair twice",), None,
      "2i counted twice"),
    W("rope_frequencies", ("1.0 / (rope_theta ** (torch.arange(head_dim // 2).float() / head_dim))",),
      ("counts pairs one by one",), None, "i for 2i"),
    W("rope_frequencies", ("1.0 / (rope_theta * (pair_index / head_dim))",), ("multiplied, not raised",), None,
      "* for **"),
    W("rope_frequencies", ("(1.0 / (rope_theta ** (pair_index / head_dim))).item()",), RAISES, None,
      ".item() on many values (raises)"),
    W("rope_rotation", ("torch.complex(q_per_token.float()[:, :head_dim // 2], q_per_token.float()[:, head_dim // 2:])",
                        "torch.view_as_real(q_per_token_as_complex * rope_rotations).view(n_tokens, head_dim).type_as(q_per_token)"),
      ("the two halves",), None, "pairs from the halves"),
    W("rope_rotation", ("torch.view_as_complex(q_per_token.float().view(n_tokens, -1, 2))",
                        "torch.view_as_real(q_per_token_as_complex * rope_rotations[0]).view(n_tokens, head_dim).type_as(q_per_token)"),
      ("row 0 is right", "the rotation is not applied"), None, "position 0's rotation for all"),
    W("rope_rotation", ("torch.view_as_complex(q_per_token.float().view(n_tokens, -1, 2))",
                        "torch.view_as_real(q_per_token_as_complex * rope_rotations.conj()).view(n_tokens, head_dim).type_as(q_per_token)"),
      ("the wrong way round",), None, "turned backwards"),
    W("rope_rotation", ("torch.view_as_complex(q_per_token.float().view(n_tokens, -1, 2))", "q_per_token"),
      ("the rotation is not applied",), None, "not rotated"),
    W("rope_rotation", ("torch.view_as_complex(q_per_token.float().view(n_tokens, -1, 2))",
                        "torch.view_as_real(q_per_token_as_complex * rope_rotations).view(n_tokens, head_dim)"),
      ("round the rotated queries back",), _bf16, "no type_as"),
    W("rope_rotation", ("torch.view_as_complex(q_per_token.view(n_tokens, -1, 2))",
                        "torch.view_as_real(q_per_token_as_complex * rope_rotations).view(n_tokens, head_dim).type_as(q_per_token)"),
      RAISES, _bf16, "complex view of bf16 (raises)"),
    W("scores", ("q_per_token_rotated @ k_per_token_rotated.T",), ("not scaled",), None, "unscaled"),
    W("scores", ("q_per_token_rotated @ k_per_token_rotated.T / head_dim",), ("divided by head_dim",), None, "/ head_dim"),
    W("scores", ("k_per_token_rotated @ q_per_token_rotated.T / math.sqrt(head_dim)",), ("rows and columns are swapped",),
      None, "keys @ queries"),
    W("scores", ("q_per_token_rotated @ q_per_token_rotated.T / math.sqrt(head_dim)",), ("the queries score the queries",),
      None, "queries @ queries"),
    W("scores", ("q_per_token_rotated @ k_per_token_rotated.T * math.sqrt(head_dim)",), ("multiplied by sqrt(head_dim)",),
      None, "* sqrt"),
    W("scores", ("q_per_token_rotated @ k_per_token_rotated / math.sqrt(head_dim)",), RAISES, None, "no .T (raises)"),
    W("causal_mask", ('torch.full((n_tokens, n_tokens), float("-inf"), device=device, dtype=compute_dtype).triu(diagonal=0)',),
      ("hides the diagonal too",), None, "triu(0)"),
    W("causal_mask", ('torch.full((n_tokens, n_tokens), float("-inf"), device=device, dtype=compute_dtype).triu(diagonal=2)',),
      ("the token right after it",), None, "triu(2)"),
    W("causal_mask", ('torch.full((n_tokens, n_tokens), float("-inf"), device=device, dtype=compute_dtype).tril(diagonal=-1)',),
      ("hides the past",), None, "tril(-1)"),
    W("causal_mask", ("torch.ones(n_tokens, n_tokens, dtype=torch.bool, device=device).triu(diagonal=1)",),
      ("True where the key comes after the query",), None, "a bool mask"),
    W("causal_mask", ('torch.full((n_tokens, n_tokens), -1e9, device=device, dtype=compute_dtype).triu(diagonal=1)',),
      ("a large negative number, not -inf",), None, "-1e9 for -inf"),
    W("causal_mask", ('torch.full((n_tokens, n_tokens), float("-inf"), device=device).triu(diagonal=1)',),
      ("in the compute dtype",), _bf16, "no dtype"),
    W("causal_mask", ('torch.full((7, 7), float("-inf"), device=device, dtype=compute_dtype).triu(diagonal=1)',),
      ("right on this checkpoint by chance, not on a prompt of 1 token", "has the wrong shape (7, 7)"), None,
      "the size typed in"),
    W("softmax", ("torch.softmax(masked_scores.float(), dim=0).type_as(scores)",), ("the columns sum to 1",), None, "dim=0"),
    W("softmax", ("torch.exp(masked_scores.float()).type_as(scores)",), ("the rows do not sum to 1",), None,
      "no normalisation"),
    W("softmax", ("torch.softmax(masked_scores.float(), dim=-1)",), ("round the float32 softmax back",), _bf16,
      "no type_as"),
    W("softmax", ("torch.sigmoid(masked_scores.float()).type_as(scores)",), ("a sigmoid",), None, "sigmoid"),
    W("softmax", ("torch.softmax(masked_scores.float(), dim=2).type_as(scores)",), RAISES, None, "dim=2 (raises)"),
    W("kv_head", ("head % n_kv_heads",), ("take turns over the key/value heads",), None, "head % n_kv_heads"),
    W("kv_head", ("head // n_kv_heads",), ("you divide by n_kv_heads",), None, "head // n_kv_heads"),
    W("kv_head", ("head / heads_per_kv_head",), ("divide with //",), None, "true division"),
    W("kv_head", ("head",), ("there are only",), None, "the query head itself"),
    W("kv_head", ("head // heads_per_kv_head + 1",), ("off by one", "does not exist"), None, "one group too far"),
    W("kv_head", ("head % heads_per_kv_head",), ("the head's place inside its group", "take turns over"), None,
      "head % heads_per_kv_head"),
    W("attention_residual", ("attention_output",), ("the residual connection is missing",), None, "no residual"),
    W("attention_residual", ("token_embeddings",), ("is missing: this is the stream",), None, "no attention"),
    W("attention_residual", ("token_embeddings - attention_output",), ("is subtracted",), None, "subtracted"),
    W("attention_residual", ("token_embeddings.add_(attention_output)",), ("your line changed token_embeddings",), None,
      "in place into its input"),
    W("attention_residual", ("token_embeddings + 0.5 * attention_output",), ("is multiplied by 0.5 before it is added",),
      None, "the branch halved"),
    W("swiglu", ('silu(ffn_input @ weight("layers.0.feed_forward.w3.weight").T)', 'ffn_input @ weight("layers.0.feed_forward.w1.weight").T',
                 '(gate * up) @ weight("layers.0.feed_forward.w2.weight").T'), ("gate and up are swapped",), None, "w1 and w3 swapped"),
    W("swiglu", ('ffn_input @ weight("layers.0.feed_forward.w1.weight").T', 'ffn_input @ weight("layers.0.feed_forward.w3.weight").T',
                 '(gate * up) @ weight("layers.0.feed_forward.w2.weight").T'), ("the gate has no SiLU",), None, "no SiLU"),
    W("swiglu", ('torch.relu(ffn_input @ weight("layers.0.feed_forward.w1.weight").T)', 'ffn_input @ weight("layers.0.feed_forward.w3.weight").T',
                 '(gate * up) @ weight("layers.0.feed_forward.w2.weight").T'), ("ReLU",), None, "ReLU"),
    W("swiglu", ('ffn_input @ weight("layers.0.feed_forward.w1.weight").T', 'ffn_input @ weight("layers.0.feed_forward.w3.weight").T',
                 'silu((gate * up) @ weight("layers.0.feed_forward.w2.weight").T)'), ("the SiLU is on the output",), None,
      "SiLU after w2"),
    W("swiglu", ('silu(ffn_input @ weight("layers.0.feed_forward.w1.weight").T)', 'ffn_input @ weight("layers.0.feed_forward.w3.weight").T',
                 '(gate * up) @ weight("layers.0.feed_forward.w2.weight")'), RAISES, None, "no .T on w2 (raises)"),
    W("layer_output", ("ffn_output",), ("the residual connection is missing",), None, "no residual"),
    W("layer_output", ("after_attention - ffn_output",), ("is subtracted",), None, "subtracted"),
    W("layer_output", ("after_attention + 2 * ffn_output",), ("added twice",), None, "added twice"),
    W("layer_output", ("token_embeddings + ffn_output",), ("is added to the layer's input",), None,
      "added to the embeddings"),
    W("layer_output", ("after_attention + 0.5 * ffn_output",), ("is multiplied by 0.5 before it is added",), None,
      "the branch halved"),
    W("layer_loop", ("transformer_layer(token_embeddings, layer)",), ("read the embeddings",), None,
      "every layer reads the embeddings"),
    W("layer_loop", ("transformer_layer(hidden, 0)",), ("the weights of layer 0",), None, "layer 0's weights"),
    W("layer_loop", ("hidden",), ("left the stream as it was",), None, "no layer"),
    W("layer_loop", ("transformer_layer(hidden, layer + 1)",), ("the weights of layer 1",), None, "the next layer's weights"),
    W("layer_loop", ("hidden + transformer_layer(hidden, layer)",), ("is added to its input",), None, "residual twice"),
    W("logits", ("(last_hidden @ weight(output_weight_name).T).float().cpu()",), ("the final RMSNorm is missing",), None,
      "no final norm"),
    W("logits", ('(rms_norm(last_hidden, weight("norm.weight")) @ weight(output_weight_name).T).cpu()',),
      ("float32 logits",), _bf16, "no .float()"),
    W("logits", ('torch.softmax((rms_norm(last_hidden, weight("norm.weight")) @ weight(output_weight_name).T).float(), dim=-1).cpu()',),
      ("these are probabilities",), None, "softmax"),
    W("logits", ('(rms_norm(last_hidden, torch.ones_like(weight("norm.weight"))) @ weight(output_weight_name).T).float().cpu()',),
      ("has no weight",), None, "norm without its weight"),
    W("logits", ('(rms_norm(last_hidden, weight("norm.weight")) @ weight(output_weight_name)).float().cpu()',), RAISES, None,
      "no .T (raises)"),
    W("kv_cache", ('kv_cache["keys"][layer, start_position + 1:end_position + 1] = k',
                   'kv_cache["values"][layer, start_position + 1:end_position + 1] = v'), ("one position later",), None,
      "one position late"),
    W("kv_cache", ('kv_cache["keys"][layer, start_position:end_position] = v',
                   'kv_cache["values"][layer, start_position:end_position] = k'), ("where the values belong",), None,
      "keys and values swapped"),
    W("kv_cache", ('kv_cache["keys"][layer, :k.shape[0]] = k', 'kv_cache["values"][layer, :v.shape[0]] = v'),
      ("written from position 0",), None, "start_position ignored"),
    W("kv_cache", ('kv_cache["keys"][layer, start_position:end_position] = k', "..."), ("the values are not",), None,
      "values not written"),
    W("kv_cache", ('kv_cache["keys"] = k', 'kv_cache["values"] = v'), ("is a new tensor",), None,
      "the cache's tensors replaced"),
    W("kv_cache", ('kv_cache["keys"][0, start_position:end_position] = k', 'kv_cache["values"][0, start_position:end_position] = v'),
      ("went into the part of layer 0",), None, "layer 0's part for every layer"),
    W("kv_cache", ('kv_cache["keys"][layer, start_position] = k', 'kv_cache["values"][layer, start_position] = v'),
      RAISES, None, "one position for all (raises)"),
    W("kv_cache", ('kv_cache["keys"][layer, start_position:end_position + 1] = torch.cat([k, k[-1:]])',
                   'kv_cache["values"][layer, start_position:end_position] = v'), ("changed too",), None,
      "writes one position too many"),
    W("stop_tokens", ('("<|end_of_text|>", "<|eot_id|>")',), ("a message that calls a tool",), None, "no eom"),
    W("stop_tokens", ('("<|begin_of_text|>", "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")',), ("begins a text",), None,
      "BOS as a stop token"),
    W("stop_tokens", ('("<|end_of_text|>", "<|eom|>", "<|eot|>")',), ("is not one of Meta's special tokens",), None,
      "misspelt names"),
    W("stop_tokens", ('"<|end_of_text|>"',), ("give the special tokens' names",), None, "one string"),
    W("stop_tokens", ("None",), ("yours is None",), None, "None"),
    W("top_p", ("sorted_probabilities.cumsum(dim=-1) > top_p",), ("left out of the nucleus",), None,
      "the crossing token dropped"),
    W("top_p", ("sorted_probabilities.cumsum(dim=-1) - sorted_probabilities <= top_p",), ("marks the tokens inside",), None,
      "the mask inverted"),
    W("top_p", ("sorted_probabilities.cumsum(dim=-1) - sorted_probabilities >= top_p",), ("exactly top_p is dropped",),
      None, ">= for >"),
    W("top_p", ("sorted_probabilities < top_p",), ("each token's own probability",), None, "no cumsum"),
    W("top_p", ("sorted_probabilities.cumsum() - sorted_probabilities > top_p",), RAISES, None, "cumsum without dim (raises)"),
]

_cells = itertools.count()


def run_cell(source: str, namespace: dict) -> None:
    """Execute source as a notebook cell: its own code object, its lines in linecache (as IPython keeps them)."""
    filename = f"<exercise-cell-{next(_cells)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102


def run_answer(name: str, lines: tuple, configuration: Configuration, dtype: torch.dtype):
    """(the line report prints, what the lesson goes on with) for these lines in the exercise's cell."""
    namespace = cell_namespace(configuration, dtype)
    namespace.update(check=exercises.check, exercise=exercises.exercise)
    exercises._progress.pop(name, None)
    run_cell(CELLS[name].format(*lines), namespace)
    verdict = exercises.verdict_of(name)
    exercises._progress.pop(name, None)
    handed = HANDED_ON[name]
    value = tuple(namespace[part] for part in handed) if isinstance(handed, tuple) else namespace[handed]
    return exercises.line_of(name, verdict), verdict, value, namespace


def applies(answer: WrongAnswer, configuration: Configuration, dtype: torch.dtype) -> bool:
    return answer.where is None or answer.where(configuration, dtype)


def table() -> list:
    """(exercise, mistake, line, specific) for each wrong answer on SmolLM2's shapes in bf16 (float32 where only
    float32 shows it)."""
    smollm2 = next(configuration for configuration in configurations() if configuration.name == "smollm2")
    rows = []
    for answer in WRONG_ANSWERS:
        configuration, dtype = next((c, d) for c in [smollm2] + configurations() for d in (torch.bfloat16, torch.float32)
                                    if applies(answer, c, d))
        line, verdict, _, _ = run_answer(answer.name, answer.lines, configuration, dtype)
        rows.append((answer.name, answer.mistake, verdict.message, any(said in line for said in answer.said),
                     f"{configuration.name}, {str(dtype).removeprefix('torch.')}"))
    return rows


def main() -> int:
    rows = table()
    print("| # | exercise | mistake | the line it gets | on | specific |")
    print("| --- | --- | --- | --- | --- | --- |")
    for number, (name, mistake, message, specific, where) in enumerate(rows, 1):
        print(f"| {number} | `{name}` | {mistake} | {message} | {where} | {'yes' if specific else 'NO'} |")
    print(f"\n{sum(row[3] for row in rows)} of {len(rows)} wrong answers get their specific line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
