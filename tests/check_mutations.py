"""Do the fidelity tests catch a one-character bug in the notebook? Break a copy of it and see.

    python tests/check_mutations.py                 # every mutation in turn (a minute or two each)
    python tests/check_mutations.py --list          # what each mutation changes
    python tests/check_mutations.py silu-sign mask-diagonal
    python tests/check_mutations.py --without-notebook-asserts   # only the tests may notice
    python tests/check_mutations.py gqa-index-batched -k gqa2    # only the tests that match

Each mutation changes one character of one code cell in a copy of llama3_from_scratch.ipynb (the notebook
itself is never written), then runs the given test files on the copy (NOTEBOOK_UNDER_TEST) until the first
failure. It prints which test failed and with which error. A mutation that no test catches is reported
as SURVIVED, and the exit status is then 1.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "llama3_from_scratch.ipynb"
DEFAULT_TESTS = ["tests/test_fidelity.py"]

# name -> (what the bug does, text in one code cell, the same text with one character changed)
MUTATIONS = {
    "rope-frequency": ("RoPE: every frequency doubled",
                       "base_rope_frequencies = 1.0 / (rope_theta", "base_rope_frequencies = 2.0 / (rope_theta"),
    "rope-direction": ("RoPE: rotations turn the other way (shared by every attention path)",
                       "torch.polar(torch.ones_like(angles), angles)", "torch.polar(torch.ones_like(angles), -angles)"),
    "rope-apply-direction": ("RoPE: apply_rope divides by the rotation instead of multiplying",
                             "x_as_complex * rotations)", "x_as_complex / rotations)"),
    "mask-diagonal": ("mask: each token also sees the next one (layer function's mask)",
                      ".triu(diagonal=start_position + 1)", ".triu(diagonal=start_position + 2)"),
    "mask-unrolled": ("mask: each token also sees the next one (unrolled layer 0)",
                      "dtype=compute_dtype).triu(diagonal=1)", "dtype=compute_dtype).triu(diagonal=2)"),
    "gqa-index-batched": ("GQA: keys broadcast across the wrong axis, so group g reads key/value head g",
                          "k_per_kv_head = k.permute(1, 0, 2).unsqueeze(1)", "k_per_kv_head = k.permute(1, 0, 2).unsqueeze(0)"),
    "swiglu-gate-weight": ("SwiGLU: the gate uses w3 instead of w1 (layer function)",
                           'gate = silu(x_normed @ weight(f"{prefix}.w1.weight").T)',
                           'gate = silu(x_normed @ weight(f"{prefix}.w3.weight").T)'),
    "swiglu-product": ("SwiGLU: gate + up instead of gate * up (unrolled layer 0)",
                       "ffn_output = (gate * up) @", "ffn_output = (gate + up) @"),
    "silu-sign": ("SwiGLU: silu(-x) instead of silu(x) (shared by every path)",
                  "return torch.nn.functional.silu(x)", "return torch.nn.functional.silu(-x)"),
    "rmsnorm-power": ("RMSNorm: mean of cubes instead of squares",
                      "x_float.pow(2).mean(", "x_float.pow(3).mean("),
    "rmsnorm-epsilon": ("RMSNorm: epsilon subtracted instead of added (a relative change of about 1e-5)",
                        "keepdim=True) + norm_eps)", "keepdim=True) - norm_eps)"),
}


def is_one_character_edit(old: str, new: str) -> bool:
    """new is old with one character replaced, inserted or deleted."""
    if len(old) == len(new):
        return sum(a != b for a, b in zip(old, new)) == 1
    shorter, longer = sorted((old, new), key=len)
    if len(longer) - len(shorter) != 1:
        return False
    return any(longer[:i] + longer[i + 1:] == shorter for i in range(len(longer)))


def mutated_notebook(name: str, folder: Path, keep_asserts: bool = True) -> Path:
    """A copy of the notebook in folder with the mutation applied; its one code cell must hold the text once.

    keep_asserts=False also turns the notebook's own assert statements into plain expressions, so that only
    the tests can notice the bug (the notebook checks, for one, that its two ways of computing layer 0 agree).
    """
    _, old, new = MUTATIONS[name]
    if not is_one_character_edit(old, new):
        raise ValueError(f"mutation {name} changes more than one character")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cells = [cell for cell in notebook.cells if cell.cell_type == "code" and old in cell.source]
    if len(cells) != 1 or cells[0].source.count(old) != 1:
        raise ValueError(f"mutation {name}: {old!r} occurs in {len(cells)} code cells, not exactly once; "
                         "the notebook has changed: update MUTATIONS")
    cells[0].source = cells[0].source.replace(old, new)
    if not keep_asserts:
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.source = re.sub(r"^(\s*)assert ", r"\1_ = ", cell.source, flags=re.MULTILINE)
    path = folder / f"mutated-{name}.ipynb"
    nbformat.write(notebook, path)
    return path


def first_failure(output: str) -> str:
    """'test id: error' from pytest's output, or '' when nothing failed. An error inside the notebook is
    given as the exception and the notebook line that raised it."""
    failed = re.search(r"^FAILED (\S+)", output, re.MULTILINE)
    if not failed:
        return ""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)  # the kernel's traceback is coloured
    errors = [line[1:].strip() for line in plain.splitlines() if line.startswith("E ") and line[1:].strip()]
    exceptions = [line for line in errors if re.match(r"[\w.]*(Error|Exception)\b", line)]
    message = exceptions[-1] if exceptions else (errors[-1] if errors else "")
    raising_lines = [line for line in errors if line.startswith("---> ")]
    if "CellExecutionError" in plain and raising_lines:
        message = f"in the notebook, {message} at `{raising_lines[-1].split(maxsplit=2)[-1]}`"
    return f"{failed.group(1)}: {message}"


def run_tests_on(notebook: Path, tests: list, selection: str = None) -> tuple:
    env = dict(os.environ, NOTEBOOK_UNDER_TEST=str(notebook), COLUMNS="400")
    command = [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-rf", "--tb=short", "-p", "no:cacheprovider"]
    if selection:
        command += ["-k", selection]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    return result.returncode, first_failure(result.stdout + result.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mutations", nargs="*", help=f"mutations to try (default: all): {', '.join(MUTATIONS)}")
    parser.add_argument("--tests", nargs="+", default=DEFAULT_TESTS, help=f"test files to run (default: {DEFAULT_TESTS})")
    parser.add_argument("--without-notebook-asserts", action="store_true",
                        help="disable the notebook's own assert statements too, so that only the tests can catch a bug")
    parser.add_argument("-k", dest="selection", help="run only the tests that match this pytest -k expression")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    unknown = [name for name in args.mutations if name not in MUTATIONS]
    if unknown:
        parser.error(f"unknown mutations {unknown}; --list shows them")
    if args.list:
        for name, (description, old, new) in MUTATIONS.items():
            print(f"{name}: {description}\n    {old}\n -> {new}")
        return 0

    survived = []
    with tempfile.TemporaryDirectory(prefix="llama3-mutations-") as scratch:
        for name in args.mutations or MUTATIONS:
            notebook = mutated_notebook(name, Path(scratch), keep_asserts=not args.without_notebook_asserts)
            status, failure = run_tests_on(notebook, args.tests, args.selection)
            if status == 0:
                survived.append(name)
                print(f"SURVIVED {name}: {MUTATIONS[name][0]}", flush=True)
            else:
                print(f"caught   {name}: {MUTATIONS[name][0]}\n         {failure or f'pytest exit status {status}'}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
