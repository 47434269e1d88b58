"""The offline demo checkpoint: Meta-Llama-3-8B's layout and tokenizer with seeded random weights.

`python download_weights.py --demo` builds it. Its params.json is Meta's byte for byte, consolidated.00.pth
holds every key, shape and dtype of Meta's file, and tokenizer.model is Meta's (from the llama-models
package): the notebook meets the same files as on the real 8B, only the predictions mean nothing.

Every layer shares one set of weights and output.weight shares the embedding, so the file is about 1.4 GiB
instead of 15. The folder follows checkpoint_folder's rules: a rebuild replaces only the demo's own files.
"""

import json
import math
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from llama3_support.checkpoint_folder import CHECKPOINT_FILES, CHECKPOINTS, check_free_space, check_output_folder, source_kind, \
    staged_build
from llama3_support.meta_layout import META_LLAMA3_8B, META_LLAMA3_8B_PARAMS_JSON, bundled_tokenizer_path, layer_shapes

DEMO_DIR = CHECKPOINTS / "Meta-Llama-3-8B-demo"
DEMO_KIND = "demo"
EMBEDDING_STD = 0.02  # the scale of the embedding (and of output.weight, which shares it)
DRAWN_AT_ONCE = 1 << 24  # random values drawn in float32 per block of rows
BF16_BYTES = 2


def random_normal_bf16(shape, std: float, generator, progress: tqdm):
    """Seeded N(0, std^2) values in bf16, drawn a block of rows at a time so float32 never holds it all."""
    import torch  # imported here: only the demo needs torch, and it takes seconds to import

    out = torch.empty(shape, dtype=torch.bfloat16)
    rows = out.view(shape[0], -1)
    block = max(1, DRAWN_AT_ONCE // rows.shape[1])
    for start in range(0, rows.shape[0], block):
        chunk = rows[start : start + block]
        chunk.copy_(torch.randn(chunk.shape, generator=generator) * std)
        progress.update(chunk.numel())
    return out


def make_demo_state_dict(params: dict, seed: int = 0) -> dict:
    """Random bf16 weights with exactly the keys and shapes of Meta's checkpoint for these params.

    Every layer is a view of one shared set of layer weights and output.weight shares the embedding's
    storage; torch.save writes each storage once.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    dim, vocab_size = params["dim"], params["vocab_size"]
    one_layer = layer_shapes(params)
    matrices = {name: shape for name, shape in one_layer.items() if len(shape) == 2}
    total = vocab_size * dim + sum(rows * cols for rows, cols in matrices.values())
    with tqdm(total=total, unit="weights", unit_scale=True, desc="random weights", file=sys.stdout) as progress:
        embedding = random_normal_bf16((vocab_size, dim), EMBEDDING_STD, generator, progress)
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


def demo_weight_bytes(params: dict) -> int:
    """Bytes of tensor data in the demo's consolidated.00.pth: the embedding, one layer, the final norm."""
    one_layer = sum(math.prod(shape) for shape in layer_shapes(params).values())
    return BF16_BYTES * (params["vocab_size"] * params["dim"] + one_layer + params["dim"])


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


def save_with_progress(state_dict: dict, path: Path, total_bytes: int):
    import torch

    with open(path, "wb") as file, tqdm(
        total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name, file=sys.stdout
    ) as progress:
        torch.save(state_dict, ProgressWriter(file, progress))


def demo_source(seed: int) -> dict:
    """The demo's source.json."""
    return {
        "kind": DEMO_KIND,
        "model": META_LLAMA3_8B,
        "weights": "random (seeded); every layer shares one set of weights; output.weight shares the embedding",
        "seed": seed,
        "note": "Meta's layout and tokenizer with random weights: shapes and token ids are real, predictions mean nothing.",
    }


def is_demo_source(source: dict) -> bool:
    return source.get("kind") == DEMO_KIND


def build_demo(out_dir: Path = DEMO_DIR, seed: int = 0, params_json: str = META_LLAMA3_8B_PARAMS_JSON) -> Path:
    """Write the demo checkpoint into out_dir (params_json other than Meta's only for tests).

    Everything that can be refused is refused before a weight is drawn. Only the demo's own files change
    (CHECKPOINT_FILES and source.json), and each only once the new one is complete; an interrupted or failed
    build leaves nothing of its own behind.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir, belongs=is_demo_source, wanted="the demo checkpoint")
    params = json.loads(params_json)
    tokenizer = bundled_tokenizer_path()
    weight_bytes = demo_weight_bytes(params)
    check_free_space(out_dir, weight_bytes)
    with staged_build(out_dir, demo_source(seed)) as staging:
        (staging / "params.json").write_text(params_json)
        shutil.copyfile(tokenizer, staging / "tokenizer.model")
        save_with_progress(make_demo_state_dict(params, seed), staging / "consolidated.00.pth", weight_bytes)
    return out_dir


def demo_is_complete(folder: Path) -> bool:
    return source_kind(folder) == DEMO_KIND and all((Path(folder) / name).is_file() for name in CHECKPOINT_FILES)
