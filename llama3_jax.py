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
from tqdm import tqdm

from llama3_support.checkpoint_folder import CHECKPOINT_FILES, CheckpointError, check_output_folder, read_source, staged_build
from llama3_support.meta_layout import checkpoint_shapes, layer_shapes

DEFAULT_PROMPT = "the answer to the ultimate question of life, the universe, and everything is "
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
ROPE_SCALE_FACTORS = {"llama-3.1": 8.0, "llama-3.2": 32.0}  # 3.1 and 3.2 stretch RoPE's slow frequencies differently
ORIGINAL_CONTEXT, LOW_FREQ_FACTOR, HIGH_FREQ_FACTOR = 8192, 1.0, 4.0  # Llama 3's RoPE scaling constants
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_TOKENS = [f"<|{name}|>" for name in (  # then <|reserved_special_token_2|>, 3, ... up to vocab_size
    "begin_of_text end_of_text reserved_special_token_0 reserved_special_token_1 finetune_right_pad_id step_id "
    "start_header_id end_header_id eom_id eot_id python_tag image").split()]


# ------------------------------------------------------------------ checkpoint, configuration, tokenizer

def model_config(params: dict, rope_scale_factor=None) -> dict:
    """params.json with Meta's defaults filled in, plus head_dim and the RoPE scale factor (None: no scaling)."""
    config = {"n_kv_heads": None, "ffn_dim_multiplier": None, "use_scaled_rope": False} | params
    return config | {"n_kv_heads": config["n_kv_heads"] or config["n_heads"],
                     "head_dim": config["dim"] // config["n_heads"],
                     "rope_scale_factor": rope_scale_factor if config["use_scaled_rope"] else None}


def read_checkpoint(folder: Path, rope_scale_factor=None):
    """params.json's configuration and the mmap'ed state dict, checked against each other before any work."""
    if missing := [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]:
        raise CheckpointError(f"{folder} has no {', '.join(missing)}. Get a checkpoint with `python "
                              "download_weights.py` (offline: `--demo`) or `python llama3_jax.py train`, and pass its "
                              "folder as --checkpoint.")
    if (folder / "consolidated.01.pth").exists():
        raise CheckpointError(f"{folder} holds a checkpoint split over several consolidated.*.pth files "
                              "(70B, 405B); this program reads single-file ones: the 8B, 3B and 1B models.")
    params = json.loads((folder / "params.json").read_text())
    if params.get("use_scaled_rope") and rope_scale_factor is None:  # Llama 3.1 or 3.2? source.json or the name says
        name = read_source(folder).get("model") or "/".join(folder.resolve().parts[-2:])  # also <name>/original
        factors = [factor for family, factor in ROPE_SCALE_FACTORS.items() if family in name.lower()]
        if not factors:
            raise CheckpointError(f"params.json turns on use_scaled_rope, but neither source.json nor the name "
                                  f"{name!r} says whether this is Llama 3.1 or 3.2: pass --rope-scale-factor 8 or 32 "
                                  "accordingly (or set LLAMA3_ROPE_SCALE_FACTOR).")
        rope_scale_factor = factors[0]
    config = model_config(params, rope_scale_factor)
    state_dict = torch.load(folder / "consolidated.00.pth", map_location="cpu", mmap=True, weights_only=True)
    shapes = {name: tuple(tensor.shape) for name, tensor in state_dict.items()}
    expected = {name: shape for name, shape in checkpoint_shapes(config).items()
                if name in shapes or name != "output.weight"}  # Llama 3.2 may tie the output to the embedding
    if differ := sorted({name for name, _ in shapes.items() ^ expected.items()}):
        raise CheckpointError(f"consolidated.00.pth in {folder} does not match its params.json (tensors "
                              f"missing, extra or of another shape: {', '.join(differ[:4])}). Use the params.json that "
                              "came with these weights.")
    return config, state_dict


def jax_weights(state_dict: dict, dtype) -> dict:
    """Meta's names -> jax arrays in dtype. Tensors that share storage (the demo's layers) share one array."""
    converted, weights = {}, {}
    for name, tensor in tqdm(state_dict.items(), desc="weights", unit="tensor", leave=False):
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape, tensor.stride())
        if key not in converted:  # numpy has no bf16: the same 16 bits, viewed as ml_dtypes' bfloat16
            converted[key] = jnp.asarray(tensor.float().numpy() if dtype == jnp.float32 else
                                         tensor.bfloat16().contiguous().view(torch.uint16).numpy().view(jnp.bfloat16))
        weights[name] = converted[key]
    return weights


def load_tokenizer(path: Path, vocab_size: int) -> tiktoken.Encoding:
    """tiktoken on tokenizer.model (base64 bytes and rank per line), with Llama 3's split pattern and special tokens."""
    ranks = {base64.b64decode(token): int(rank) for token, rank in map(str.split, path.read_text().splitlines())}
    n_reserved = vocab_size - len(ranks) - len(SPECIAL_TOKENS)  # the special tokens fill the vocabulary up
    special = SPECIAL_TOKENS + [f"<|reserved_special_token_{2 + i}|>" for i in range(n_reserved)]
    return tiktoken.Encoding(name=path.parent.name, pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={name: len(ranks) + i for i, name in enumerate(special)})


def prompt_tokens(tokenizer: tiktoken.Encoding, text: str) -> list:
    """<|begin_of_text|>, then the text's ids; text that looks like a special token stays text."""
    return [tokenizer.encode_single_token("<|begin_of_text|>")] + tokenizer.encode(text, disallowed_special=())


# ------------------------------------------------------------------ the model

def rope_rotations(config: dict, n_positions: int) -> jax.Array:
    """e^(i * position * frequency): complex64 [n_positions, head_dim / 2], slow frequencies scaled for 3.1 / 3.2."""
    head_dim = config["head_dim"]
    frequencies = 1.0 / config["rope_theta"] ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    if config["rope_scale_factor"]:  # wavelengths under 2048 positions stay, over 8192 slow down, between: blended
        wavelengths = 2 * jnp.pi / frequencies
        smooth = (ORIGINAL_CONTEXT / wavelengths - LOW_FREQ_FACTOR) / (HIGH_FREQ_FACTOR - LOW_FREQ_FACTOR)
        smooth = jnp.clip(smooth, 0, 1)
        frequencies = (1 - smooth) * frequencies / config["rope_scale_factor"] + smooth * frequencies
    angles = jnp.outer(jnp.arange(n_positions, dtype=jnp.float32), frequencies)
    return jax.lax.complex(jnp.cos(angles), jnp.sin(angles))


def linear(x, weight):
    """x @ weight.T, summed in float32 and rounded once to x's dtype, as PyTorch does. (XLA's CPU backend multiplies
    bf16 matrices as they are, but converts the whole weight to float32 for a single row: that gets a second row.)"""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 1 and x.dtype == jnp.bfloat16:
        rows = jnp.concatenate([rows, rows])
    product = jax.lax.dot_general(rows, weight, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return product[: np.prod(x.shape[:-1])].reshape(*x.shape[:-1], -1).astype(x.dtype)


def rms_norm(x, weight, eps: float):
    x_float = x.astype(jnp.float32)
    return (x_float * jax.lax.rsqrt(jnp.mean(x_float * x_float, axis=-1, keepdims=True) + eps)).astype(x.dtype) * weight


def apply_rope(x, rotations):
    """x [batch, n, heads, head_dim] turned pair by pair (as complex numbers) by rotations [n, head_dim / 2]."""
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    turned = jax.lax.complex(pairs[..., 0], pairs[..., 1]) * rotations[:, None, :]
    return jnp.stack([turned.real, turned.imag], axis=-1).reshape(x.shape).astype(x.dtype)


def transformer(weights: dict, tokens, rotations, config: dict, cache=None, start=0):
    """tokens [batch, n] at positions start, start + 1, ... -> float32 logits [batch, n, vocab] and the cache.
    cache (keys, values), each [n_layers, batch, n_positions, n_kv_heads, head_dim], holds the rotated keys and the
    values of earlier positions; this call writes its own into it and returns the logits of its last position only."""
    batch, n = tokens.shape
    n_heads, n_kv_heads, head_dim, eps = config["n_heads"], config["n_kv_heads"], config["head_dim"], config["norm_eps"]
    turns = jax.lax.dynamic_slice_in_dim(rotations, start, n)
    n_keys = n if cache is None else cache[0].shape[2]
    visible = jnp.arange(n_keys) <= start + jnp.arange(n)[:, None]  # [n, n_keys]: key not after query
    h = weights["tok_embeddings.weight"][tokens]
    for layer in range(config["n_layers"]):
        w = {name: weights[f"layers.{layer}.{name}"] for name in layer_shapes(config)}  # this block's weights
        x = rms_norm(h, w["attention_norm.weight"], eps)
        q = apply_rope(linear(x, w["attention.wq.weight"]).reshape(batch, n, n_heads, head_dim), turns)
        k = apply_rope(linear(x, w["attention.wk.weight"]).reshape(batch, n, n_kv_heads, head_dim), turns)
        v = linear(x, w["attention.wv.weight"]).reshape(batch, n, n_kv_heads, head_dim)
        if cache is not None:  # write this call's keys and values at their positions, then read all positions
            cache = tuple(jax.lax.dynamic_update_slice(stack, new[None], (layer, 0, start, 0, 0))
                          for stack, new in zip(cache, (k, v)))
            k, v = cache[0][layer], cache[1][layer]
        # query head h reads key/value head h // (n_heads / n_kv_heads): group the queries under their kv head
        q = q.reshape(batch, n, n_kv_heads, n_heads // n_kv_heads, head_dim)
        scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32).astype(q.dtype)
        scores = jnp.where(visible, scores / math.sqrt(head_dim), -jnp.inf)
        probabilities = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)
        heads = jnp.einsum("bkgqs,bskd->bqkgd", probabilities, v, preferred_element_type=jnp.float32).astype(q.dtype)
        h = h + linear(heads.reshape(batch, n, n_heads * head_dim), w["attention.wo.weight"])
        x = rms_norm(h, w["ffn_norm.weight"], eps)
        gate = jax.nn.silu(linear(x, w["feed_forward.w1.weight"]).astype(jnp.float32)).astype(x.dtype)  # SwiGLU
        h = h + linear(gate * linear(x, w["feed_forward.w3.weight"]), w["feed_forward.w2.weight"])
    h = rms_norm(h if cache is None else h[:, -1:], weights["norm.weight"], eps)
    # Llama 3.2 without output.weight projects with the embedding; Meta rounds the logits to the weights' dtype
    return linear(h, weights.get("output.weight", weights["tok_embeddings.weight"])).astype(jnp.float32), cache


def forward(weights: dict, tokens, rotations, config: dict):
    """float32 logits [batch, n, vocab_size] of tokens [batch, n] starting at position 0."""
    return transformer(weights, tokens, rotations, config)[0]


# ------------------------------------------------------------------ generation

def generate(weights: dict, config: dict, tokens: list, max_new_tokens: int, stop_tokens=()):
    """Greedy decoding with a fixed-size key/value cache: one jitted step reads the prompt, then each new token.
    Returns the new token ids (ending at the first stop token) and every step's float32 logits [steps, vocab]."""
    cache_shape = (config["n_layers"], 1, len(tokens) + max_new_tokens, config["n_kv_heads"], config["head_dim"])
    cache = tuple(jnp.zeros(cache_shape, weights["tok_embeddings.weight"].dtype) for _ in "kv")
    rotations = rope_rotations(config, len(tokens) + max_new_tokens)
    step = jax.jit(partial(transformer, config=config), donate_argnames="cache")
    new_tokens, step_logits, start, chunk = [], [], 0, tokens
    for _ in tqdm(range(max_new_tokens), desc="decoding", unit="token", leave=False):
        logits, cache = step(weights, jnp.asarray([chunk]), rotations, cache=cache, start=start)
        step_logits.append(logits[0, -1])
        new_tokens.append(int(jnp.argmax(step_logits[-1])))
        if new_tokens[-1] in stop_tokens:
            break
        start, chunk = start + len(chunk), new_tokens[-1:]
    return new_tokens, np.asarray(jnp.stack(step_logits))


def run_generate(args) -> None:
    config, state_dict = read_checkpoint(Path(args.checkpoint), args.rope_scale_factor)
    tokenizer = load_tokenizer(Path(args.checkpoint) / "tokenizer.model", config["vocab_size"])
    tokens = prompt_tokens(tokenizer, args.prompt)
    stops = {tokenizer.encode_single_token(name) for name in ("<|end_of_text|>", "<|eot_id|>")}
    new_tokens, _ = generate(jax_weights(state_dict, DTYPES[args.dtype]), config, tokens, args.max_new_tokens, stops)
    print(f"{len(tokens)} prompt tokens, {len(new_tokens)} new: {new_tokens}")
    print(args.prompt + tokenizer.decode(new_tokens))


# ------------------------------------------------------------------ training, as train_llama3_from_scratch.ipynb does

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
    shapes = checkpoint_shapes(config)
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {name: jnp.ones(shape) if len(shape) == 1 else INIT_STD * jax.random.normal(key, shape)
            for key, (name, shape) in zip(keys, shapes.items())}


def loss_fn(weights: dict, inputs, targets, rotations, config: dict):
    """Mean next-token cross-entropy of the float32 logits, as F.cross_entropy computes it."""
    return optax.softmax_cross_entropy_with_integer_labels(forward(weights, inputs, rotations, config), targets).mean()


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
    replicated, split = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes))
                         for axes in [(), ("batch",)])

    def step(weights, optimizer_state, inputs, targets, rotations):
        loss, grads = jax.value_and_grad(loss_fn)(weights, inputs, targets, rotations, config)
        updates, optimizer_state = optimizer.update(grads, optimizer_state, weights)
        return optax.apply_updates(weights, updates), optimizer_state, loss

    return jax.jit(step, in_shardings=(replicated, replicated, split, split, replicated),
                   out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1)), replicated


def train(args, time_budget: float = None) -> list:
    """Train from scratch, evaluating and saving every eval_interval steps, at the end and once time_budget seconds
    of training are spent. Returns [(step, training seconds, train loss, val loss)] of each evaluation."""
    out, tokenizer_file, text = Path(args.out), Path(args.tokenizer), Path(args.data).read_text()
    check_output_folder(out, lambda source: source.get("trainer") == "llama3_jax.py",
                        "a checkpoint trained by llama3_jax.py")
    tokenizer = load_tokenizer(tokenizer_file, len(tokenizer_file.read_text().splitlines()) + N_SPECIAL_TOKENS)
    split_at, bos_id = int(TRAIN_FRACTION * len(text)), tokenizer.encode_single_token("<|begin_of_text|>")
    ids = {split: np.array(tokenizer.encode(part, disallowed_special=()))
           for split, part in [("train", text[:split_at]), ("val", text[split_at:])]}

    def batch(split, rng):  # (inputs, targets) at random places: inputs are <|begin_of_text|> + targets[:-1]
        targets = np.stack([ids[split][start:start + args.block_size] for start in
                            rng.integers(0, len(ids[split]) - args.block_size, args.batch_size)]).astype(np.int32)
        return np.concatenate([np.full((args.batch_size, 1), bos_id, np.int32), targets[:, :-1]], axis=1), targets

    def mean_loss(split):  # over eval_iters batches, the same ones at every evaluation
        rng = np.random.default_rng(args.seed + 1)
        return np.mean([float(evaluate(weights, *batch(split, rng), rotations)) for _ in range(args.eval_iters)])

    params = training_params(vars(args), tokenizer.n_vocab)
    config, optimizer = model_config(params), make_optimizer(args.lr, args.steps)
    rotations, evaluate = rope_rotations(config, args.block_size), jax.jit(partial(loss_fn, config=config))
    train_step, replicated = make_train_step(config, optimizer, jax.devices())
    weights = jax.device_put(initial_weights(config, args.seed), replicated)
    optimizer_state = jax.device_put(optimizer.init(weights), replicated)
    rng, history, seconds = np.random.default_rng(args.seed), [], 0.0
    for step in (progress := tqdm(range(1, args.steps + 1), desc="training", unit="step", mininterval=1)):
        started = time.perf_counter()
        weights, optimizer_state, loss = train_step(weights, optimizer_state, *batch("train", rng), rotations)
        loss = float(loss)  # waits for the step
        seconds += time.perf_counter() - started
        progress.set_postfix(loss=f"{loss:.3f}", refresh=False)
        out_of_time = time_budget is not None and seconds >= time_budget
        if step % args.eval_interval == 0 or step == args.steps or out_of_time:
            losses = {split: mean_loss(split) for split in ids}
            history.append((step, seconds, losses["train"], losses["val"]))
            losses["val_nats_per_character"] = losses["val"] * len(ids["val"]) / (len(text) - split_at)
            source = {"kind": "trained", "model": "tiny-shakespeare", "trainer": "llama3_jax.py", "step": step,
                      "steps": args.steps, "losses": losses, "train_seconds": round(seconds, 1),
                      "devices": jax.device_count()}
            with staged_build(out, source) as staging:  # Meta's layout; checkpoint_folder.py writes source.json last
                (staging / "params.json").write_text(json.dumps(params, indent=2) + "\n")
                (staging / "tokenizer.model").write_bytes(tokenizer_file.read_bytes())
                torch.save({name: torch.from_numpy(np.array(value, np.float32)).bfloat16()
                            for name, value in weights.items()}, staging / "consolidated.00.pth")
            progress.write(f"step {step}: train {losses['train']:.3f}, val {losses['val']:.3f} nats/token "
                           f"({losses['val_nats_per_character']:.3f} per character), {seconds:.0f} s")
        if out_of_time:
            break
    return history


# ------------------------------------------------------------------ command line

def parse_args(argv=None):
    """The command line, checked: CheckpointError names every bad setting at once, before any work."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="continue a prompt greedily with a Meta-layout checkpoint")
    gen.add_argument("--checkpoint", required=True, help="folder of params.json, tokenizer.model, consolidated.00.pth")
    gen.add_argument("--prompt", default=DEFAULT_PROMPT)
    gen.add_argument("--max-new-tokens", type=int, default=20)
    gen.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="bfloat16 computes as Meta's code does")
    gen.add_argument("--rope-scale-factor", type=float, default=os.environ.get("LLAMA3_ROPE_SCALE_FACTOR") or None,
                     help="Llama 3.1: 8, 3.2: 32; by default from source.json's model or the folder's name")
    tr = commands.add_parser("train", help="train the training notebook's small Llama 3 on Tiny Shakespeare")
    tr.add_argument("--out", default="checkpoints/tiny-shakespeare-jax", help="the checkpoint's folder")
    tr.add_argument("--data", default="data/tinyshakespeare.txt")
    tr.add_argument("--tokenizer", default="checkpoints/tiny-shakespeare/tokenizer.model",
                    help="the tokenizer.model that train_llama3_from_scratch.ipynb writes")
    for name, value in TRAIN_DEFAULTS.items():
        tr.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    args = parser.parse_args(argv)
    problems = [f"--{name.replace('_', '-')} {value} must be {'at least 1' if type(value) is int else 'positive'}"
                for name, value in vars(args).items()  # every number but the seed
                if type(value) in (int, float) and name != "seed" and not 0 < value < np.inf]
    if args.command == "train":
        if min(args.heads, args.kv_heads) > 0 and (args.dim % args.heads or args.heads % args.kv_heads):
            problems.append(f"--dim {args.dim} must split evenly into --heads {args.heads}, and those into "
                            f"--kv-heads {args.kv_heads}")
        if args.batch_size % jax.device_count():
            problems.append(f"--batch-size {args.batch_size} must split evenly over the {jax.device_count()} "
                            "devices JAX sees")
        problems += [f"{flag} {path} does not exist (the tokenizer comes from a run of train_llama3_from_scratch.ipynb)"
                     for flag, path in [("--data", args.data), ("--tokenizer", args.tokenizer)]
                     if not Path(path).is_file()]
    if problems:
        raise CheckpointError(f"Cannot {args.command}: " + "; ".join(problems) + ".")
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        (run_generate if args.command == "generate" else train)(args)
    except CheckpointError as error:  # a setting or a file the user can fix: the message says how
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
