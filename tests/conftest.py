"""Shared test setup: the demo checkpoint, built once and reused between runs.

`pytest` with no LLAMA3_DIR points the notebook at the demo; with LLAMA3_DIR set (to Meta's
weights, say) the notebook is re-executed on that folder instead. The training notebook, re-executed
by nbval with its default settings, writes its checkpoint into a temporary folder unless LLAMA3_TRAIN_OUT
names one, so that `pytest` never replaces a model the user trained in checkpoints/tiny-shakespeare.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "llama3_from_scratch.ipynb"
TRAINING_NOTEBOOK = REPO / "train_llama3_from_scratch.ipynb"
sys.path.insert(0, str(REPO))

import download_weights  # noqa: E402


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


def pytest_collection_finish(session):
    """Before nbval starts a notebook's kernel: LLAMA3_DIR names a checkpoint, LLAMA3_TRAIN_OUT a scratch folder."""
    notebooks = {Path(str(item.fspath)).name for item in session.items if Path(str(item.fspath)).suffix == ".ipynb"}
    if NOTEBOOK.name in notebooks and "LLAMA3_DIR" not in os.environ:
        os.environ["LLAMA3_DIR"] = str(ensure_demo_checkpoint(session.config))
    if TRAINING_NOTEBOOK.name in notebooks and "LLAMA3_TRAIN_OUT" not in os.environ:
        session.config.training_scratch = Path(tempfile.mkdtemp(prefix="llama3-training-"))
        os.environ["LLAMA3_TRAIN_OUT"] = str(session.config.training_scratch / "tiny-shakespeare")


def pytest_collection_modifyitems(items):
    """nbval waits a fixed 5 s for a cell's last outputs once the cell has run (nbval issues 136, 231); after the
    training cell's minutes of output a busy CI machine can take longer to deliver them. Give it a minute."""
    for item in items:
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
