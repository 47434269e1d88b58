"""Execute train_llama3_from_scratch.ipynb headlessly, as a user would, with settings from the environment.

The notebook runs in a fresh Jupyter kernel with LLAMA3_TRAIN_OUT pointing at the folder given and the other
settings as environment variables; extra_source, when given, runs as one more cell at the end, so a test can
save what the notebook computed (its `model`, `get_batch`, `tokenizer`, `params`) with torch.save. Nothing of
the notebook's code is copied here.
"""

import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
TRAINING_NOTEBOOK = REPO / "train_llama3_from_scratch.ipynb"
# TRAINING_NOTEBOOK_UNDER_TEST=path in the test process executes that copy instead
NOTEBOOK_OVERRIDE = "TRAINING_NOTEBOOK_UNDER_TEST"
SETTINGS_PREFIX = "LLAMA3_TRAIN_"


def run_training_notebook(out_dir: Path, settings: dict, extra_source: str = "", timeout: int = 1800,
                          notebook_path: Path = None) -> float:
    """Execute the whole training notebook, writing its checkpoint into out_dir; returns the wall seconds.

    settings: {"LLAMA3_TRAIN_STEPS": "20", "LLAMA3_DEVICE": "cpu", ...}; every LLAMA3_TRAIN_* variable of this
    process is left out first, so that only these settings reach the notebook. A cell that raises makes this
    raise nbclient's CellExecutionError, whose message holds the cell's source and traceback. notebook_path:
    another notebook to execute the same way (the training notebook's exercise copy, say).
    """
    started = time.perf_counter()
    execute_training_notebook(out_dir, settings, extra_source, timeout, notebook_path)
    return time.perf_counter() - started


def execute_training_notebook(out_dir: Path, settings: dict, extra_source: str = "", timeout: int = 1800,
                              notebook_path: Path = None) -> nbformat.NotebookNode:
    """As run_training_notebook, returning the executed notebook, every cell's outputs in it."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(SETTINGS_PREFIX)}
    env["LLAMA3_TRAIN_OUT"] = str(Path(out_dir).resolve())
    env.update({name: str(value) for name, value in settings.items()})
    env.setdefault("MPLBACKEND", "agg")

    path = notebook_path or os.environ.get(NOTEBOOK_OVERRIDE) or TRAINING_NOTEBOOK
    notebook = nbformat.read(path, as_version=4)
    if extra_source:
        notebook.cells.append(nbformat.v4.new_code_cell(extra_source))
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    client.execute(env=env)
    return notebook
