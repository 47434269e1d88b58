"""Where the walkthrough's weights live (llama3_support/scaling_up.py): kept on the device or streamed to it.

No GPU is needed: torch.cuda.mem_get_info and the machine's available memory are replaced by the figures a test
sets, and the state dict's tensors count the copies made of them (each copy lands on PyTorch's "meta" device,
which holds shapes and no data), so that what is copied, when, and what is let go is seen exactly.
"""

import gc
import math
import weakref

import pytest
import torch

from checkpoints import small_params
from llama3_support import scaling_up
from llama3_support.meta_layout import checkpoint_shapes
from llama3_support.scaling_up import DeviceWeights, weights_fit_on_device, weights_on_device

CUDA = torch.device("cuda")
BF16_BYTES = 2


class CountedTensor:
    """A checkpoint tensor (shape and dtype of a bf16 file) whose every .to() is counted."""

    def __init__(self, shape):
        self.shape, self.dtype, self.copies = torch.Size(shape), torch.bfloat16, 0

    def to(self, device, dtype):
        self.copies += 1
        return torch.empty(self.shape, device="meta", dtype=dtype)


def counted_state_dict(tied: bool) -> dict:
    """Every tensor of a small Llama 3 checkpoint; tied: no output.weight, the embedding is the projection."""
    names = checkpoint_shapes(small_params(n_layers=2))
    return {name: CountedTensor(shape) for name, shape in names.items() if not (tied and name == "output.weight")}


def device_bytes(state_dict: dict, names) -> int:
    return sum(math.prod(state_dict[name].shape) for name in names) * BF16_BYTES


@pytest.fixture
def free_gpu_bytes(monkeypatch):
    """Set the free memory of a pretend GPU: free_gpu_bytes(n)."""
    free = {}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 2 * free["bytes"]))
    return lambda value: free.update(bytes=value)


def fetch_every_weight(weight, names):
    for name in names:
        weight(name)


def test_the_device_holds_every_weight_but_the_embedding_table_unless_it_is_the_output_projection():
    untied, tied = counted_state_dict(tied=False), counted_state_dict(tied=True)
    assert "tok_embeddings.weight" not in weights_on_device(untied)
    assert "output.weight" in weights_on_device(untied)
    assert weights_on_device(tied) == list(tied)  # the embedding serves as the output projection
    assert len(weights_on_device(untied)) == len(untied) - 1


@pytest.mark.parametrize("tied", [False, True], ids=["own output", "tied output"])
def test_auto_keeps_the_weights_on_a_gpu_exactly_when_they_fit_in_90_percent_of_its_free_memory(free_gpu_bytes, tied):
    state_dict = counted_state_dict(tied)
    needed = device_bytes(state_dict, weights_on_device(state_dict))
    free_gpu_bytes(math.ceil(needed / 0.9) + 1)
    assert weights_fit_on_device(state_dict, CUDA, torch.bfloat16)
    assert DeviceWeights(state_dict, CUDA, torch.bfloat16, "auto").keep_on_device
    free_gpu_bytes(math.floor(needed / 0.9))
    assert not weights_fit_on_device(state_dict, CUDA, torch.bfloat16)
    assert not DeviceWeights(state_dict, CUDA, torch.bfloat16, "auto").keep_on_device


def test_auto_does_not_count_the_embedding_table_that_stays_in_the_file(free_gpu_bytes):
    state_dict = counted_state_dict(tied=False)
    needed, everything = device_bytes(state_dict, weights_on_device(state_dict)), device_bytes(state_dict, state_dict)
    free_gpu_bytes(math.ceil((needed + everything) / 2 / 0.9))  # room for what the walkthrough copies, not for all
    assert weights_fit_on_device(state_dict, CUDA, torch.bfloat16)


def test_auto_on_a_gpu_counts_float32_weights_at_four_bytes(free_gpu_bytes):
    state_dict = counted_state_dict(tied=False)
    bf16_bytes = device_bytes(state_dict, weights_on_device(state_dict))
    free_gpu_bytes(math.ceil(bf16_bytes / 0.9) + 1)  # room for the bf16 weights, not for twice as many bytes
    assert weights_fit_on_device(state_dict, CUDA, torch.bfloat16)
    assert not weights_fit_on_device(state_dict, CUDA, torch.float32)


def test_stream_0_and_1_override_auto_on_a_gpu(free_gpu_bytes):
    free_gpu_bytes(0)  # nothing fits, yet LLAMA3_STREAM=0 keeps
    assert DeviceWeights(counted_state_dict(tied=False), CUDA, torch.bfloat16, "0").keep_on_device
    free_gpu_bytes(2**50)  # everything fits, yet LLAMA3_STREAM=1 streams
    assert not DeviceWeights(counted_state_dict(tied=False), CUDA, torch.bfloat16, "1").keep_on_device


def test_on_the_cpu_only_a_converted_dtype_is_kept_and_only_within_half_the_available_memory(monkeypatch):
    state_dict = counted_state_dict(tied=False)
    cpu = torch.device("cpu")
    float32_bytes = 2 * device_bytes(state_dict, weights_on_device(state_dict))
    monkeypatch.setattr(scaling_up, "available_memory_bytes", lambda: 2 * float32_bytes + 2)
    assert not weights_fit_on_device(state_dict, cpu, torch.bfloat16)  # the mapped file is the tensor already
    assert weights_fit_on_device(state_dict, cpu, torch.float32)
    monkeypatch.setattr(scaling_up, "available_memory_bytes", lambda: 2 * float32_bytes - 2)
    assert not weights_fit_on_device(state_dict, cpu, torch.float32)


@pytest.mark.parametrize("tied", [False, True], ids=["own output", "tied output"])
def test_kept_weights_are_copied_once_however_often_they_are_used(tied):
    state_dict = counted_state_dict(tied)
    weight = DeviceWeights(state_dict, CUDA, torch.bfloat16, "0")
    names = weights_on_device(state_dict)
    for _ in range(3):  # the prompt, then two decoding steps: each reads every weight
        fetch_every_weight(weight, names)
    assert {name: tensor.copies for name, tensor in state_dict.items()} == {name: int(name in names) for name in state_dict}
    output_name = "tok_embeddings.weight" if tied else "output.weight"
    assert weight(output_name) is weight(output_name) and state_dict[output_name].copies == 1


def test_streaming_copies_each_weight_on_every_use_and_lets_each_layer_go():
    state_dict = counted_state_dict(tied=True)
    weight = DeviceWeights(state_dict, CUDA, torch.bfloat16, "1")
    layer_names = [name for name in state_dict if name.startswith("layers.0.")]
    on_device = [weakref.ref(weight(name)) for name in layer_names]  # used, then dropped, as one layer's step does
    gc.collect()
    assert all(reference() is None for reference in on_device)  # nothing of layer 0 stays on the device
    assert weight.on_device == {}
    fetch_every_weight(weight, layer_names)
    weight("tok_embeddings.weight")
    weight("tok_embeddings.weight")
    assert all(state_dict[name].copies == 2 for name in layer_names)
    assert state_dict["tok_embeddings.weight"].copies == 2  # the tied projection too: streamed, not kept
