"""Measurements taken inside the notebook's kernel after its last cell, with the notebook's own functions.

benchmark.py appends one cell that imports this module and calls `measure(globals(), ...)`: the
notebook's variables and functions (transformer_layer, generate, state_dict, ...) are read from that
namespace; nothing of the notebook's arithmetic is rewritten here. Meta's reference Transformer is
loaded into the same process, on the same device, and every round times the notebook and Meta one
after the other, so that a machine busy with something else slows both alike.
"""

import statistics
import sys
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent.parent / "tests"


def memory_marks(notebook: dict) -> dict:
    """The moment the notebook's own cells ended, and its GPU memory peaks up to then."""
    marks = {"notebook_end": time.time(), "keep_weights_on_device": notebook["weight"].keep_on_device}
    device = notebook["device"]
    if device.type == "cuda":
        marks["gpu_peak_allocated"] = torch.cuda.max_memory_allocated(device)
        marks["gpu_peak_reserved"] = torch.cuda.max_memory_reserved(device)
    return marks


def notebook_runs(notebook: dict, decode_tokens: int) -> dict:
    """The notebook's loop over all layers; generation with prefill alone and with decode steps; on a GPU, the copy baseline."""
    tokens, n_layers = notebook["tokens"], notebook["n_layers"]
    transformer_layer, generate = notebook["transformer_layer"], notebook["generate"]

    def all_layers():
        x = notebook["token_embeddings"]
        for layer in range(n_layers):
            x = transformer_layer(x, layer)

    runs = {"loop": all_layers,
            "prefill": lambda: generate(tokens, 1),
            "decode": lambda: generate(tokens, 1 + decode_tokens)}
    device, state_dict, compute_dtype = notebook["device"], notebook["state_dict"], notebook["compute_dtype"]
    if device.type == "cuda":
        layer_names = [name for name in state_dict if name.startswith("layers.")]

        def copy_every_layer():  # one tensor at a time, each let go before the next, as streaming does
            for name in layer_names:
                state_dict[name].to(device=device, dtype=compute_dtype)

        def copy_all_weights():  # every tensor of the checkpoint, the embedding and the output projection too
            for name in state_dict:
                state_dict[name].to(device=device, dtype=compute_dtype)

        runs["copy"] = copy_every_layer
        runs["copy_all"] = copy_all_weights
    return runs


class LayerStackTimer:
    """Forward hooks on Meta's first and last layer: the time from the first layer's input to the last one's output."""

    def __init__(self, layers, synchronize):
        self.synchronize = synchronize
        layers[0].register_forward_pre_hook(self.before_first_layer)
        layers[-1].register_forward_hook(self.after_last_layer)

    def before_first_layer(self, module, inputs):
        self.synchronize()
        self.start = time.perf_counter()

    def after_last_layer(self, module, inputs, output):
        self.synchronize()
        self.last_seconds = time.perf_counter() - self.start


def reference_runs(notebook: dict, decode_tokens: int):
    """Meta's Transformer on the same checkpoint, device and prompt tokens."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from reference import load_reference, reference_greedy_generation, reference_logits

    device = notebook["device"]
    tokens = notebook["tokens"].to(device)
    model = load_reference(notebook["checkpoint_dir"], max_seq_len=len(tokens) + decode_tokens + 2,
                           rope_scale_factor=notebook.get("rope_scale_factor"))
    if device.type != "cpu":
        model.to(device)  # every weight resident, as Meta's code expects
    timer = LayerStackTimer(model.layers, notebook["synchronize"])
    layer_seconds = []

    def forward():
        reference_logits(model, tokens)
        layer_seconds.append(timer.last_seconds)

    runs = {"meta_forward": forward,
            "meta_prefill": lambda: reference_greedy_generation(model, tokens, 0),
            "meta_decode": lambda: reference_greedy_generation(model, tokens, decode_tokens)}
    last_logits = lambda: reference_logits(model, tokens)[-1].float().cpu()  # noqa: E731
    return runs, layer_seconds, last_logits


def paired_median(numerators: list, denominators: list) -> float:
    """The median of round-by-round ratios: both sides of a ratio ran back to back, so drift cancels."""
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def measure(notebook: dict, repeats: int, decode_tokens: int, with_reference: bool) -> dict:
    """Memory marks first; then, with repeats, warm timings of the notebook (and of Meta's reference), round by round.

    Every round runs each measurement once, one after the other; medians over the rounds are reported,
    and every ratio is the median of the rounds' own ratios.
    """
    measured = memory_marks(notebook)
    if not repeats:
        return measured
    runs = notebook_runs(notebook, decode_tokens)
    if with_reference:
        try:
            meta_runs, meta_layer_seconds, meta_last_logits = reference_runs(notebook, decode_tokens)
            runs.update(meta_runs)
        except torch.cuda.OutOfMemoryError as error:  # the GPU holds the notebook's weights, not a second copy
            measured["meta_skipped"] = f"Meta's reference did not fit on the device next to the notebook's weights: {error}"
            with_reference = False
            torch.cuda.empty_cache()
    synchronize = notebook["synchronize"]
    seconds = {name: [] for name in runs}
    for round_number in range(1 + repeats):  # round 0 warms everything up and is not counted
        for name, run in runs.items():
            synchronize()
            start = time.perf_counter()
            run()
            synchronize()
            if round_number:
                seconds[name].append(time.perf_counter() - start)
    measured["seconds_of_every_round"] = seconds

    new_tokens, _ = notebook["generate"](notebook["tokens"], 1 + decode_tokens)
    steps = len(new_tokens) - 1  # fewer than decode_tokens when the model wrote a stop token
    per_token = [(decode - prefill) / steps for decode, prefill in zip(seconds["decode"], seconds["prefill"])] if steps else None
    measured["loop_seconds"] = statistics.median(seconds["loop"])
    measured["decode_seconds_per_token"] = statistics.median(per_token) if steps else None
    if "copy" in seconds:
        measured["copy_seconds"] = statistics.median(seconds["copy"])
        measured["loop_over_copy"] = paired_median(seconds["loop"], seconds["copy"])
        bytes_per_number = torch.finfo(notebook["compute_dtype"]).bits // 8
        measured["copy_bytes"] = bytes_per_number * sum(
            tensor.numel() for name, tensor in notebook["state_dict"].items() if name.startswith("layers."))
        measured["copy_all_seconds"] = statistics.median(seconds["copy_all"])
        measured["copy_all_bytes"] = bytes_per_number * sum(tensor.numel() for tensor in notebook["state_dict"].values())
    if with_reference:
        meta_layers = meta_layer_seconds[-repeats:]  # the counted rounds' forward calls
        meta_per_token = [(decode - prefill) / decode_tokens
                          for decode, prefill in zip(seconds["meta_decode"], seconds["meta_prefill"])]
        measured["meta_forward_seconds"] = statistics.median(seconds["meta_forward"])
        measured["meta_layers_seconds"] = statistics.median(meta_layers)
        measured["meta_decode_seconds_per_token"] = statistics.median(meta_per_token)
        measured["meta_layer_seconds_of_every_round"] = meta_layers
        measured["loop_over_meta"] = paired_median(seconds["loop"], meta_layers)
        if steps:
            measured["decode_over_meta"] = paired_median(per_token, meta_per_token)
        logits = meta_last_logits()
        measured["meta_next_token"] = int(logits.argmax())
        measured["max_logit_difference"] = float((notebook["logits"] - logits).abs().max())
    return measured
