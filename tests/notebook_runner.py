"""Execute llama3_from_scratch.ipynb headlessly, as a user would, and hand back what it computed.

The notebook runs in a fresh Jupyter kernel with LLAMA3_DIR, LLAMA3_PROMPT and any other setting in its
environment; one extra cell at the end saves the variables asked for with torch.save. Nothing of the
notebook's arithmetic is copied here: whatever the tests compare is what the notebook's own cells computed.
"""

import os
import tempfile
import time
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "llama3_from_scratch.ipynb"
# NOTEBOOK_UNDER_TEST=path in the test process executes that copy instead (a deliberately broken one, say)
NOTEBOOK_OVERRIDE = "NOTEBOOK_UNDER_TEST"
RESULT_NAMES = ("tokens", "logits", "next_token")
NOTEBOOK_SETTINGS = ("LLAMA3_DIR", "LLAMA3_PROMPT", "LLAMA3_DTYPE", "LLAMA3_DEVICE", "LLAMA3_STREAM",
                     "LLAMA3_MAX_NEW_TOKENS", "LLAMA3_TEMPERATURE", "LLAMA3_TOP_P", "LLAMA3_SEED", "LLAMA3_CHAT",
                     "LLAMA3_ROPE_SCALE_FACTOR")


def save_cell(names, path: Path) -> nbformat.NotebookNode:
    saved = ", ".join(f"{name!r}: {name}" for name in names)
    return nbformat.v4.new_code_cell(f"torch.save({{{saved}}}, {str(path)!r})")


def run_notebook(checkpoint_dir, prompt: str = None, names=RESULT_NAMES, timeout: int = 1200, *,
                 extra_cells=(), on_kernel_start=None, **settings) -> dict:
    """Execute the whole notebook on checkpoint_dir and return {name: value} for the names asked for.

    prompt=None keeps the notebook's default prompt; settings are further LLAMA3_* variables, given
    without the prefix in lower case: run_notebook(folder, dtype="float32", max_new_tokens=5).
    A cell that raises makes this raise nbclient's CellExecutionError, with the cell and its traceback.
    extra_cells: sources of code cells run after the notebook's own (before the variables are saved), so
    that they may define more names to return; on_kernel_start(pid) is called once the kernel is ready.
    """
    env = {name: value for name, value in os.environ.items() if name not in NOTEBOOK_SETTINGS}
    env["LLAMA3_DIR"] = str(Path(checkpoint_dir).resolve())
    if prompt is not None:
        env["LLAMA3_PROMPT"] = prompt
    for name, value in settings.items():
        env[f"LLAMA3_{name.upper()}"] = str(value)
    env.setdefault("MPLBACKEND", "agg")

    notebook = nbformat.read(os.environ.get(NOTEBOOK_OVERRIDE) or NOTEBOOK, as_version=4)
    with tempfile.TemporaryDirectory(prefix="llama3-notebook-") as scratch:
        results_path = Path(scratch) / "results.pt"
        notebook.cells.extend(nbformat.v4.new_code_cell(source) for source in extra_cells)
        notebook.cells.append(save_cell(names, results_path))
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(REPO)}})
        if on_kernel_start is not None:
            client.on_notebook_start = lambda notebook: on_kernel_start(client.km.provisioner.pid)
        started = time.perf_counter()
        client.execute(env=env)
        results = torch.load(results_path, weights_only=False)
    results["_wall_seconds"] = time.perf_counter() - started
    return results
