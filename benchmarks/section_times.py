"""How long each section of the walkthrough takes: the whole notebook executed headlessly, timed per `##` section.

    python benchmarks/section_times.py                                          # SmolLM2, "The capital of France is"
    python benchmarks/section_times.py --checkpoint checkpoints/Meta-Llama-3-8B-demo --prompt ""

The walkthrough runs in a fresh Jupyter kernel (nbclient), as `jupyter nbconvert --execute` runs it, with
LLAMA3_DIR, LLAMA3_PROMPT and LLAMA3_DTYPE set and no other LLAMA3_* setting. Each code cell is timed from the
moment it is sent to the kernel until its reply, and belongs to the section of the last `## ` heading above it
(the cells before the first heading: "start"). The total is the wall time of the whole run, the kernel's start
included. One table goes to stdout (markdown, for docs/workshop.md); the figures, the machine and its load to a
JSON file in benchmarks/results/. The times are the machine's alone only on a quiet machine: the load average
before and after is printed beside them.
"""

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from benchmark import REPO, RESULTS, describe_machine  # noqa: E402  (also puts tests/ on the path)
from notebook_runner import NOTEBOOK, NOTEBOOK_SETTINGS  # noqa: E402

import nbformat  # noqa: E402
import torch  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

DEFAULT_CHECKPOINT = REPO / "checkpoints" / "SmolLM2-135M-Instruct"
DEFAULT_PROMPT = "The capital of France is"  # the prompt SmolLM2 answers with " Paris"
START = "start"  # the cells before the first section's heading
TIMEOUT = 3600  # seconds a cell may take (the 8B on a slow CPU)


def section_of_each_cell(notebook: nbformat.NotebookNode) -> list:
    """For every cell, the title of the `## ` section it is in."""
    sections, current = [], START
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            heading = next((line[3:].strip() for line in cell.source.splitlines() if line.startswith("## ")), None)
            current = heading or current
        sections.append(current)
    return sections


class TimedClient(NotebookClient):
    """nbclient's client, noting how long each cell took from its request to its reply, and showing progress."""

    def __init__(self, notebook, sections: list, **kwargs):
        super().__init__(notebook, **kwargs)
        self.sections, self.cell_seconds, self.started = sections, {}, {}
        self.on_cell_execute = self.note_start
        self.on_cell_executed = self.note_end

    def note_start(self, cell, cell_index):
        self.started[cell_index] = time.perf_counter()

    def note_end(self, cell, cell_index, execute_reply):
        self.cell_seconds[cell_index] = time.perf_counter() - self.started[cell_index]
        later = [index for index in range(cell_index + 1, len(self.sections)) if self.nb.cells[index].cell_type == "code"]
        if not later or self.sections[later[0]] != self.sections[cell_index]:  # the section's last code cell
            print(f"  {self.sections[cell_index]}: {self.section_seconds()[self.sections[cell_index]]:.1f} s", flush=True)

    def section_seconds(self) -> dict:
        seconds = {}
        for index, cell_seconds in self.cell_seconds.items():
            seconds[self.sections[index]] = seconds.get(self.sections[index], 0.0) + cell_seconds
        return seconds


def notebook_environment(checkpoint: Path, prompt: str, dtype: str) -> dict:
    env = {name: value for name, value in os.environ.items() if name not in NOTEBOOK_SETTINGS}
    env |= {"LLAMA3_DIR": str(checkpoint.resolve()), "LLAMA3_DTYPE": dtype, "MPLBACKEND": "agg"}
    if prompt:
        env["LLAMA3_PROMPT"] = prompt
    return env


def time_sections(checkpoint: Path, prompt: str, dtype: str) -> dict:
    """Execute the walkthrough once; {"sections": {title: seconds}, "total_seconds": ...}."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = TimedClient(notebook, section_of_each_cell(notebook), timeout=TIMEOUT, kernel_name="python3",
                         resources={"metadata": {"path": str(REPO)}})
    started = time.perf_counter()
    client.execute(env=notebook_environment(checkpoint, prompt, dtype))
    return {"sections": client.section_seconds(), "total_seconds": time.perf_counter() - started}


def markdown_table(sections: dict, total: float) -> str:
    rows = ["| section | seconds |", "| --- | ---: |"]
    rows += [f"| {title} | {seconds:.1f} |" for title, seconds in sections.items()]
    rows.append(f"| **total**, the kernel's start included | **{total:.1f}** |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help=f"the checkpoint folder (default: {DEFAULT_CHECKPOINT.relative_to(REPO)})")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT,
                        help=f"LLAMA3_PROMPT (default: {DEFAULT_PROMPT!r}; \"\" keeps the notebook's own default)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="LLAMA3_DTYPE (default: bfloat16)")
    parser.add_argument("--json", type=Path,
                        help="where to write the figures (default: benchmarks/results/section-times-<date>-<folder>.json)")
    args = parser.parse_args(argv)
    if not (args.checkpoint / "params.json").is_file():
        parser.error(f"{args.checkpoint} holds no params.json: build a checkpoint first, e.g. "
                     "python download_weights.py --model SmolLM2-135M-Instruct (or --demo)")

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    print(f"executing {NOTEBOOK.name} on {args.checkpoint} ({args.dtype}), section by section:", flush=True)
    timed = time_sections(args.checkpoint, args.prompt, args.dtype)
    load_after = os.getloadavg()
    machine = describe_machine(torch.device("cpu"))
    report = {"date": started.isoformat(timespec="seconds"), "checkpoint": str(args.checkpoint), "prompt": args.prompt,
              "dtype": args.dtype, "machine": machine, "load_average_before": load_before[0],
              "load_average_after": load_after[0], **timed}
    path = args.json or RESULTS / f"section-times-{started:%Y-%m-%d-%H%M}-{args.checkpoint.resolve().name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{started:%Y-%m-%d}, {machine['cpu']} ({machine['cores']} cores; {machine['cpu_flags']}), torch "
          f"{machine['torch']}; {args.checkpoint.resolve().name}, {args.dtype}; load average {load_before[0]:.1f} "
          f"before, {load_after[0]:.1f} after\n")
    print(markdown_table(timed["sections"], timed["total_seconds"]))
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
