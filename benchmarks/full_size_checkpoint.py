"""Build a full-size random checkpoint: Meta-Llama-3-8B's layout with 32 distinct layers (16 GB).

    python benchmarks/full_size_checkpoint.py                       # into the default folder below
    python benchmarks/full_size_checkpoint.py --out /data/llama3-8b-full-size

The demo checkpoint (demo_checkpoint.py) shares one layer's storage across all layers (1.5 GB), so a
pass over its 32 layers reads the same 0.4 GB again and again. Here every layer and the output projection
are tensors of their own, like Meta's file: a forward pass moves the same bytes through memory (and over
PCIe when streaming to a GPU) as the real 8B does. Predictions are meaningless; timings and memory are real.

The file is written without ever holding the weights in memory: torch.save first writes the archive with
its storages left as holes (torch.serialization.skip_data), then the archive is mapped shared and filled
one tensor at a time, each layer flushed to disk before the next is drawn. It needs 16 GB of free disk,
and it is a benchmark's tool: never built by the tests or by CI.
"""

import argparse
import json
import math
import mmap
import os
import shutil
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llama3_support.checkpoint_folder import CHECKPOINT_FILES, CheckpointError, check_free_space, check_output_folder, \
    source_kind, staged_build  # noqa: E402
from llama3_support.demo_checkpoint import random_normal_bf16  # noqa: E402
from llama3_support.meta_layout import META_LLAMA3_8B, META_LLAMA3_8B_PARAMS_JSON, bundled_tokenizer_path, \
    checkpoint_shapes  # noqa: E402

DEFAULT_OUT = Path.home() / ".cache" / "llama3-from-scratch" / "Meta-Llama-3-8B-full-size-random"
KIND = "full-size-random"


def full_size_is_complete(folder: Path) -> bool:
    return source_kind(folder) == KIND and all((Path(folder) / name).is_file() for name in CHECKPOINT_FILES)


def placeholder_state_dict(params: dict) -> dict:
    """Every tensor of the checkpoint, uninitialised: torch.empty reserves address space, not memory."""
    return {name: torch.empty(shape, dtype=torch.bfloat16) for name, shape in checkpoint_shapes(params).items()}


def initial_std(name: str, shape: tuple) -> float:
    """The demo's scales: the embedding and output N(0, 0.02^2), a projection 1/sqrt(fan_in)."""
    if name in ("tok_embeddings.weight", "output.weight"):
        return 0.02
    return shape[1] ** -0.5


def fill_mapped_checkpoint(path: Path, params: dict, seed: int):
    """Write seeded random values into the archive's storages in place, flushing to disk layer by layer."""
    generator = torch.Generator().manual_seed(seed)
    shapes = checkpoint_shapes(params)
    total = sum(math.prod(shape) for shape in shapes.values() if len(shape) == 2)
    with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):
        mapped = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    file_descriptor = os.open(path, os.O_RDONLY)
    try:
        with tqdm(total=total, unit="weights", unit_scale=True, desc=path.name, file=sys.stdout) as progress:
            for name, shape in shapes.items():
                if len(shape) == 1:  # RMSNorm weights: ones, as in the demo
                    mapped[name].fill_(1)
                    continue
                mapped[name].copy_(random_normal_bf16(shape, initial_std(name, shape), generator, progress))
                if name.endswith("feed_forward.w3.weight") or not name.startswith("layers."):
                    os.fsync(file_descriptor)  # a layer at a time: dirty pages never pile up in memory
            os.fsync(file_descriptor)
    finally:
        os.close(file_descriptor)
        del mapped


def full_size_source(seed: int) -> dict:
    return {
        "kind": KIND,
        "model": META_LLAMA3_8B,
        "weights": "random (seeded); every layer and the output projection are distinct tensors",
        "seed": seed,
        "note": "Meta's layout and tokenizer with random weights, at full size: "
                "timings and memory are the 8B's, predictions mean nothing.",
    }


def build_full_size(out_dir: Path = DEFAULT_OUT, seed: int = 0, params_json: str = META_LLAMA3_8B_PARAMS_JSON) -> Path:
    """Write the checkpoint into out_dir by checkpoint_folder's rules: only its own files change, each once complete."""
    out_dir = Path(out_dir)
    check_output_folder(out_dir, belongs=lambda source: source.get("kind") == KIND,
                        wanted="a full-size random checkpoint")
    params = json.loads(params_json)
    tokenizer = bundled_tokenizer_path()
    weights = sum(math.prod(shape) for shape in checkpoint_shapes(params).values())
    check_free_space(out_dir, weights * torch.bfloat16.itemsize)
    with staged_build(out_dir, full_size_source(seed)) as staging:
        (staging / "params.json").write_text(params_json)
        shutil.copyfile(tokenizer, staging / "tokenizer.model")
        with torch.serialization.skip_data():
            torch.save(placeholder_state_dict(params), staging / "consolidated.00.pth")
        fill_mapped_checkpoint(staging / "consolidated.00.pth", params, seed)
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder to write (default: {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    args = parser.parse_args(argv)
    if full_size_is_complete(args.out):
        print(f"{args.out} is already complete; remove it to build it again.")
        return 0
    try:
        out_dir = build_full_size(args.out, args.seed)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Full-size checkpoint ready in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
