"""How close each numerical test comes to its tolerance, under every instruction set this CPU allows.

    python benchmarks/isa_margins.py                       # every numerical test, every setting (about half an hour a setting on 2 cores)
    python benchmarks/isa_margins.py --settings avx2 -- tests/test_jax.py -k loss

PyTorch, oneDNN, MKL and XLA choose their kernels, and with them the order of every sum, by the instruction set:
a tolerance that holds on the CPU it was written on can fail on a laptop without AVX-512. Each setting below caps
all four libraries at one instruction set, runs the numerical tests with LLAMA3_MARGINS set (tests/rounding.py
then records every check's |difference| / tolerance), and the table gives each test's worst margin per setting.
A margin above 0.5 anywhere means the rule leaves too little room. Results go to benchmarks/results/.
"""

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark import cpu_flags, cpu_flags_that_matter, cpu_info_line

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
NUMERICAL_TESTS = ["tests/test_fidelity.py", "tests/test_hf_peer.py", "tests/test_generation_and_family.py",
                   "tests/test_jax.py", "tests/test_training.py",
                   "tests/test_bad_input.py::test_attention_in_blocks_of_queries_equals_attention_in_one_block"]
# name -> (the CPU flag it needs, the environment that caps PyTorch, oneDNN, MKL and XLA at it)
SETTINGS = {
    "native": (None, {}),
    "avx2": ("avx2", {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                      "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}),
    "default": ("sse4_2", {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                           "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"}),
}

def run_setting(name: str, pytest_args: list) -> dict:
    """{test id: worst margin} of the tests run under setting name, and pytest's exit status."""
    _, environment = SETTINGS[name]
    with tempfile.TemporaryDirectory(prefix="llama3-margins-") as scratch:
        margins_path = Path(scratch) / "margins.jsonl"
        env = {**os.environ, **environment, "LLAMA3_MARGINS": str(margins_path)}
        started = time.perf_counter()
        print(f"\n== {name}: {' '.join(f'{k}={v}' for k, v in environment.items()) or 'no caps'}", flush=True)
        status = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:nbval", "-o", "addopts=-p no:cacheprovider",
                                 *pytest_args], cwd=REPO, env=env).returncode
        worst = collections.defaultdict(float)
        if margins_path.exists():
            for line in margins_path.read_text().splitlines():
                record = json.loads(line)
                worst[record["test"]] = max(worst[record["test"]], record["margin"])
    return {"status": status, "seconds": round(time.perf_counter() - started), "worst": dict(worst)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("pytest_args", nargs="*", help="after --: test files or ids, -k ... (default: every numerical test)")
    args = parser.parse_args(argv)

    flags = cpu_flags()
    settings = [name for name in args.settings if SETTINGS[name][0] is None or not flags or SETTINGS[name][0] in flags]
    if platform.machine().lower() not in ("x86_64", "amd64"):
        settings = [name for name in settings if name in ("native", "default")]
    runs = {name: run_setting(name, args.pytest_args or NUMERICAL_TESTS) for name in settings}

    machine = (f"{time.strftime('%Y-%m-%d')}, {cpu_info_line('model name') or platform.processor()} "
               f"({os.cpu_count()} cores; {cpu_flags_that_matter()})")
    print(f"\n{machine}\n")
    tests = sorted({test for run in runs.values() for test in run["worst"]})
    print("| test | " + " | ".join(settings) + " |")
    print("| --- | " + " | ".join("---" for _ in settings) + " |")
    for test in tests:
        print(f"| {test} | " + " | ".join(f"{runs[name]['worst'].get(test, float('nan')):.2f}" for name in settings) + " |")
    for name in settings:
        print(f"{name}: pytest exit {runs[name]['status']}, {runs[name]['seconds']} s")
    worst = max((margin for run in runs.values() for margin in run["worst"].values()), default=0.0)
    print(f"worst margin {worst:.2f} (above 0.5: the rule is too tight)")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report = RESULTS_DIR / f"isa-margins-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report.write_text(json.dumps({"machine": machine, "runs": runs}, indent=1))
    print(f"written to {report}")
    return 0 if all(run["status"] == 0 for run in runs.values()) and worst <= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
