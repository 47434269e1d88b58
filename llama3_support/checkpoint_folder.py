"""The rules every script of this project follows when it writes a checkpoint folder.

A checkpoint folder holds Meta's three files (CHECKPOINT_FILES) and source.json, which says where they came
from: {"kind": "demo", ...}, {"kind": "hub", "repo_id": ..., ...}. The rules:

- A script writes into a folder only when it is new, empty, or its source.json says it holds that script's
  checkpoint. Anything else is refused and left untouched, with one paragraph that says what to do, before
  any long work starts (so are a folder that cannot be written and a disk without room).
- Files on their way in collect in the hidden folder <folder>/.download (STAGING), whose own source.json
  (the marker) says whose unfinished work it holds. A file takes its name in the folder only once complete,
  and the folder's source.json is written last: a folder without it is not finished.
- A script replaces only the files it writes (CHECKPOINT_FILES, any further files of its own that it names
  to staged_build, and source.json) and deletes only what it put into STAGING. Notes, runs and other folders
  of the user stay, whatever the folder is.
"""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so two runs on one folder are not told apart there
    fcntl = None

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"  # the default home of every checkpoint folder
SOURCE_FILE = "source.json"
CHECKPOINT_FILES = ("params.json", "tokenizer.model", "consolidated.00.pth")
STAGING = ".download"  # inside the checkpoint folder: files on their way in, never loaded by the notebook
PARTIAL_SUFFIX = ".incomplete"  # a download's bytes so far, in STAGING
DISK_MARGIN = 256 << 20  # bytes left free on top of what a script writes
LISTED_NAMES = 5  # how many of a folder's names a message lists


class CheckpointError(Exception):
    """A problem the user can fix; the message says how."""


def human_size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024


def shown_path(path: Path) -> str:
    """path relative to the current folder when it lies inside it, for messages and commands."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- source.json: whose folder this is


def read_source(folder: Path) -> dict:
    """The folder's source.json; {} when there is none. CheckpointError when it cannot be read as a JSON object."""
    path = Path(folder) / SOURCE_FILE
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        source = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # a decoding error is a ValueError too
        problem = error.strerror if isinstance(error, OSError) else f"it is not JSON ({error})"
    else:
        if isinstance(source, dict):
            return source
        problem = f"it holds a JSON {type(source).__name__}, not an object"
    raise CheckpointError(
        f"{shown_path(path)} cannot be read: {problem}. That file records where the files in "
        f"{shown_path(folder)} came from; without it there is no telling whose they are, so the folder is left "
        f"untouched. If you edited it, undo the edit. Otherwise delete {shown_path(path)} together with the "
        "checkpoint files beside it and run the command again, or choose another folder with --out."
    )


def source_kind(folder: Path):
    """The kind a folder's source.json names; None when there is none or it cannot be read (never raises)."""
    try:
        return read_source(folder).get("kind")
    except CheckpointError:
        return None


def describe_holder(source: dict) -> str:
    """What a folder holds according to its source.json (finished or unfinished), for messages."""
    if source.get("kind") == "demo":
        return "the demo checkpoint"
    if source.get("kind") == "hub":
        return f"a download of {source.get('repo_id')}"
    if source.get("kind") == "converted":
        return f"{source.get('model')} converted from the {source.get('package')} package"
    return f"a checkpoint of kind {source.get('kind')!r} (as its source.json says)"


def write_json(path: Path, data: dict):
    """Write path atomically (a reader sees the old file or the new one) through a scratch file of a fresh name."""
    descriptor, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps(data, indent=2) + "\n")
        os.chmod(scratch, 0o644)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- checks before any work


def nearest_existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and not path.is_symlink():
        path = path.parent
    return path


def check_writable(out_dir: Path):
    """Refuse an out_dir that is a file, a dangling link, below a file, or in a folder this user cannot write."""
    if out_dir.is_symlink() and not out_dir.exists():
        raise CheckpointError(
            f"{shown_path(out_dir)} is a symbolic link to {os.readlink(out_dir)}, which does not exist. Create that "
            "folder, or choose another folder with --out."
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{shown_path(out_dir)} is a file, not a folder: choose another folder with --out.")
    existing = nearest_existing(out_dir)
    if not existing.is_dir():
        raise CheckpointError(
            f"{shown_path(out_dir)} cannot be made: {shown_path(existing)} is a file, not a folder. Choose another "
            "folder with --out."
        )
    staging = out_dir / STAGING
    in_staging = list(staging.iterdir()) if staging.is_dir() else []
    for path in (existing, *([staging] if staging.is_dir() else []), *in_staging):
        if not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
            raise CheckpointError(
                f"{shown_path(path)} is not writable by this user, so {shown_path(out_dir)} cannot be written. "
                "Choose a folder you can write with --out (one in your home folder, say), or change its permissions."
            )


def foreign_folder_message(out_dir: Path, wanted: str) -> str:
    """Why out_dir, which holds files that no source.json accounts for, is refused, and what to do instead."""
    shown = shown_path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "original").is_dir():
        return (
            f"{shown} looks like a copy of a Hugging Face repository (config.json and original/ are in it), made "
            f"by another tool; it is left untouched. Meta's files, which the notebook reads, are in its original/ "
            f"folder: run the notebook with LLAMA3_DIR={shown_path(out_dir / 'original')}. To get {wanted} "
            "with this script instead, choose another folder with --out."
        )
    if all((out_dir / name).is_file() for name in CHECKPOINT_FILES):
        return (
            f"{shown} already holds {', '.join(CHECKPOINT_FILES)}, but no {SOURCE_FILE} says that this project's "
            f"scripts wrote them, so they are left untouched. If they are a checkpoint you put there, the notebook "
            f"reads them as they are with LLAMA3_DIR={shown}. To get {wanted} instead, choose another folder with "
            "--out, or move those files away."
        )
    names = sorted(path.name for path in out_dir.iterdir())
    listed = ", ".join(names[:LISTED_NAMES])
    if len(names) > LISTED_NAMES:
        listed += f" and {len(names) - LISTED_NAMES} more"
    return (
        f"{shown} already holds files that this project's scripts did not write ({listed}). It is left "
        f"untouched: for {wanted}, choose a new or empty folder with --out, or move its contents away."
    )


def check_output_folder(out_dir: Path, belongs, wanted: str):
    """Refuse, before any work, a folder that this run must not write (the rules at the top of this file).

    belongs(source) says whether a source.json (the folder's, or the marker in STAGING) is this run's own;
    wanted names what this run writes, for messages.
    """
    out_dir = Path(out_dir)
    check_writable(out_dir)
    if not out_dir.is_dir():
        return
    staging = out_dir / STAGING
    records = [record for record in (read_source(out_dir), read_source(staging)) if record]
    foreign = [record for record in records if not belongs(record)]
    if foreign:
        raise CheckpointError(
            f"{shown_path(out_dir)} already holds {describe_holder(foreign[0])}, not {wanted}. It is left untouched: "
            "choose another folder with --out, or move its contents away."
        )
    contents = [path for path in out_dir.iterdir() if path != staging or not is_empty_folder(staging)]
    if not records and contents:
        raise CheckpointError(foreign_folder_message(out_dir, wanted))
    if staging.exists() and not read_source(staging) and not is_empty_folder(staging):
        raise CheckpointError(
            f"{shown_path(staging)} holds files that this project's scripts did not put there (no {SOURCE_FILE} "
            f"marks it as theirs), and this script keeps its unfinished files in that folder. Move it away, then "
            "run the command again."
        )


def is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def check_free_space(folder: Path, needed_bytes: int, margin_bytes: int = DISK_MARGIN) -> int:
    """The free bytes on the disk that holds (or will hold) folder; CheckpointError if below needed plus margin."""
    free = shutil.disk_usage(nearest_existing(folder)).free
    if free < needed_bytes + margin_bytes:
        raise CheckpointError(
            f"Not enough free disk space for {shown_path(folder)}: {human_size(needed_bytes)} still to write, plus "
            f"a margin of {human_size(margin_bytes)}, but the disk has {human_size(free)} free. "
            "Free some space, or choose a folder on another disk with --out."
        )
    return free


# ---------------------------------------------------------------- STAGING: files on their way in


def claim_folder(out_dir: Path, marker: dict) -> Path:
    """Before a file in out_dir changes: STAGING's marker says whose unfinished work the folder holds, and
    source.json goes (without it the folder is not finished). Returns STAGING."""
    staging = open_staging(out_dir, marker)
    (out_dir / SOURCE_FILE).unlink(missing_ok=True)
    return staging


def open_staging(out_dir: Path, marker: dict) -> Path:
    staging = out_dir / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    write_json(staging / SOURCE_FILE, marker)
    return staging


def is_staged_by_us(path: Path, files: tuple = CHECKPOINT_FILES) -> bool:
    """Whether a file in STAGING is one that these scripts write there (files: the checkpoint files a build writes)."""
    return (path.name in (*CHECKPOINT_FILES, *files, SOURCE_FILE) or path.name.endswith(PARTIAL_SUFFIX)
            or (path.name.startswith(".") and path.name.endswith(".tmp")))


def clear_staging(out_dir: Path, files: tuple = CHECKPOINT_FILES):
    """Delete the files these scripts put into STAGING, its marker last; without the marker nothing there is ours."""
    staging = Path(out_dir) / STAGING
    if staging.is_dir() and read_source(staging):
        for path in staging.iterdir():
            if path.name != SOURCE_FILE and is_staged_by_us(path, files) and not path.is_dir():
                path.unlink()
        (staging / SOURCE_FILE).unlink()


def remove_staging(out_dir: Path, files: tuple = CHECKPOINT_FILES):
    """clear_staging, then STAGING itself if that emptied it."""
    clear_staging(out_dir, files)
    if is_empty_folder(Path(out_dir) / STAGING):
        (Path(out_dir) / STAGING).rmdir()


@contextmanager
def staging_lock(out_dir: Path):
    """Hold STAGING (made if missing) for this run alone: a second run on the same folder is refused instead
    of writing into, or deleting, this run's files. The lock ends with the process, even a killed one."""
    staging = Path(out_dir) / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield staging
        return
    descriptor = os.open(staging, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(
                f"Another run is writing {shown_path(out_dir)} right now (it holds {shown_path(staging)}). Wait "
                "for it to finish, or stop it, then run the command again."
            ) from None
        yield staging
    finally:
        os.close(descriptor)


def publish(out_dir: Path, source: dict, files: tuple = CHECKPOINT_FILES):
    """Move the finished files (CHECKPOINT_FILES unless a build writes more) from STAGING to their names in
    out_dir, then write source.json."""
    staging = out_dir / STAGING
    (out_dir / SOURCE_FILE).unlink(missing_ok=True)
    for name in files:
        os.replace(staging / name, out_dir / name)  # replaces a link itself, never the file it points to
    write_json(out_dir / SOURCE_FILE, source)
    remove_staging(out_dir, files)


def folders_to_make(out_dir: Path) -> list:
    """out_dir and those of its parents that do not exist yet, deepest first."""
    missing, path = [], Path(out_dir).absolute()
    while not path.exists() and not path.is_symlink():
        missing.append(path)
        path = path.parent
    return missing


@contextmanager
def staged_build(out_dir: Path, source: dict, files: tuple = CHECKPOINT_FILES):
    """A STAGING folder to write files into (CHECKPOINT_FILES, or those and more of the build's own). When the
    block ends they replace out_dir's and source is written last. If the block fails or is interrupted (Ctrl-C),
    every file it wrote is removed, and so are the folders this run made, so that nothing half-written stays
    behind."""
    out_dir = Path(out_dir)
    made = folders_to_make(out_dir)
    with staging_lock(out_dir):
        try:
            clear_staging(out_dir, files)  # what a killed build of the same kind left (its marker says so)
            yield open_staging(out_dir, source)
            publish(out_dir, source, files)
        except BaseException as error:
            remove_staging(out_dir, files)
            for folder in made:
                if is_empty_folder(folder):
                    folder.rmdir()
            if isinstance(error, OSError):
                where = f" ({error.filename})" if error.filename else ""
                raise CheckpointError(
                    f"Writing {shown_path(out_dir)} failed: {error.strerror or error}{where}. The files this run "
                    "had written are removed again. Free some space on that disk, or fix what the error names, "
                    "then run the command again."
                ) from error
            raise
