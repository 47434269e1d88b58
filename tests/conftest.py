"""Shared test setup: the demo checkpoint, built once and reused between runs.

`pytest` with no LLAMA3_DIR points the notebook at the demo; with LLAMA3_DIR set (to Meta's
weights, say) the notebook is re-executed on that folder instead.
"""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "llama3_from_scratch.ipynb"
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
    """Before nbval starts the notebook's kernel, make sure LLAMA3_DIR names a checkpoint."""
    runs_notebook = any(Path(str(item.fspath)).suffix == ".ipynb" for item in session.items)
    if runs_notebook and "LLAMA3_DIR" not in os.environ:
        os.environ["LLAMA3_DIR"] = str(ensure_demo_checkpoint(session.config))


@pytest.fixture(scope="session")
def demo_checkpoint(pytestconfig) -> Path:
    return ensure_demo_checkpoint(pytestconfig)
