"""Fetch a Llama 3 checkpoint in Meta's original layout, or build the offline demo.

    python download_weights.py            # Meta-Llama-3-8B from the Hugging Face hub
    python download_weights.py --demo     # random weights in the same layout, no network

Either way the folder holds params.json, tokenizer.model and consolidated.00.pth,
plus source.json, which says where the folder came from.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from tqdm import tqdm

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_MODEL = "Meta-Llama-3-8B"
DEMO_DIR = CHECKPOINTS / "Meta-Llama-3-8B-demo"
SOURCE_FILE = "source.json"
CHECKPOINT_FILES = ("params.json", "tokenizer.model", "consolidated.00.pth")

# params.json of meta-llama/Meta-Llama-3-8B, byte for byte.
META_LLAMA3_8B_PARAMS_JSON = (
    '{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, '
    '"multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}'
)


class CheckpointError(Exception):
    """A problem the user can fix; the message says how."""


# ---------------------------------------------------------------- Meta's layout


def ffn_hidden_dim(params: dict) -> int:
    """SwiGLU width: 2/3 of 4*dim, times ffn_dim_multiplier, rounded up to multiple_of."""
    hidden = int(2 * 4 * params["dim"] / 3)
    if params.get("ffn_dim_multiplier") is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    multiple_of = params["multiple_of"]
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def layer_shapes(params: dict) -> dict:
    """Shape of every tensor of one transformer block, keyed by its name inside the block."""
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads
    hidden = ffn_hidden_dim(params)
    return {
        "attention.wq.weight": (n_heads * head_dim, dim),
        "attention.wk.weight": (n_kv_heads * head_dim, dim),
        "attention.wv.weight": (n_kv_heads * head_dim, dim),
        "attention.wo.weight": (dim, n_heads * head_dim),
        "feed_forward.w1.weight": (hidden, dim),
        "feed_forward.w2.weight": (dim, hidden),
        "feed_forward.w3.weight": (hidden, dim),
        "attention_norm.weight": (dim,),
        "ffn_norm.weight": (dim,),
    }


def checkpoint_shapes(params: dict) -> dict:
    """Every key of consolidated.00.pth with its shape, in the order Meta writes them."""
    dim, vocab_size = params["dim"], params["vocab_size"]
    shapes = {"tok_embeddings.weight": (vocab_size, dim)}
    for layer in range(params["n_layers"]):
        for name, shape in layer_shapes(params).items():
            shapes[f"layers.{layer}.{name}"] = shape
    shapes["norm.weight"] = (dim,)
    shapes["output.weight"] = (vocab_size, dim)
    return shapes


def bundled_tokenizer_path() -> Path:
    """Meta's Llama 3 tokenizer.model, as shipped inside the llama-models package."""
    try:
        import llama_models.llama3
    except ImportError as error:
        raise CheckpointError(
            "The demo checkpoint takes Meta's tokenizer.model from the llama-models package, "
            "which is not installed. Run: pip install -r requirements.txt"
        ) from error
    path = Path(llama_models.llama3.__file__).parent / "tokenizer.model"
    if not path.is_file():
        raise CheckpointError(f"llama-models is installed but has no {path}; reinstall it: pip install --force-reinstall llama-models")
    return path


# ---------------------------------------------------------------- the demo checkpoint


def random_normal_bf16(shape, std: float, generator: torch.Generator, progress: tqdm) -> torch.Tensor:
    """Seeded N(0, std^2) values in bf16, drawn a block of rows at a time so float32 never holds it all."""
    out = torch.empty(shape, dtype=torch.bfloat16)
    rows = out.view(shape[0], -1)
    block = max(1, (1 << 24) // rows.shape[1])
    for start in range(0, rows.shape[0], block):
        chunk = rows[start : start + block]
        chunk.copy_(torch.randn(chunk.shape, generator=generator) * std)
        progress.update(chunk.numel())
    return out


def make_demo_state_dict(params: dict, seed: int = 0) -> dict:
    """Random bf16 weights with exactly the keys and shapes of Meta's checkpoint for these params.

    To keep the file near 1.5 GB instead of 16 GB, every layer is a view of one shared set of
    layer weights and output.weight shares the embedding's storage; torch.save writes each
    storage once.
    """
    generator = torch.Generator().manual_seed(seed)
    dim, vocab_size = params["dim"], params["vocab_size"]
    one_layer = layer_shapes(params)
    matrices = {name: shape for name, shape in one_layer.items() if len(shape) == 2}
    total = vocab_size * dim + sum(rows * cols for rows, cols in matrices.values())
    with tqdm(total=total, unit="weights", unit_scale=True, desc="random weights", file=sys.stdout) as progress:
        embedding = random_normal_bf16((vocab_size, dim), 0.02, generator, progress)
        # std 1/sqrt(fan_in) keeps every projection's output at the scale of its input
        layer = {name: random_normal_bf16(shape, shape[1] ** -0.5, generator, progress) for name, shape in matrices.items()}
    layer["attention_norm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
    layer["ffn_norm.weight"] = torch.ones(dim, dtype=torch.bfloat16)

    state_dict = {"tok_embeddings.weight": embedding}
    for index in range(params["n_layers"]):
        for name in one_layer:
            state_dict[f"layers.{index}.{name}"] = layer[name][...]  # a view: same storage, no copy
    state_dict["norm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
    state_dict["output.weight"] = embedding[...]
    return state_dict


class ProgressWriter:
    """A binary file that advances a progress bar as bytes are written to it."""

    def __init__(self, file, progress: tqdm):
        self.file, self.progress = file, progress

    def write(self, data) -> int:
        written = self.file.write(data)
        self.progress.update(written)
        return written

    def flush(self):
        self.file.flush()


def storage_bytes(state_dict: dict) -> int:
    """Bytes that torch.save writes for these tensors: each distinct storage once."""
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in state_dict.values()}
    return sum(storages.values())


def read_source(folder: Path) -> dict:
    """The folder's source.json, or {} when there is none (or it is unreadable)."""
    try:
        return json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def check_free_space(folder: Path, needed_bytes: int, margin_bytes: int = 256 << 20):
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes + margin_bytes:
        raise CheckpointError(
            f"Not enough free disk space in {folder}: {(needed_bytes + margin_bytes) / 2**30:.1f} GiB needed "
            f"(with a margin), {free / 2**30:.1f} GiB free. Free some space or choose another folder with --out."
        )


def build_demo(out_dir: Path = DEMO_DIR, seed: int = 0) -> Path:
    """Write the demo checkpoint to out_dir, atomically: a half-built folder never carries the name."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and read_source(out_dir).get("kind") != "demo":
        raise CheckpointError(
            f"{out_dir} exists and is not a demo checkpoint built by this script; it is left untouched. "
            "Choose another folder with --out, or remove it yourself."
        )
    params = json.loads(META_LLAMA3_8B_PARAMS_JSON)
    tokenizer = bundled_tokenizer_path()

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # a leftover of an interrupted build
    state_dict = make_demo_state_dict(params, seed)
    checkpoint_bytes = storage_bytes(state_dict)
    check_free_space(out_dir.parent, checkpoint_bytes)
    partial.mkdir(parents=True)

    (partial / "params.json").write_text(META_LLAMA3_8B_PARAMS_JSON)
    shutil.copyfile(tokenizer, partial / "tokenizer.model")
    with open(partial / "consolidated.00.pth", "wb") as file, tqdm(
        total=checkpoint_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="consolidated.00.pth", file=sys.stdout
    ) as progress:
        torch.save(state_dict, ProgressWriter(file, progress))
    source = {
        "kind": "demo",
        "model": DEFAULT_MODEL,
        "weights": "random (seeded); every layer shares one set of weights; output.weight shares the embedding",
        "seed": seed,
        "note": "Meta's layout and tokenizer with random weights: shapes and token ids are real, predictions mean nothing.",
    }
    # the marker is written last: a folder without it was never finished
    (partial / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")

    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        partial.rename(out_dir)
        shutil.rmtree(old)
    else:
        partial.rename(out_dir)
    return out_dir


def demo_is_complete(folder: Path) -> bool:
    return read_source(folder).get("kind") == "demo" and all((folder / name).is_file() for name in CHECKPOINT_FILES)


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--demo",
        action="store_true",
        help="build the offline demo checkpoint: Meta-Llama-3-8B's params.json, keys, shapes and bf16 dtype, "
        "Meta's tokenizer, seeded random weights (about 1.5 GB, no network, no hub account)",
    )
    parser.add_argument("--out", type=Path, help=f"folder to write (default: {DEMO_DIR} with --demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo's random weights (default: 0)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.demo:
            out_dir = build_demo(args.out or DEMO_DIR, seed=args.seed)
            print(f"Demo checkpoint ready in {out_dir}")
            print(f"Run the notebook on it:\n  LLAMA3_DIR={out_dir} jupyter lab llama3_from_scratch.ipynb")
            return 0
        print("Downloading from the hub is not available yet; use --demo.", file=sys.stderr)
        return 2
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
