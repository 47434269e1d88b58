"""llama3_jax.py's training against the PyTorch training notebook, side by side in one run on this machine.

    python benchmarks/jax_benchmark.py                       # 3000 steps or 300 s of training each
    python benchmarks/jax_benchmark.py --steps 600 --budget 60
    python benchmarks/jax_benchmark.py --device cuda --json results.json   # the notebook on a GPU; JAX on its default device

1. The notebook (train_llama3_from_scratch.ipynb, run headlessly by tests/training_runner.py) trains with the
   settings given; its history records the validation loss at every evaluation with the training seconds so far.
   One extra cell then times --timed-steps of the notebook's own optimizer step on one fixed batch.
2. llama3_jax.py trains the same model with the same settings for the same number of steps or the same budget
   of training seconds, whichever ends first, and times its jitted step on that same batch.
Printed: seconds per step of each and their ratio, and the validation loss each reached within the budget.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import llama3_jax  # noqa: E402
from training_runner import run_training_notebook  # noqa: E402

TIMING_CELL = """
import time as _time
_inputs, _targets = get_batch("train")
_seconds = []
for _ in range({n_warmup} + {n_timed}):
    _started = _time.perf_counter()
    _, _loss = model(_inputs, _targets)
    optimizer.zero_grad(set_to_none=True)
    _loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), TRAINING.grad_clip)
    optimizer.step()
    _loss.item()
    _seconds.append(_time.perf_counter() - _started)
torch.save({{"history": history, "inputs": _inputs, "targets": _targets, "step_seconds": _seconds[{n_warmup}:]}}, {path!r})
"""
N_WARMUP = 3


def notebook_run(args, scratch: Path) -> dict:
    settings = {"LLAMA3_TRAIN_STEPS": args.steps, "LLAMA3_TRAIN_EVAL_INTERVAL": args.eval_interval, "LLAMA3_DEVICE": args.device}
    results = scratch / "notebook.pt"
    run_training_notebook(scratch / "notebook", settings,
                          TIMING_CELL.format(n_warmup=N_WARMUP, n_timed=args.timed_steps, path=str(results)), timeout=7200)
    return torch.load(results, weights_only=False)


def jax_run(args, scratch: Path, batch) -> dict:
    train_args = llama3_jax.parse_args(["train", "--steps", str(args.steps), "--eval-interval", str(args.eval_interval),
                                        "--out", str(scratch / "jax"), "--tokenizer",
                                        str(scratch / "notebook" / "tokenizer.model")])
    history = llama3_jax.train(train_args, time_budget=args.budget)
    config = llama3_jax.model_config(json.loads((scratch / "jax" / "params.json").read_text()))
    optimizer = llama3_jax.make_optimizer(train_args.lr, train_args.steps)
    step, replicated = llama3_jax.make_train_step(config, optimizer, jax.devices())
    weights = jax.device_put(llama3_jax.initial_weights(config, train_args.seed), replicated)
    state = jax.device_put(optimizer.init(weights), replicated)
    inputs, targets = (np.asarray(tensor.cpu().numpy(), np.int32) for tensor in batch)
    rotations = llama3_jax.rope_rotations_at(config, np.arange(inputs.shape[1]))
    seconds = []
    for _ in range(N_WARMUP + args.timed_steps):
        started = time.perf_counter()
        weights, state, loss = step(weights, state, inputs, targets, rotations)
        float(loss)
        seconds.append(time.perf_counter() - started)
    return {"history": history, "step_seconds": seconds[N_WARMUP:]}


def within_budget(history, budget: float):
    """The last evaluation whose training seconds fit in the budget: (step, seconds, val loss)."""
    fitting = [(step, seconds, val) for step, seconds, _, val in history if seconds <= budget * 1.02]
    return fitting[-1] if fitting else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="scheduled steps of both (the notebook's default)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds of training each may use")
    parser.add_argument("--eval-interval", type=int, default=250)
    parser.add_argument("--timed-steps", type=int, default=50, help="steps timed on one fixed batch")
    parser.add_argument("--device", default="cpu", help="the notebook's LLAMA3_DEVICE (default: cpu); JAX computes on its "
                                                        "default device (JAX_PLATFORMS=cpu or cuda chooses)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llama3-jax-benchmark-") as scratch:
        scratch = Path(scratch)
        print(f"notebook: up to {args.steps} steps ...", flush=True)
        notebook = notebook_run(args, scratch)
        print(f"llama3_jax.py on {jax.device_count()} device(s): up to {args.steps} steps or {args.budget:g} s ...", flush=True)
        ours = jax_run(args, scratch, (notebook["inputs"], notebook["targets"]))
    torch_step, jax_step = np.median(notebook["step_seconds"]), np.median(ours["step_seconds"])
    print(f"\nseconds per training step (median of {args.timed_steps}, same batch and configuration): "
          f"notebook {torch_step * 1e3:.1f} ms, JAX {jax_step * 1e3:.1f} ms, notebook / JAX = {torch_step / jax_step:.2f}")
    for name, run in [("notebook", notebook), ("JAX", ours)]:
        reached = within_budget(run["history"], args.budget)
        if reached:
            print(f"{name:>8}: validation loss {reached[2]:.3f} nats/token at step {reached[0]} after {reached[1]:.0f} s of training")
        else:
            print(f"{name:>8}: no evaluation within {args.budget:g} s")
    if args.json:
        runs = {name: {"history": [list(row) for row in run["history"]], "step_seconds": list(run["step_seconds"]),
                       "step_seconds_median": float(np.median(run["step_seconds"]))}
                for name, run in [("notebook", notebook), ("jax", ours)]}
        report = {"steps": args.steps, "budget": args.budget, "eval_interval": args.eval_interval,
                  "notebook_device": args.device, "jax_devices": [str(device) for device in jax.devices()],
                  "torch": torch.__version__, "jax": jax.__version__, **runs,
                  "notebook_over_jax": float(torch_step / jax_step)}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
