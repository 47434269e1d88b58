"""The rules of the Llama 3 family, each written once: the training notebook and llama3_jax.py import them,
and the walkthrough keeps its teaching copies of them, which tests/test_vocabulary.py holds equal to these
(and these to Meta's own code in the llama-models package, where Meta's code has them).

- The tokenizer: Llama 3's split pattern, its 256 special tokens and how they are named and numbered, the
  stop tokens, and the rules a folder may bring instead (tokenizer_config.json, as SmolLM2's conversion
  writes it): tokenizer_rules(folder).
- The shape: the feed-forward width (ffn_hidden_dim) and the checks a params.json must pass (params_problems).
- RoPE scaling (Llama 3.1 and 3.2): scale_rope_frequencies, and which factor a model uses (the model's name
  from model_name_for, then rope_scale_factor_for).
- Training: the recipe and default settings both trainers share (TRAINING), the params.json they write
  (training_params), and how a folder they trained is recognised (is_trained_source).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llama3_support.checkpoint_folder import CheckpointError

# ---------------------------------------------------------------- the tokenizer

# How Llama 3's tokenizer cuts text into chunks before any merge: contractions, words with the one character
# before them, numbers of up to three digits, punctuation runs with their newlines, newlines, other whitespace.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
N_SPECIAL_TOKENS = 256  # Llama 3 keeps the last 256 ids of its vocabulary for special tokens
# The first special tokens, in id order; the rest of the 256 are reserved ones (reserved_special_token).
NAMED_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>",
]
# where Meta's tokenizer stops generation (Tokenizer.stop_tokens): the end of a text, of a message that calls a tool,
# of a chat turn
LLAMA3_STOP_TOKENS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
TOKENIZER_CONFIG = "tokenizer_config.json"  # a folder's own tokenizer rules (llama3_support/smollm2_checkpoint.py)
GPT2_END_OF_TEXT = "<|endoftext|>"  # the end of a document in GPT-2's byte-level vocabularies (SmolLM2's too)
LLAMA3_CHAT, CHATML = "llama3", "chatml"  # the two chat formats


def reserved_special_token(index: int) -> str:
    """The name of the special token after the named ones at this index (0, 1, ...): Meta numbers them on
    from 2, since reserved_special_token_0 and _1 are among the named ones."""
    return f"<|reserved_special_token_{2 + index}|>"


def llama3_special_tokens(n_ranks: int, vocab_size: int) -> dict:
    """{name: id} of the special tokens, in id order: they fill the ids from n_ranks (the ordinary tokens
    take 0 .. n_ranks - 1) up to vocab_size - 1, the named ones first, then reserved ones."""
    names = NAMED_SPECIAL_TOKENS + [reserved_special_token(i) for i in range(vocab_size - n_ranks - len(NAMED_SPECIAL_TOKENS))]
    return {name: n_ranks + i for i, name in enumerate(names)}


@dataclass(frozen=True)
class TokenizerRules:
    """What tiktoken and generation need beside a tokenizer.model's ranks."""
    split_pattern: str           # tiktoken.Encoding(pat_str=...)
    special_tokens: dict         # {name: id}, tiktoken.Encoding(special_tokens=...)
    bos_id: int                  # the token that begins a text
    add_bos: bool                # whether every prompt starts with bos_id (Llama 3: yes; SmolLM2: no)
    eos_id: int                  # the model's own end token: <|end_of_text|>, or SmolLM2's <|im_end|>
    stop_ids: frozenset          # generation stops at any of these
    chat_format: str             # LLAMA3_CHAT (header tokens around each role) or CHATML (<|im_start|>role\n)
    default_system_message: str = None  # what a ChatML template puts first when a chat has no system message
    bytes_without_token: frozenset = frozenset()  # byte values no token covers: tiktoken cannot encode them


def llama3_tokenizer_rules(n_ranks: int, vocab_size: int) -> TokenizerRules:
    """Llama 3's own rules for a tokenizer.model of n_ranks tokens in a vocabulary of vocab_size ids."""
    special = llama3_special_tokens(n_ranks, vocab_size)
    return TokenizerRules(split_pattern=LLAMA3_SPLIT_PATTERN, special_tokens=special,
                          bos_id=special["<|begin_of_text|>"], add_bos=True, eos_id=special["<|end_of_text|>"],
                          stop_ids=frozenset(special[name] for name in LLAMA3_STOP_TOKENS), chat_format=LLAMA3_CHAT)


def tokenizer_rules(folder: Path, vocab_size: int = None, n_ranks: int = None) -> TokenizerRules:
    """The tokenizer rules of a checkpoint folder: its tokenizer_config.json's when it has one (a model with its
    own tokenizer, as SmolLM2's conversion writes it), else Llama 3's.

    For Llama 3's, n_ranks is the number of tokens in tokenizer.model (counted when not given) and vocab_size
    params.json's (Llama 3's rule, n_ranks + 256, when not given)."""
    folder = Path(folder)
    if not (folder / TOKENIZER_CONFIG).is_file():
        if n_ranks is None:
            with open(folder / "tokenizer.model", "rb") as file:
                n_ranks = sum(1 for line in file if line.strip())
        return llama3_tokenizer_rules(n_ranks, n_ranks + N_SPECIAL_TOKENS if vocab_size is None else vocab_size)
    try:
        config = json.loads((folder / TOKENIZER_CONFIG).read_text())
        special = {name: int(index) for name, index in config["special_tokens"].items()}
        eos_id = int(config["eos_id"])
        return TokenizerRules(
            split_pattern=config["pattern"], special_tokens=special, bos_id=int(config["bos_id"]),
            add_bos=bool(config["add_bos"]), eos_id=eos_id,
            # a chat turn ends at eos_id, a document at <|endoftext|>: either ends what the model writes
            stop_ids=frozenset({eos_id} | ({special[GPT2_END_OF_TEXT]} if GPT2_END_OF_TEXT in special else set())),
            chat_format=config["chat_format"], default_system_message=config.get("default_system_message"),
            bytes_without_token=frozenset(config.get("bytes_without_token", ())))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"{folder / TOKENIZER_CONFIG} cannot be read as this project's tokenizer rules ({type(error).__name__}: "
            f"{error}). It is written with the checkpoint (python download_weights.py --model ...): build the "
            "folder again."
        ) from error


def chat_prompt_ids(rules: TokenizerRules, encoding, user_message: str) -> list:
    """The ids of a one-message chat that asks the model for its reply, in the folder's chat format.
    encoding: the tiktoken.Encoding of those rules (a message that looks like a special token stays text).

    Llama 3: <|begin_of_text|>, then each turn as <|start_header_id|>role<|end_header_id|>\\n\\n text <|eot_id|>
    (Meta's ChatFormat; the message stripped first, as the walkthrough does), then the assistant's header. ChatML: each turn as
    <|im_start|>role\\n text <|im_end|>\\n, the default system message first, then <|im_start|>assistant\\n."""
    def text(piece: str) -> list:
        return encoding.encode(piece, disallowed_special=())

    special = rules.special_tokens
    if rules.chat_format == LLAMA3_CHAT:
        def header(role: str) -> list:
            return [special["<|start_header_id|>"]] + text(role) + [special["<|end_header_id|>"]] + text("\n\n")

        return ([rules.bos_id] + header("user") + text(user_message.strip()) + [special["<|eot_id|>"]]
                + header("assistant"))
    if rules.chat_format == CHATML:
        def turn(role: str, content: str) -> list:
            return [special["<|im_start|>"]] + text(f"{role}\n{content}") + [special["<|im_end|>"]] + text("\n")

        system = turn("system", rules.default_system_message) if rules.default_system_message is not None else []
        return ([rules.bos_id] if rules.add_bos else []) + system + turn("user", user_message) + \
            [special["<|im_start|>"]] + text("assistant\n")
    raise CheckpointError(f"The chat format {rules.chat_format!r} is neither {LLAMA3_CHAT!r} nor {CHATML!r}.")


# ---------------------------------------------------------------- the shape


def ffn_hidden_dim(params: dict) -> int:
    """SwiGLU width, as Meta's FeedForward computes it: 2/3 of 4*dim, times ffn_dim_multiplier, rounded up to
    a multiple of multiple_of."""
    hidden = int(2 * 4 * params["dim"] / 3)
    if params.get("ffn_dim_multiplier") is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    multiple_of = params["multiple_of"]
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


PARAM_TYPES = {"dim": int, "n_layers": int, "n_heads": int, "n_kv_heads": int, "vocab_size": int, "multiple_of": int,
               "ffn_dim_multiplier": float, "norm_eps": float, "rope_theta": float, "use_scaled_rope": bool}
OPTIONAL_PARAMS = {"n_kv_heads", "ffn_dim_multiplier", "use_scaled_rope"}
TYPE_NAMES = {int: "a positive whole number", float: "a positive number", bool: "true or false"}


def fits_type(value, expected: type) -> bool:
    if expected is bool or isinstance(value, bool):
        return isinstance(value, expected)
    return isinstance(value, (int, float)) and value > 0 and (expected is float or isinstance(value, int))


def head_split_problem(dim: int, n_heads: int, n_kv_heads: int):
    """Why this width and these heads do not make a model, or None: the width splits evenly into query heads of
    an even width (RoPE turns pairs of coordinates), and the query heads evenly into key/value heads."""
    if dim % n_heads or n_heads % n_kv_heads or dim // n_heads % 2:
        return (f"dim={dim}, n_heads={n_heads} and n_kv_heads={n_kv_heads} do not split into heads of an even width, "
                "nor query heads evenly into key/value heads")
    return None


def params_problems(params: dict) -> list:
    """What keeps params.json from describing a Llama 3 text model: [] when nothing does."""
    unsupported = sorted(set(params) - set(PARAM_TYPES))
    problems = [f"it has keys of another kind of model: {unsupported}"] if unsupported else []
    problems += [f"{key} is missing" for key in sorted(set(PARAM_TYPES) - OPTIONAL_PARAMS - set(params))]
    problems += [f"{key} is {value!r}, but must be {TYPE_NAMES[PARAM_TYPES[key]]}" for key, value in params.items()
                 if key in PARAM_TYPES and not fits_type(value, PARAM_TYPES[key])
                 and not (value is None and key in OPTIONAL_PARAMS)]
    if not problems:
        split = head_split_problem(params["dim"], params["n_heads"], params.get("n_kv_heads") or params["n_heads"])
        problems += [split] if split else []
    return problems


# ---------------------------------------------------------------- RoPE scaling: Llama 3.1 and 3.2

ORIGINAL_CONTEXT = 8192  # positions Llama 3 was trained on
LOW_FREQ_FACTOR, HIGH_FREQ_FACTOR = 1.0, 4.0
# matched in the model's name, in any case; Llama 3.3 (70B only) keeps 3.1's factor, as its published configuration says
ROPE_SCALE_FACTORS = {"Llama-3.1": 8.0, "Llama-3.2": 32.0, "Llama-3.3": 8.0}


def scale_rope_frequencies(frequencies, scale_factor):
    """Llama 3.1's stretch of RoPE's slow frequencies (numpy in and out, in the frequencies' dtype): a pair that
    turns at least HIGH_FREQ_FACTOR times within ORIGINAL_CONTEXT keeps its frequency, one that turns less than
    LOW_FREQ_FACTOR times is slowed down by scale_factor, and the ones between are blended."""
    frequencies = np.asarray(frequencies)
    wavelengths = 2 * np.pi / frequencies
    long_wavelength = ORIGINAL_CONTEXT / LOW_FREQ_FACTOR    # turns less than once in the original context
    short_wavelength = ORIGINAL_CONTEXT / HIGH_FREQ_FACTOR  # turns at least four times
    smooth = (ORIGINAL_CONTEXT / wavelengths - LOW_FREQ_FACTOR) / (HIGH_FREQ_FACTOR - LOW_FREQ_FACTOR)
    blended = (1 - smooth) * frequencies / scale_factor + smooth * frequencies
    scaled = np.where(wavelengths < short_wavelength, frequencies,
                      np.where(wavelengths > long_wavelength, frequencies / scale_factor, blended))
    return scaled.astype(frequencies.dtype)


def model_name_for(folder: Path, source: dict) -> str:
    """The model's name: source.json's model (download_weights.py records it), else the last part of its hub
    repo_id, else the folder's own name, or its parent's for Meta's original/ folder inside a hub download
    (meta-llama/Llama-3.1-8B/original). Only that folder borrows its parent's name: a folder's parents are
    wherever the user keeps models (~/Llama-3.2-experiments/my-3.1-finetune), and say nothing about it."""
    folder = Path(folder).resolve()
    return str(source.get("model") or source.get("repo_id", "").split("/")[-1]
               or (folder.parent.name if folder.name == "original" else folder.name))


def rope_scale_factor_for(params: dict, model_name: str):
    """(the RoPE scale factor or None, why). None when use_scaled_rope is off; otherwise the factor of the
    family (ROPE_SCALE_FACTORS) that the model's name names. CheckpointError when it names neither."""
    if not params.get("use_scaled_rope"):
        return None, "use_scaled_rope is off"
    family = next((name for name in ROPE_SCALE_FACTORS if name.lower() in model_name.lower()), None)
    if family is None:
        raise CheckpointError(
            f"params.json turns on use_scaled_rope, but neither source.json nor the model's name ({model_name!r}) says "
            "whether it is Llama 3.1 (RoPE scale factor 8) or Llama 3.2 (32). Fetch it with download_weights.py, "
            "which records the model, or give the factor: LLAMA3_ROPE_SCALE_FACTOR=8 (Llama 3.1) or 32 (Llama 3.2) "
            "for the notebook, --rope-scale-factor 8 or 32 for llama3_jax.py.")
    return ROPE_SCALE_FACTORS[family], f"{model_name} is {family}"


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingDefaults:
    """The recipe both trainers follow (train_llama3_from_scratch.ipynb and llama3_jax.py train) and its
    defaults. The fields up to eval_iters are settings: LLAMA3_TRAIN_<NAME> in the notebook, --<name> for
    llama3_jax.py (which takes the notebook's tokenizer instead of learning merges); the rest is fixed."""
    steps: int = 3000            # optimizer steps
    seed: int = 1337             # seeds the weights, the batches and the samples
    merges: int = 1024           # byte-pair merges the notebook learns for its tokenizer
    dim: int = 192               # width of the residual stream
    layers: int = 4              # transformer blocks
    heads: int = 6               # query heads
    kv_heads: int = 2            # key/value heads, each shared by heads / kv_heads query heads
    batch_size: int = 16         # sequences per step
    block_size: int = 64         # tokens per sequence
    lr: float = 0.002            # the peak learning rate
    eval_interval: int = 250     # evaluate every so many steps (and keep the checkpoint if validation improved)
    eval_iters: int = 20         # batches per evaluation
    weight_decay: float = 0.1    # AdamW's, on the weight matrices only
    betas: tuple = (0.9, 0.99)   # AdamW's
    grad_clip: float = 1.0       # the gradients' global norm is clipped to this
    init_std: float = 0.02       # the matrices and the embedding start as normal(0, init_std); the gains as ones
    train_fraction: float = 0.9  # the text's first 90% of characters train, the rest validates
    warmup_divisor: int = 20     # a linear warm-up over steps // warmup_divisor steps (5%), at least one
    final_lr_ratio: float = 0.1  # then half a cosine down to lr * final_lr_ratio
    multiple_of: int = 32        # params.json: the feed-forward width is rounded up to a multiple of this
    ffn_dim_multiplier: float = 1.0
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0  # not Llama 3's 500,000: the sequences are 64 tokens, not 8,192


TRAINING = TrainingDefaults()
TRAINING_SETTINGS = ("steps", "seed", "merges", "dim", "layers", "heads", "kv_heads", "batch_size", "block_size", "lr",
                     "eval_interval", "eval_iters")  # the fields a user may set
TRAINED_KIND = "trained"  # source.json's kind in a folder either trainer wrote
TRAINERS = ("train_llama3_from_scratch.ipynb", "llama3_jax.py")
TRAINED_BY = "a checkpoint trained by llama3_jax.py or train_llama3_from_scratch.ipynb"  # for messages


def training_params(settings: dict, vocab_size: int) -> dict:
    """The params.json both trainers write, in Meta's keys and order; settings holds dim, layers, heads and
    kv_heads (TrainingDefaults' names)."""
    return {"dim": settings["dim"], "n_layers": settings["layers"], "n_heads": settings["heads"],
            "n_kv_heads": settings["kv_heads"], "vocab_size": vocab_size, "multiple_of": TRAINING.multiple_of,
            "ffn_dim_multiplier": TRAINING.ffn_dim_multiplier, "norm_eps": TRAINING.norm_eps,
            "rope_theta": TRAINING.rope_theta, "use_scaled_rope": False}


def is_trained_source(source: dict) -> bool:
    """Whether a source.json is one that either trainer wrote: each writes over a folder the other trained."""
    return source.get("kind") == TRAINED_KIND
