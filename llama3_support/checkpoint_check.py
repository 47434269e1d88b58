"""Every check the walkthrough makes on a checkpoint folder before its first tensor operation.

`open_checkpoint(folder)` reads the folder's files and checks each: a missing, damaged or foreign file stops it
with one paragraph that names the file, says what is wrong and what to do, instead of turning into a wrong
answer twenty cells later. What it returns is what the walkthrough teaches with: `params` (params.json),
`state_dict` (the weights, mapped from disk, never copied whole into memory), `mergeable_ranks` (the tokenizer's
{token bytes: rank}), the folder's own tokenizer rules when the model brings them (`tokenizer_config`), the
model's name, and the RoPE scale factor and context length that the name and params.json imply.
"""

import base64
import binascii
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from llama3_support.checkpoint_folder import CheckpointError
from llama3_support.shards import ShardedWeights, open_weights, weight_shapes
from llama3_support.vocabulary import (N_SPECIAL_TOKENS, OPTIONAL_PARAMS, ORIGINAL_CONTEXT, PARAM_TYPES, TOKENIZER_CONFIG,
                                       TYPE_NAMES, fits_type, head_split_problem, model_name_for)
from llama3_support import vocabulary

SCALED_ROPE_CONTEXT = 131072  # positions Llama 3.1 and 3.2 read (use_scaled_rope); Llama 3: ORIGINAL_CONTEXT

CHECKPOINT_FILES = ("params.json", "consolidated.00.pth", "tokenizer.model")
FETCH_AGAIN = ("Fetch the folder again with `python download_weights.py` (it verifies every file and resumes), "
               "or build the offline demo with `python download_weights.py --demo`.")


@dataclass
class Checkpoint:
    folder: Path                 # the folder holding Meta's files (of a hub repository, its original/ folder)
    params: dict                 # params.json
    state_dict: dict             # tensor name -> tensor, mapped from consolidated.00.pth (merged on access from
                                 # its slices when the model is split over several files: shards.py)
    weight_shapes: dict          # tensor name -> shape, from the files' records: nothing loaded, nothing merged
    mergeable_ranks: dict        # tokenizer.model as {token bytes: rank}
    tokenizer_config: dict       # tokenizer_config.json when the model brings its own tokenizer, else None
    source: dict                 # source.json: where the folder came from ({} when it has none)
    model_name: str              # source.json's model or hub repository, else the folder's name
    rope_scale_factor: float     # Llama 3.1 and 3.2 stretch RoPE's slow frequencies by it; None: unscaled
    rope_scale_reason: str       # what decided rope_scale_factor
    context_length: int          # positions the model reads
    weight_files: tuple = ("consolidated.00.pth",)  # the files the weights are mapped from, rank order


# ---------------------------------------------------------------- the folder


def checkpoint_folder(folder: Path) -> Path:
    """The folder holding Meta's three files: folder itself, or the original/ folder of a hub repository."""
    folder = Path(folder)
    if not (folder / "params.json").is_file() and (folder / "original").is_dir():
        print(f"{folder.name} is a hub repository: Meta's files are in its original/ folder, which this run reads.")
        folder = folder / "original"
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The checkpoint folder {folder.resolve()} has no {', '.join(missing)}. Point LLAMA3_DIR at a folder "
            "with Meta's three files (of a hub repository, its original/ folder). " + next_step_without(folder))
    return folder


def next_step_without(folder: Path) -> str:
    """What to do when folder holds no checkpoint: read one this disk holds, else fetch or build one."""
    from llama3_support.settings import checkpoints_on_disk, shown

    on_disk = [path for path in checkpoints_on_disk() if path.resolve() != Path(folder).resolve()]
    if not on_disk:
        return FETCH_AGAIN
    return (f"This disk holds {', '.join(shown(path) for path in on_disk)}: set LLAMA3_DIR to one of them, or "
            "unset it to read the first. Another is built offline with `python download_weights.py --demo` or "
            "`python download_weights.py --model SmolLM2-135M-Instruct`.")


def read_json(path: Path) -> dict:
    text = path.read_text(errors="replace")
    try:
        data = json.loads(text)
        problem = None if isinstance(data, dict) else f"holds a JSON {type(data).__name__}, not an object"
    except json.JSONDecodeError as error:
        problem = "is empty" if not text.strip() else f"is not valid JSON ({error})"
    if problem:
        raise ValueError(f"{path} {problem}: it is damaged, or not the file this folder needs. " + FETCH_AGAIN)
    return data


# ---------------------------------------------------------------- params.json


def check_params(params: dict):
    unsupported = sorted(set(params) - set(PARAM_TYPES))
    if unsupported:
        kind = ("a vision model" if any(key.startswith("vision") for key in unsupported) else
                "a quantized checkpoint" if "quantization_args" in unsupported else "not a model this notebook knows")
        raise ValueError(f"params.json has keys this notebook does not support: {unsupported} ({kind}). It runs the Llama 3 "
                         "text models in Meta's original layout: Meta-Llama-3-8B, Llama-3.1-8B, Llama-3.2-1B, Llama-3.2-3B "
                         "and their Instruct versions, or one you train yourself. Point LLAMA3_DIR at one of those.")
    problems = [f"{key} is missing" for key in sorted(set(PARAM_TYPES) - OPTIONAL_PARAMS - set(params))]
    problems += [f"{key} is {value!r}, but must be {TYPE_NAMES[PARAM_TYPES[key]]}" for key, value in params.items()
                 if not fits_type(value, PARAM_TYPES[key]) and not (value is None and key in OPTIONAL_PARAMS)]
    if not problems:
        split = head_split_problem(params["dim"], params["n_heads"], params.get("n_kv_heads") or params["n_heads"])
        problems += [split] if split else []
    if problems:
        raise ValueError(f"params.json does not describe a model this notebook can run: {'; '.join(problems)}. " + FETCH_AGAIN)


# ---------------------------------------------------------------- consolidated.00.pth


LAYER_TENSORS = ["attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "attention.wo.weight",
                 "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight",
                 "attention_norm.weight", "ffn_norm.weight"]


def load_weights(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise RuntimeError(f"{path} cannot be read ({error}): it is probably truncated or corrupt. " + FETCH_AGAIN) from None


def expected_shapes(params: dict, ffn_width: int) -> dict:
    dim, vocab_size = params["dim"], params["vocab_size"]
    kv_width = (params.get("n_kv_heads") or params["n_heads"]) * (dim // params["n_heads"])
    per_layer = dict(zip(LAYER_TENSORS, [(dim, dim), (kv_width, dim), (kv_width, dim), (dim, dim), (ffn_width, dim),
                                         (dim, ffn_width), (ffn_width, dim), (dim,), (dim,)]))
    shapes = {"tok_embeddings.weight": (vocab_size, dim), "norm.weight": (dim,), "output.weight": (vocab_size, dim)}
    return shapes | {f"layers.{layer}.{name}": shape for layer in range(params["n_layers"]) for name, shape in per_layer.items()}


def load_sharded_weights(folder: Path, params: dict) -> ShardedWeights:
    """Meta's model-parallel files (the 70B's eight), checked against each other and params.json (shards.py)."""
    try:
        return open_weights(folder, params)
    except CheckpointError as error:
        raise ValueError(str(error)) from None


def check_tensors(shapes: dict, params: dict):
    """The tensors params.json implies and no others, each of its shape (the feed-forward width is layer 0's;
    the walkthrough's SwiGLU section checks it against params.json). A missing output.weight means it is tied to
    the embedding."""
    expected = expected_shapes(params, ffn_width=0)
    unknown, absent = sorted(set(shapes) - set(expected)), sorted(set(expected) - set(shapes) - {"output.weight"})
    if unknown or absent:
        raise ValueError(f"consolidated.00.pth does not hold the tensors params.json describes: {len(unknown)} unknown "
                         f"{unknown[:5]}, {len(absent)} missing {absent[:5]}. Use the params.json of the same model. " + FETCH_AGAIN)
    expected = expected_shapes(params, ffn_width=shapes["layers.0.feed_forward.w1.weight"][0])
    wrong = [f"{name} has shape {tuple(shapes[name])}, but params.json implies {shape}"
             for name, shape in expected.items() if name in shapes and tuple(shapes[name]) != shape]
    if wrong:
        raise ValueError(f"consolidated.00.pth does not match params.json ({len(wrong)} tensors): " + "; ".join(wrong[:5])
                         + ". Use the params.json that came with these weights.")


# ---------------------------------------------------------------- tokenizer.model (and tokenizer_config.json)


def tokenizer_problem(lines: list, ranks: dict, vocab_size: int, tokenizer_config: dict = None):
    """What makes these lines, read as {token bytes: rank}, not the tokenizer of a checkpoint with vocab_size ids;
    None if nothing. Llama 3's ranks are 0.. and its last N_SPECIAL_TOKENS ids special; a model with its own
    tokenizer_config.json says which ids are special and which bytes no token covers."""
    if not ranks:
        return "it is empty"
    if len(ranks) < len(lines):
        return f"{len(lines) - len(ranks)} of its tokens appear twice"
    if tokenizer_config is not None:
        special_ids = list(tokenizer_config["special_tokens"].values())
        if sorted(list(ranks.values()) + special_ids) != list(range(vocab_size)):
            return (f"its {len(ranks)} ranks and the {len(special_ids)} special tokens of {TOKENIZER_CONFIG} do not "
                    f"number params.json's {vocab_size} ids 0..{vocab_size - 1}, each once")
        uncovered = [byte for byte in range(256) if bytes([byte]) not in ranks]
        if uncovered != sorted(tokenizer_config.get("bytes_without_token", [])):
            return f"the single bytes without a token, {uncovered}, are not those {TOKENIZER_CONFIG} lists"
        return None
    if sorted(ranks.values()) != list(range(len(ranks))):
        return f"its ranks are not 0..{len(ranks) - 1}, each once"
    if any(bytes([byte]) not in ranks for byte in range(256)):
        return "it lacks some of the 256 single bytes that every text falls back to"
    if vocab_size - len(ranks) != N_SPECIAL_TOKENS:
        return (f"its {len(ranks)} tokens leave {vocab_size - len(ranks)} of params.json's {vocab_size} ids for special "
                f"tokens, not {N_SPECIAL_TOKENS} (a file cut short, or the tokenizer of another model)")
    return None


def read_tokenizer_ranks(path: Path, vocab_size: int, tokenizer_config: dict = None) -> dict:
    """tokenizer.model as {token bytes: rank}: one base64 token and its rank per line, checked."""
    ranks, problem = {}, None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            token_base64, rank = line.split()
            ranks[base64.b64decode(token_base64, validate=True)] = int(rank)
    except UnicodeDecodeError:
        problem = "it is not a text file (Llama 2's SentencePiece tokenizer.model is binary, say)"
    except (ValueError, binascii.Error):
        problem = f"line {number} is not a base64 token and a rank: {line[:60]!r}"
    problem = problem or tokenizer_problem(lines, ranks, vocab_size, tokenizer_config)
    if problem:
        raise ValueError(f"{path} is not the tokenizer of this Llama 3 checkpoint: {problem}. " + FETCH_AGAIN)
    return ranks


TOKENIZER_CONFIG_KEYS = {"pattern": str, "special_tokens": dict, "bos_id": int, "eos_id": int, "add_bos": bool,
                         "chat_format": str}


def read_tokenizer_config(folder: Path) -> dict:
    """The folder's tokenizer_config.json, checked; None when the model uses Llama 3's own rules."""
    path = folder / TOKENIZER_CONFIG
    if not path.is_file():
        return None
    config = read_json(path)
    problems = [f"{key} is missing or not a {kind.__name__}" for key, kind in TOKENIZER_CONFIG_KEYS.items()
                if not isinstance(config.get(key), kind)]
    if not problems and config["chat_format"] not in ("chatml", "llama3"):
        problems.append(f"chat_format {config['chat_format']!r} is neither chatml nor llama3")
    if problems:
        raise ValueError(f"{path} does not say how to tokenize for this model: {'; '.join(problems)}. It is written by "
                         "`python download_weights.py --model SmolLM2-135M-Instruct`: run that again.")
    return config


# ---------------------------------------------------------------- RoPE scaling and the context


def chosen_rope_scale_factor(params: dict, model_name: str, rope_scale_setting: float = None):
    """(the RoPE scale factor or None, why): LLAMA3_ROPE_SCALE_FACTOR when it is set, else the one the model's
    name implies (vocabulary.rope_scale_factor_for). The walkthrough's RoPE section explains what it does."""
    if params.get("use_scaled_rope") and rope_scale_setting:
        return rope_scale_setting, "LLAMA3_ROPE_SCALE_FACTOR"
    try:
        factor, reason = vocabulary.rope_scale_factor_for(params, model_name)
    except CheckpointError as error:
        raise ValueError(str(error)) from None
    return factor, reason + (" (LLAMA3_ROPE_SCALE_FACTOR is ignored)" if rope_scale_setting and factor is None else "")


# ---------------------------------------------------------------- the prompt


def check_prompt_fits(n_tokens: int, context_length: int):
    if n_tokens > context_length:
        raise ValueError(f"The prompt is {n_tokens} tokens long, but this model reads at most {context_length} positions "
                         "(Llama 3: 8192; Llama 3.1 and 3.2: 131072). Shorten LLAMA3_PROMPT.")


def check_text_encodable(text: str, tokenizer_config: dict):
    """A tokenizer without a token for some bytes (SmolLM2's) cannot encode a text that holds them."""
    missing = sorted(set(text.encode("utf-8")) & set((tokenizer_config or {}).get("bytes_without_token", [])))
    if missing:
        raise ValueError(f"The text holds bytes that this model's tokenizer has no token for ({missing}: control "
                         "characters, most likely). Remove them from LLAMA3_PROMPT or LLAMA3_CHAT.")


# ---------------------------------------------------------------- all of it


def open_checkpoint(folder: Path, rope_scale_setting: float = None) -> Checkpoint:
    """Read and check every file of the checkpoint in folder; the first problem stops with its paragraph."""
    folder = checkpoint_folder(Path(folder))
    source = read_json(folder / "source.json") if (folder / "source.json").is_file() else {}
    params = read_json(folder / "params.json")
    check_params(params)
    if len(list(folder.glob("consolidated.*.pth"))) > 1:  # Meta's model-parallel files: consolidated.00.pth, .01, ...
        state_dict = load_sharded_weights(folder, params)
        weight_files = state_dict.file_names
    else:
        state_dict, weight_files = load_weights(folder / "consolidated.00.pth"), ("consolidated.00.pth",)
    shapes = weight_shapes(state_dict)
    check_tensors(shapes, params)
    tokenizer_config = read_tokenizer_config(folder)
    mergeable_ranks = read_tokenizer_ranks(folder / "tokenizer.model", params["vocab_size"], tokenizer_config)
    model_name = model_name_for(folder, source)
    rope_scale_factor, rope_scale_reason = chosen_rope_scale_factor(params, model_name, rope_scale_setting)
    context_length = SCALED_ROPE_CONTEXT if params.get("use_scaled_rope") else ORIGINAL_CONTEXT
    return Checkpoint(folder, params, state_dict, shapes, mergeable_ranks, tokenizer_config, source, model_name,
                      rope_scale_factor, rope_scale_reason, context_length, weight_files)
