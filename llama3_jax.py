"""The Llama 3 of llama3_from_scratch.ipynb in pure JAX: Meta's checkpoints, greedy generation, training.

    python llama3_jax.py generate --checkpoint checkpoints/Meta-Llama-3-8B
    python llama3_jax.py train --steps 2000 --out checkpoints/tiny-shakespeare-jax

The weights are a dict of jax.numpy arrays under Meta's names; the model is plain jax.numpy (RMSNorm, RoPE
with complex numbers, grouped-query attention, SwiGLU). `train` splits each batch over every device JAX sees.
"""

import argparse
import base64
import json
import math
import os
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tiktoken
import torch
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

DEFAULT_PROMPT = "the answer to the ultimate question of life, the universe, and everything is "
CHECKPOINT_FILES = ("params.json", "tokenizer.model", "consolidated.00.pth")
SUPPORTED_PARAMS = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
                    "norm_eps", "rope_theta", "use_scaled_rope"}
REQUIRED_PARAMS = SUPPORTED_PARAMS - {"n_kv_heads", "ffn_dim_multiplier", "use_scaled_rope"}
LAYER_TENSORS = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "attention.wo.weight",
                 "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight",
                 "attention_norm.weight", "ffn_norm.weight")
ROPE_SCALE_FACTORS = {"Llama-3.1": 8.0, "Llama-3.2": 32.0}
ORIGINAL_CONTEXT, LOW_FREQ_FACTOR, HIGH_FREQ_FACTOR = 8192, 1.0, 4.0  # Llama 3's RoPE scaling constants
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
NAMED_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                        "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                        "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
                        "<|image|>"]
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


class SettingError(ValueError):
    """A setting or a file that cannot work; the message says what is wrong and what to do."""


# ------------------------------------------------------------------ checkpoint, configuration, tokenizer


def model_config(params: dict, rope_scale_factor=None) -> dict:
    """Everything the forward pass needs from params.json (validated), plus the RoPE scale factor."""
    unsupported, missing = sorted(set(params) - SUPPORTED_PARAMS), sorted(REQUIRED_PARAMS - set(params))
    if unsupported or missing:
        raise SettingError(f"params.json has keys this program does not support {unsupported} or lacks {missing}: "
                           "it runs the Llama 3, 3.1 and 3.2 text models (8B, 3B, 1B) in Meta's original layout.")
    n_heads, n_kv_heads = params["n_heads"], params.get("n_kv_heads") or params["n_heads"]
    if params["dim"] % n_heads or n_heads % n_kv_heads:
        raise SettingError(f"dim={params['dim']}, n_heads={n_heads}, n_kv_heads={n_kv_heads}: dim must split evenly "
                           "into query heads, and query heads into key/value heads.")
    ffn_dim = int(2 * 4 * params["dim"] / 3)
    if params.get("ffn_dim_multiplier") is not None:
        ffn_dim = int(params["ffn_dim_multiplier"] * ffn_dim)
    ffn_dim = params["multiple_of"] * math.ceil(ffn_dim / params["multiple_of"])
    return {"dim": params["dim"], "n_layers": params["n_layers"], "n_heads": n_heads, "n_kv_heads": n_kv_heads,
            "head_dim": params["dim"] // n_heads, "vocab_size": params["vocab_size"], "ffn_dim": ffn_dim,
            "norm_eps": params["norm_eps"], "rope_theta": params["rope_theta"],
            "rope_scale_factor": rope_scale_factor if params.get("use_scaled_rope") else None}


def rope_scale_factor_for(folder: Path, override) -> float:
    """As the walkthrough decides it: the override, else source.json's model, else the folder's name."""
    if override is not None:
        if not 0 < override < float("inf"):
            raise SettingError(f"--rope-scale-factor {override} is not a positive number: use 8 (Llama 3.1) or 32 "
                               "(Llama 3.2).")
        return override
    source = json.loads((folder / "source.json").read_text()) if (folder / "source.json").is_file() else {}
    folder_name = folder.resolve().parent.name if folder.resolve().name == "original" else folder.resolve().name
    model_name = source.get("model") or source.get("repo_id", "").split("/")[-1] or folder_name
    family = next((name for name in ROPE_SCALE_FACTORS if name.lower() in model_name.lower()), None)
    if family is None:
        raise SettingError(f"params.json turns on use_scaled_rope, but nothing says whether {folder} holds Llama 3.1 "
                           f"(scale factor 8) or Llama 3.2 (32): neither its source.json nor its name "
                           f"({model_name!r}) does. Pass --rope-scale-factor 8 or 32 (or set LLAMA3_ROPE_SCALE_FACTOR).")
    return ROPE_SCALE_FACTORS[family]


def read_checkpoint(folder: Path, rope_scale_factor=None):
    """params.json's configuration and the mmap'ed state dict, checked against each other before any work."""
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        raise SettingError(f"The checkpoint folder {folder.resolve()} has no {', '.join(missing)}. Fetch a model with "
                           "`python download_weights.py` (or build the offline demo with `--demo`), or train one with "
                           "`python llama3_jax.py train`, and pass that folder as --checkpoint.")
    if (folder / "consolidated.01.pth").exists():
        raise SettingError(f"{folder} holds a checkpoint split over several consolidated.*.pth files (Llama 3 70B or "
                           "405B). This program reads single-file checkpoints: the 8B, 3B and 1B models.")
    params = json.loads((folder / "params.json").read_text())
    if params.get("use_scaled_rope"):
        rope_scale_factor = rope_scale_factor_for(folder, rope_scale_factor)
    config = model_config(params, rope_scale_factor)
    state_dict = torch.load(folder / "consolidated.00.pth", map_location="cpu", mmap=True, weights_only=True)
    expected = expected_shapes(config)
    problems = ([f"unknown tensor {name}" for name in sorted(set(state_dict) - set(expected))]
                + [f"missing tensor {name}" for name in sorted(set(expected) - set(state_dict) - {"output.weight"})]
                + [f"{name} has shape {tuple(state_dict[name].shape)}, params.json implies {shape}"
                   for name, shape in expected.items() if name in state_dict and tuple(state_dict[name].shape) != shape])
    if problems:
        raise SettingError(f"consolidated.00.pth in {folder} does not match its params.json ({len(problems)} problems: "
                           + "; ".join(problems[:5]) + "). Use the params.json that came with these weights.")
    return config, state_dict


def expected_shapes(config: dict) -> dict:
    dim, ffn, q_rows, kv_rows = (config["dim"], config["ffn_dim"], config["n_heads"] * config["head_dim"],
                                 config["n_kv_heads"] * config["head_dim"])
    layer = dict(zip(LAYER_TENSORS, [(q_rows, dim), (kv_rows, dim), (kv_rows, dim), (dim, q_rows), (ffn, dim),
                                     (dim, ffn), (ffn, dim), (dim,), (dim,)]))
    shapes = {"tok_embeddings.weight": (config["vocab_size"], dim), "norm.weight": (dim,),
              "output.weight": (config["vocab_size"], dim)}
    return shapes | {f"layers.{i}.{name}": shape for i in range(config["n_layers"]) for name, shape in layer.items()}


def jax_weights(state_dict: dict, dtype) -> dict:
    """Meta's names -> jax arrays in dtype. Tensors that share storage (the demo's layers) share one array."""
    converted, weights = {}, {}
    for name, tensor in tqdm(state_dict.items(), desc="weights", unit="tensor", leave=False):
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape, tensor.stride())
        if key not in converted:
            if dtype == jnp.bfloat16:  # numpy has no bf16: the same 16 bits, viewed as ml_dtypes' bfloat16
                array = tensor.to(torch.bfloat16).contiguous().view(torch.uint16).numpy().view(jnp.bfloat16)
            else:
                array = tensor.to(torch.float32).numpy()
            converted[key] = jnp.asarray(array)
        weights[name] = converted[key]
    return weights


def load_tokenizer(path: Path, vocab_size: int) -> tiktoken.Encoding:
    """tiktoken on tokenizer.model (base64 bytes and rank per line), with Llama 3's split pattern and special tokens."""
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in path.read_text().splitlines())}
    n_special = vocab_size - len(ranks)
    reserved = [f"<|reserved_special_token_{2 + i}|>" for i in range(n_special - len(NAMED_SPECIAL_TOKENS))]
    special = {name: len(ranks) + i for i, name in enumerate(NAMED_SPECIAL_TOKENS + reserved)}
    return tiktoken.Encoding(name=path.parent.name, pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=special)


def prompt_tokens(tokenizer: tiktoken.Encoding, text: str) -> list:
    """<|begin_of_text|>, then the text's ids; text that looks like a special token stays text."""
    return [tokenizer.encode_single_token("<|begin_of_text|>")] + tokenizer.encode(text, disallowed_special=())


# ------------------------------------------------------------------ the model


def rope_rotations(config: dict, n_positions: int) -> jax.Array:
    """e^(i * position * frequency): complex64 [n_positions, head_dim / 2], slow frequencies scaled for 3.1 / 3.2."""
    frequencies = 1.0 / (config["rope_theta"] ** (jnp.arange(0, config["head_dim"], 2, dtype=jnp.float32) / config["head_dim"]))
    factor = config["rope_scale_factor"]
    if factor is not None:
        wavelengths = 2 * jnp.pi / frequencies
        smooth = (ORIGINAL_CONTEXT / wavelengths - LOW_FREQ_FACTOR) / (HIGH_FREQ_FACTOR - LOW_FREQ_FACTOR)
        blended = (1 - smooth) * frequencies / factor + smooth * frequencies
        frequencies = jnp.where(wavelengths < ORIGINAL_CONTEXT / HIGH_FREQ_FACTOR, frequencies,
                                jnp.where(wavelengths > ORIGINAL_CONTEXT / LOW_FREQ_FACTOR, frequencies / factor, blended))
    angles = jnp.outer(jnp.arange(n_positions, dtype=jnp.float32), frequencies)
    return jax.lax.complex(jnp.cos(angles), jnp.sin(angles))


def linear(x, weight):
    """x @ weight.T, summed in float32 and rounded once to x's dtype, as PyTorch does. (XLA's CPU backend multiplies
    bf16 matrices as they are, but converts the whole weight to float32 for a single row: that gets a second row.)"""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 1 and x.dtype == jnp.bfloat16:
        rows = jnp.concatenate([rows, rows])
    product = jax.lax.dot_general(rows, weight, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return product[: math.prod(x.shape[:-1])].reshape(*x.shape[:-1], -1).astype(x.dtype)


def rms_norm(x, weight, eps: float):
    x_float = x.astype(jnp.float32)
    return (x_float * jax.lax.rsqrt(jnp.mean(x_float * x_float, axis=-1, keepdims=True) + eps)).astype(x.dtype) * weight


def apply_rope(x, rotations):
    """x [batch, n, heads, head_dim] turned pair by pair (as complex numbers) by rotations [n, head_dim / 2]."""
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    turned = jax.lax.complex(pairs[..., 0], pairs[..., 1]) * rotations[:, None, :]
    return jnp.stack([turned.real, turned.imag], axis=-1).reshape(x.shape).astype(x.dtype)


def silu(x):
    """x * sigmoid(x) in float32, rounded once."""
    x_float = x.astype(jnp.float32)
    return (x_float * jax.nn.sigmoid(x_float)).astype(x.dtype)


def transformer(weights: dict, tokens, rotations, config: dict, cache=None, start=0):
    """tokens [batch, n] at positions start, start + 1, ... -> final-norm hidden states [batch, n, dim] and the cache.

    cache (keys, values), each [n_layers, batch, n_positions, n_kv_heads, head_dim], holds the rotated keys and the
    values of earlier positions; this call writes its own into it. Without a cache, attention is over tokens alone.
    """
    batch, n = tokens.shape
    n_heads, n_kv_heads, head_dim = config["n_heads"], config["n_kv_heads"], config["head_dim"]
    turns = jax.lax.dynamic_slice_in_dim(rotations, start, n)
    n_keys = n if cache is None else cache[0].shape[2]
    visible = jnp.arange(n_keys)[None, :] <= start + jnp.arange(n)[:, None]  # [n, n_keys]: key not after query
    h = weights["tok_embeddings.weight"][tokens]
    for layer in range(config["n_layers"]):
        w = partial(lambda layer, name: weights[f"layers.{layer}.{name}"], layer)
        x = rms_norm(h, w("attention_norm.weight"), config["norm_eps"])
        q = apply_rope(linear(x, w("attention.wq.weight")).reshape(batch, n, n_heads, head_dim), turns)
        k = apply_rope(linear(x, w("attention.wk.weight")).reshape(batch, n, n_kv_heads, head_dim), turns)
        v = linear(x, w("attention.wv.weight")).reshape(batch, n, n_kv_heads, head_dim)
        if cache is not None:  # write this call's keys and values at their positions, then read all positions
            cache = tuple(jax.lax.dynamic_update_slice(stack, new[None], (layer, 0, start, 0, 0))
                          for stack, new in zip(cache, (k, v)))
            k, v = cache[0][layer], cache[1][layer]
        # query head h reads key/value head h // (n_heads / n_kv_heads): group the queries under their kv head
        q = q.reshape(batch, n, n_kv_heads, n_heads // n_kv_heads, head_dim)
        scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32).astype(q.dtype)
        scores = scores / math.sqrt(head_dim)
        scores = jnp.where(visible, scores, -jnp.inf)
        probabilities = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)
        heads = jnp.einsum("bkgqs,bskd->bqkgd", probabilities, v, preferred_element_type=jnp.float32).astype(q.dtype)
        h = h + linear(heads.reshape(batch, n, n_heads * head_dim), w("attention.wo.weight"))
        x = rms_norm(h, w("ffn_norm.weight"), config["norm_eps"])
        gate, up = silu(linear(x, w("feed_forward.w1.weight"))), linear(x, w("feed_forward.w3.weight"))
        h = h + linear(gate * up, w("feed_forward.w2.weight"))
    return rms_norm(h, weights["norm.weight"], config["norm_eps"]), cache


def output_logits(weights: dict, hidden):
    """float32 logits; Llama 3.2 without output.weight projects with the embedding."""
    return linear(hidden, weights.get("output.weight", weights["tok_embeddings.weight"])).astype(jnp.float32)


def forward(weights: dict, tokens, rotations, config: dict):
    """float32 logits [batch, n, vocab_size] of tokens [batch, n] starting at position 0."""
    return output_logits(weights, transformer(weights, tokens, rotations, config)[0])


# ------------------------------------------------------------------ generation


def last_position_logits(weights, tokens, rotations, cache, start, config):
    hidden, cache = transformer(weights, tokens, rotations, config, cache, start)
    return output_logits(weights, hidden[:, -1]), cache


def generate(weights: dict, config: dict, tokens: list, max_new_tokens: int, stop_tokens=()):
    """Greedy decoding with a fixed-size key/value cache: one jitted prefill, then one jitted step per new token.
    Returns the new token ids (ending at the first stop token) and every step's float32 logits [steps, vocab]."""
    n_positions = len(tokens) + max_new_tokens
    dtype = weights["tok_embeddings.weight"].dtype
    cache_shape = (config["n_layers"], 1, n_positions, config["n_kv_heads"], config["head_dim"])
    cache = (jnp.zeros(cache_shape, dtype), jnp.zeros(cache_shape, dtype))
    rotations = rope_rotations(config, n_positions)
    step = jax.jit(partial(last_position_logits, config=config), donate_argnames="cache")  # prefill and decode
    logits, cache = step(weights, jnp.asarray([tokens]), rotations, cache, 0)
    new_tokens, step_logits = [], [logits[0]]
    for _ in tqdm(range(max_new_tokens), desc="decoding", unit="token", leave=False):
        new_tokens.append(int(jnp.argmax(step_logits[-1])))
        if new_tokens[-1] in stop_tokens or len(new_tokens) == max_new_tokens:
            break
        logits, cache = step(weights, jnp.asarray([new_tokens[-1:]]), rotations, cache, len(tokens) + len(new_tokens) - 1)
        step_logits.append(logits[0])
    return new_tokens, np.asarray(jnp.stack(step_logits))


def run_generate(args) -> None:
    if args.max_new_tokens < 1:
        raise SettingError(f"--max-new-tokens {args.max_new_tokens}: give at least 1.")
    folder = Path(args.checkpoint)
    config, state_dict = read_checkpoint(folder, args.rope_scale_factor)
    tokenizer = load_tokenizer(folder / "tokenizer.model", config["vocab_size"])
    tokens = prompt_tokens(tokenizer, args.prompt)
    weights = jax_weights(state_dict, DTYPES[args.dtype])
    stops = {tokenizer.encode_single_token(name) for name in ("<|end_of_text|>", "<|eot_id|>")}
    new_tokens, _ = generate(weights, config, tokens, args.max_new_tokens, stops)
    print(f"{len(tokens)} prompt tokens, {len(new_tokens)} new: {new_tokens}")
    print(args.prompt + tokenizer.decode(new_tokens))


# ------------------------------------------------------------------ training (the settings of train_llama3_from_scratch.ipynb)

TRAIN_DEFAULTS = {"steps": 3000, "seed": 1337, "dim": 192, "layers": 4, "heads": 6, "kv_heads": 2, "batch_size": 16,
                  "block_size": 64, "lr": 0.002, "eval_interval": 250, "eval_iters": 20}
WEIGHT_DECAY, BETAS, GRAD_CLIP, INIT_STD, TRAIN_FRACTION = 0.1, (0.9, 0.99), 1.0, 0.02, 0.9
N_SPECIAL_TOKENS = 256  # the notebook's tokenizer: learned ranks, then 256 special tokens


def training_params(settings: dict, vocab_size: int) -> dict:
    """The params.json the notebook writes for these model settings."""
    return {"dim": settings["dim"], "n_layers": settings["layers"], "n_heads": settings["heads"],
            "n_kv_heads": settings["kv_heads"], "vocab_size": vocab_size, "multiple_of": 32, "ffn_dim_multiplier": 1.0,
            "norm_eps": 1e-5, "rope_theta": 10000.0, "use_scaled_rope": False}


def initial_weights(config: dict, seed: int) -> dict:
    """normal(0, 0.02) for every matrix and the embedding, ones for the norm gains (as the notebook does)."""
    shapes = expected_shapes(config)
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {name: jnp.ones(shape) if len(shape) == 1 else INIT_STD * jax.random.normal(key, shape)
            for key, (name, shape) in zip(keys, shapes.items())}


def loss_fn(weights: dict, inputs, targets, rotations, config: dict):
    """Mean next-token cross-entropy of the float32 logits, as F.cross_entropy computes it."""
    logits = forward(weights, inputs, rotations, config)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def make_optimizer(peak_lr: float, steps: int):
    """AdamW (decay on matrices only) after clipping the gradients' global norm; the notebook's get_lr:
    linear warm-up from peak/warmup over max(1, steps // 20) steps, then cosine down to peak / 10."""
    warmup = max(1, steps // 20)
    schedule = optax.join_schedules([optax.linear_schedule(peak_lr / warmup, peak_lr, warmup - 1),
                                     optax.cosine_decay_schedule(peak_lr, max(1, steps - warmup), alpha=0.1)], [warmup])
    adamw = optax.adamw(schedule, b1=BETAS[0], b2=BETAS[1], eps=1e-8, weight_decay=WEIGHT_DECAY,
                        mask=lambda weights: {name: value.ndim >= 2 for name, value in weights.items()})
    return optax.chain(optax.clip_by_global_norm(GRAD_CLIP), adamw)


def make_train_step(config: dict, optimizer, devices):
    """One jitted step over a 1-D mesh of devices: the batch split along it, weights and optimizer state replicated."""
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("batch"))

    def step(weights, optimizer_state, inputs, targets, rotations):
        loss, grads = jax.value_and_grad(loss_fn)(weights, inputs, targets, rotations, config)
        updates, optimizer_state = optimizer.update(grads, optimizer_state, weights)
        return optax.apply_updates(weights, updates), optimizer_state, loss

    jitted = jax.jit(step, in_shardings=(replicated, replicated, split, split, replicated),
                     out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))
    return jitted, replicated


def batches(ids: np.ndarray, batch_size: int, block_size: int, bos_id: int, rng: np.random.Generator):
    """(inputs, targets) of random windows: targets = block_size ids, inputs = <|begin_of_text|> + targets[:-1]."""
    while True:
        starts = rng.integers(0, len(ids) - block_size, batch_size)
        targets = np.stack([ids[start:start + block_size] for start in starts])
        yield np.concatenate([np.full((batch_size, 1), bos_id), targets[:, :-1]], axis=1).astype(np.int32), targets.astype(np.int32)


def check_out_folder(out: Path) -> None:
    source = out / "source.json"
    ours = source.is_file() and json.loads(source.read_text()).get("trainer") == "llama3_jax.py"
    if out.exists() and any(out.iterdir()) and not ours:
        raise SettingError(f"--out {out} already holds files that llama3_jax.py did not write (no source.json with "
                           "\"trainer\": \"llama3_jax.py\"): it may be a downloaded or notebook-trained checkpoint. "
                           "Choose a new folder, e.g. --out checkpoints/tiny-shakespeare-jax-2, or move those files away.")


def save_checkpoint(out: Path, weights: dict, params: dict, tokenizer_file: Path, source: dict) -> None:
    """Meta's layout: params.json, consolidated.00.pth (bf16, Meta's names), tokenizer.model, source.json (last)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    (out / "tokenizer.model").write_bytes(tokenizer_file.read_bytes())
    torch.save({name: torch.from_numpy(np.array(value, np.float32)).to(torch.bfloat16) for name, value in weights.items()},
               out / "consolidated.00.pth")
    (out / "source.json").write_text(json.dumps({"kind": "trained", "model": "tiny-shakespeare", "trainer": "llama3_jax.py",
                                                  **source}, indent=2) + "\n")


def check_train_settings(args) -> None:
    problems = [f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1"
                for name in ("steps", "dim", "layers", "heads", "kv_heads", "batch_size", "block_size", "eval_interval",
                             "eval_iters") if getattr(args, name) < 1]
    if args.dim % args.heads or args.heads % args.kv_heads:
        problems.append(f"--dim {args.dim} must split evenly into --heads {args.heads}, and those into --kv-heads {args.kv_heads}")
    if args.batch_size % jax.device_count():
        problems.append(f"--batch-size {args.batch_size} must split evenly over the {jax.device_count()} devices JAX sees")
    if not args.lr > 0:
        problems.append(f"--lr {args.lr} must be positive")
    for path, what in [(args.data, "--data"), (args.tokenizer, "--tokenizer")]:
        if not Path(path).is_file():
            problems.append(f"{what} {path} does not exist (the tokenizer comes from a run of train_llama3_from_scratch.ipynb)")
    if problems:
        raise SettingError("Cannot train: " + "; ".join(problems) + ".")
    check_out_folder(Path(args.out))


def train(args, time_budget: float = None) -> list:
    """Train from scratch; evaluate every eval_interval steps and at the end (saving then). Returns
    [(step, training seconds, train loss, val loss)]. time_budget (seconds of training) may end it early."""
    check_train_settings(args)
    text = Path(args.data).read_text()
    split_at = int(TRAIN_FRACTION * len(text))
    ranks = sum(1 for _ in Path(args.tokenizer).read_text().splitlines())
    tokenizer = load_tokenizer(Path(args.tokenizer), ranks + N_SPECIAL_TOKENS)
    ids = {"train": np.array(tokenizer.encode(text[:split_at], disallowed_special=())),
           "val": np.array(tokenizer.encode(text[split_at:], disallowed_special=()))}
    bos_id = tokenizer.encode_single_token("<|begin_of_text|>")
    params = training_params(vars(args), tokenizer.n_vocab)
    config = model_config(params)
    rotations = rope_rotations(config, args.block_size)
    optimizer = make_optimizer(args.lr, args.steps)
    train_step, replicated = make_train_step(config, optimizer, jax.devices())
    weights = jax.device_put(initial_weights(config, args.seed), replicated)
    optimizer_state = jax.device_put(optimizer.init(weights), replicated)
    evaluate = jax.jit(partial(loss_fn, config=config))
    train_batches = batches(ids["train"], args.batch_size, args.block_size, bos_id, np.random.default_rng(args.seed))
    history, seconds = [], 0.0
    progress = tqdm(range(args.steps), desc="training", unit="step")
    for step in progress:
        started = time.perf_counter()
        weights, optimizer_state, loss = train_step(weights, optimizer_state, *next(train_batches), rotations)
        loss = float(loss)  # waits for the step
        seconds += time.perf_counter() - started
        progress.set_postfix(loss=f"{loss:.3f}")
        out_of_time = time_budget is not None and seconds >= time_budget
        if (step + 1) % args.eval_interval == 0 or step + 1 == args.steps or out_of_time:
            losses = {split: np.mean([float(evaluate(weights, *batch, rotations)) for batch, _ in zip(
                batches(ids[split], args.batch_size, args.block_size, bos_id, np.random.default_rng(args.seed + 1)),
                range(args.eval_iters))]) for split in ids}
            history.append((step + 1, seconds, losses["train"], losses["val"]))
            per_character = losses["val"] * len(ids["val"]) / (len(text) - split_at)
            save_checkpoint(Path(args.out), weights, params, Path(args.tokenizer),
                            {"step": step + 1, "steps": args.steps, "losses": {**losses, "val_nats_per_character": per_character},
                             "train_seconds": round(seconds, 1), "devices": jax.device_count()})
            progress.write(f"step {step + 1}: train {losses['train']:.3f}, val {losses['val']:.3f} nats/token "
                           f"({per_character:.3f} per character), {seconds:.0f} s")
        if out_of_time:
            break
    return history


# ------------------------------------------------------------------ command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="continue a prompt greedily with a Meta-layout checkpoint")
    gen.add_argument("--checkpoint", required=True, help="folder with params.json, tokenizer.model, consolidated.00.pth")
    gen.add_argument("--prompt", default=DEFAULT_PROMPT)
    gen.add_argument("--max-new-tokens", type=int, default=20)
    gen.add_argument("--dtype", choices=list(DTYPES), default="bfloat16",
                     help="bfloat16 computes as Meta's code does; float32 converts every weight first")
    gen.add_argument("--rope-scale-factor", type=float, default=os.environ.get("LLAMA3_ROPE_SCALE_FACTOR") or None,
                     help="Llama 3.1: 8, 3.2: 32; by default from source.json's model or the folder's name")
    tr = commands.add_parser("train", help="train the training notebook's small Llama 3 on Tiny Shakespeare")
    tr.add_argument("--out", default="checkpoints/tiny-shakespeare-jax", help="where the checkpoint goes (Meta's layout)")
    tr.add_argument("--data", default="data/tinyshakespeare.txt")
    tr.add_argument("--tokenizer", default="checkpoints/tiny-shakespeare/tokenizer.model",
                    help="the training notebook's tokenizer.model (written by train_llama3_from_scratch.ipynb)")
    for name, value in TRAIN_DEFAULTS.items():
        tr.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run_generate(args) if args.command == "generate" else train(args)
    except SettingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
