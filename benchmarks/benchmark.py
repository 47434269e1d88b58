"""Time the notebook against Meta's reference Transformer and measure the memory it needs, in one run.

    python benchmarks/benchmark.py                  # the demo checkpoint (built if missing), on the notebook's device
    python benchmarks/benchmark.py --device cuda    # a GPU: weights resident (LLAMA3_STREAM=0), then streamed (=1)
    python benchmarks/benchmark.py --full-size      # also a 16 GB checkpoint with 32 distinct layers (built once)

For every LLAMA3_STREAM setting and page-cache state it executes the whole notebook in a fresh Jupyter
kernel, as `jupyter nbconvert --execute` would, while a thread of this process samples the kernel's memory.
In the warm run, one cell appended after the notebook's own (benchmarks/kernel_measurements.py) then
loads Meta's `llama_models.llama3.model.Transformer` into the same kernel, on the same checkpoint, device
and dtype with the same prompt tokens, and times the notebook's functions and Meta's in alternation.
One table goes to stdout (markdown, ready for the README), every detail to a JSON file in benchmarks/results/.

What the columns mean
- others' load: how many cores other processes of the machine kept busy, on average, during the run
  (CPU time from /proc/stat less this process's and the kernel's). Timings mean something near 0.
- notebook s: wall time from starting the kernel to the end of the notebook's last cell, with the
  notebook's defaults (LLAMA3_MAX_NEW_TOKENS=20 tokens of greedy decoding included).
- loop s (first): the notebook's own `forward_seconds`, its one timed pass over all layers, with whatever
  was cold at that moment (disk pages; on a GPU, the weights' first copy to the device).
- loop s, Meta s, loop / Meta: medians of --repeats warm passes over all layers for the prompt's tokens:
  the notebook's `transformer_layer` loop, and Meta's `layers` timed from the first layer's input to the
  last layer's output with forward hooks (embedding and output projection left out of both). Every
  ratio is the median of the rounds' own ratios (both sides ran back to back in each round).
- decode s/token, decode / Meta: greedy decoding with the KV cache, time per new token (generation with
  --decode-tokens steps less generation with none), notebook / Meta, and their ratio.
- peak RSS: the kernel's VmHWM, its high-water mark, which counts the mapped checkpoint's file pages.
  peak anon: the largest RssAnon sampled every --sample-ms (the kernel keeps no peak of anonymous
  memory alone): memory the process owns, which the system cannot reclaim by dropping file pages.
  Both cover the notebook's own cells only.
- peak GPU: torch.cuda.max_memory_reserved in the kernel after the notebook's cells (the caching
  allocator's peak; the CUDA context, a few hundred MB, comes on top).
- H2D copy s, loop / copy: copying every layer's weights from the mapped checkpoint to the GPU once, one
  tensor at a time (median, same kernel), and a pass over all layers relative to it. The JSON also holds
  copy_all_seconds: every tensor of the checkpoint (the embedding and output projection too) copied once.
- page cache: cold = the checkpoint's clean pages dropped (posix_fadvise DONTNEED) before the kernel
  starts; warm = the whole file read into the page cache first (if it was not already). The percentage
  is the part of the file resident at the start, measured with mincore: pages another process has
  mapped cannot be dropped, and a cache smaller than the file cannot be warm.
"""

import argparse
import ctypes
import datetime
import json
import mmap
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(BENCHMARKS))

import download_weights  # noqa: E402
import full_size_checkpoint  # noqa: E402
from notebook_runner import run_notebook  # noqa: E402

RESULTS = BENCHMARKS / "results"
CHECKPOINT_FILE = "consolidated.00.pth"
GiB = 2**30
DTYPE = "bfloat16"  # the checkpoint's own, in which Meta's reference computes too


# ---------------------------------------------------------------- memory of the kernel


class MemorySampler:
    """Polls /proc/<pid>/status of one process from a thread of this one, keeping every sample."""

    FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")

    def __init__(self, interval_seconds: float):
        self.interval_seconds = interval_seconds
        self.samples = []  # (time.time(), {field: bytes})
        self._stop = threading.Event()
        self._thread = None

    def start(self, pid: int):
        self._thread = threading.Thread(target=self._poll, args=(pid,), daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _poll(self, pid: int):
        status, stat = Path(f"/proc/{pid}/status"), Path(f"/proc/{pid}/stat")
        while not self._stop.is_set():
            try:
                text, cpu_fields = status.read_text(), stat.read_text().rpartition(")")[2].split()
            except OSError:  # the kernel has exited
                return
            values = {"cpu_ticks": int(cpu_fields[11]) + int(cpu_fields[12])}  # utime + stime
            for line in text.splitlines():
                name, _, rest = line.partition(":")
                if name in self.FIELDS:
                    values[name] = int(rest.split()[0]) * 1024  # reported in kB
            self.samples.append((time.time(), values))
            self._stop.wait(self.interval_seconds)

    def peak(self, field: str, until: float = None) -> int:
        values = [sample[field] for moment, sample in self.samples  # an exiting process reports no memory fields
                  if field in sample and (until is None or moment <= until)]
        return max(values) if values else None


def machine_busy_ticks() -> int:
    """CPU time all processes of the machine spent, in clock ticks (/proc/stat: user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[:7])
    return user + nice + system + irq + softirq


def own_ticks() -> int:
    times = os.times()
    return round((times.user + times.system) * os.sysconf("SC_CLK_TCK"))


# ---------------------------------------------------------------- the page cache


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def resident_fraction(path: Path) -> float:
    """The fraction of the file's pages in the page cache, by mincore on a fresh mapping (which reads nothing)."""
    size = path.stat().st_size
    if size == 0:
        return 1.0
    libc = _libc()
    file_descriptor = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, file_descriptor, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vector = (ctypes.c_ubyte * pages)()
            if libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), f"mincore on {path} failed")
            return sum(byte & 1 for byte in bytes(vector)) / pages  # bit 0: the page is resident
        finally:
            libc.munmap(address, size)
    finally:
        os.close(file_descriptor)


def drop_page_cache(path: Path) -> float:
    """Ask the kernel to drop the file's clean pages (no root needed); returns the fraction still resident."""
    file_descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(file_descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(file_descriptor)
    return resident_fraction(path)


# ---------------------------------------------------------------- the notebook


def measurement_cell(repeats: int, decode_tokens: int, with_reference: bool) -> str:
    """The cell appended after the notebook's own: kernel_measurements.measure on the notebook's namespace."""
    return (f"import sys\nsys.path.insert(0, {str(BENCHMARKS)!r})\nimport kernel_measurements\n"
            f"benchmark_results = kernel_measurements.measure(globals(), repeats={repeats}, "
            f"decode_tokens={decode_tokens}, with_reference={with_reference})")


def run_notebook_measured(checkpoint: Path, settings: dict, repeats: int, decode_tokens: int, with_reference: bool,
                          sample_seconds: float) -> dict:
    """Execute the notebook in a fresh kernel while sampling its memory; return the row's numbers."""
    sampler = MemorySampler(sample_seconds)
    busy_before, own_before = machine_busy_ticks(), own_ticks()
    started = time.time()
    try:
        results = run_notebook(checkpoint, names=("next_token", "forward_seconds", "benchmark_results"),
                               extra_cells=[measurement_cell(repeats, decode_tokens, with_reference)],
                               on_kernel_start=sampler.start, **settings)
    finally:
        sampler.stop()
    wall = time.time() - started
    kernel_ticks = sampler.samples[-1][1]["cpu_ticks"] if sampler.samples else 0
    other_ticks = machine_busy_ticks() - busy_before - (own_ticks() - own_before) - kernel_ticks
    measured = results["benchmark_results"]
    end = measured["notebook_end"]
    row = {
        "next_token": results["next_token"],
        "notebook_seconds": end - started,
        "loop_first_seconds": results["forward_seconds"],
        "peak_rss_bytes": sampler.peak("VmHWM", until=end),
        "peak_anon_bytes": sampler.peak("RssAnon", until=end),
        "peak_file_bytes": sampler.peak("RssFile", until=end),
        "memory_samples": sum(1 for moment, _ in sampler.samples if moment <= end),
        "gpu_peak_allocated_bytes": measured.get("gpu_peak_allocated"),
        "gpu_peak_reserved_bytes": measured.get("gpu_peak_reserved"),
        "weights_kept_on_device": measured["keep_weights_on_device"],
        # cores kept busy by other processes meanwhile: timings are only comparable when this is near 0
        "other_processes_cores": max(0.0, other_ticks / os.sysconf("SC_CLK_TCK") / wall),
    }
    for name in ("loop_seconds", "decode_seconds_per_token", "copy_seconds", "copy_bytes", "copy_all_seconds",
                 "copy_all_bytes", "meta_forward_seconds",
                 "meta_layers_seconds", "meta_decode_seconds_per_token", "loop_over_meta", "decode_over_meta",
                 "loop_over_copy", "seconds_of_every_round", "meta_layer_seconds_of_every_round"):
        row[name] = measured.get(name)
    if "meta_skipped" in measured:
        row["meta_skipped"] = measured["meta_skipped"]
        print(f"note: {measured['meta_skipped']}")
    if "meta_next_token" in measured:
        row["same_next_token_as_meta"] = row["next_token"] == measured["meta_next_token"]
        row["max_logit_difference"] = measured["max_logit_difference"]
    return row


def warm_page_cache(path: Path) -> float:
    """Read the whole file once, so that its pages are cached (as far as memory allows); the fraction resident."""
    with open(path, "rb") as file:
        while file.read(64 << 20):
            pass
    return resident_fraction(path)


# ---------------------------------------------------------------- the runs


def cpu_info_line(*keys: str) -> str:
    """The value of the first /proc/cpuinfo line that starts with one of keys (Linux), or ""."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(keys):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set:
    """The CPU's feature flags, as the kernel names them (empty where /proc/cpuinfo is not there)."""
    return set(cpu_info_line("flags", "Features").split())


def cpu_flags_that_matter() -> str:
    """Which of the instruction sets that decide bf16 speed, and which kernels run, this CPU has."""
    flags = cpu_flags()
    if not flags:
        return "flags unknown"
    shown = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512-BF16", "amx_bf16": "AMX"}
    return ", ".join(name for flag, name in shown.items() if flag in flags) or "none of AVX2, AVX-512, AMX"


def describe_machine(device: torch.device) -> dict:
    cpu_model = cpu_info_line("model name") or platform.processor()
    machine = {"platform": platform.platform(), "cpu": cpu_model, "cpu_flags": cpu_flags_that_matter(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    try:
        machine["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        machine["gpu"] = properties.name
        machine["gpu_memory_bytes"] = properties.total_memory
    return machine


def checkpoint_label(checkpoint: Path) -> str:
    source = download_weights.read_source(checkpoint)
    kind = source.get("kind")
    if kind == "demo":
        return "demo (shared layers)"
    if kind == full_size_checkpoint.KIND:
        return "full-size (distinct layers)"
    return checkpoint.name


def benchmark_checkpoint(checkpoint: Path, device: torch.device, streams, caches, args) -> list:
    """One row per LLAMA3_STREAM setting and page-cache state; warm rows also time the notebook against Meta."""
    weights_file = checkpoint / CHECKPOINT_FILE
    rows = []
    for stream in streams:
        for cache in caches:
            settings = {"device": str(device), "dtype": DTYPE}
            if stream is not None:
                settings["stream"] = stream
            if args.max_new_tokens is not None:
                settings["max_new_tokens"] = args.max_new_tokens
            try:
                if cache == "cold":
                    resident = drop_page_cache(weights_file)
                else:
                    resident = resident_fraction(weights_file)
                    if resident < 0.99:
                        resident = warm_page_cache(weights_file)
            except OSError as error:  # a sandboxed kernel may not answer mincore: the run goes on, its cache state unknown
                print(f"note: the page cache of {weights_file} cannot be read or dropped here ({error})")
                resident = None
            # Meta's reference keeps every weight on the device: not comparable with streaming, nor always room for it
            with_reference = stream != "1" and not args.no_reference
            repeats = args.repeats if cache == "warm" else 0  # timings of warm functions: once per stream setting
            label = (f"{checkpoint_label(checkpoint)}, {device}, LLAMA3_STREAM={stream or 'unset'}, "
                     f"{cache} page cache ({percent(resident)} resident)")
            print(f"notebook{' and Meta' if with_reference and repeats else ''}: {label} ...", flush=True)
            row = run_notebook_measured(checkpoint, settings, repeats, args.decode_tokens, with_reference and bool(repeats),
                                        args.sample_ms / 1000)
            row.update({"checkpoint": str(checkpoint), "checkpoint_kind": checkpoint_label(checkpoint),
                        "checkpoint_bytes": weights_file.stat().st_size, "device": str(device), "dtype": DTYPE,
                        "stream": stream, "page_cache": cache, "resident_at_start": resident})
            rows.append(row)
    return rows


def percent(fraction) -> str:
    return "unknown" if fraction is None else f"{fraction:.0%}"


def gib(value) -> str:
    return "" if value is None else f"{value / GiB:.2f}"


def ratio(value) -> str:
    return "" if value is None else f"{value:.2f}"


def seconds(value) -> str:
    """Three significant digits: 31.4, 1.17, 0.0432."""
    return "" if value is None else f"{value:#.3g}".rstrip(".")


def markdown_table(rows: list) -> str:
    header = ["checkpoint", "device", "stream", "page cache", "others' load", "notebook s", "loop s (first)", "loop s", "Meta s",
              "loop / Meta", "decode s/token (nb / Meta)", "decode / Meta", "peak RSS GiB", "peak anon GiB", "peak GPU GiB",
              "H2D copy s", "loop / copy", "same token as Meta"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        decode = ""
        if row["decode_seconds_per_token"] is not None:
            decode = f"{seconds(row['decode_seconds_per_token'])} / {seconds(row['meta_decode_seconds_per_token']) or '-'}"
        same = row.get("same_next_token_as_meta")
        cells = [
            row["checkpoint_kind"], row["device"], row["stream"] or "",
            f"{row['page_cache']} ({percent(row['resident_at_start'])})", f"{row['other_processes_cores']:.1f}",
            seconds(row["notebook_seconds"]),
            seconds(row["loop_first_seconds"]), seconds(row["loop_seconds"]), seconds(row["meta_layers_seconds"]),
            ratio(row.get("loop_over_meta")), decode, ratio(row.get("decode_over_meta")),
            gib(row["peak_rss_bytes"]), gib(row["peak_anon_bytes"]), gib(row["gpu_peak_reserved_bytes"]),
            seconds(row["copy_seconds"]), ratio(row.get("loop_over_copy")),
            "" if same is None else ("yes" if same else "NO"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def resolve_device(name: str) -> torch.device:
    if name == "auto":  # what the notebook picks by itself
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but this PyTorch sees no CUDA GPU (torch.cuda.is_available() is False). "
                         "Install a CUDA build of torch, or leave --device out to benchmark the CPU.")
    return device


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, action="append",
                        help=f"a checkpoint folder; repeat for several (default: the demo, {download_weights.DEMO_DIR}, built if missing)")
    parser.add_argument("--full-size", action="store_true",
                        help="also benchmark a full-size checkpoint with 32 distinct layers (16 GB of disk; built once, "
                             "by benchmarks/full_size_checkpoint.py, into --full-size-dir)")
    parser.add_argument("--full-size-dir", type=Path, default=full_size_checkpoint.DEFAULT_OUT,
                        help=f"where the full-size checkpoint lives (default: {full_size_checkpoint.DEFAULT_OUT})")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps (default: what the notebook picks)")
    parser.add_argument("--stream", default=None,
                        help="LLAMA3_STREAM values to run, comma-separated (default on a GPU: 0,1; elsewhere not set)")
    parser.add_argument("--cache", default="cold,warm", help="page-cache states, comma-separated: cold, warm (default: cold,warm)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds after one warm-up round, in each warm row; medians are reported (default: 5)")
    parser.add_argument("--decode-tokens", type=int, default=4, help="decode steps timed per round (default: 4)")
    parser.add_argument("--no-reference", action="store_true",
                        help="leave Meta's reference out (it needs the whole checkpoint on the device, next to the notebook's)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="LLAMA3_MAX_NEW_TOKENS for the notebook run (default: the notebook's own, 20)")
    parser.add_argument("--sample-ms", type=float, default=10, help="memory sampling interval in ms (default: 10)")
    parser.add_argument("--json", type=Path, help="where to write the results (default: benchmarks/results/<date>-<device>.json)")
    args = parser.parse_args(argv)
    args.caches = [cache.strip() for cache in args.cache.split(",") if cache.strip()]
    if not args.caches or set(args.caches) - {"cold", "warm"}:
        parser.error(f"--cache takes cold, warm or both, not {args.cache!r}")
    if args.repeats < 1 or args.decode_tokens < 1:
        parser.error("--repeats and --decode-tokens must be at least 1")
    return args


def checkpoints_to_run(args) -> list:
    checkpoints = list(args.checkpoint or [])
    if not checkpoints:
        if not download_weights.demo_is_complete(download_weights.DEMO_DIR):
            print(f"building the demo checkpoint in {download_weights.DEMO_DIR} (once)")
            download_weights.build_demo()
        checkpoints.append(download_weights.DEMO_DIR)
    if args.full_size:
        if not full_size_checkpoint.full_size_is_complete(args.full_size_dir):
            print(f"building the full-size checkpoint in {args.full_size_dir} (once, 16 GB)")
            full_size_checkpoint.build_full_size(args.full_size_dir)
        checkpoints.append(args.full_size_dir)
    for checkpoint in checkpoints:
        missing = [name for name in download_weights.CHECKPOINT_FILES if not (checkpoint / name).is_file()]
        if missing:
            raise SystemExit(f"error: {checkpoint} has no {', '.join(missing)}. Point --checkpoint at a folder from "
                             "download_weights.py, or leave it out to use the demo.")
    return checkpoints


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.stream is not None:
        streams = [stream.strip() for stream in args.stream.split(",")]
    else:
        streams = ["0", "1"] if device.type == "cuda" else [None]
    try:
        checkpoints = checkpoints_to_run(args)
    except download_weights.CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    for checkpoint in checkpoints:
        rows += benchmark_checkpoint(checkpoint.resolve(), device, streams, args.caches, args)
    report = {"date": started.isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "machine": describe_machine(device), "rows": rows}

    machine = report["machine"]
    gpu = f", {machine['gpu']}" if "gpu" in machine else ""
    print(f"\n{started:%Y-%m-%d}, {machine['cpu']} ({machine['cores']} cores; {machine['cpu_flags']}), "
          f"{machine.get('memory_bytes', 0) / GiB:.0f} GiB RAM{gpu}, torch {machine['torch']}\n")
    print(markdown_table(rows))
    busiest = max(row["other_processes_cores"] for row in rows)
    if busiest > 0.2:
        print(f"\nwarning: other processes kept up to {busiest:.1f} of {machine['cores']} cores busy during these runs; "
              "the timings are not what this machine does alone. Run again on a quiet machine.")
    json_path = args.json or RESULTS / f"{started:%Y%m%d-%H%M%S}-{device.type}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
