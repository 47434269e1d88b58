"""Fetch a Llama 3 checkpoint in Meta's original layout from the Hugging Face hub, verified and resumable.

`python download_weights.py --model NAME` runs download_from_hub. It checks the hub before it starts
(reachable, access granted, enough free disk), resumes where an interrupted run stopped, and compares every
file's size and checksum with the hub's own record of that file. The folder follows checkpoint_folder's
rules: the bytes in transit collect in <folder>/.download/<name>.<checksum>.incomplete and stay there when a
run stops, a file takes its name only once verified, and source.json is written last.
"""

import difflib
import hashlib
import os
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

from llama3_support.checkpoint_folder import CHECKPOINT_FILES, PARTIAL_SUFFIX, SOURCE_FILE, STAGING, CheckpointError, \
    check_free_space, check_output_folder, claim_folder, human_size, read_source, remove_staging, shown_path, \
    staging_lock, write_json
from llama3_support.shards import weight_file_names

# The checkpoints the notebook reads: --model name -> hub repository. Each repository keeps Meta's own
# files (model_files) in its HUB_FOLDER; the name is what source.json records as "model".
MODELS = {
    "Meta-Llama-3-8B": "meta-llama/Meta-Llama-3-8B",
    "Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
    "Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
    "Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "Llama-3.2-1B": "meta-llama/Llama-3.2-1B",
    "Llama-3.2-1B-Instruct": "meta-llama/Llama-3.2-1B-Instruct",
    "Llama-3.2-3B": "meta-llama/Llama-3.2-3B",
    "Llama-3.2-3B-Instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "Meta-Llama-3-70B": "meta-llama/Meta-Llama-3-70B",
    "Meta-Llama-3-70B-Instruct": "meta-llama/Meta-Llama-3-70B-Instruct",
    "Llama-3.1-70B": "meta-llama/Llama-3.1-70B",
    "Llama-3.1-70B-Instruct": "meta-llama/Llama-3.1-70B-Instruct",
    "Llama-3.3-70B-Instruct": "meta-llama/Llama-3.3-70B-Instruct",
}
# Models that Meta splits over several weight files, one per model-parallel rank (llama3_support/shards.py):
# the 70B models over 8, consolidated.00.pth to consolidated.07.pth (llama-models' sku_list: pth_file_count).
WEIGHT_FILE_COUNTS = {name: 8 for name in MODELS if name.endswith(("70B", "70B-Instruct"))}
HUB_FOLDER = "original"
HASH_CHUNK = 8 << 20


def model_files(model: str) -> tuple:
    """The files of model's checkpoint in the hub's HUB_FOLDER, under the names the folder gives them."""
    return ("params.json", "tokenizer.model", *weight_file_names(WEIGHT_FILE_COUNTS.get(model, 1)))


class UnknownModelError(CheckpointError):
    """--model names no supported checkpoint."""


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


def describe_hub_error(error: Exception, repo_id: str, token_source, command: str, names=CHECKPOINT_FILES) -> str:
    """One paragraph for a failed request to the hub: what happened and what to do (names: the model's files)."""
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
            f"({', '.join(names)} in {HUB_FOLDER}/): the hub answered {status} for {error.response.url}. "
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


def look_up_files(repo_id: str, token, names=CHECKPOINT_FILES):
    """Ask the hub for the size and checksum of each of the checkpoint's files, names (HEAD requests: no bytes
    move yet).

    The first answer names the commit that the main branch points to; every file is then asked for at
    that commit, so all of them come from one revision.
    """
    paths = [f"{HUB_FOLDER}/{name}" for name in names]
    revision = get_hf_file_metadata(hf_hub_url(repo_id, paths[0]), token=token).commit_hash
    if revision is None:
        raise FileMetadataError("no X-Repo-Commit header")
    files = []
    for name, path in zip(names, paths):
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


def still_as_recorded(out_dir: Path, repo_id: str, names=CHECKPOINT_FILES) -> bool:
    """Without the hub: whether a finished download's files (names) still match the sizes and sha256 in its
    source.json."""
    source = read_source(out_dir)
    records = source.get("files", {})
    if source.get("kind") != "hub" or source.get("repo_id") != repo_id or set(records) != set(names):
        return False
    for name, record in records.items():
        try:
            verify(out_dir / name, HubFile(name, record["path_in_repo"], record["size"], record["sha256"], url=""))
        except (Mismatch, OSError, KeyError):
            return False
    return True


def is_download_of(repo_id: str):
    """Whether a source.json (finished, or the marker of an unfinished download) is one of repo_id's downloads."""
    return lambda source: source.get("kind") == "hub" and source.get("repo_id") == repo_id


def partial_path(out_dir: Path, file: HubFile) -> Path:
    """Where file's bytes collect until it is verified; the checksum in the name ties them to its content."""
    return out_dir / STAGING / f"{file.name}.{file.checksum}{PARTIAL_SUFFIX}"


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
    repo_id, out_dir, names = MODELS[model], Path(out_dir), model_files(model)
    check_output_folder(out_dir, belongs=is_download_of(repo_id), wanted=f"a download of {repo_id}")
    token, token_source = find_token()
    print(f"Asking {constants.ENDPOINT} for {repo_id} ({'token from ' + token_source if token else 'no token'})")
    try:
        revision, files = look_up_files(repo_id, token, names)
    except HUB_ERRORS as error:
        offline = isinstance(error, (httpx2.TransportError, OfflineModeIsEnabled))
        if offline and still_as_recorded(out_dir, repo_id, names):
            print(f"The hub cannot be reached, but {shown_path(out_dir)} holds a finished download of {repo_id} "
                  f"(revision {read_source(out_dir)['revision']}) whose files still have the size and sha256 "
                  "recorded when they were verified.")
            return 0
        raise CheckpointError(describe_hub_error(error, repo_id, token_source, command, names)) from None

    marker = {"kind": "hub", "repo_id": repo_id, "model": model, "revision": revision}
    plan_download(out_dir, revision, files)
    with staging_lock(out_dir):
        records = keep_matching_files(out_dir, files, marker)
        to_fetch = [file for file in files if file.name not in records]
        if to_fetch:
            claim_folder(out_dir, marker)
            wanted = {partial_path(out_dir, file) for file in files}
            for stale in set((out_dir / STAGING).glob(f"*{PARTIAL_SUFFIX}")) - wanted:
                stale.unlink()  # bytes of another revision's files: they cannot be resumed
        for file in to_fetch:
            records[file.name] = fetch_verified(out_dir, file, token)

        write_json(out_dir / SOURCE_FILE, {**marker, "hub": constants.ENDPOINT,
                                           "files": {file.name: records[file.name] for file in files}})
        remove_staging(out_dir)
    return len(to_fetch)

