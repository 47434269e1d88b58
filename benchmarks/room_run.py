"""Quality against minutes: the training notebook under a time budget (LLAMA3_TRAIN_MINUTES), one run a budget.

    python benchmarks/room_run.py                    # budgets of 1, 2, 3 and 5 minutes
    python benchmarks/room_run.py --minutes 3        # the workshop's room-sized run only

Each run executes the whole notebook (tests/training_runner.py) into a scratch folder and reports the kept
checkpoint's validation loss per character, the steps it took, the seconds of training, the notebook's wall
seconds (the merges and the encoding included) and the sample it wrote after training. The load average before
and after each run is recorded: on a shared machine the same minutes buy fewer steps, so quote it with the
figures. Results go to benchmarks/results/room-<date>.json.

--steps-per-second RATE measures on a busy machine what a quiet one of that speed reaches: each run then takes
round(minutes * 60 * RATE) steps with the ordinary step schedule instead of a time budget, which is the schedule
LLAMA3_TRAIN_MINUTES gives a machine that trains RATE steps a second (the quality then depends on the steps, not
on how long they took here). The default run's stored outputs give the rate of their machine: 3000 steps in 336 s.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from training_runner import run_training_notebook  # noqa: E402

RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_BUDGETS = (1.0, 2.0, 3.0, 5.0)

# runs after the notebook's own cells: what the run did, for the report
SAVE_RUN = """
json.dump({"history": history, "best_step": best_step, "sample": sample_text(model, SAMPLE_PROMPT, SAMPLE_TOKENS),
           "threads": torch.get_num_threads()}, open(RUN_PATH, "w"))
"""


def time_budget_run(minutes: float, settings: dict, steps_per_second: float = None) -> dict:
    """One run of the notebook with this budget (or its steps at steps_per_second): its kept quality, steps,
    seconds and sample."""
    if steps_per_second:
        budget = {"LLAMA3_TRAIN_STEPS": str(round(minutes * 60 * steps_per_second))}
    else:
        budget = {"LLAMA3_TRAIN_MINUTES": f"{minutes:g}"}
    with tempfile.TemporaryDirectory(prefix="llama3-room-run-") as scratch:
        run_path = Path(scratch) / "run.json"
        load_before = os.getloadavg()[0]
        wall = run_training_notebook(Path(scratch) / "checkpoint", {**settings, **budget},
                                     SAVE_RUN.replace("RUN_PATH", repr(str(run_path))))
        source = json.loads((Path(scratch) / "checkpoint" / "source.json").read_text())
        run = json.loads(run_path.read_text())
    history = run["history"]
    return {"minutes": minutes, "settings": budget, "val_nats_per_character": source["losses"]["val_nats_per_character"],
            "kept_step": run["best_step"], "steps_done": history[-1][0], "train_seconds": history[-1][1],
            "notebook_seconds": round(wall, 1), "load_before": load_before, "load_after": os.getloadavg()[0],
            "val_tokens_per_character": source["data"]["val_tokens_per_character"], "history": history,
            "threads": run["threads"], "sample": run["sample"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=DEFAULT_BUDGETS,
                        help="the time budgets to run, in minutes of training (default: 1 2 3 5)")
    parser.add_argument("--steps-per-second", type=float, metavar="RATE",
                        help="run minutes * 60 * RATE steps on the step schedule instead of a time budget: what a "
                             "machine of that speed reaches, measured on this one however busy it is")
    parser.add_argument("--device", help="LLAMA3_DEVICE for the notebook (default: as the notebook chooses)")
    args = parser.parse_args(argv)
    if any(minutes <= 0 for minutes in args.minutes):
        parser.error(f"--minutes {args.minutes}: each budget is a number of minutes above 0")
    if args.steps_per_second is not None and args.steps_per_second <= 0:
        parser.error(f"--steps-per-second {args.steps_per_second}: a rate above 0, say 8.93 (3000 steps in 336 s)")
    settings = {"LLAMA3_DEVICE": args.device} if args.device else {}
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "steps_per_second": args.steps_per_second, "runs": []}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"room-{time.strftime('%Y%m%d-%H%M%S')}.json"
    for minutes in args.minutes:
        print(f"training for {minutes:g} minutes ...", flush=True)
        run = time_budget_run(minutes, settings, args.steps_per_second)
        report["runs"].append(run)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{minutes:g} min: {run['val_nats_per_character']:.3f} nats per character (kept step {run['kept_step']} "
              f"of {run['steps_done']}), {run['train_seconds']:.0f} s of training, {run['notebook_seconds']:.0f} s in "
              f"all; load {run['load_before']:.1f} -> {run['load_after']:.1f}", flush=True)
    print(f"written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
