"""Re-execute the notebook on the demo checkpoint and store its outputs, following the project's rule.

    python tests/refresh_stored_outputs.py

Stored outputs must be ones that Meta-Llama-3-8B prints too. The demo has Meta's params.json, shapes and
tokenizer, so its shape, id, config, RoPE and mask outputs are Meta's; the cells marked
`# NBVAL_IGNORE_OUTPUT` depend on weight values (or on the machine) and are stored empty.
"""

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import download_weights  # noqa: E402

IGNORE_MARKER = "# NBVAL_IGNORE_OUTPUT"


def is_ignored(cell) -> bool:
    return cell.cell_type == "code" and IGNORE_MARKER in cell.source


def execute_on_demo(notebook_path: Path) -> nbformat.NotebookNode:
    if not download_weights.demo_is_complete(download_weights.DEMO_DIR):
        download_weights.build_demo()
    notebook = nbformat.read(notebook_path, as_version=4)
    os.environ["LLAMA3_DIR"] = str(download_weights.DEMO_DIR)
    for name in ("LLAMA3_PROMPT", "LLAMA3_DTYPE", "LLAMA3_DEVICE"):
        os.environ.pop(name, None)
    NotebookClient(notebook, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    return notebook


def keep_only_storable_outputs(notebook: nbformat.NotebookNode) -> None:
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)  # timings change on every run
        if is_ignored(cell):
            cell.outputs = []
            cell.execution_count = None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", nargs="?", type=Path, default=REPO / "llama3_from_scratch.ipynb")
    args = parser.parse_args(argv)
    notebook = execute_on_demo(args.notebook)
    keep_only_storable_outputs(notebook)
    nbformat.write(notebook, args.notebook)
    print(f"stored the outputs of {args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
