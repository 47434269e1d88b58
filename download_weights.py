"""Fetch a Llama 3 checkpoint in Meta's original layout from the Hugging Face hub, or build the offline demo.

    python download_weights.py                         # Meta-Llama-3-8B into checkpoints/Meta-Llama-3-8B
    python download_weights.py --model Llama-3.2-1B    # another supported model (see --model)
    python download_weights.py --demo                  # random weights in Meta-Llama-3-8B's layout, no network

Either way the folder holds params.json, tokenizer.model and consolidated.00.pth, plus source.json, which
says where the folder came from. Meta's repositories are gated: accept the license on the model's hub page,
then pass a token with HF_TOKEN=hf_... or sign in once with `hf auth login`.

A download checks the hub before it starts (reachable, access granted, enough free disk), resumes where an
interrupted run stopped, and compares every file's size and checksum with the hub's own record of that file.
A file reaches its place in the folder only once it has been verified, and source.json is written last.
Running the command again over a complete folder checks the files and downloads nothing.

exit status: 0 every file present and verified; 1 the download failed (the message says what to do);
2 unknown model or bad arguments; 130 interrupted (the bytes received so far are kept).
"""

import argparse
import difflib
import hashlib
import json
import os
import shlex
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import httpx2  # the HTTP client under huggingface_hub: its network errors
from huggingface_hub import constants, get_hf_file_metadata, get_token, hf_hub_url
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers
from tqdm import tqdm

REPO = Path(__file__).resolve().parent
CHECKPOINTS = REPO / "checkpoints"
NOTEBOOK = REPO / "llama3_from_scratch.ipynb"
DEFAULT_MODEL = "Meta-Llama-3-8B"
DEMO_DIR = CHECKPOINTS / "Meta-Llama-3-8B-demo"
SOURCE_FILE = "source.json"
CHECKPOINT_FILES = ("params.json", "tokenizer.model", "consolidated.00.pth")

# The checkpoints the notebook reads: --model name -> hub repository. Each repository keeps Meta's own
# files (CHECKPOINT_FILES) in its HUB_FOLDER; the name is what source.json records as "model".
MODELS = {
    "Meta-Llama-3-8B": "meta-llama/Meta-Llama-3-8B",
    "Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
    "Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
    "Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "Llama-3.2-1B": "meta-llama/Llama-3.2-1B",
    "Llama-3.2-1B-Instruct": "meta-llama/Llama-3.2-1B-Instruct",
    "Llama-3.2-3B": "meta-llama/Llama-3.2-3B",
    "Llama-3.2-3B-Instruct": "meta-llama/Llama-3.2-3B-Instruct",
}
HUB_FOLDER = "original"
STAGING = ".download"  # inside the checkpoint folder: partial and unverified files, never loaded by the notebook
DISK_MARGIN = 256 << 20  # bytes left free on top of what a download or the demo writes
HASH_CHUNK = 8 << 20

# params.json of meta-llama/Meta-Llama-3-8B, byte for byte.
META_LLAMA3_8B_PARAMS_JSON = (
    '{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, '
    '"multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}'
)


class CheckpointError(Exception):
    """A problem the user can fix; the message says how."""


class UnknownModelError(CheckpointError):
    """--model names no supported checkpoint."""


def human_size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024


def shown_path(path: Path) -> str:
    """path relative to the current folder when it lies inside it, for messages and commands."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- Meta's layout


def ffn_hidden_dim(params: dict) -> int:
    """SwiGLU width: 2/3 of 4*dim, times ffn_dim_multiplier, rounded up to multiple_of."""
    hidden = int(2 * 4 * params["dim"] / 3)
    if params.get("ffn_dim_multiplier") is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    multiple_of = params["multiple_of"]
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def layer_shapes(params: dict) -> dict:
    """Shape of every tensor of one transformer block, keyed by its name inside the block."""
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads
    hidden = ffn_hidden_dim(params)
    return {
        "attention.wq.weight": (n_heads * head_dim, dim),
        "attention.wk.weight": (n_kv_heads * head_dim, dim),
        "attention.wv.weight": (n_kv_heads * head_dim, dim),
        "attention.wo.weight": (dim, n_heads * head_dim),
        "feed_forward.w1.weight": (hidden, dim),
        "feed_forward.w2.weight": (dim, hidden),
        "feed_forward.w3.weight": (hidden, dim),
        "attention_norm.weight": (dim,),
        "ffn_norm.weight": (dim,),
    }


def checkpoint_shapes(params: dict) -> dict:
    """Every key of consolidated.00.pth with its shape, in the order Meta writes them."""
    dim, vocab_size = params["dim"], params["vocab_size"]
    shapes = {"tok_embeddings.weight": (vocab_size, dim)}
    for layer in range(params["n_layers"]):
        for name, shape in layer_shapes(params).items():
            shapes[f"layers.{layer}.{name}"] = shape
    shapes["norm.weight"] = (dim,)
    shapes["output.weight"] = (vocab_size, dim)
    return shapes


def bundled_tokenizer_path() -> Path:
    """Meta's Llama 3 tokenizer.model, as shipped inside the llama-models package."""
    try:
        import llama_models.llama3
    except ImportError as error:
        raise CheckpointError(
            "The demo checkpoint takes Meta's tokenizer.model from the llama-models package, "
            "which is not installed. Run: pip install -r requirements.txt"
        ) from error
    path = Path(llama_models.llama3.__file__).parent / "tokenizer.model"
    if not path.is_file():
        raise CheckpointError(f"llama-models is installed but has no {path}; reinstall it: pip install --force-reinstall llama-models")
    return path


# ---------------------------------------------------------------- the demo checkpoint


def random_normal_bf16(shape, std: float, generator, progress: tqdm):
    """Seeded N(0, std^2) values in bf16, drawn a block of rows at a time so float32 never holds it all."""
    import torch  # imported here: only the demo needs torch, and it takes seconds to import

    out = torch.empty(shape, dtype=torch.bfloat16)
    rows = out.view(shape[0], -1)
    block = max(1, (1 << 24) // rows.shape[1])
    for start in range(0, rows.shape[0], block):
        chunk = rows[start : start + block]
        chunk.copy_(torch.randn(chunk.shape, generator=generator) * std)
        progress.update(chunk.numel())
    return out


def make_demo_state_dict(params: dict, seed: int = 0) -> dict:
    """Random bf16 weights with exactly the keys and shapes of Meta's checkpoint for these params.

    To keep the file near 1.5 GB instead of 16 GB, every layer is a view of one shared set of
    layer weights and output.weight shares the embedding's storage; torch.save writes each
    storage once.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    dim, vocab_size = params["dim"], params["vocab_size"]
    one_layer = layer_shapes(params)
    matrices = {name: shape for name, shape in one_layer.items() if len(shape) == 2}
    total = vocab_size * dim + sum(rows * cols for rows, cols in matrices.values())
    with tqdm(total=total, unit="weights", unit_scale=True, desc="random weights", file=sys.stdout) as progress:
        embedding = random_normal_bf16((vocab_size, dim), 0.02, generator, progress)
        # std 1/sqrt(fan_in) keeps every projection's output at the scale of its input
        layer = {name: random_normal_bf16(shape, shape[1] ** -0.5, generator, progress) for name, shape in matrices.items()}
    layer["attention_norm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
    layer["ffn_norm.weight"] = torch.ones(dim, dtype=torch.bfloat16)

    state_dict = {"tok_embeddings.weight": embedding}
    for index in range(params["n_layers"]):
        for name in one_layer:
            state_dict[f"layers.{index}.{name}"] = layer[name][...]  # a view: same storage, no copy
    state_dict["norm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
    state_dict["output.weight"] = embedding[...]
    return state_dict


class ProgressWriter:
    """A binary file that advances a progress bar as bytes are written to it."""

    def __init__(self, file, progress: tqdm):
        self.file, self.progress = file, progress

    def write(self, data) -> int:
        written = self.file.write(data)
        self.progress.update(written)
        return written

    def flush(self):
        self.file.flush()


def storage_bytes(state_dict: dict) -> int:
    """Bytes that torch.save writes for these tensors: each distinct storage once."""
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in state_dict.values()}
    return sum(storages.values())


def read_source(folder: Path) -> dict:
    """The folder's source.json, or {} when there is none (or it is unreadable)."""
    try:
        return json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def check_free_space(folder: Path, needed_bytes: int, margin_bytes: int = DISK_MARGIN) -> int:
    """The free bytes on the disk that holds (or will hold) folder; CheckpointError if below needed plus margin."""
    existing = Path(folder).resolve()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed_bytes + margin_bytes:
        raise CheckpointError(
            f"Not enough free disk space for {shown_path(folder)}: {human_size(needed_bytes)} still to write, plus "
            f"a margin of {human_size(margin_bytes)}, but the disk has {human_size(free)} free. "
            "Free some space, or choose a folder on another disk with --out."
        )
    return free


def build_demo(out_dir: Path = DEMO_DIR, seed: int = 0) -> Path:
    """Write the demo checkpoint to out_dir, atomically: a half-built folder never carries the name."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and read_source(out_dir).get("kind") != "demo":
        raise CheckpointError(
            f"{out_dir} exists and is not a demo checkpoint built by this script; it is left untouched. "
            "Choose another folder with --out, or remove it yourself."
        )
    import torch

    params = json.loads(META_LLAMA3_8B_PARAMS_JSON)
    tokenizer = bundled_tokenizer_path()

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # a leftover of an interrupted build
    state_dict = make_demo_state_dict(params, seed)
    checkpoint_bytes = storage_bytes(state_dict)
    check_free_space(out_dir.parent, checkpoint_bytes)
    partial.mkdir(parents=True)

    (partial / "params.json").write_text(META_LLAMA3_8B_PARAMS_JSON)
    shutil.copyfile(tokenizer, partial / "tokenizer.model")
    with open(partial / "consolidated.00.pth", "wb") as file, tqdm(
        total=checkpoint_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="consolidated.00.pth", file=sys.stdout
    ) as progress:
        torch.save(state_dict, ProgressWriter(file, progress))
    source = {
        "kind": "demo",
        "model": DEFAULT_MODEL,
        "weights": "random (seeded); every layer shares one set of weights; output.weight shares the embedding",
        "seed": seed,
        "note": "Meta's layout and tokenizer with random weights: shapes and token ids are real, predictions mean nothing.",
    }
    # the marker is written last: a folder without it was never finished
    (partial / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")

    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        partial.rename(out_dir)
        shutil.rmtree(old)
    else:
        partial.rename(out_dir)
    return out_dir


def demo_is_complete(folder: Path) -> bool:
    return read_source(folder).get("kind") == "demo" and all((folder / name).is_file() for name in CHECKPOINT_FILES)


# ---------------------------------------------------------------- from the hub


@dataclass
class HubFile:
    """One checkpoint file as the hub describes it: the answer to a HEAD request on its resolve URL."""

    name: str  # its name in the checkpoint folder: params.json, tokenizer.model, consolidated.00.pth
    path_in_repo: str  # original/params.json, ...
    size: int
    checksum: str  # an LFS file's sha256; for a small file kept in git, its git blob id
    url: str  # its resolve URL at the commit; for an LFS file the hub redirects to its storage

    @property
    def is_lfs(self) -> bool:
        return len(self.checksum) == 64

    @property
    def checksum_name(self) -> str:
        return "sha256" if self.is_lfs else "git blob id"


class Mismatch(Exception):
    """A local file is not the file the hub describes; the message says how it differs."""


def resolve_model(name: str) -> str:
    """The MODELS key for a model name or hub repository id, in any letter case."""
    by_lower = {key.lower(): key for key in MODELS} | {repo.lower(): key for key, repo in MODELS.items()}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    close = difflib.get_close_matches(name.lower(), by_lower, n=1, cutoff=0.6)
    hint = f" Did you mean {by_lower[close[0]]}?" if close else ""
    raise UnknownModelError(
        f"Unknown model {name!r}.{hint} download_weights.py fetches the Llama 3 checkpoints that Meta publishes "
        f"in its original layout: {', '.join(MODELS)}. Pass one of these names (or its hub repository id) to --model."
    )


def find_token():
    """The token huggingface_hub would send (HF_TOKEN, else the one `hf auth login` saved), and where it came from."""
    token = get_token()
    if token is None:
        return None, None
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(variable):
            return token, f"the {variable} environment variable"
    return token, "`hf auth login`"


def describe_hub_error(error: Exception, repo_id: str, token_source, command: str) -> str:
    """One paragraph for a failed request to the hub: what happened and what to do."""
    page = f"{constants.ENDPOINT}/{repo_id}"
    tokens_page = f"{constants.ENDPOINT}/settings/tokens"
    status = error.response.status_code if isinstance(error, HfHubHTTPError) else None
    if isinstance(error, OfflineModeIsEnabled):
        return (
            "HF_HUB_OFFLINE is set, so huggingface_hub sends no request to the hub. Unset it (unset HF_HUB_OFFLINE) "
            "and run the command again, or build the offline demo: python download_weights.py --demo"
        )
    if isinstance(error, httpx2.TransportError):
        return (
            f"Cannot reach the Hugging Face hub at {constants.ENDPOINT} ({str(error) or type(error).__name__}). "
            "Check that this machine is online (a conference or hotel network may first want a login page in the "
            "browser), and any proxy (HTTPS_PROXY) or HF_ENDPOINT setting; then run the same command again. "
            "Without a network, the offline demo needs none: python download_weights.py --demo"
        )
    if token_source is None and (isinstance(error, RepositoryNotFoundError) or status == 401):
        return (
            f"{repo_id} is gated and no Hugging Face token was found: the hub serves Meta's weights only to a "
            "signed-in account that has accepted Meta's license.\n"
            f"  1. Sign in and accept the license on {page}\n"
            f"  2. Create a token with read access on {tokens_page}\n"
            f"  3. Pass it to this command:  HF_TOKEN=hf_... {command}\n"
            "     (or save it once for every command with:  hf auth login)"
        )
    if isinstance(error, GatedRepoError):
        return (
            f"The hub does not give this token access to {repo_id} ({status}): the license has not been accepted "
            f"for the account the token belongs to, or Meta has not approved the request yet. "
            f"The hub says: {error.server_message or 'access is restricted'}\n"
            f"Open {page}, sign in with that account, accept the license, and wait for the approval (the page says "
            "when access is granted); then run the same command again. Meanwhile the offline demo needs no access: "
            "python download_weights.py --demo"
        )
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"The hub has no repository {repo_id} that this account can see ({status}). If the hub has renamed it, "
            f"find the current name at {constants.ENDPOINT}/meta-llama and tell the maintainers of this project; "
            "`python download_weights.py --help` lists the supported models."
        )
    if isinstance(error, RemoteEntryNotFoundError):
        return (
            f"{repo_id} lacks a file of Meta's original layout, which the notebook reads "
            f"({', '.join(CHECKPOINT_FILES)} in {HUB_FOLDER}/): the hub answered {status} for {error.response.url}. "
            "`python download_weights.py --help` lists the models that have it."
        )
    if status == 401:
        return (
            f"The hub rejected the token from {token_source} (401 Unauthorized): it is mistyped, revoked or "
            f"expired. Create a new one with read access on {tokens_page} and pass it with "
            f"HF_TOKEN=hf_... {command} (or save it with: hf auth login)."
        )
    if status == 429:
        return (
            "The hub is limiting requests from this network (429 Too Many Requests): many people may share one "
            "address here. Wait a minute, then run the same command again."
        )
    if status is not None:
        return (
            f"The hub answered {status} {error.response.reason_phrase} for {error.response.url}. Wait a few "
            f"minutes and run the same command again; if it persists, check {page} in a browser."
        )
    return (  # FileMetadataError: an answer without the hub's headers
        f"The answer from {constants.ENDPOINT} does not look like the Hugging Face hub's ({error}). A network "
        "login page, a proxy or a wrong HF_ENDPOINT may be in the way: open any web page in a browser, then run "
        "the same command again."
    )


HUB_ERRORS = (HfHubHTTPError, httpx2.TransportError, OfflineModeIsEnabled, FileMetadataError)


def look_up_files(repo_id: str, token):
    """Ask the hub for each checkpoint file's size and checksum (HEAD requests: no bytes move yet).

    The first answer names the commit that the main branch points to; every file is then asked for at
    that commit, so all of them come from one revision.
    """
    paths = [f"{HUB_FOLDER}/{name}" for name in CHECKPOINT_FILES]
    revision = get_hf_file_metadata(hf_hub_url(repo_id, paths[0]), token=token).commit_hash
    if revision is None:
        raise FileMetadataError("no X-Repo-Commit header")
    files = []
    for name, path in zip(CHECKPOINT_FILES, paths):
        url = hf_hub_url(repo_id, path, revision=revision)
        meta = get_hf_file_metadata(url, token=token)
        if meta.size is None or meta.etag is None or len(meta.etag) not in (40, 64):
            raise FileMetadataError(f"no size or checksum for {path}")
        files.append(HubFile(name, path, meta.size, meta.etag, url))
    return revision, files


def hub_checksums(path: Path, file: HubFile):
    """(sha256, the checksum the hub records for file) of path, in one pass: sha256, or the git blob id."""
    sha256 = hashlib.sha256()
    git_blob = hashlib.sha1(b"blob %d\0" % path.stat().st_size)  # what `git hash-object` computes
    with open(path, "rb") as data, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"checking {file.name}",
        disable=None if file.size > 64 * HASH_CHUNK else True, leave=False,
    ) as progress:
        while chunk := data.read(HASH_CHUNK):
            sha256.update(chunk)
            if not file.is_lfs:
                git_blob.update(chunk)
            progress.update(len(chunk))
    return sha256.hexdigest(), (sha256 if file.is_lfs else git_blob).hexdigest()


def verify(path: Path, file: HubFile) -> str:
    """path's sha256 when its size and checksum are the hub's for file; Mismatch otherwise."""
    size = path.stat().st_size
    if size != file.size:
        raise Mismatch(f"its size is {size:,} bytes, the hub's is {file.size:,}")
    sha256, checksum = hub_checksums(path, file)
    if checksum != file.checksum:
        raise Mismatch(f"its {file.checksum_name} is {checksum}, the hub's is {file.checksum}")
    return sha256


def describe_verified(file: HubFile) -> str:
    if file.is_lfs:
        return "size and sha256 match the hub's"
    return "size and git blob id match the hub's (it is kept in git, not LFS, so the hub records no sha256 for it)"


def file_record(file: HubFile, sha256: str) -> dict:
    """What source.json says about one verified file."""
    record = {"path_in_repo": file.path_in_repo, "size": file.size, "sha256": sha256}
    if not file.is_lfs:
        record["git_blob_id"] = file.checksum
    record["verified_with"] = "sha256 (LFS)" if file.is_lfs else "git blob id (not an LFS file: the hub has no sha256)"
    return record


def fetch(file: HubFile, partial: Path, token):
    """Append file's missing bytes to partial, resuming from its length, with huggingface_hub's http_get.

    The request goes to the hub at the pinned commit; an LFS file is redirected to the hub's storage, and
    the HTTP client drops the token on that redirect (it only goes to the hub's own address).
    """
    if partial.exists() and partial.stat().st_size > file.size:
        partial.unlink()
    resume_size = partial.stat().st_size if partial.exists() else 0
    with open(partial, "ab") as out:
        http_get(file.url, out, resume_size=resume_size, headers=build_hf_headers(token=token),
                 expected_size=file.size, displayed_filename=file.name)


def still_as_recorded(out_dir: Path, repo_id: str) -> bool:
    """Without the hub: whether a finished download's files still match the sizes and sha256 in its source.json."""
    source = read_source(out_dir)
    records = source.get("files", {})
    if source.get("kind") != "hub" or source.get("repo_id") != repo_id or set(records) != set(CHECKPOINT_FILES):
        return False
    for name, record in records.items():
        try:
            verify(out_dir / name, HubFile(name, record["path_in_repo"], record["size"], record["sha256"], url=""))
        except (Mismatch, OSError, KeyError):
            return False
    return True


def check_folder_is_for(out_dir: Path, repo_id: str):
    """Refuse a folder that holds anything but this repository's checkpoint, finished or unfinished."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{shown_path(out_dir)} is a file, not a folder: choose another folder with --out.")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    finished, unfinished = read_source(out_dir), read_source(out_dir / STAGING)
    if any(source.get("kind") == "hub" and source.get("repo_id") == repo_id for source in (finished, unfinished)):
        return
    if finished.get("kind") == "demo":
        held = "the demo checkpoint"
    elif finished.get("repo_id") or unfinished.get("repo_id"):
        held = f"a download of {finished.get('repo_id') or unfinished.get('repo_id')}"
    else:
        held = "files that download_weights.py did not fetch"
    raise CheckpointError(
        f"{shown_path(out_dir)} already holds {held}, not {repo_id}. It is left untouched: choose another folder "
        "with --out, or move its contents away."
    )


def write_json(path: Path, data: dict):
    """Write path atomically: a reader sees the old file or the new one, never half of one."""
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(scratch, path)


def claim_folder(out_dir: Path, marker: dict):
    """Before a file in out_dir changes: STAGING's marker says whose unfinished download the folder holds,
    and source.json goes (without it the folder is not a finished download)."""
    (out_dir / STAGING).mkdir(parents=True, exist_ok=True)
    write_json(out_dir / STAGING / SOURCE_FILE, marker)
    (out_dir / SOURCE_FILE).unlink(missing_ok=True)


def partial_path(out_dir: Path, file: HubFile) -> Path:
    """Where file's bytes collect until it is verified; the checksum in the name ties them to its content."""
    return out_dir / STAGING / f"{file.name}.{file.checksum}.incomplete"


def received_bytes(out_dir: Path, file: HubFile) -> int:
    partial = partial_path(out_dir, file)
    size = partial.stat().st_size if partial.is_file() else 0
    return size if size <= file.size else 0  # longer than the file: useless, it will be replaced


def plan_download(out_dir: Path, revision: str, files: list) -> int:
    """Print what is here and what is missing; CheckpointError unless the disk can hold the rest. Returns its size."""
    print(f"Revision {revision}, into {shown_path(out_dir)}:")
    missing = 0
    for file in files:
        target, received = out_dir / file.name, received_bytes(out_dir, file)
        if target.is_file() and target.stat().st_size == file.size:
            state = "here; checking it"
        else:
            state = f"{human_size(received)} here; resuming" if received else "to download"
            missing += file.size - received
        print(f"  {file.name:<20} {human_size(file.size):>10}  {state}")
    if missing:
        free = check_free_space(out_dir, missing)
        print(f"{human_size(missing)} to download; {human_size(free)} free on that disk.")
    return missing


def keep_matching_files(out_dir: Path, files: list, marker: dict) -> dict:
    """Check the files already in out_dir against the hub: the source.json records of those that match;
    the others are removed."""
    records = {}
    for file in files:
        target = out_dir / file.name
        if not target.is_file():
            continue
        try:
            records[file.name] = file_record(file, verify(target, file))
            print(f"  {file.name}: {describe_verified(file)}")
        except Mismatch as mismatch:
            claim_folder(out_dir, marker)
            target.unlink()
            print(f"  {file.name}: not the hub's file ({mismatch}); removed, downloading it again")
    return records


def fetch_verified(out_dir: Path, file: HubFile, token) -> dict:
    """Download file (resuming), verify it, and only then move it to its place; returns its source.json record."""
    partial = partial_path(out_dir, file)
    try:
        fetch(file, partial, token)
    except (*HUB_ERRORS, OSError) as error:
        kept = partial.stat().st_size if partial.exists() else 0
        reason = (f"the hub answered {error.response.status_code} {error.response.reason_phrase}"
                  if isinstance(error, HfHubHTTPError) else str(error) or type(error).__name__)
        raise CheckpointError(
            f"The download of {file.name} stopped ({reason}). {human_size(kept)} of {human_size(file.size)} "
            f"are kept in {shown_path(partial.parent)}: run the same command again to resume from there."
        ) from None
    try:
        sha256 = verify(partial, file)
    except Mismatch as mismatch:
        partial.unlink()
        raise CheckpointError(
            f"{file.name} arrived complete but is not the hub's file: {mismatch}. The damaged download has been "
            "deleted, so the notebook cannot load it. Run the same command again to download it afresh; if "
            "this happens again, something on this network (a proxy or antivirus) may be altering downloads."
        ) from None
    os.replace(partial, out_dir / file.name)
    print(f"  {file.name}: {describe_verified(file)}")
    return file_record(file, sha256)


def download_from_hub(model: str, out_dir: Path, command: str) -> int:
    """Fetch and verify model's checkpoint files into out_dir; returns how many files were downloaded.

    Layout: out_dir holds only verified files, under the names the notebook reads; the bytes in transit
    collect in out_dir/.download/<name>.<checksum>.incomplete, kept when a run stops so that the next one
    resumes; source.json is written last, once every file matches the hub.
    """
    repo_id, out_dir = MODELS[model], Path(out_dir)
    check_folder_is_for(out_dir, repo_id)
    token, token_source = find_token()
    print(f"Asking {constants.ENDPOINT} for {repo_id} ({'token from ' + token_source if token else 'no token'})")
    try:
        revision, files = look_up_files(repo_id, token)
    except HUB_ERRORS as error:
        offline = isinstance(error, (httpx2.TransportError, OfflineModeIsEnabled))
        if offline and still_as_recorded(out_dir, repo_id):
            print(f"The hub cannot be reached, but {shown_path(out_dir)} holds a finished download of {repo_id} "
                  f"(revision {read_source(out_dir)['revision']}) whose files still have the size and sha256 "
                  "recorded when they were verified.")
            return 0
        raise CheckpointError(describe_hub_error(error, repo_id, token_source, command)) from None

    marker = {"kind": "hub", "repo_id": repo_id, "model": model, "revision": revision}
    plan_download(out_dir, revision, files)
    records = keep_matching_files(out_dir, files, marker)
    to_fetch = [file for file in files if file.name not in records]
    if to_fetch:
        claim_folder(out_dir, marker)
        wanted = {partial_path(out_dir, file) for file in files}
        for stale in set((out_dir / STAGING).glob("*.incomplete")) - wanted:
            stale.unlink()  # bytes of another revision's files: they cannot be resumed
    for file in to_fetch:
        records[file.name] = fetch_verified(out_dir, file, token)

    write_json(out_dir / SOURCE_FILE, {**marker, "hub": constants.ENDPOINT,
                                       "files": {file.name: records[file.name] for file in files}})
    shutil.rmtree(out_dir / STAGING, ignore_errors=True)
    return len(to_fetch)


def notebook_commands(out_dir: Path) -> list:
    """Commands that open, or run headlessly, the notebook on out_dir; they work from the current folder."""
    notebook = shlex.quote(shown_path(NOTEBOOK))
    out_dir = Path(out_dir).resolve()
    setting = ""
    if out_dir != (CHECKPOINTS / DEFAULT_MODEL).resolve():  # the notebook's default needs no setting
        folder = out_dir.relative_to(REPO) if out_dir.is_relative_to(REPO) else out_dir  # the kernel runs in REPO
        setting = f"LLAMA3_DIR={shlex.quote(str(folder))} "
    executed = NOTEBOOK.with_suffix(".executed.ipynb").name  # nbconvert writes it next to the notebook
    return [f"{setting}jupyter lab {notebook}",
            f"{setting}jupyter nbconvert --to notebook --execute {notebook} --output {executed}"]


# ---------------------------------------------------------------- command line


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _split_lines(self, text, width):  # keeps names such as Meta-Llama-3-8B on one line
        return textwrap.wrap(text, width, break_on_hyphens=False)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME",
        help=f"the checkpoint to fetch from the hub (default: {DEFAULT_MODEL}); one of {', '.join(MODELS)}, "
        "or its hub repository id such as meta-llama/Llama-3.2-1B. Accept its license on its hub page first",
    )
    source.add_argument(
        "--demo",
        action="store_true",
        help="build the offline demo checkpoint instead: Meta-Llama-3-8B's params.json, keys, shapes and bf16 "
        "dtype, Meta's tokenizer, seeded random weights (about 1.5 GB, no network, no hub account)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FOLDER",
        help="the folder to write (default: checkpoints/<model>, or checkpoints/Meta-Llama-3-8B-demo with --demo); "
        f"the notebook reads checkpoints/{DEFAULT_MODEL} unless LLAMA3_DIR names another folder",
    )
    parser.add_argument("--seed", type=int, default=0, help="with --demo: seed of the random weights (default: 0)")
    return parser.parse_args(argv)


def rerun_command(argv) -> str:
    """The command line of this run, to quote in messages."""
    return shlex.join(["python", shown_path(Path(__file__)), *(sys.argv[1:] if argv is None else argv)])


def print_notebook_commands(out_dir: Path):
    lab, headless = notebook_commands(out_dir)
    print(f"Open the notebook on it:\n  {lab}\nor run every cell and save the outputs:\n  {headless}")


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = args.out
    try:
        if args.demo:
            out_dir = build_demo(out_dir or DEMO_DIR, seed=args.seed)
            print(f"Demo checkpoint ready in {shown_path(out_dir)}")
            print_notebook_commands(out_dir)
            return 0
        model = resolve_model(args.model)
        out_dir = out_dir or CHECKPOINTS / model
        downloaded = download_from_hub(model, out_dir, rerun_command(argv))
        already = "" if downloaded else " (all of them were already here: nothing downloaded)"
        print(f"{model} is ready in {shown_path(out_dir)}: {len(CHECKPOINT_FILES)} files verified{already}.")
        print_notebook_commands(out_dir)
        return 0
    except UnknownModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nInterrupted. {interrupted_state(out_dir, args.demo)} Run the same command again:\n  "
              f"{rerun_command(argv)}", file=sys.stderr)
        return 130


def interrupted_state(out_dir, demo: bool) -> str:
    """What an interrupted run leaves: never anything the notebook would take for a finished checkpoint."""
    if demo or out_dir is None:
        return "Nothing unfinished is where the notebook looks."
    staging = Path(out_dir) / STAGING
    kept = sum(path.stat().st_size for path in staging.glob("*.incomplete")) if staging.is_dir() else 0
    state = f"{shown_path(out_dir)} holds only verified files, so the notebook will not load a partial one."
    if kept:
        state += f" The {human_size(kept)} received so far are kept in {shown_path(staging)}, to resume from."
    return state


if __name__ == "__main__":
    sys.exit(main())
