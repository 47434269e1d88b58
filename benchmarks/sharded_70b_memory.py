"""Peak memory of a forward pass over a 70B-shaped checkpoint split over 8 files, read through the lazy mapping.

    python benchmarks/sharded_70b_memory.py                 # Llama-3.3-70B-Instruct's shapes, 2 layers, 8 files
    python benchmarks/sharded_70b_memory.py --dim 4096      # narrower (dim/128 query heads), for a smaller disk

The checkpoint has Llama-3.3-70B-Instruct's params.json as llama-models records it (8192 wide, 64 query heads,
8 key/value heads, a 28672-wide feed-forward network, the full vocabulary) cut to --layers layers, seeded
random weights, and Meta's 8-file layout: each file holds one rank's slices (llama3_support/shards.py). It is
written once outside the repository (its size is printed, and checked against the free disk, first).

Two runs, side by side, each in a fresh process while this one samples its anonymous memory (RssAnon: what the
process owns, which the system cannot reclaim by dropping file pages) and its mapped file pages (RssFile):
- lazy: open_weights' mapping, one merged tensor or layer at a time (Meta's TransformerBlock on the merged layer,
  let go before the next); the embedding and the output projection are each merged when used;
- merged: every tensor merged up front, as loading the split into one model does (llama-models' reshard_mp),
  then the same forward.
Both run a --tokens prompt in bf16 and compute the last position's logits.
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(BENCHMARKS))

from llama3_support import shards  # noqa: E402
from llama3_support.checkpoint_folder import CheckpointError, check_free_space, check_output_folder, human_size, \
    read_source, staged_build  # noqa: E402

MODEL = "Llama3.3-70B-Instruct"  # llama-models' name of the model whose shapes the checkpoint takes
KIND = "sharded-random"
HEAD_DIM = 128
DEFAULT_OUT = Path.home() / ".cache" / "llama3-from-scratch"
GiB = 2**30


def seventy_b_params(n_layers: int, dim: int) -> tuple:
    """Llama-3.3-70B-Instruct's params.json (llama-models' record of it) cut to n_layers, dim wide, and its
    number of weight files."""
    from llama_models.sku_list import resolve_model

    model = resolve_model(MODEL)
    params = {**model.arch_args, "n_layers": n_layers}
    if dim != params["dim"]:
        params.update(dim=dim, n_heads=dim // HEAD_DIM)
    return params, model.pth_file_count


def initial_std(name: str, shape: tuple) -> float:
    """The scales of the project's random checkpoints: embedding and output N(0, 0.02^2), a projection
    1/sqrt(its whole fan_in)."""
    return 0.02 if name in ("tok_embeddings.weight", "output.weight") else shape[1] ** -0.5


def is_built(folder: Path, params: dict, n_files: int) -> bool:
    source = read_source(folder) if (folder / "source.json").is_file() else {}
    return (source.get("kind") == KIND and source.get("params") == params
            and all((folder / name).is_file() for name in shards.weight_file_names(n_files)))


def write_seeded_split(folder: Path, params: dict, n_files: int, seed: int):
    """Each rank's file of random weights: its slice of every matrix drawn from a generator seeded for that
    rank, RMSNorm weights ones (the same copy in every file); by checkpoint_folder's rules."""
    import torch
    from tqdm import tqdm

    from llama3_support.demo_checkpoint import random_normal_bf16
    from llama3_support.meta_layout import bundled_tokenizer_path, checkpoint_shapes

    check_output_folder(folder, belongs=lambda source: source.get("kind") == KIND, wanted="a 70B-shaped random split")
    size = shards.checkpoint_bytes(params, n_files)
    print(f"{folder}: {n_files} files, {human_size(size)} ({size:,} bytes)")
    free = check_free_space(folder, size)
    print(f"{human_size(free)} free on that disk")
    names = shards.weight_file_names(n_files)
    shapes = checkpoint_shapes(params)
    source = {"kind": KIND, "model": MODEL, "params": params, "seed": seed, "files": list(names),
              "note": "random weights in Meta's model-parallel layout: shapes and memory are real, predictions mean nothing"}
    matrices = sum(math.prod(shape) for shape in shapes.values() if len(shape) == 2)
    with staged_build(folder, source, files=("params.json", "tokenizer.model", *names)) as staging, \
            tqdm(total=matrices, unit="weights", unit_scale=True, desc="random weights", file=sys.stdout) as progress:
        (staging / "params.json").write_text(json.dumps(params))
        shutil.copyfile(bundled_tokenizer_path(), staging / "tokenizer.model")
        for rank, file_name in enumerate(names):
            generator = torch.Generator().manual_seed(seed * n_files + rank)
            state_dict = {}
            for name, shape in shapes.items():
                dim = shards.split_of(name).dim
                if dim is shards.NOT_SPLIT:
                    state_dict[name] = torch.ones(shape, dtype=torch.bfloat16)
                else:
                    state_dict[name] = random_normal_bf16(shards.slice_shape(shape, dim, n_files),
                                                          initial_std(name, shape), generator, progress)
            torch.save(state_dict, staging / file_name)
            del state_dict


# ---------------------------------------------------------------- the measured process


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def forward(folder: Path, n_tokens: int, merge_first: bool) -> dict:
    """Meta's blocks on the folder's weights, one layer at a time; the last position's logits."""
    import torch
    import torch.nn.functional as F
    from llama_models.llama3 import model as meta_model
    from llama_models.llama3.args import ModelArgs

    from reference import ensure_model_parallel_group

    ensure_model_parallel_group()  # fairscale's layers want a process group: one process, gloo
    params = json.loads((folder / "params.json").read_text())
    args = ModelArgs(**params, max_batch_size=1, max_seq_len=n_tokens)
    tokens = torch.arange(128000, 128000 + n_tokens).remainder(params["vocab_size"]).view(1, -1)
    freqs_cis = meta_model.precompute_freqs_cis(args.dim // args.n_heads, n_tokens * 2, args.rope_theta,
                                                args.use_scaled_rope)[:n_tokens]
    mask = torch.triu(torch.full((n_tokens, n_tokens), float("-inf")), diagonal=1).to(torch.bfloat16)
    baseline = status_bytes("RssAnon")
    started = time.perf_counter()
    weights = shards.open_weights(folder, params)
    if merge_first:
        weights = {name: weights[name] for name in weights}
    with torch.inference_mode():
        h = F.embedding(tokens, weights["tok_embeddings.weight"])
        for layer in range(params["n_layers"]):
            prefix = f"layers.{layer}."
            block = meta_model.TransformerBlock(layer, args)  # uninitialised weights: address space, not memory
            block.load_state_dict({name.removeprefix(prefix): weights[name] for name in weights
                                   if name.startswith(prefix)}, strict=True, assign=True)
            h = block(h, 0, freqs_cis, mask)
            del block  # the merged layer goes with it
        norm = meta_model.RMSNorm(params["dim"], eps=params["norm_eps"])
        norm.load_state_dict({"weight": weights["norm.weight"]}, assign=True)
        logits = F.linear(norm(h[:, -1]), weights["output.weight"]).float()
    return {"baseline_anon_bytes": baseline, "seconds": time.perf_counter() - started,
            "logits_finite": bool(torch.isfinite(logits).all()), "vocab": logits.shape[-1]}


def measured_run(folder: Path, n_tokens: int, merge_first: bool) -> dict:
    """forward() in a fresh process of this script, its memory sampled from here."""
    from benchmark import MemorySampler

    command = [sys.executable, __file__, "--forward", "merged" if merge_first else "lazy", "--checkpoint", str(folder),
               "--tokens", str(n_tokens)]
    sampler = MemorySampler(0.005)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    sampler.start(process.pid)
    output, _ = process.communicate()
    sampler.stop()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode})")
    result = json.loads(output.strip().splitlines()[-1])
    return {**result, "peak_anon_bytes": sampler.peak("RssAnon"), "peak_file_bytes": sampler.peak("RssFile")}


def machine_label() -> str:
    from benchmark import cpu_flags_that_matter, cpu_info_line

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (f"{datetime.date.today():%Y-%m-%d}, {cpu_info_line('model name') or platform.processor()} "
            f"({os.cpu_count()} cores; {cpu_flags_that_matter()}), {memory / GiB:.0f} GiB memory, {platform.platform()}")


def gib(n_bytes) -> str:
    return f"{n_bytes / GiB:.2f} GiB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help=f"the checkpoint's folder (default: under {DEFAULT_OUT})")
    parser.add_argument("--layers", type=int, default=2, help="layers of the checkpoint (default: 2)")
    parser.add_argument("--dim", type=int, default=8192, help="model width, a multiple of 1024 (default: the 70B's 8192)")
    parser.add_argument("--tokens", type=int, default=16, help="prompt length (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    parser.add_argument("--forward", choices=("lazy", "merged"), help=argparse.SUPPRESS)  # the measured process
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.forward:
        print(json.dumps(forward(args.checkpoint, args.tokens, args.forward == "merged")))
        return 0
    if args.layers < 1 or args.tokens < 2 or args.dim < 1024 or args.dim % 1024:
        parser.error("--layers must be at least 1, --tokens at least 2, --dim a multiple of 1024")

    params, n_files = seventy_b_params(args.layers, args.dim)
    folder = args.out or DEFAULT_OUT / f"70b-shapes-dim{args.dim}-{args.layers}-layers-{n_files}-files"
    if folder.resolve().is_relative_to(REPO):
        parser.error(f"--out {folder} lies inside the repository; choose a folder outside it")
    try:
        if is_built(folder, params, n_files):
            print(f"{folder}: already built ({human_size(shards.checkpoint_bytes(params, n_files))})")
        else:
            write_seeded_split(folder, params, n_files, args.seed)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    size = sum((folder / name).stat().st_size for name in shards.weight_file_names(n_files))
    shapes = shards.checkpoint_shapes(params)
    layer_bytes = 2 * sum(math.prod(shape) for name, shape in shapes.items() if name.startswith("layers.0."))
    largest = 2 * max(math.prod(shape) for shape in shapes.values())
    lazy = measured_run(folder, args.tokens, merge_first=False)
    merged = measured_run(folder, args.tokens, merge_first=True)
    print(f"\n{machine_label()}")
    print(f"checkpoint: {n_files} files, {gib(size)} on disk; one merged layer {gib(layer_bytes)}, the largest "
          f"merged tensor (embedding, output) {gib(largest)}; dim {params['dim']}, {params['n_layers']} layers, "
          f"{args.tokens} tokens, bf16")
    for label, run in (("lazy (one merged tensor/layer at a time)", lazy), ("merged up front (the peer)", merged)):
        own = run["peak_anon_bytes"] - run["baseline_anon_bytes"]
        print(f"  {label:<42} peak anon {gib(run['peak_anon_bytes'])} ({gib(own)} above the process's "
              f"{gib(run['baseline_anon_bytes'])} before the forward), peak mapped file pages "
              f"{gib(run['peak_file_bytes'])}, {run['seconds']:.1f} s")
    lazy_own = lazy["peak_anon_bytes"] - lazy["baseline_anon_bytes"]
    merged_own = merged["peak_anon_bytes"] - merged["baseline_anon_bytes"]
    print(f"lazy / merged peak anon above baseline: {lazy_own / merged_own:.2f}; lazy / checkpoint size: "
          f"{lazy_own / size:.2f}; merged / checkpoint size: {merged_own / size:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
