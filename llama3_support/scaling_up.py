"""What the walkthrough needs beyond the math to run big models and long prompts; its last section explains both.

- `DeviceWeights`: fetch a checkpoint tensor onto the compute device in the compute dtype. On the CPU in bf16
  that is the mapped file itself; in float32 each converted tensor is kept when all of them fit in half the
  memory available, and converted anew on each use otherwise. On a GPU the tensor is copied there when a step
  first needs it, and either kept (LLAMA3_STREAM=0) or let go after use (LLAMA3_STREAM=1): streaming copies
  every layer again on every pass, but the 8B then needs only one layer's weights (under 0.5 GB) on the card at
  a time. `auto` keeps them when they fit.
- `in_query_blocks`: attention over a long prompt, one block of queries at a time. The float32 scores of every
  head are n_heads x n_queries x n_keys numbers: 8.6 GB for 8192 tokens and 32 heads. Each query's row of
  scores is independent of the others, so blocks small enough that one block's scores stay under
  SCORES_BLOCK_BYTES give the same rows, and a short prompt is a single block.
"""

import math

import torch

SCORES_BLOCK_BYTES = 64 * 2**20  # float32 scores of one block of queries, every head
FLOAT32_BYTES = 4


def available_memory_bytes() -> int:
    """The machine's memory that is free or reclaimable (Linux's MemAvailable); 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0


def weights_on_device(names) -> list:
    """The tensors the walkthrough asks `weight` for: all but the embedding table, whose rows it reads from the
    mapped file, unless the table is also the output projection (a tied checkpoint has no output.weight)."""
    names = list(names)
    return [name for name in names if name != "tok_embeddings.weight" or "output.weight" not in names]


def weights_fit_on_device(state_dict: dict, device: torch.device, compute_dtype: torch.dtype) -> bool:
    """Whether a converted copy of every weight the device would hold (weights_on_device) fits there: in a GPU's
    free memory, or on the CPU in half the memory available, when the compute dtype differs from the file's (in
    the file's dtype the mapped file is the tensor, and a copy would only double it)."""
    from llama3_support.shards import weight_shapes  # shapes only: a split model is not merged to count it

    shapes = weight_shapes(state_dict)
    checkpoint_bytes = sum(math.prod(shapes[name]) for name in weights_on_device(shapes)) * torch.finfo(compute_dtype).bits // 8
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return checkpoint_bytes < 0.9 * free_bytes
    if device.type == "cpu":
        return state_dict["norm.weight"].dtype != compute_dtype and checkpoint_bytes < 0.5 * available_memory_bytes()
    return device.type != "mps"  # Apple GPUs share the machine's memory: a second copy would double it


class DeviceWeights:
    """weight(name): a checkpoint tensor on the compute device, in the compute dtype."""

    def __init__(self, state_dict: dict, device: torch.device, compute_dtype: torch.dtype, stream: str = "auto"):
        self.state_dict, self.device, self.compute_dtype = state_dict, device, compute_dtype
        on_gpu_kept = device.type != "cpu" and stream == "0"
        self.keep_on_device = on_gpu_kept or (stream == "auto" and weights_fit_on_device(state_dict, device, compute_dtype))
        self.on_device = {}  # name -> tensor already on the device, when they are kept

    def __call__(self, name: str) -> torch.Tensor:
        if name in self.on_device:
            return self.on_device[name]
        tensor = self.state_dict[name].to(device=self.device, dtype=self.compute_dtype)
        if self.keep_on_device:
            self.on_device[name] = tensor
        return tensor


def queries_per_block(n_heads: int, n_keys: int, block_bytes: int = SCORES_BLOCK_BYTES) -> int:
    return max(1, block_bytes // (FLOAT32_BYTES * n_heads * n_keys))


def in_query_blocks(attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                    block_bytes: int = SCORES_BLOCK_BYTES) -> torch.Tensor:
    """attend(q, k, v, mask) -> [n_queries, ...], computed on blocks of queries and concatenated.

    q: [n_queries, n_heads, head_dim]; k and v: [n_keys, n_kv_heads, head_dim]; mask: [n_queries, n_keys]."""
    block = queries_per_block(q.shape[1], k.shape[0], block_bytes)
    if block >= q.shape[0]:
        return attend(q, k, v, mask)
    return torch.cat([attend(q[i:i + block], k, v, mask[i:i + block]) for i in range(0, q.shape[0], block)])
