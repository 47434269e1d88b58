"""Meta's model-parallel checkpoints, consolidated.00.pth to consolidated.NN.pth, read by one process.

Meta publishes its 70B models as 8 files. Its code runs them on 8 processes (`torchrun --nproc_per_node 8`),
one per file: each process (rank) holds its slice of every weight matrix, computes with it, and the processes
add up or gather their partial results. The layers that do this are fairscale's, in Meta's model.py:

- ColumnParallelLinear (wq, wk, wv, w1, w3, output) splits its output features, the rows of the weight
  (dimension 0): each rank computes its own query and key/value heads, its own share of the feed-forward
  network's hidden units, its own part of the vocabulary's logits.
- RowParallelLinear (wo, w2) splits its input features, the columns (dimension 1): each rank multiplies the
  part of the input that it computed itself, and the ranks' partial sums are added (an all-reduce).
- VocabParallelEmbedding (tok_embeddings) splits the vocabulary (dimension 0): each rank looks up the ids in
  its range and the others contribute zeros. (Llama 2's ParallelEmbedding split dimension 1 instead.)
- RMSNorm weights (attention_norm, ffn_norm, norm) are not split: every file holds the same copy.

SPLITS states this once; everything here follows it. open_weights() maps every file (torch.load with
mmap=True: a byte is read from disk only when a step touches it), checks the folder before any work, and
returns a Mapping of Meta's names to whole tensors, each merged from its slices (concatenated along the
dimension of SPLITS) when it is asked for and not kept: a loop that takes one layer's tensors at a time holds
one merged layer at a time. write_sharded_copy() splits a single-file checkpoint the same way, into N files
that Meta's Transformer at model-parallel size N loads. tests/test_shards.py holds SPLITS to llama-models'
own merge (`reshard_mp` in llama_models/checkpoint.py) and to the layers of Meta's model.py.
"""

import json
import math
import pickle
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from llama3_support.checkpoint_folder import CHECKPOINT_FILES, LISTED_NAMES, SOURCE_FILE, CheckpointError, \
    check_free_space, check_output_folder, read_source, shown_path, staged_build
from llama3_support.meta_layout import checkpoint_shapes

NOT_SPLIT = None


class Split(NamedTuple):
    """How Meta's model parallelism stores one kind of tensor."""

    pattern: str  # Meta's name of the tensor, * standing for a layer's number
    layer: str  # the layer of Meta's model.py that holds it: fairscale's parallel layers, or RMSNorm
    dim: int | None  # the dimension along which the files' slices join into the whole tensor; NOT_SPLIT: a copy in each


SPLITS = (
    Split("tok_embeddings.weight", "VocabParallelEmbedding", 0),
    Split("layers.*.attention.wq.weight", "ColumnParallelLinear", 0),
    Split("layers.*.attention.wk.weight", "ColumnParallelLinear", 0),
    Split("layers.*.attention.wv.weight", "ColumnParallelLinear", 0),
    Split("layers.*.attention.wo.weight", "RowParallelLinear", 1),
    Split("layers.*.feed_forward.w1.weight", "ColumnParallelLinear", 0),
    Split("layers.*.feed_forward.w2.weight", "RowParallelLinear", 1),
    Split("layers.*.feed_forward.w3.weight", "ColumnParallelLinear", 0),
    Split("layers.*.attention_norm.weight", "RMSNorm", NOT_SPLIT),
    Split("layers.*.ffn_norm.weight", "RMSNorm", NOT_SPLIT),
    Split("norm.weight", "RMSNorm", NOT_SPLIT),
    Split("output.weight", "ColumnParallelLinear", 0),
)
_MATCHERS = [(re.compile(re.escape(split.pattern).replace(r"\*", r"\d+")), split) for split in SPLITS]

WEIGHT_FILE = "consolidated.{:02d}.pth"  # rank 0's file is consolidated.00.pth
_WEIGHT_FILE_NAME = re.compile(r"consolidated\.(\d+)\.pth")
SHARDED_KIND = "sharded"  # source.json's kind for a folder that write_sharded_copy wrote


def split_of(name: str):
    """The row of SPLITS for one of Meta's tensor names; None for a name that Llama 3 does not have."""
    return next((split for matcher, split in _MATCHERS if matcher.fullmatch(name)), None)


def weight_file_names(n_files: int) -> tuple:
    """consolidated.00.pth, consolidated.01.pth, ... for a model split over n_files files."""
    return tuple(WEIGHT_FILE.format(rank) for rank in range(n_files))


def slice_shape(shape: tuple, dim, n_files: int):
    """The shape of one file's slice of a tensor of this shape split along dim; None if it does not divide."""
    if dim is NOT_SPLIT:
        return tuple(shape)
    if shape[dim] % n_files:
        return None
    return tuple(size // n_files if axis == dim else size for axis, size in enumerate(shape))


def slice_shapes(params: dict, n_files: int) -> dict:
    """Each tensor's name -> the shape of its slice in every one of n_files files, for params.json's model."""
    return {name: slice_shape(shape, split_of(name).dim, n_files) for name, shape in checkpoint_shapes(params).items()}


def rank_slice(tensor, dim, n_files: int, rank: int):
    """The part of a whole tensor that rank's file holds (a view)."""
    if dim is NOT_SPLIT:
        return tensor
    size = tensor.shape[dim] // n_files
    return tensor.narrow(dim, rank * size, size)


# ---------------------------------------------------------------- reading a folder


def fetch_again(folder: Path) -> str:
    """What to do about damaged or mismatched files, for messages."""
    try:
        model = read_source(folder).get("model")
    except CheckpointError:  # an unreadable source.json names no model
        model = None
    return (f"Fetch them again with `python download_weights.py --model {model or 'NAME'} --out {shown_path(folder)}` "
            "(it checks every file against the hub and resumes), or use the params.json that came with them.")


def numbered_weight_files(folder: Path) -> list:
    """The folder's weight files in rank order, consolidated.00.pth first; CheckpointError unless they are
    numbered from 00 without a gap, as Meta numbers them."""
    folder = Path(folder)
    numbered, misnamed = {}, []
    for path in folder.glob("consolidated.*.pth"):
        match = _WEIGHT_FILE_NAME.fullmatch(path.name)
        if match and path.name == WEIGHT_FILE.format(int(match.group(1))):
            numbered[int(match.group(1))] = path
        else:
            misnamed.append(path.name)
    if misnamed:
        raise CheckpointError(
            f"{shown_path(folder)} holds {', '.join(sorted(misnamed)[:LISTED_NAMES])}, not named as Meta numbers its "
            "weight files (consolidated.00.pth, consolidated.01.pth, ...: the rank in two digits, from 00). Rename "
            "it, or move it out of the folder, and run again.")
    if not numbered:
        raise CheckpointError(f"{shown_path(folder)} has no consolidated.00.pth, the file of Meta's weights (of rank 0, "
                              f"when a model is split over several files). {fetch_again(folder)}")
    n_files = max(numbered) + 1
    missing = [name for rank, name in enumerate(weight_file_names(n_files)) if rank not in numbered]
    if missing:
        raise CheckpointError(
            f"{shown_path(folder)} holds {WEIGHT_FILE.format(n_files - 1)} but not {', '.join(missing[:LISTED_NAMES])}"
            f"{' and more' if len(missing) > LISTED_NAMES else ''}: a model split over {n_files} files needs every "
            f"one of them, since file k holds rank k's slice of every tensor. {fetch_again(folder)}")
    return [numbered[rank] for rank in range(n_files)]


def map_weight_file(path: Path) -> dict:
    """One weight file's state dict, mapped from disk (no tensor is read yet); CheckpointError if unreadable."""
    import torch

    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{shown_path(path)} cannot be read ({reason}): it is probably truncated or damaged. "
                              f"{fetch_again(Path(path).parent)}") from None


def listed(names) -> str:
    names = list(names)
    more = f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES else ""
    return ", ".join(names[:LISTED_NAMES]) + more


def wrong_slice_message(name: str, shape: tuple, found: tuple, file_name: str, n_files: int, folder: Path) -> str:
    """Why a slice of this shape cannot be rank's part of a tensor of params.json's shape, in one paragraph."""
    split = split_of(name)
    wanted = slice_shape(shape, split.dim, n_files)
    seen = f"{file_name} holds {name} as {found}, and params.json makes the whole tensor {shape}"
    if split.dim is NOT_SPLIT:
        return (f"{seen}: it is split, but Meta's {split.layer} weights are not: every file holds the same whole "
                f"copy. These files were not written by Meta's model parallelism. {fetch_again(folder)}")
    other_dims = [axis for axis in range(len(shape)) if axis != split.dim]
    for axis in other_dims:
        if found == slice_shape(shape, axis, n_files):
            hint = " (Llama 2's ParallelEmbedding split the embedding so; Llama 3's VocabParallelEmbedding splits the " \
                   "vocabulary)" if split.layer == "VocabParallelEmbedding" else ""
            return (f"{seen}: the files split it along dimension {axis}, but Meta's {split.layer} splits it along "
                    f"dimension {split.dim}{hint}. Merged along the wrong dimension its numbers would land in the "
                    f"wrong places. {fetch_again(folder)}")
    same_elsewhere = len(found) == len(shape) and all(found[axis] == shape[axis] for axis in other_dims)
    if same_elsewhere and found[split.dim] and shape[split.dim] % found[split.dim] == 0:
        parts = shape[split.dim] // found[split.dim]
        if parts == 1:
            return (f"{seen}: every file holds the whole tensor, not 1/{n_files} of it, so the {n_files} files are "
                    f"copies rather than the slices of one model. {fetch_again(folder)}")
        return (f"{seen}: each file holds 1/{parts} of it, so the model was split over {parts} files, but "
                f"{n_files} are here (consolidated.00.pth to {WEIGHT_FILE.format(n_files - 1)}). Put all {parts} "
                f"files of one download in the folder and no others. {fetch_again(folder)}")
    if wanted is None:
        return (f"{seen}, whose dimension {split.dim} ({shape[split.dim]}) does not divide into {n_files} equal "
                f"slices, one per file, as Meta's {split.layer} splits it: these {n_files} files are not a split of "
                f"the model that params.json describes. {fetch_again(folder)}")
    return (f"{seen}: split over {n_files} files along dimension {split.dim}, as Meta's {split.layer} splits it, "
            f"each file would hold {wanted}. {fetch_again(folder)}")


def check_shards(folder: Path, files: list, params: dict):
    """Refuse, before any work, files that are not Meta's split of params.json's model: each problem one
    paragraph (CheckpointError). files: the mapped state dicts of consolidated.00.pth, .01.pth, ... in order."""
    import torch

    folder, n_files = Path(folder), len(files)
    names = weight_file_names(n_files)
    first = list(files[0])
    for file_name, state_dict in zip(names[1:], files[1:]):
        if set(state_dict) != set(first):
            missing, extra = sorted(set(first) - set(state_dict)), sorted(set(state_dict) - set(first))
            raise CheckpointError(
                f"{file_name} does not hold the tensors that consolidated.00.pth holds ({len(missing)} missing: "
                f"{listed(missing) or 'none'}; {len(extra)} others: {listed(extra) or 'none'}), though every file "
                "of a split holds its slice of every tensor: the files come from different checkpoints, or one "
                f"is damaged. {fetch_again(folder)}")
    shapes = checkpoint_shapes(params)
    unknown = [name for name in first if name not in shapes]
    absent = [name for name in shapes if name not in files[0] and name != "output.weight"]  # a missing output: tied
    if unknown or absent:
        raise CheckpointError(
            f"The {n_files} weight files in {shown_path(folder)} do not hold the tensors that params.json describes "
            f"({len(unknown)} unknown: {listed(unknown) or 'none'}; {len(absent)} missing: {listed(absent) or 'none'}). "
            f"Use the params.json of the same model. {fetch_again(folder)}")
    for name in first:
        dtypes = {str(state_dict[name].dtype).removeprefix("torch.") for state_dict in files}
        if len(dtypes) > 1:
            raise CheckpointError(
                f"{name} has slices of different dtypes ({', '.join(sorted(dtypes))}) in {shown_path(folder)}'s "
                f"{n_files} files, which Meta writes in one dtype: the files come from different checkpoints. "
                f"{fetch_again(folder)}")
    for name in first:
        wanted = slice_shape(shapes[name], split_of(name).dim, n_files)
        for file_name, state_dict in zip(names, files):
            found = tuple(state_dict[name].shape)
            if found != wanted:
                raise CheckpointError(wrong_slice_message(name, shapes[name], found, file_name, n_files, folder))
    for name in first:
        if split_of(name).dim is NOT_SPLIT:
            for file_name, state_dict in zip(names[1:], files[1:]):
                if not torch.equal(state_dict[name], files[0][name]):
                    raise CheckpointError(
                        f"{name} differs between consolidated.00.pth and {file_name}, though Meta writes the same "
                        f"copy of every {split_of(name).layer} weight into each file: one of them is damaged, or "
                        f"the files come from different checkpoints. {fetch_again(folder)}")


class ShardedWeights(Mapping):
    """Meta's names -> whole tensors of a model split over several mapped files.

    A split tensor is concatenated from every file's slice each time it is asked for, and nothing keeps it:
    it lives as long as the caller holds it. A tensor that is not split is the first file's own mapped copy.
    Names, their order and `in` come from consolidated.00.pth without merging anything.
    """

    def __init__(self, files: list, file_names: tuple):
        self.files = files  # the mapped state dict of each file, rank order
        self.file_names = file_names

    def __getitem__(self, name: str):
        import torch

        if name not in self.files[0]:
            raise KeyError(name)
        dim = split_of(name).dim
        if dim is NOT_SPLIT:
            return self.files[0][name]
        return torch.cat([state_dict[name] for state_dict in self.files], dim=dim)

    def __contains__(self, name) -> bool:
        return name in self.files[0]

    def __iter__(self):
        return iter(self.files[0])

    def __len__(self) -> int:
        return len(self.files[0])

    def slices(self, name: str) -> list:
        """Every file's slice of one tensor, rank order (mapped, nothing merged)."""
        return [state_dict[name] for state_dict in self.files]

    def shape(self, name: str) -> tuple:
        """The whole tensor's shape, from its slices' (nothing merged)."""
        dim, shape = split_of(name).dim, tuple(self.files[0][name].shape)
        if dim is NOT_SPLIT:
            return shape
        return tuple(size * len(self.files) if axis == dim else size for axis, size in enumerate(shape))

    def __repr__(self) -> str:
        return f"ShardedWeights({len(self)} tensors merged on access from {', '.join(self.file_names)})"


def weight_shapes(weights: Mapping) -> dict:
    """Each tensor's name -> its whole shape, for a state dict or ShardedWeights (which merges nothing for it)."""
    if isinstance(weights, ShardedWeights):
        return {name: weights.shape(name) for name in weights}
    return {name: tuple(tensor.shape) for name, tensor in weights.items()}


def open_weights(folder: Path, params: dict) -> Mapping:
    """The checkpoint's weights under Meta's names, every file mapped, nothing read yet.

    One file (consolidated.00.pth alone): its mapped state dict, as torch.load gives it. Several: checked
    against each other and params.json before any work (numbered_weight_files, check_shards), then a
    ShardedWeights that merges each tensor from its slices when it is asked for.
    """
    paths = numbered_weight_files(folder)
    files = [map_weight_file(path) for path in paths]
    if len(files) == 1:
        return files[0]
    check_shards(folder, files, params)
    return ShardedWeights(files, tuple(path.name for path in paths))


# ---------------------------------------------------------------- writing a split


def is_sharded_copy(source: dict) -> bool:
    return source.get("kind") == SHARDED_KIND


def check_splittable(source_folder: Path, params: dict, state_dict: dict, n_files: int):
    """Refuse, in one paragraph, a checkpoint that Meta's model parallelism could not run at n_files ranks."""
    shown = shown_path(source_folder)
    if n_files < 2:
        raise CheckpointError(f"A split needs at least 2 files, not {n_files}: {shown} itself is the 1-file checkpoint.")
    n_heads = params["n_heads"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    if n_heads % n_files or n_kv_heads % n_files:
        divisors = [n for n in range(2, n_kv_heads + 1) if n_kv_heads % n == 0 and n_heads % n == 0]
        raise CheckpointError(
            f"{shown}'s model has {n_heads} query heads and {n_kv_heads} key/value heads, and Meta's model gives "
            f"each of the {n_files} ranks a whole share of both, so both must be multiples of {n_files}. Choose a "
            f"number of files among {', '.join(map(str, divisors)) or 'none (this model cannot be split)'}.")
    for name, tensor in state_dict.items():
        split = split_of(name)
        if split is None:
            raise CheckpointError(f"{shown}'s consolidated.00.pth holds {name}, which is not one of Llama 3's tensors, "
                                  "so there is no telling how Meta's model parallelism would split it.")
        if slice_shape(tuple(tensor.shape), split.dim, n_files) is None:
            raise CheckpointError(
                f"{name} ({tuple(tensor.shape)}) does not divide into {n_files} equal slices along dimension "
                f"{split.dim}, as Meta's {split.layer} would split it: choose a number of files that divides "
                f"{tensor.shape[split.dim]}.")


def write_sharded_copy(source_folder: Path, out_dir: Path, n_files: int) -> Path:
    """Write source_folder's single-file checkpoint into out_dir split over n_files files, as SPLITS says.

    out_dir then holds params.json, tokenizer.model and consolidated.00.pth to consolidated.<n_files - 1>.pth
    (each rank's slice of every tensor, a copy of every RMSNorm weight) and source.json, by checkpoint_folder's
    rules: only a new or empty folder, or one that holds such a split, is written; the files collect in its
    staging folder and take their names once all are written, source.json last.
    """
    import torch

    source_folder, out_dir = Path(source_folder), Path(out_dir)
    missing = [name for name in CHECKPOINT_FILES if not (source_folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{shown_path(source_folder)} has no {', '.join(missing)}: a split starts from a "
                              f"single-file checkpoint folder ({', '.join(CHECKPOINT_FILES)}).")
    if (source_folder / WEIGHT_FILE.format(1)).exists():
        raise CheckpointError(f"{shown_path(source_folder)} is split over several files already; a split starts from a "
                              "single-file checkpoint folder.")
    params = json.loads((source_folder / "params.json").read_text())
    state_dict = map_weight_file(source_folder / WEIGHT_FILE.format(0))
    check_splittable(source_folder, params, state_dict, n_files)
    check_output_folder(out_dir, belongs=is_sharded_copy, wanted=f"a split of {shown_path(source_folder)}")
    names = weight_file_names(n_files)
    copies = sum(tensor.nbytes for name, tensor in state_dict.items() if split_of(name).dim is NOT_SPLIT)
    needed = sum(tensor.nbytes for tensor in state_dict.values()) + (n_files - 1) * copies
    check_free_space(out_dir, needed + (source_folder / "tokenizer.model").stat().st_size)

    previous = read_source(out_dir) if out_dir.is_dir() else {}
    stale = [name for name in previous.get("files", []) if name not in names and _WEIGHT_FILE_NAME.fullmatch(name)]
    origin = read_source(source_folder) if (source_folder / SOURCE_FILE).is_file() else {}
    record = {"kind": SHARDED_KIND, **({"model": origin["model"]} if origin.get("model") else {}),
              "split_from": str(source_folder.resolve()), "n_files": n_files, "files": list(names),
              "note": "consolidated.00.pth of split_from, split as Meta's model parallelism splits it "
                      "(llama3_support/shards.py SPLITS)"}
    with staged_build(out_dir, record, files=("params.json", "tokenizer.model", *names)) as staging:
        shutil.copyfile(source_folder / "params.json", staging / "params.json")
        shutil.copyfile(source_folder / "tokenizer.model", staging / "tokenizer.model")
        for rank, file_name in enumerate(tqdm(names, desc=f"splitting over {n_files} files", unit="file",
                                              file=sys.stdout, disable=None)):
            # clone: a view would make torch.save write the whole tensor's storage into every file
            torch.save({name: rank_slice(tensor, split_of(name).dim, n_files, rank).clone()
                        for name, tensor in state_dict.items()}, staging / file_name)
        (out_dir / SOURCE_FILE).unlink(missing_ok=True)  # from here on the folder is unfinished until published
        for name in stale:  # files of an earlier split into more files, which this one replaces
            (out_dir / name).unlink(missing_ok=True)
    return out_dir


def checkpoint_bytes(params: dict, n_files: int = 1, bytes_per_weight: int = 2) -> int:
    """Bytes of tensor data in n_files files of params.json's model (each file holds a copy of every norm)."""
    total = 0
    for name, shape in checkpoint_shapes(params).items():
        copies = n_files if split_of(name).dim is NOT_SPLIT else 1
        total += copies * math.prod(shape) * bytes_per_weight
    return total
