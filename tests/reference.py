"""Meta's reference implementation, `llama_models.llama3.model.Transformer`, on a checkpoint folder.

It is built on fairscale's model-parallel layers, which need a process group: here one process, a gloo
group of size 1 rendezvousing through a file, so that nothing touches the network. Its weights are the
checkpoint's own mmap'ed bf16 tensors (`load_state_dict(assign=True)`): no copy, no float32.
"""

import json
import tempfile
from pathlib import Path
from unittest import mock

import torch

_process_group_file = None


def ensure_model_parallel_group():
    """fairscale's model-parallel state for a single CPU process (created once per process)."""
    global _process_group_file
    import fairscale.nn.model_parallel.initialize as fs_init
    import torch.distributed as dist

    if not dist.is_initialized():
        _process_group_file = tempfile.NamedTemporaryFile(prefix="llama3-gloo-", delete=False)
        dist.init_process_group("gloo", init_method=f"file://{_process_group_file.name}", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        fs_init.initialize_model_parallel(1)


def scaled_frequencies_with_factor(scale_factor: float):
    """Meta's `apply_scaling` with its hard-coded factor of 8 replaced (Llama 3.2 uses 32); the rest as Meta wrote it."""

    def apply_scaling(freqs, low_freq_factor=1, high_freq_factor=4, old_context_len=8192):
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * torch.pi / freqs
        new_freqs = torch.where(wavelen > low_freq_wavelen, freqs / scale_factor, freqs)
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        blended = (1 - smooth) * new_freqs / scale_factor + smooth * new_freqs
        return torch.where((wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen), blended, new_freqs)

    return apply_scaling


def load_reference(checkpoint_dir: Path, max_seq_len: int, rope_scale_factor: float = None):
    """Meta's Transformer with the checkpoint's weights, for one sequence of at most max_seq_len tokens.

    rope_scale_factor replaces the factor of 8 that Meta's code hard-codes for `use_scaled_rope`
    (right for Llama 3.1, wrong for 3.2, whose published configuration says 32).
    """
    from llama_models.llama3 import model as meta_model
    from llama_models.llama3.args import ModelArgs

    ensure_model_parallel_group()
    checkpoint_dir = Path(checkpoint_dir)
    params = json.loads((checkpoint_dir / "params.json").read_text())
    args = ModelArgs(**params, max_batch_size=1, max_seq_len=max_seq_len)
    state_dict = torch.load(checkpoint_dir / "consolidated.00.pth", map_location="cpu", mmap=True, weights_only=True)
    if "output.weight" not in state_dict:  # a tied checkpoint: the embedding is the output projection
        state_dict["output.weight"] = state_dict["tok_embeddings.weight"]

    # The layers allocate their weights uninitialised (torch.empty), which costs no memory until
    # written; assign=True then puts the checkpoint's own tensors in their place.
    model = meta_model.Transformer(args)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.eval()

    if args.use_scaled_rope and rope_scale_factor is not None:
        with mock.patch.object(meta_model, "apply_scaling", scaled_frequencies_with_factor(rope_scale_factor)):
            model.freqs_cis = meta_model.precompute_freqs_cis(args.dim // args.n_heads, args.max_seq_len * 2,
                                                              args.rope_theta, use_scaled=True)
    return model


def reference_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """float32 logits of every position, [n_tokens, vocab_size], in one forward pass from position 0."""
    return model(tokens.view(1, -1), 0)[0]


def reference_greedy_generation(model, tokens: torch.Tensor, n_new_tokens: int) -> list:
    """Meta's own incremental decoding: prefill from position 0, then one token at a time at start_pos."""
    logits = model(tokens.view(1, -1), 0)[0, -1]
    generated = []
    for _ in range(n_new_tokens):
        token = int(logits.argmax())
        generated.append(token)
        position = len(tokens) + len(generated) - 1
        logits = model(torch.tensor([[token]]), position)[0, -1]
    return generated
