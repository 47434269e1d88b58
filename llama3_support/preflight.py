"""Before a workshop: one OK or FAIL line per requirement, so that a room finds its problems before the first exercise.

    python -m llama3_support.preflight --checkpoint checkpoints/SmolLM2-135M-Instruct

It checks the Python version; each package of requirements.txt, installed at a version it accepts and
importable; the checkpoint folder, complete and readable, with the walkthrough's own checks
(checkpoint_check.open_checkpoint: params.json, every tensor's name and shape, the tokenizer); the memory
available against what that checkpoint needs; and the free disk. Every FAIL line says what to do. Without
--checkpoint it checks the folder the walkthrough would read: LLAMA3_DIR, else the checkpoint the
walkthrough takes without it (Meta-Llama-3-8B if it is there, else the one that is, SmolLM2 first).

The exercise notebook's first cell calls preflight() too. Exit status: 0 when every line is OK, 1 otherwise.
"""

import argparse
import functools
import importlib
import importlib.metadata
import os
import platform
import shutil
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from llama3_support.checkpoint_folder import DISK_MARGIN, human_size, nearest_existing, shown_path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "requirements.txt"
MIN_PYTHON = (3, 10)
INSTALL = f"pip install -r {shown_path(REQUIREMENTS)}"
# What the walkthrough holds beside the mapped weights: 0.36 GiB measured on the 8B's shapes in bf16
# (docs/checkpoints.md), rounded up. The weights themselves are the files' bytes, in the page cache.
NOTEBOOK_OWN_BYTES = 512 << 20
DISK_NEEDED = DISK_MARGIN  # free bytes for the executed notebooks and their pictures


def report(ok: bool, text: str) -> bool:
    """Print one line, OK or FAIL, and hand ok back."""
    print(f"{'OK  ' if ok else 'FAIL'} {text}")
    return ok


# ---------------------------------------------------------------- Python and packages


def check_python() -> bool:
    ok = sys.version_info >= MIN_PYTHON
    needs = ".".join(map(str, MIN_PYTHON))
    advice = "" if ok else f": install Python {needs} or newer and make a fresh virtual environment with it"
    return report(ok, f"Python {platform.python_version()} (needs {needs} or newer){advice}")


def requirements(path: Path = REQUIREMENTS) -> list:
    """The requirements of a pip requirements file, comments and blank lines left out."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return [Requirement(line) for line in lines if line]


@functools.cache
def module_owners() -> dict:
    """{top-level module: the distributions that install it}, of everything installed."""
    return importlib.metadata.packages_distributions()


def top_level_module(distribution: str):
    """The module a distribution installs under its own name (llama-models: llama_models), or its first; None
    for a distribution that installs no module (jupyter, which only pulls in others)."""
    name = canonicalize_name(distribution)
    modules = sorted(module for module, owners in module_owners().items()
                     if name in {canonicalize_name(owner) for owner in owners} and module.isidentifier())
    own = name.replace("-", "_")
    return own if own in modules else (modules[0] if modules else None)


def check_requirement(requirement: Requirement) -> bool:
    wanted = f"{requirement.name}{requirement.specifier}"
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return report(False, f"{requirement.name} is not installed (needs {wanted}): {INSTALL}")
    if not requirement.specifier.contains(version, prereleases=True):
        return report(False, f"{requirement.name} {version} is installed, but the notebooks need {wanted}: {INSTALL}")
    module = top_level_module(requirement.name)
    if module is not None:
        try:
            importlib.import_module(module)
        except Exception as error:  # a broken install fails in its own way: each is one FAIL line
            return report(False, f"{requirement.name} {version} is installed but `import {module}` fails "
                                 f"({type(error).__name__}: {error}): reinstall it with {INSTALL} --force-reinstall")
    return report(True, f"{requirement.name} {version} (needs {wanted})")


# ---------------------------------------------------------------- the checkpoint, memory, disk


def weight_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).glob("consolidated.*.pth"))


def check_checkpoint(folder: Path):
    """The walkthrough's own checks of the folder; the folder it read (a hub repository's original/) or None."""
    from llama3_support.checkpoint_check import open_checkpoint

    try:
        checkpoint = open_checkpoint(folder)
    except Exception as error:  # every refusal of checkpoint_check is a paragraph saying what to do
        report(False, f"checkpoint {shown_path(Path(folder))}: {error}")
        return None
    report(True, f"checkpoint {shown_path(Path(folder))}: {checkpoint.model_name}, {len(checkpoint.weight_shapes)} "
                 f"tensors, {len(checkpoint.mergeable_ranks)} tokens, {human_size(weight_bytes(checkpoint.folder))}")
    return checkpoint.folder


def memory_bytes():
    """(bytes, what they are): Linux's available memory, else the machine's physical memory."""
    from llama3_support.scaling_up import available_memory_bytes

    available = available_memory_bytes()
    if available:
        return available, "available"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "installed"


def check_memory(folder: Path) -> bool:
    needed = weight_bytes(folder) + NOTEBOOK_OWN_BYTES
    have, what = memory_bytes()
    ok = have >= needed
    advice = "" if ok else (": close other programs, or use a smaller checkpoint (docs/checkpoints.md); with less the "
                            "notebook still runs, reading the weights from disk again on every pass")
    return report(ok, f"memory: {human_size(have)} {what}, the checkpoint needs {human_size(needed)} (its weights and "
                      f"the notebook's own {human_size(NOTEBOOK_OWN_BYTES)}){advice}")


def check_disk(folder: Path) -> bool:
    where = nearest_existing(Path(folder).resolve())
    free = shutil.disk_usage(where).free
    ok = free >= DISK_NEEDED
    advice = "" if ok else ": free some space there (the executed notebooks and their pictures are written there)"
    return report(ok, f"disk: {human_size(free)} free in {shown_path(where)}, needs {human_size(DISK_NEEDED)}{advice}")


def preflight(checkpoint_dir=None) -> bool:
    """Print one OK or FAIL line per requirement; True when every one is met. checkpoint_dir: the folder the
    room will use (default: LLAMA3_DIR, else the walkthrough's default)."""
    from llama3_support.settings import default_checkpoint_dir

    folder = Path(checkpoint_dir or os.environ.get("LLAMA3_DIR") or default_checkpoint_dir())
    results = [check_python()]
    results += [check_requirement(requirement) for requirement in requirements()]
    checkpoint_folder = check_checkpoint(folder)
    results.append(checkpoint_folder is not None)
    if checkpoint_folder is not None:
        results.append(check_memory(checkpoint_folder))
    results.append(check_disk(REPO))
    ok = all(results)
    print("Ready." if ok else f"{results.count(False)} requirement(s) not met: see the FAIL lines.")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", metavar="DIR",
                        help="the checkpoint folder the room will use (default: LLAMA3_DIR, else the walkthrough's default)")
    args = parser.parse_args(argv)
    return 0 if preflight(args.checkpoint) else 1


if __name__ == "__main__":
    sys.exit(main())
