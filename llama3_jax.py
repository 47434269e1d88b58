"""The Llama 3 of llama3_from_scratch.ipynb in pure JAX: Meta's checkpoints, greedy generation, training.

    python llama3_jax.py generate --checkpoint checkpoints/Meta-Llama-3-8B
    python llama3_jax.py generate --checkpoint checkpoints/SmolLM2-135M-Instruct --chat "What is the capital of Japan?"
    python llama3_jax.py train --steps 2000 --out checkpoints/tiny-shakespeare-jax

The weights are a dict of jax.numpy arrays under Meta's names; the model is plain jax.numpy (RMSNorm, RoPE
with complex numbers, grouped-query attention, SwiGLU). `train` splits each batch over every device JAX sees.
The model family's rules (split pattern, special tokens, feed-forward width, RoPE scaling, the training recipe)
come from llama3_support/vocabulary.py, which the training notebook imports too; a folder with a tokenizer of
its own (tokenizer_config.json: SmolLM2's) brings its split pattern, special tokens, end token and chat format.
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
from llama3_support.settings import DEFAULT_PROMPT  # the walkthrough's prompt, the default here too
from llama3_support.shards import ShardedWeights, open_weights, weight_shapes
from llama3_support.vocabulary import (N_SPECIAL_TOKENS, TRAINED_BY, TRAINED_KIND, TRAINING, TRAINING_SETTINGS,
                                       chat_prompt_ids, head_split_problem, is_trained_source, llama3_tokenizer_rules,
                                       model_name_for, params_problems, rope_scale_factor_for, scale_rope_frequencies,
                                       tokenizer_rules, training_params)

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


# ------------------------------------------------------------------ checkpoint, configuration, tokenizer

def model_config(params: dict, rope_scale_factor=None) -> dict:
    """params.json with Meta's defaults filled in, plus head_dim and the RoPE scale factor (None: no scaling)."""
    config = {"n_kv_heads": None, "ffn_dim_multiplier": None, "use_scaled_rope": False} | params
    return config | {"n_kv_heads": config["n_kv_heads"] or config["n_heads"],
                     "head_dim": config["dim"] // config["n_heads"],
                     "rope_scale_factor": rope_scale_factor if config["use_scaled_rope"] else None}


def read_checkpoint(folder: Path, rope_scale_factor=None):
    """params.json's configuration and the mapped weights, checked against each other before any work (a model
    split over several files, as Meta's 70B is, merges each tensor from its slices when asked: shards.py).
    rope_scale_factor: None takes the factor that source.json's model or the folder's name implies."""
    if missing := [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]:
        raise CheckpointError(f"{folder} has no {', '.join(missing)}. Get a checkpoint with `python "
                              "download_weights.py` (offline: `--demo`) or `python llama3_jax.py train`, and pass its "
                              "folder as --checkpoint.")
    params = json.loads((folder / "params.json").read_text())
    if problems := (params_problems(params) if isinstance(params, dict) else ["it is not a JSON object"]):
        raise CheckpointError(f"{folder / 'params.json'} does not describe a Llama 3 model: {'; '.join(problems)}. "
                              "Use the params.json that came with these weights.")
    if rope_scale_factor is None:  # Llama 3.1 or 3.2? source.json's model or the folder's name says
        rope_scale_factor, _ = rope_scale_factor_for(params, model_name_for(folder, read_source(folder)))
    config = model_config(params, rope_scale_factor)
    state_dict = open_weights(folder, params)
    shapes = weight_shapes(state_dict)
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
        if isinstance(state_dict, ShardedWeights):  # each merged tensor is new, and a freed one's address comes back
            key = name
        if key not in converted:  # numpy has no bf16: the same 16 bits, viewed as ml_dtypes' bfloat16
            converted[key] = jnp.asarray(tensor.float().numpy() if dtype == jnp.float32 else
                                         tensor.bfloat16().contiguous().view(torch.uint16).numpy().view(jnp.bfloat16))
        weights[name] = converted[key]
    return weights


def read_ranks(path: Path) -> dict:
    """tokenizer.model: {token bytes: rank}, one base64 token and its rank per line."""
    return {base64.b64decode(token): int(rank) for token, rank in map(str.split, path.read_text().splitlines())}


def load_tokenizer(folder: Path, vocab_size: int):
    """(tiktoken on the folder's tokenizer.model, the folder's tokenizer rules): its own (tokenizer_config.json)
    when it has them, else Llama 3's split pattern and special tokens, which fill the vocabulary up to vocab_size."""
    ranks = read_ranks(Path(folder) / "tokenizer.model")
    rules = tokenizer_rules(folder, vocab_size, n_ranks=len(ranks))
    encoding = tiktoken.Encoding(name=Path(folder).name, pat_str=rules.split_pattern, mergeable_ranks=ranks,
                                 special_tokens=rules.special_tokens)
    return encoding, rules


def prompt_tokens(tokenizer: tiktoken.Encoding, rules, text: str) -> list:
    """The text's ids, after the rules' BOS if they add one; text that looks like a special token stays text."""
    if unencodable := sorted(set(text.encode()) & rules.bytes_without_token):
        raise CheckpointError(f"The prompt holds bytes that this tokenizer has no token for ({unencodable}: control "
                              "characters or bytes that UTF-8 hardly uses); leave them out of the prompt.")
    return [rules.bos_id] * rules.add_bos + tokenizer.encode(text, disallowed_special=())


# ------------------------------------------------------------------ the model

def rope_rotations_at(config: dict, positions) -> jax.Array:
    """e^(i * position * frequency) for each of the positions (an array of them): complex64
    [len(positions), head_dim / 2], the slow frequencies scaled for Llama 3.1 / 3.2 (vocabulary.py's rule)."""
    head_dim = config["head_dim"]
    frequencies = 1.0 / config["rope_theta"] ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    if config["rope_scale_factor"]:  # wavelengths under 2048 positions stay, over 8192 slow down, between: blended
        frequencies = jnp.asarray(scale_rope_frequencies(np.asarray(frequencies), config["rope_scale_factor"]))
    angles = jnp.outer(jnp.asarray(positions, dtype=jnp.float32), frequencies)
    return jax.lax.complex(jnp.cos(angles), jnp.sin(angles))


def linear(x, weight):
    """x @ weight.T, summed in float32 and rounded once to x's dtype, as PyTorch does. (XLA's CPU backend multiplies
    bf16 matrices as they are, but converts the whole weight to float32 for a single row: that gets a second row.)"""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 1 and x.dtype == jnp.bfloat16:
        rows = jnp.concatenate([rows, rows])
    product = jax.lax.dot_general(rows, weight, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return product[: np.prod(x.shape[:-1])].reshape(*x.shape[:-1], -1).astype(x.dtype)


def rms_normalize(x, weight, eps: float):
    """RMSNorm: x over the root of its mean square (plus eps), in float32, times the gains in weight."""
    x_float = x.astype(jnp.float32)
    return (x_float * jax.lax.rsqrt(jnp.mean(x_float * x_float, axis=-1, keepdims=True) + eps)).astype(x.dtype) * weight


def apply_rope(x, rotations):
    """x with each neighbouring pair of its last axis turned (as a complex number) by rotations, which broadcast
    against x's pairs [..., head_dim / 2] as they are: for x [batch, n, heads, head_dim], rotations [n, 1, head_dim / 2]."""
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    turned = jax.lax.complex(pairs[..., 0], pairs[..., 1]) * rotations
    return jnp.stack([turned.real, turned.imag], axis=-1).reshape(x.shape).astype(x.dtype)


def transformer(weights: dict, tokens, rotations, config: dict, cache=None, start=0):
    """tokens [batch, n] at positions start, start + 1, ... -> float32 logits [batch, n, vocab] and the cache.
    cache (keys, values), each [n_layers, batch, n_positions, n_kv_heads, head_dim], holds the rotated keys and the
    values of earlier positions; this call writes its own into it and returns the logits of its last position only."""
    batch, n = tokens.shape
    n_heads, n_kv_heads, head_dim, eps = config["n_heads"], config["n_kv_heads"], config["head_dim"], config["norm_eps"]
    turns = jax.lax.dynamic_slice_in_dim(rotations, start, n)[:, None, :]  # [n, 1 (every head), head_dim / 2]
    n_keys = n if cache is None else cache[0].shape[2]
    visible = jnp.arange(n_keys) <= start + jnp.arange(n)[:, None]  # [n, n_keys]: key not after query
    h = weights["tok_embeddings.weight"][tokens]
    for layer in range(config["n_layers"]):
        w = {name: weights[f"layers.{layer}.{name}"] for name in layer_shapes(config)}  # this block's weights
        x = rms_normalize(h, w["attention_norm.weight"], eps)
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
        x = rms_normalize(h, w["ffn_norm.weight"], eps)
        gate = jax.nn.silu(linear(x, w["feed_forward.w1.weight"]).astype(jnp.float32)).astype(x.dtype)  # SwiGLU
        h = h + linear(gate * linear(x, w["feed_forward.w3.weight"]), w["feed_forward.w2.weight"])
    h = rms_normalize(h if cache is None else h[:, -1:], weights["norm.weight"], eps)
    # Llama 3.2 without output.weight projects with the embedding; Meta rounds the logits to the weights' dtype
    return linear(h, weights.get("output.weight", weights["tok_embeddings.weight"])).astype(jnp.float32), cache


def forward(weights: dict, tokens, rotations, config: dict):
    """float32 logits [batch, n, vocab_size] of tokens [batch, n] starting at position 0."""
    return transformer(weights, tokens, rotations, config)[0]


# ------------------------------------------------------------------ generation

def generate_greedily(weights: dict, config: dict, tokens: list, max_new_tokens: int, stop_tokens=()):
    """Greedy decoding with a fixed-size key/value cache: one jitted step reads the prompt, then each new token.
    Returns the new token ids (ending at the first stop token), as the walkthrough's generate does, and every
    step's float32 logits [steps, vocab]."""
    cache_shape = (config["n_layers"], 1, len(tokens) + max_new_tokens, config["n_kv_heads"], config["head_dim"])
    cache = tuple(jnp.zeros(cache_shape, weights["tok_embeddings.weight"].dtype) for _ in "kv")
    rotations = rope_rotations_at(config, np.arange(len(tokens) + max_new_tokens))
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
    """Continue --prompt, or answer --chat in the folder's chat format, until the model's own end token."""
    config, state_dict = read_checkpoint(Path(args.checkpoint), args.rope_scale_factor)
    tokenizer, rules = load_tokenizer(Path(args.checkpoint), config["vocab_size"])
    if args.chat is None:
        tokens = prompt_tokens(tokenizer, rules, args.prompt)
    else:
        prompt_tokens(tokenizer, rules, args.chat)  # refuses what this tokenizer cannot encode
        tokens = chat_prompt_ids(rules, tokenizer, args.chat)
    weights = jax_weights(state_dict, DTYPES[args.dtype])
    new_tokens, _ = generate_greedily(weights, config, tokens, args.max_new_tokens, rules.stop_ids)
    print(f"{len(tokens)} prompt tokens, {len(new_tokens)} new: {new_tokens}")
    text = tokenizer.decode([token for token in new_tokens if token not in rules.stop_ids])
    print(text if args.chat is not None else args.prompt + text)
    ending = new_tokens[-1:] if new_tokens[-1:] and new_tokens[-1] in rules.stop_ids else None
    print(f"(ended by {tokenizer.decode(ending)})" if ending else f"(ended at the limit of {args.max_new_tokens} tokens)")


# ------------------------------------------------------------------ training, as train_llama3_from_scratch.ipynb does

JAX_SETTINGS = tuple(name for name in TRAINING_SETTINGS if name != "merges")  # the tokenizer is the notebook's


def initial_weights(config: dict, seed: int) -> dict:
    """normal(0, init_std) for every matrix and the embedding, ones for the norm gains (as the notebook does)."""
    shapes = checkpoint_shapes(config)
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {name: jnp.ones(shape) if len(shape) == 1 else TRAINING.init_std * jax.random.normal(key, shape)
            for key, (name, shape) in zip(keys, shapes.items())}


def loss_fn(weights: dict, inputs, targets, rotations, config: dict):
    """Mean next-token cross-entropy of the float32 logits, as F.cross_entropy computes it."""
    return optax.softmax_cross_entropy_with_integer_labels(forward(weights, inputs, rotations, config), targets).mean()


def make_optimizer(peak_lr: float, steps: int):
    """AdamW (decay on matrices only) after clipping the gradients' global norm; the notebook's get_lr:
    linear warm-up from peak/warmup over max(1, steps // 20) steps, then cosine down to peak / 10."""
    warmup = max(1, steps // TRAINING.warmup_divisor)
    schedule = optax.join_schedules([optax.linear_schedule(peak_lr / warmup, peak_lr, warmup - 1),
                                     optax.cosine_decay_schedule(peak_lr, max(1, steps - warmup),
                                                                 alpha=TRAINING.final_lr_ratio)], [warmup])
    adamw = optax.adamw(schedule, b1=TRAINING.betas[0], b2=TRAINING.betas[1], eps=1e-8,
                        weight_decay=TRAINING.weight_decay,
                        mask=lambda weights: {name: value.ndim >= 2 for name, value in weights.items()})
    return optax.chain(optax.clip_by_global_norm(TRAINING.grad_clip), adamw)


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
    """Train from scratch, evaluating every eval_interval steps, at the end and once time_budget seconds of
    training are spent, and keeping the checkpoint of the lowest validation loss so far (an evaluation that does
    not improve on it saves nothing: the small model overfits Tiny Shakespeare late in the run). The folder may
    be new, or one that either trainer wrote. Returns [(step, training seconds, train loss, val loss)] of each
    evaluation."""
    out, tokenizer_file, text = Path(args.out), Path(args.tokenizer), Path(args.data).read_text()
    check_output_folder(out, is_trained_source, TRAINED_BY)
    ranks = read_ranks(tokenizer_file)
    rules = llama3_tokenizer_rules(len(ranks), len(ranks) + N_SPECIAL_TOKENS)  # the notebook's: Llama 3's rules
    tokenizer = tiktoken.Encoding(name=out.name, pat_str=rules.split_pattern, mergeable_ranks=ranks,
                                  special_tokens=rules.special_tokens)
    split_at, bos_id = int(TRAINING.train_fraction * len(text)), rules.bos_id
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
    rotations = rope_rotations_at(config, np.arange(args.block_size))
    evaluate = jax.jit(partial(loss_fn, config=config))
    train_step, replicated = make_train_step(config, optimizer, jax.devices())
    weights = jax.device_put(initial_weights(config, args.seed), replicated)
    optimizer_state = jax.device_put(optimizer.init(weights), replicated)
    rng, history, seconds, best_val = np.random.default_rng(args.seed), [], 0.0, math.inf
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
            if improved := losses["val"] < best_val:
                best_val = losses["val"]
                source = {"kind": TRAINED_KIND, "model": "tiny-shakespeare", "trainer": "llama3_jax.py", "step": step,
                          "steps": args.steps, "kept": "the lowest validation loss of the run's evaluations",
                          "losses": losses, "train_seconds": round(seconds, 1), "devices": jax.device_count()}
                with staged_build(out, source) as staging:  # Meta's layout; checkpoint_folder writes source.json last
                    (staging / "params.json").write_text(json.dumps(params, indent=2) + "\n")
                    (staging / "tokenizer.model").write_bytes(tokenizer_file.read_bytes())
                    torch.save({name: torch.from_numpy(np.array(value, np.float32)).bfloat16()
                                for name, value in weights.items()}, staging / "consolidated.00.pth")
            progress.write(f"step {step}: train {losses['train']:.3f}, val {losses['val']:.3f} nats/token "
                           f"({losses['val_nats_per_character']:.3f} per character), {seconds:.0f} s"
                           + (", saved" if improved else ", not saved (validation did not improve)"))
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
    gen.add_argument("--prompt", default=DEFAULT_PROMPT, help="the text to continue")
    gen.add_argument("--chat", metavar="MESSAGE", help="answer this message instead, in the folder's chat format "
                     "(Llama 3's headers, or ChatML for SmolLM2): for Instruct models")
    gen.add_argument("--max-new-tokens", type=int, default=20)
    gen.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="bfloat16 computes as Meta's code does")
    gen.add_argument("--rope-scale-factor", type=float, default=os.environ.get("LLAMA3_ROPE_SCALE_FACTOR") or None,
                     help="Llama 3.1: 8, 3.2: 32; by default from source.json's model or the folder's name")
    tr = commands.add_parser("train", help="train the training notebook's small Llama 3 on Tiny Shakespeare")
    tr.add_argument("--out", default="checkpoints/tiny-shakespeare-jax", help="the checkpoint's folder")
    tr.add_argument("--data", default="data/tinyshakespeare.txt")
    tr.add_argument("--tokenizer", default="checkpoints/tiny-shakespeare/tokenizer.model",
                    help="the tokenizer.model that train_llama3_from_scratch.ipynb writes")
    for name in JAX_SETTINGS:
        value = getattr(TRAINING, name)
        tr.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    args = parser.parse_args(argv)
    problems = [f"--{name.replace('_', '-')} {value} must be {'at least 1' if type(value) is int else 'positive'}"
                for name, value in vars(args).items()  # every number but the seed
                if type(value) in (int, float) and name != "seed" and not 0 < value < np.inf]
    if args.command == "train":
        if min(args.dim, args.heads, args.kv_heads) > 0 and head_split_problem(args.dim, args.heads, args.kv_heads):
            problems.append(f"--dim {args.dim} must split evenly into --heads {args.heads} of an even width, and "
                            f"those into --kv-heads {args.kv_heads}")
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
