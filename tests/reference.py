"""Meta's reference implementation, `llama_models.llama3.model.Transformer`, on a checkpoint folder.

It is built on fairscale's model-parallel layers, which need a process group: here one process, a gloo
group of size 1 rendezvousing through a file, so that nothing touches the network. Its weights are the
checkpoint's own mmap'ed bf16 tensors (`load_state_dict(assign=True)`): no copy, no float32.
"""

import contextlib
import json
import tempfile
from pathlib import Path
from unittest import mock

import torch

from rounding import float_means_double

_rendezvous_folder = None  # removed when the process exits


def ensure_model_parallel_group():
    """fairscale's model-parallel state for a single CPU process (created once per process)."""
    global _rendezvous_folder
    import fairscale.nn.model_parallel.initialize as fs_init
    import torch.distributed as dist

    if not dist.is_initialized():
        _rendezvous_folder = tempfile.TemporaryDirectory(prefix="llama3-gloo-")
        rendezvous = Path(_rendezvous_folder.name) / "rendezvous"
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
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


def load_reference(checkpoint_dir: Path, max_seq_len: int, rope_scale_factor: float = None, dtype: torch.dtype = None):
    """Meta's Transformer with the checkpoint's weights, for one sequence of at most max_seq_len tokens.

    rope_scale_factor replaces the factor of 8 that Meta's code hard-codes for `use_scaled_rope`
    (right for Llama 3.1, wrong for 3.2, whose published configuration says 32).
    dtype (torch.float32, say) converts every weight first, so that the whole model computes in that dtype;
    the checkpoint's own tensors are used as they are when it is None. In float64 the RoPE table and every
    step are float64 (rounding.float_means_double: Meta's .float() upcasts, meant for bf16, would round to
    float32), so that the float64 model is the truth the tests hold float32 computations to.
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
    if dtype is not None:
        state_dict = {name: tensor.to(dtype) for name, tensor in state_dict.items()}

    # The layers allocate their weights uninitialised (torch.empty), which costs no memory until
    # written; assign=True then puts the checkpoint's own tensors in their place.
    model = meta_model.Transformer(args)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.eval()

    rescaled = args.use_scaled_rope and rope_scale_factor is not None
    if rescaled or dtype == torch.float64:
        factor = (mock.patch.object(meta_model, "apply_scaling", scaled_frequencies_with_factor(rope_scale_factor))
                  if rescaled else contextlib.nullcontext())
        wide = float_means_double() if dtype == torch.float64 else contextlib.nullcontext()
        with factor, wide:
            model.freqs_cis = meta_model.precompute_freqs_cis(args.dim // args.n_heads, args.max_seq_len * 2,
                                                              args.rope_theta, use_scaled=args.use_scaled_rope)
    if dtype == torch.float64:
        model.forward = float_means_double()(model.forward)  # its .float() upcasts would round to float32
    return model


def reference_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of every position, [n_tokens, vocab_size], in one forward pass from position 0 (float32, or
    float64 for a float64 model)."""
    return model(tokens.view(1, -1), 0)[0]


def reference_greedy_generation(model, tokens: torch.Tensor, n_new_tokens: int) -> list:
    """Meta's own incremental decoding: prefill from position 0, then one token at a time at start_pos."""
    logits = model(tokens.view(1, -1), 0)[0, -1]
    generated = []
    for _ in range(n_new_tokens):
        token = int(logits.argmax())
        generated.append(token)
        position = len(tokens) + len(generated) - 1
        logits = model(torch.tensor([[token]], device=tokens.device), position)[0, -1]
    return generated


def meta_sample_top_p():
    """Meta's `sample_top_p`, compiled from the installed llama_models/llama3/generation.py.

    Importing that module would import Meta's multimodal model and with it torchvision, which nothing here
    needs; the function itself uses only torch, so it is taken from Meta's file on its own.
    """
    import ast

    import llama_models.llama3

    path = Path(llama_models.llama3.__file__).parent / "generation.py"
    tree = ast.parse(path.read_text())
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "sample_top_p")
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["sample_top_p"]


def reference_sampled_tokens(step_logits: torch.Tensor, temperature: float, top_p: float, seed: int) -> list:
    """The tokens Meta's generation loop samples from these logits ([steps, vocab_size]), step after step,
    with torch's generator seeded as given (and restored afterwards)."""
    sample_top_p = meta_sample_top_p()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [int(sample_top_p(torch.softmax(logits.view(1, -1) / temperature, dim=-1), top_p)) for logits in step_logits]


def reference_decoding(model, tokens: torch.Tensor, n_new_tokens: int, fed_tokens: list = None):
    """Meta's incremental decoding as in reference_greedy_generation, returning the tokens and every step's
    logits [n_new_tokens, vocab_size]. With fed_tokens, step i feeds fed_tokens[i] instead of its own
    argmax (the tokens another run chose), so that two runs can be compared step by step. The logits are
    float32, or float64 for a float64 model."""
    logits = model(tokens.view(1, -1), 0)[0, -1]
    generated, step_logits = [], []
    for step in range(n_new_tokens):
        step_logits.append(logits)
        token = int(logits.argmax()) if fed_tokens is None else int(fed_tokens[step])
        generated.append(token)
        if step + 1 < n_new_tokens:
            logits = model(torch.tensor([[token]], device=tokens.device), len(tokens) + step)[0, -1]
    return generated, torch.stack(step_logits)


class _LastPositionProjection(torch.nn.Module):
    """Meta's output projection applied to the last position only."""

    def __init__(self, projection: torch.nn.Module):
        super().__init__()
        self.projection = projection

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.projection(h[:, -1:])


def project_last_position_only(model):
    """Meta's Transformer, otherwise unchanged, projecting only the last position onto the vocabulary.

    Its forward pass computes logits for every position it is given: for a prompt of a thousand tokens and
    Meta's 128256-token vocabulary that is most of the work (and 1 GB in float64), while generation and the
    next-token prediction read only the last row. model(tokens, start_pos) then returns [1, 1, vocab_size].
    """
    model.output = _LastPositionProjection(model.output)
    return model
