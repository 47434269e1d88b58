"""tests/slow_tests.txt, the list behind `pytest -m "not slow"`, names tests that exist, and leaves every test file
that it does not name whole with at least one test in the fast tier."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SLOW_TESTS, is_slow, pattern_names, slow_test_rules

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def collected(pytestconfig) -> list:
    """Every test of the suite: those this run collected if it is a run of the whole suite (tests/conftest.py keeps
    their names), else as `pytest --collect-only` names them (collection only: no notebook runs, so no checkpoint
    is needed; the LLAMA3_* folders named here are never read)."""
    if getattr(pytestconfig, "whole_suite_nodeids", None):
        return pytestconfig.whole_suite_nodeids
    env = {**os.environ, "LLAMA3_DIR": str(REPO / "checkpoints" / "unused"), "LLAMA3_TRAIN_OUT": str(REPO / "unused")}
    listing = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q"], cwd=REPO,
                             env=env, capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if "::" in line]


def test_a_pattern_names_a_test_its_file_or_its_cases():
    assert pattern_names("tests/test_x.py", "tests/test_x.py::test_y[a b]")
    assert pattern_names("tests/test_x.py::test_y", "tests/test_x.py::test_y[a b]")
    assert pattern_names("tests/test_x.py::test_y[a b]", "tests/test_x.py::test_y[a b]")
    assert pattern_names("tests/test_x.py::*[a*", "tests/test_x.py::test_z[a-c]")
    assert pattern_names("*.ipynb", "llama3_from_scratch.ipynb::Cell 3")
    assert not pattern_names("tests/test_x.py::test_y", "tests/test_x.py::test_yz")
    assert not pattern_names("tests/test_x.py::test_y[a]", "tests/test_x.py::test_y[b]")


def test_the_last_line_that_names_a_test_decides(tmp_path):
    listing = tmp_path / "slow.txt"
    listing.write_text("# comment\ntests/test_x.py\n!tests/test_x.py::test_y[a]  # kept\n")
    rules = slow_test_rules(listing)
    assert rules == [("tests/test_x.py", True), ("tests/test_x.py::test_y[a]", False)]
    assert is_slow("tests/test_x.py::test_y[b]", rules)
    assert not is_slow("tests/test_x.py::test_y[a]", rules)
    assert not is_slow("tests/test_w.py::test_y", rules)


def test_every_line_names_a_test_that_exists(collected):
    stale = [pattern for pattern, _ in slow_test_rules(SLOW_TESTS)
             if not any(pattern_names(pattern, nodeid) for nodeid in collected)]
    assert not stale, f"{SLOW_TESTS.name} names tests that no longer exist (renamed?): {stale}"


def test_the_notebooks_are_slow_and_each_test_file_keeps_a_fast_test(collected):
    rules = slow_test_rules(SLOW_TESTS)
    assert any(nodeid.split("::")[0].endswith(".ipynb") for nodeid in collected)
    assert all(is_slow(nodeid, rules) for nodeid in collected if nodeid.split("::")[0].endswith(".ipynb"))
    named_whole = {pattern for pattern, slow in rules if slow and "::" not in pattern}
    files = dict.fromkeys(nodeid.split("::")[0] for nodeid in collected if nodeid.startswith("tests/"))
    without_fast = [name for name in files if name not in named_whole
                    and all(is_slow(nodeid, rules) for nodeid in collected if nodeid.startswith(name + "::"))]
    assert not without_fast, f"these files have no test left in the fast tier: {without_fast}"
