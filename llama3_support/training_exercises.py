"""The training notebook's checks: its exercise copy's steps, each judged against the truth in one line.

train_llama3_from_scratch.exercises.ipynb (written by tests/make_exercises.py from the training notebook)
leaves some of its code blank, and hands each answer to check() as the walkthrough's copy does
(llama3_support/exercises.py: check, report, hint, the line a verdict prints). This module registers the
training notebook's own numbered set, TRAINING_SET (an ExerciseSet), in that machinery.

A module (RMSNorm, the rotation, attention with grouped-query heads, SwiGLU, the block) is judged when the
cell after its class runs report() with a probe: the learner's own class, built on a configuration of the
check's own (query heads over fewer key/value heads, weights that are not ones, inputs that need gradients),
is called once, and the check inside its forward compares the output AND the gradients of a random projection
of it, with respect to the input and every weight, with the same arithmetic in float64, within the project's
rounding rule (llama3_support/rounding.py). From then on a correct module hands back its own output: the model
that trains is the learner's code and the learner's parameters. A blank or wrong one hands back the reference
result, computed from the same module's own parameters (so the learner's weights still train), and the report
line says so. Probes catch what the learner's code raises and report it as the wrong line.
"""

import math
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F

from llama3_support.exercises import (CORRECT, NOT_ATTEMPTED, WRONG, ExerciseSet, Verdict, _judge_values, _Progress,
                                      _progress, _shape_dtype_device, check, exercise, hint, last_verdict, report,
                                      scoreboard, solution, withheld)
from llama3_support.rounding import SAFETY, rounding_floor, rounding_tolerance

__all__ = ["TRAINING_SET", "TRAINING_EXERCISES", "check", "exercise", "hint", "report", "last_verdict", "probe",
           "scoreboard", "solution", "withheld"]

TRAINING_SET = ExerciseSet("train_llama3_from_scratch.ipynb")
TRAINING_EXERCISES = TRAINING_SET.exercises  # numbered 1, 2, ... in the training notebook's order
GRADIENT_SEED = 0        # seeds the random projection whose gradients are compared
JUDGED_STEPS = 5         # training steps whose clipping and optimizer step are judged in full


_training_exercise = TRAINING_SET.exercise


def _raised(name: str, error: Exception) -> None:
    """What a probe's call of the learner's code raised, as the exercise's wrong verdict."""
    _progress.setdefault(name, _Progress()).verdicts.append(
        Verdict(WRONG, f"your code raised {type(error).__name__}: {error}"))


def probe(name: str, call: callable) -> callable:
    """A report() probe: call() runs the learner's code on the check's own configuration; whatever it raises
    becomes the exercise's wrong line instead of stopping the lesson."""
    def run():
        try:
            call()
        except Exception as error:  # the learner's code: any mistake is a verdict, never a crash
            _raised(name, error)
    return run


def _generator(seed: int = GRADIENT_SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- judging a differentiable result


def _judge_differentiable(answer, leaves: dict, truth_of: callable, *, what: str, meaning: str, axes: tuple,
                          terms: int, mistakes: dict = None):
    """(verdict, what the notebook goes on with) for a result computed from leaves ({name: float32 tensor}: the
    input and the weights). truth_of(tensors) computes the result from such a dict in any dtype. The answer's
    values are held to the float64 truth, then its gradients (of a random projection) with respect to every
    leaf that needs one. mistakes: {message: truth_of of a typical mistake}."""
    reference = truth_of(leaves)  # float32 and differentiable: the learner's parameters still train through it
    wide = {name: tensor.detach().double().requires_grad_(tensor.requires_grad) for name, tensor in leaves.items()}
    with torch.enable_grad():
        truth = truth_of(wide)
    detached = {name: tensor.detach() for name, tensor in wide.items()}
    problem = _shape_dtype_device(answer, reference, what, axes)
    if problem:
        return problem, reference
    verdict = _judge_values(answer.detach(), reference.detach(), truth.detach(), what=what, meaning=meaning,
                            terms=terms, axes=axes)
    if verdict.kind != CORRECT:
        for message, wrong in (mistakes or {}).items():  # held to the mistake's own rounding: a sum is larger
            mistaken = wrong(detached)
            if mistaken.shape == answer.shape and torch.isfinite(mistaken).all():
                tolerance = max(rounding_tolerance(reference.detach(), truth.detach(), answer.dtype, terms),
                                SAFETY * rounding_floor(mistaken, answer.dtype, terms))
                if (answer.detach().double() - mistaken).abs().max().item() <= tolerance:
                    return Verdict(WRONG, message), reference
        return verdict, reference
    needing = [name for name, tensor in leaves.items() if tensor.requires_grad]
    if not needing or not torch.is_grad_enabled():
        return verdict, answer
    if not answer.requires_grad:
        return Verdict(WRONG, f"the values of {what} are right, but no gradient flows back through them: they "
                              "were computed outside autograd's view (.detach(), .item(), .numpy() or "
                              "torch.no_grad()), so training could not learn through them"), reference
    projection = torch.randn(answer.shape, generator=_generator(), dtype=answer.dtype)
    mine = torch.autograd.grad(answer, [leaves[name] for name in needing], projection, retain_graph=True,
                               allow_unused=True)
    ours = torch.autograd.grad(reference, [leaves[name] for name in needing], projection, retain_graph=True,
                               allow_unused=True)
    truths = torch.autograd.grad(truth, [wide[name] for name in needing], projection.double(), allow_unused=True)
    for name, my_gradient, our_gradient, true_gradient in zip(needing, mine, ours, truths):
        if true_gradient is None:
            continue
        if my_gradient is None:
            return Verdict(WRONG, f"the values of {what} are right, but no gradient reaches {name}: it was used "
                                  "outside autograd's view (.detach(), .data, or a copy), so it would never train"), reference
        tolerance = rounding_tolerance(our_gradient, true_gradient, answer.dtype, terms)
        error = (my_gradient.double() - true_gradient).abs().max().item()
        if not error <= tolerance:
            return Verdict(WRONG, f"the values of {what} are right, but their gradient with respect to {name} "
                                  f"is not: the largest difference, {error:.3g}, is more than rounding explains "
                                  f"({tolerance:.2g})"), reference
    return Verdict(CORRECT, f"{verdict.message}; so do its gradients with respect to {', '.join(needing)}"), answer


def _summary_of_probes(verdicts) -> Verdict:
    """One verdict on several probe calls: the first that is not correct, else the first."""
    for kind in (NOT_ATTEMPTED, WRONG):
        first = next((verdict for verdict in verdicts if verdict.kind == kind), None)
        if first is not None:
            return first
    return verdicts[0]


# ---------------------------------------------------------------- 1. BPE: counting pairs


def _count_pairs_truth(pieces_with_counts: dict) -> dict:
    counts = {}
    for pieces, count in pieces_with_counts.items():
        for pair in zip(pieces, pieces[1:]):
            counts[pair] = counts.get(pair, 0) + count
    return counts


def _count_pairs_reference(pieces_with_counts, memory=None):
    import collections
    return collections.Counter(_count_pairs_truth(pieces_with_counts))


PAIRS_PROBE = {(b"a", b"a", b"a"): 2, (b"a", b"b", b"a", b"b"): 3, (b"b",): 5, (b"t", b"h", b"e"): 7}


@_training_exercise("bpe_pairs", "BPE: counting the pairs of neighbouring pieces", (
    "Each chunk is a tuple of pieces and occurs `count` times in the text: each pair of neighbours in it "
    "counts that many times.",
    "For each (pieces, count): for each pair in zip(pieces, pieces[1:]), add count to pair_counts[pair]."),
    _count_pairs_reference, minutes=5, difficulty=1)
def _bpe_pairs(answer, *, pieces_with_counts, memory=None):
    reference = _count_pairs_reference(pieces_with_counts)
    if not isinstance(answer, dict):
        return Verdict(WRONG, f"pair_counts should be a Counter (a dict), and yours is a {type(answer).__name__}"), reference
    if not answer and reference:
        return Verdict(NOT_ATTEMPTED), reference
    mine = {pair: count for pair, count in answer.items() if count}
    if mine == dict(reference):
        return Verdict(CORRECT, f"all {len(reference)} pairs counted, each weighted by its chunk's count"), answer
    once = {}
    for pieces in pieces_with_counts:
        for pair in zip(pieces, pieces[1:]):
            once[pair] = once.get(pair, 0) + 1
    distinct = {}
    for pieces, count in pieces_with_counts.items():
        for pair in set(zip(pieces, pieces[1:])):
            distinct[pair] = distinct.get(pair, 0) + count
    if mine == once:
        return Verdict(WRONG, "each pair counts once per chunk: weight it by how often the chunk occurs (count)"), reference
    if mine == distinct:
        return Verdict(WRONG, "a pair that occurs twice in one chunk counts once: count every position, not the "
                              "set of pairs"), reference
    if any(not (isinstance(pair, tuple) and len(pair) == 2) for pair in mine):
        return Verdict(WRONG, "the keys should be pairs: tuples of two neighbouring pieces"), reference
    wrong = sum(1 for pair in set(mine) | set(reference) if mine.get(pair) != reference.get(pair))
    return Verdict(WRONG, f"{wrong} of the pairs have the wrong count (or should not be there)"), reference


def probe_bpe_pairs(count_pairs: callable) -> callable:
    return probe("bpe_pairs", lambda: count_pairs(dict(PAIRS_PROBE)))


# ---------------------------------------------------------------- 2. BPE: one merge


def _merge_pair_reference(pieces, pair, memory=None):
    merged, i = [], 0
    while i < len(pieces):
        if pieces[i:i + 2] == pair:
            merged.append(pair[0] + pair[1])
            i += 2
        else:
            merged.append(pieces[i])
            i += 1
    return merged


def _merge_from_the_right(pieces, pair) -> list:
    merged, i = [], len(pieces)
    while i > 0:
        if i >= 2 and tuple(pieces[i - 2:i]) == tuple(pair):
            merged.insert(0, pair[0] + pair[1])
            i -= 2
        else:
            merged.insert(0, pieces[i - 1])
            i -= 1
    return merged


MERGE_PROBES = [((b"a", b"a", b"a"), (b"a", b"a")), ((b"a", b"b", b"a", b"b"), (b"a", b"b")),
                ((b"x", b"a", b"b"), (b"a", b"b")), ((b"b", b"a"), (b"a", b"b")), ((b"t", b"h", b"e"), (b"h", b"e"))]


@_training_exercise("bpe_merge", "BPE: applying one merge", (
    "Walk through the pieces left to right: where the pair starts, the two pieces become one (their bytes "
    "joined) and you jump past both; elsewhere the piece stays.",
    "while i < len(pieces): if pieces[i:i + 2] == pair, append pair[0] + pair[1] and i += 2; else append "
    "pieces[i] and i += 1."), _merge_pair_reference, summarize=_summary_of_probes, minutes=8, difficulty=2)
def _bpe_merge(answer, *, pieces, pair, memory=None):
    reference = _merge_pair_reference(pieces, pair)
    if not isinstance(answer, (list, tuple)):
        return Verdict(WRONG, f"merged should be a list of pieces, and yours is a {type(answer).__name__}"), reference
    mine = list(answer)
    if not mine and pieces:
        return Verdict(NOT_ATTEMPTED), reference
    if mine == reference:
        return Verdict(CORRECT, "every occurrence merged, left to right, the merged piece the pair's bytes"), answer
    if any(isinstance(piece, tuple) for piece in mine):
        return Verdict(WRONG, "a merged piece is the two pieces' bytes joined (pair[0] + pair[1]), not the pair "
                              "itself"), reference
    if mine == _merge_from_the_right(pieces, pair):
        return Verdict(WRONG, "overlapping pairs are merged from the right: merge from the left, the first "
                              "occurrence first"), reference
    if len(mine) == len(reference) - 1 and mine == reference[:-1]:
        return Verdict(WRONG, "the last piece is lost: the loop stops one piece early"), reference
    first_only = list(pieces)
    for i in range(len(pieces) - 1):
        if tuple(pieces[i:i + 2]) == tuple(pair):
            first_only = list(pieces[:i]) + [pair[0] + pair[1]] + list(pieces[i + 2:])
            break
    if mine == first_only:
        return Verdict(WRONG, "only the first occurrence is merged: merge every occurrence"), reference
    return Verdict(WRONG, f"{len(mine)} pieces where a merge of {len(pieces)} gives {len(reference)}"
                   if len(mine) != len(reference) else "the pieces are not the merge's, though as many"), reference


def probe_bpe_merge(merge_pair: callable) -> callable:
    return probe("bpe_merge", lambda: [merge_pair(pieces, pair) for pieces, pair in MERGE_PROBES])


# ---------------------------------------------------------------- 3. RMSNorm


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def _rmsnorm_reference(module, x, memory=None):
    return _rms(x.float(), module.weight, module.eps).type_as(x)


@_training_exercise("rmsnorm_module", "the RMSNorm module", (
    "Divide each position's vector by its root mean square (over the last axis, eps added under the root), "
    "then scale each coordinate by the learned gain, self.weight.",
    "x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + self.eps), .type_as(x), times "
    "self.weight."), _rmsnorm_reference, summarize=_summary_of_probes, minutes=5, difficulty=1)
def _rmsnorm_module(answer, *, module, x, memory=None):
    eps = module.eps
    return _judge_differentiable(
        answer, {"x": x, "weight": module.weight}, lambda t: _rms(t["x"], t["weight"], eps),
        what="RMSNorm's output", meaning="your RMSNorm equals", axes=("batch", "positions", "dim"),
        terms=x.shape[-1], mistakes={
            "eps is missing (or outside the root): add it to the mean square, under the square root":
                lambda t: t["x"] * torch.rsqrt(t["x"].pow(2).mean(dim=-1, keepdim=True)) * t["weight"],
            "the gain is missing: multiply by self.weight": lambda t: _rms(t["x"], 1.0, eps),
            "the mean is over the wrong axis: each position is normalised over its own vector, dim=-1":
                lambda t: t["x"] * torch.rsqrt(t["x"].pow(2).mean(dim=0, keepdim=True) + eps) * t["weight"],
            "that is LayerNorm: RMSNorm subtracts no mean, it divides by the root mean square":
                lambda t: _rms(t["x"] - t["x"].mean(dim=-1, keepdim=True), t["weight"], eps),
            "multiplied by the root mean square where it should divide (rsqrt is 1 / sqrt)":
                lambda t: t["x"] * torch.sqrt(t["x"].pow(2).mean(dim=-1, keepdim=True) + eps) * t["weight"],
        })


def probe_rmsnorm(RMSNorm) -> callable:
    def call():
        generator = _generator(1)
        module = RMSNorm(12, 1e-5)
        with torch.no_grad():
            module.weight.copy_(1 + 0.5 * torch.randn(12, generator=generator))
        module(((torch.randn(3, 5, 12, generator=generator) + 0.5) * 3).requires_grad_())
    return probe("rmsnorm_module", call)


# ---------------------------------------------------------------- 4. the rotations


def _rotated(x, rotations, pairs: str = "neighbours", turn: float = 1.0):
    cos, sin = rotations.real.to(x.dtype), turn * rotations.imag.to(x.dtype)
    if pairs == "neighbours":
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def _rope_reference(x, rotations, memory=None):
    return _rotated(x.float(), rotations).type_as(x)


def _probe_rotations(positions: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    frequencies = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(positions).float(), frequencies)
    return torch.polar(torch.ones_like(angles), angles)[:, None, :]


@_training_exercise("rope_rotate", "the rotations (RoPE, with complex numbers)", (
    "Read each neighbouring pair of the last axis, (x0, x1), (x2, x3), ..., as one complex number, multiply it "
    "by its rotation, and read the result back as pairs of real numbers.",
    "torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * rotations, then torch.view_as_real(...)"
    ".flatten(-2).type_as(x)."), _rope_reference, summarize=_summary_of_probes, minutes=8, difficulty=2)
def _rope_rotate(answer, *, x, rotations, memory=None):
    return _judge_differentiable(
        answer, {"x": x}, lambda t: _rotated(t["x"], rotations), what="the rotated vectors",
        meaning="your rotated vectors equal", axes=("batch", "positions", "heads", "head_dim"), terms=2, mistakes={
            "the pairs are the first and the second half of each head (Hugging Face's layout): Meta's checkpoints "
            "pair neighbours, (x0, x1), (x2, x3), ...": lambda t: _rotated(t["x"], rotations, "halves"),
            "the vectors turn the wrong way: multiply by the rotations, not by their conjugates":
                lambda t: _rotated(t["x"], rotations, turn=-1.0),
            "the vectors are not turned at all": lambda t: t["x"],
        })


def probe_rope(apply_rope: callable) -> callable:
    def call():
        generator = _generator(2)
        x = torch.randn(2, 7, 3, 8, generator=generator).requires_grad_()
        apply_rope(x, _probe_rotations(7, 8))
    return probe("rope_rotate", call)


# ---------------------------------------------------------------- 5. attention with grouped-query heads


def _attention(q, k, v, grouping: str = "consecutive", causal: bool = True, scale: str = "sqrt"):
    ratio = q.shape[1] // k.shape[1]
    if grouping == "consecutive":
        k, v = k.repeat_interleave(ratio, dim=1), v.repeat_interleave(ratio, dim=1)
    else:
        k, v = k.repeat(1, ratio, 1, 1), v.repeat(1, ratio, 1, 1)
    divisor = {"sqrt": math.sqrt(q.shape[-1]), "dim": q.shape[-1], "none": 1.0}[scale]
    scores = q @ k.transpose(-2, -1) / divisor
    if causal:
        positions = q.shape[-2]
        mask = torch.ones(positions, positions, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _attention_reference(q, k, v, memory=None):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


@_training_exercise("gqa_attention", "attention with grouped-query heads", (
    "Each query head h attends with the key/value head it shares with its group: n_heads / n_kv_heads "
    "consecutive query heads share one. Scores scaled by sqrt(head_dim), causal mask, softmax, weighted sum.",
    "F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), or by hand: repeat_interleave k "
    "and v over the heads axis, q @ k.T / sqrt(head_dim), mask above the diagonal, softmax, @ v."),
    _attention_reference, summarize=_summary_of_probes, minutes=12, difficulty=3)
def _gqa_attention(answer, *, q, k, v, memory=None):
    return _judge_differentiable(
        answer, {"q": q, "k": k, "v": v}, lambda t: _attention(t["q"], t["k"], t["v"]), what="the heads' outputs",
        meaning="your attention equals", axes=("batch", "heads", "positions", "head_dim"), terms=q.shape[-1] * q.shape[-2],
        mistakes={
            "query head h reads key/value head h % n_kv_heads: the heads of a group are consecutive, so query "
            "head h reads key/value head h // (n_heads / n_kv_heads) (repeat_interleave, not repeat)":
                lambda t: _attention(t["q"], t["k"], t["v"], grouping="tiled"),
            "the causal mask is missing: a position must not attend to the positions after it":
                lambda t: _attention(t["q"], t["k"], t["v"], causal=False),
            "the scores are not scaled: divide them by sqrt(head_dim)":
                lambda t: _attention(t["q"], t["k"], t["v"], scale="none"),
            "the scores are divided by head_dim: divide them by its square root":
                lambda t: _attention(t["q"], t["k"], t["v"], scale="dim"),
        })


def probe_attention(Attention, model_args) -> callable:
    def call():
        generator = _generator(3)
        for n_heads, n_kv_heads in ((4, 2), (6, 3)):
            args = replace(model_args, dim=8 * n_heads, n_heads=n_heads, n_kv_heads=n_kv_heads, max_seq_len=6)
            torch.manual_seed(3)
            module = Attention(args)
            module(torch.randn(2, 6, args.dim, generator=generator).requires_grad_(), _probe_rotations(6, 8))
    return probe("gqa_attention", call)


# ---------------------------------------------------------------- 6. SwiGLU


def _swiglu(x, w1, w2, w3, activation=None, gate: str = "w1"):
    activation = activation or (lambda z: z * torch.sigmoid(z))
    a, b = x @ w1.T, x @ w3.T
    hidden = activation(a) * b if gate == "w1" else (a * activation(b) if gate == "w3" else activation(a))
    return hidden @ w2.T


def _swiglu_reference(module, x, memory=None):
    return _swiglu(x, module.w1.weight, module.w2.weight, module.w3.weight)


@_training_exercise("swiglu_module", "the SwiGLU feed-forward network", (
    "Two projections up to ffn_dim, w1 and w3: SiLU of the first gates the second, elementwise; w2 projects "
    "the product back down to dim.",
    "self.w2(F.silu(self.w1(x)) * self.w3(x))."), _swiglu_reference, summarize=_summary_of_probes,
    minutes=4, difficulty=1)
def _swiglu_module(answer, *, module, x, memory=None):
    leaves = {"x": x, "w1": module.w1.weight, "w2": module.w2.weight, "w3": module.w3.weight}
    return _judge_differentiable(
        answer, leaves, lambda t: _swiglu(t["x"], t["w1"], t["w2"], t["w3"]), what="the feed-forward output",
        meaning="your SwiGLU equals", axes=("batch", "positions", "dim"), terms=module.w2.weight.shape[1], mistakes={
            "SiLU is on the w3 branch: it goes on w1's, which gates w3's":
                lambda t: _swiglu(t["x"], t["w1"], t["w2"], t["w3"], gate="w3"),
            "the gate is missing: SiLU of w1's branch multiplies w3's branch":
                lambda t: _swiglu(t["x"], t["w1"], t["w2"], t["w3"], gate="none"),
            "that is ReLU: SwiGLU's activation is SiLU, z * sigmoid(z)":
                lambda t: _swiglu(t["x"], t["w1"], t["w2"], t["w3"], activation=torch.relu),
            "that is the sigmoid alone: SiLU is z * sigmoid(z)":
                lambda t: _swiglu(t["x"], t["w1"], t["w2"], t["w3"], activation=torch.sigmoid),
            "that is GELU: SwiGLU's activation is SiLU, z * sigmoid(z)":
                lambda t: _swiglu(t["x"], t["w1"], t["w2"], t["w3"], activation=F.gelu),
        })


def probe_swiglu(FeedForward, model_args) -> callable:
    def call():
        args = replace(model_args, dim=16, n_heads=2, n_kv_heads=1)
        torch.manual_seed(4)
        FeedForward(args)(torch.randn(2, 5, 16, generator=_generator(4)).requires_grad_())
    return probe("swiglu_module", call)


# ---------------------------------------------------------------- 7. the block's two residuals


def _block(t: dict, shape: dict, rotations, variant: str = "right"):
    def linear(z, name):
        return z @ t[name].T

    def norm(z, name):
        return _rms(z, t[name], shape["eps"])

    def attention(z):
        batch, positions, _ = z.shape
        heads, kv_heads, head_dim = shape["n_heads"], shape["n_kv_heads"], shape["head_dim"]
        q = _rotated(linear(z, "attention.wq.weight").view(batch, positions, heads, head_dim), rotations)
        k = _rotated(linear(z, "attention.wk.weight").view(batch, positions, kv_heads, head_dim), rotations)
        v = linear(z, "attention.wv.weight").view(batch, positions, kv_heads, head_dim)
        out = _attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return linear(out.transpose(1, 2).reshape(batch, positions, heads * head_dim), "attention.wo.weight")

    def feed_forward(z):
        return _swiglu(z, t["feed_forward.w1.weight"], t["feed_forward.w2.weight"], t["feed_forward.w3.weight"])

    x = t["x"]
    if variant == "post-norm":
        after = norm(x + attention(x), "attention_norm.weight")
        return norm(after + feed_forward(after), "ffn_norm.weight")
    if variant == "no attention residual":
        after = attention(norm(x, "attention_norm.weight"))
    else:
        after = x + attention(norm(x, "attention_norm.weight"))
    if variant == "parallel":
        return after + feed_forward(norm(x, "ffn_norm.weight"))
    if variant == "no ffn residual":
        return feed_forward(norm(after, "ffn_norm.weight"))
    if variant == "no norms":
        return (x + attention(x)) + feed_forward(x + attention(x))
    return after + feed_forward(norm(after, "ffn_norm.weight"))


def _block_shape(module) -> dict:
    return {"n_heads": module.attention.n_heads, "n_kv_heads": module.attention.n_kv_heads,
            "head_dim": module.attention.head_dim, "eps": module.attention_norm.eps}


def _block_reference(module, x, rotations, memory=None):
    return _block({"x": x, **dict(module.named_parameters())}, _block_shape(module), rotations)


@_training_exercise("block_residuals", "the block's two residuals", (
    "Pre-norm: attention reads RMSNorm of the stream and adds its output to the stream; then the feed-forward "
    "network reads RMSNorm of that new stream and adds its output to it.",
    "after_attention = x + self.attention(self.attention_norm(x), rotations); return after_attention + "
    "self.feed_forward(self.ffn_norm(after_attention))."), _block_reference, summarize=_summary_of_probes,
    minutes=6, difficulty=2)
def _block_residuals(answer, *, module, x, rotations, memory=None):
    shape = _block_shape(module)
    leaves = {"x": x, **dict(module.named_parameters())}
    messages = {
        "no attention residual": "the attention's output replaces the stream: add it to x (the first residual)",
        "no ffn residual": "the feed-forward output replaces the stream: add it to after_attention (the second "
                           "residual)",
        "parallel": "the feed-forward network reads x: it reads the stream after attention was added",
        "post-norm": "the norms come after the additions (post-norm): Llama normalises what each branch reads, "
                     "and adds the branch's output to the stream as it is",
        "no norms": "the branches read the stream without its RMSNorm: attention_norm and ffn_norm come first",
    }
    return _judge_differentiable(
        answer, leaves, lambda t: _block(t, shape, rotations), what="the block's output",
        meaning="your block equals", axes=("batch", "positions", "dim"), terms=x.shape[-1] * x.shape[-2],
        mistakes={message: (lambda t, variant=variant: _block(t, shape, rotations, variant))
                  for variant, message in messages.items()})


def probe_block(TransformerBlock, model_args) -> callable:
    def call():
        args = replace(model_args, dim=32, n_heads=4, n_kv_heads=2, max_seq_len=6)
        torch.manual_seed(5)
        block = TransformerBlock(args)
        with torch.no_grad():
            for parameter in block.parameters():
                if parameter.dim() == 1:
                    parameter.copy_(1 + 0.3 * torch.randn(parameter.shape, generator=_generator(6)))
                else:
                    parameter.normal_(0, 0.2)
        block(torch.randn(2, 6, 32, generator=_generator(5)).requires_grad_(), _probe_rotations(6, 8))
    return probe("block_residuals", call)


# ---------------------------------------------------------------- 8. the next-token loss


def _loss(logits, targets, reduction: str = "mean"):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)


def _next_token_loss_reference(logits, targets, memory=None):
    return _loss(logits, targets)


@_training_exercise("next_token_loss", "the next-token cross-entropy", (
    "get_batch already shifted the text: targets[:, t] is the token after inputs[:, t]. The loss is the mean, "
    "over every position of every sequence, of -log softmax(logits)[target].",
    "F.cross_entropy(logits.view(-1, self.args.vocab_size), targets.reshape(-1)): one row of logits per "
    "position, one target id each."), _next_token_loss_reference,
    summarize=_summary_of_probes, minutes=5, difficulty=2)
def _next_token_loss(answer, *, logits, targets, memory=None):
    return _judge_differentiable(
        answer, {"logits": logits}, lambda t: _loss(t["logits"], targets), what="the loss", meaning="your loss equals",
        axes=(), terms=logits.shape[-1], mistakes={
            "the loss is summed over the positions: take their mean (cross_entropy's default)":
                lambda t: _loss(t["logits"], targets, "sum"),
            "the targets are shifted a second time: get_batch already pairs inputs[:, t] with the next token, "
            "targets[:, t]": lambda t: _loss(t["logits"][:, :-1], targets[:, 1:]),
            "softmax is applied before cross_entropy, which takes the logits themselves (it does log-softmax)":
                lambda t: _loss(torch.softmax(t["logits"], dim=-1), targets),
            "the sign is flipped: the loss is MINUS the log-probability of each target":
                lambda t: -_loss(t["logits"], targets),
        })


def probe_loss(model, inputs, targets) -> callable:
    return probe("next_token_loss", lambda: model(inputs, targets))


# ---------------------------------------------------------------- 9. sampling with a temperature


def _temperature_reference(last_logits, temperature, memory=None):
    return torch.softmax(last_logits / temperature, dim=-1)


@_training_exercise("temperature", "sampling with a temperature", (
    "Divide the logits by the temperature before the softmax: below 1 it sharpens the distribution towards the "
    "likeliest tokens, above 1 it flattens it.",
    "torch.softmax(last_logits / temperature, dim=-1)."), _temperature_reference, summarize=_summary_of_probes,
    unchecked="sample_text has not run yet", minutes=3, difficulty=1)
def _temperature(answer, *, last_logits, temperature, memory=None):
    logits = last_logits.detach().cpu()
    if isinstance(answer, torch.Tensor):
        answer = answer.cpu()
    return _judge_differentiable(
        answer, {"last_logits": logits}, lambda t: torch.softmax(t["last_logits"] / temperature, dim=-1),
        what="the probabilities", meaning="your probabilities equal", axes=("vocabulary",),
        terms=logits.shape[-1], mistakes={
            "the logits are multiplied by the temperature: divide them by it":
                lambda t: torch.softmax(t["last_logits"] * temperature, dim=-1),
            "the temperature is missing: divide the logits by it before the softmax":
                lambda t: torch.softmax(t["last_logits"], dim=-1),
            "the probabilities are divided by the temperature after the softmax, so they no longer add up to 1: "
            "divide the logits before it": lambda t: torch.softmax(t["last_logits"], dim=-1) / temperature,
            "those are log-probabilities: torch.multinomial needs probabilities (softmax, not log_softmax)":
                lambda t: torch.log_softmax(t["last_logits"] / temperature, dim=-1),
        })


def probe_temperature(sample_text: callable, model, prompt: str) -> callable:
    return probe("temperature", lambda: sample_text(model, prompt, 2, temperature=1.7))


# ---------------------------------------------------------------- 10. AdamW's two groups


def _adamw_groups_reference(model, memory=None):
    parameters = list(model.parameters())
    return [p for p in parameters if p.dim() >= 2], [p for p in parameters if p.dim() < 2]


@_training_exercise("adamw_groups", "AdamW's two parameter groups", (
    "Weight decay pulls weights towards 0: right for the matrices (the embedding, every projection), wrong for "
    "RMSNorm's gains, which should stay near 1. Every parameter goes in exactly one of the two groups.",
    "matrices: the parameters with parameter.dim() >= 2; gains: those with parameter.dim() < 2."),
    _adamw_groups_reference, minutes=4, difficulty=1, parts=2)
def _adamw_groups(answer, *, model, memory=None):
    reference = _adamw_groups_reference(model)
    if not (isinstance(answer, tuple) and len(answer) == 2 and all(isinstance(group, (list, tuple)) for group in answer)):
        return Verdict(WRONG, "matrices and gains should each be a list of the model's parameters"), reference
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    mine = [set(map(id, group)) for group in answer]
    ours = [set(map(id, group)) for group in reference]
    if any(len(group) != len(set(map(id, group))) for group in answer):
        return Verdict(WRONG, "a parameter is in a group twice"), reference
    if mine == ours:
        return Verdict(CORRECT, f"{len(ours[0])} matrices decay, {len(ours[1])} gains do not"), answer
    if mine == ours[::-1]:
        return Verdict(WRONG, "the groups are swapped: the gains decay and the matrices do not"), reference
    strangers = (mine[0] | mine[1]) - set(names)
    if strangers:
        return Verdict(WRONG, f"{len(strangers)} of the tensors are not the model's parameters"), reference
    both = mine[0] & mine[1]
    if both:
        return Verdict(WRONG, f"{names[next(iter(both))]} is in both groups: each parameter goes in one"), reference
    missing = set(names) - mine[0] - mine[1]
    if missing:
        return Verdict(WRONG, f"{len(missing)} parameter{'s are' if len(missing) > 1 else ' is'} in neither group ({names[sorted(missing)[0]]}, ...): "
                              "the optimizer would never train them"), reference
    decaying_gains = mine[0] & ours[1]
    if decaying_gains:
        return Verdict(WRONG, f"RMSNorm's gains ({names[next(iter(decaying_gains))]}, ...) are in the group that "
                              "decays: weight decay would pull them towards 0, where they should stay near 1"), reference
    spared = sorted(ours[0] - mine[0], key=lambda key: names[key])
    return Verdict(WRONG, f"{len(spared)} matrices ({names[spared[0]]}, ...) are spared weight decay: in this recipe "
                          "every matrix decays, the embedding and the output projection too"), reference


# ---------------------------------------------------------------- 11. warm-up and cosine decay


def _lr_truth(step, warmup_steps, n_steps, peak_lr, min_lr, variant: str = "right"):
    if step < warmup_steps and variant != "no warm-up":
        return peak_lr * (step + (0 if variant == "warm-up from 0" else 1)) / warmup_steps
    progress = (step - warmup_steps) / max(1, n_steps - warmup_steps)
    if variant == "progress over all steps":
        progress = step / n_steps
    floor = 0.0 if variant == "no floor" else min_lr
    if variant == "linear":
        return peak_lr - (peak_lr - floor) * progress
    return floor + 0.5 * (peak_lr - floor) * (1 + math.cos(math.pi * progress))


def _lr_reference(step, warmup_steps, n_steps, peak_lr, min_lr, memory=None):
    return _lr_truth(step, warmup_steps, n_steps, peak_lr, min_lr)


LR_MISTAKES = {
    "warm-up from 0": "the warm-up starts at 0: step 0 would not train; step s of the warm-up has the rate "
                      "peak_lr * (s + 1) / warmup_steps",
    "no warm-up": "there is no warm-up: the rate climbs linearly to peak_lr over the first warmup_steps steps",
    "no floor": "the cosine ends at 0: it ends at min_lr (half a cosine from peak_lr down to min_lr)",
    "progress over all steps": "the cosine counts its progress from step 0: it starts after the warm-up, "
                               "(step - warmup_steps) / (n_steps - warmup_steps)",
    "linear": "the decay is a straight line: it is half a cosine, min_lr + (peak_lr - min_lr) * (1 + cos(pi * "
              "progress)) / 2",
}


def _lr_summary(verdicts) -> Verdict:
    if any(verdict.kind == NOT_ATTEMPTED for verdict in verdicts):
        return Verdict(NOT_ATTEMPTED)
    wrong = [verdict for verdict in verdicts if verdict.kind == WRONG]
    if wrong:
        return wrong[0]
    return Verdict(CORRECT, f"all {len(verdicts)} steps' rates equal the schedule's to float64 rounding")


@_training_exercise("lr_schedule", "warm-up and cosine decay", (
    "For the first warmup_steps steps the rate climbs in a straight line up to peak_lr (step 0 already above "
    "0); then it follows half a cosine from peak_lr down to min_lr at the last step.",
    "warm-up: peak_lr * (step + 1) / warmup_steps; after it, progress = (step - warmup_steps) / (n_steps - "
    "warmup_steps) and min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * progress))."),
    _lr_reference, summarize=_lr_summary, unchecked="get_lr has not been called yet: run the cell that plots it",
    minutes=8, difficulty=2)
def _lr_schedule(answer, *, step, warmup_steps, n_steps, peak_lr, min_lr, memory=None):
    reference = _lr_reference(step, warmup_steps, n_steps, peak_lr, min_lr)
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = answer.item()
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        return Verdict(WRONG, f"the learning rate should be a number, and yours is a {type(answer).__name__}"), reference
    if math.isclose(answer, reference, rel_tol=1e-9, abs_tol=1e-15):
        return Verdict(CORRECT), answer
    for variant, message in LR_MISTAKES.items():
        if math.isclose(answer, _lr_truth(step, warmup_steps, n_steps, peak_lr, min_lr, variant), rel_tol=1e-9):
            return Verdict(WRONG, f"at step {step}, {message}"), reference
    part = "the warm-up" if step < warmup_steps else "the cosine decay"
    return Verdict(WRONG, f"step {step}'s rate is not the schedule's ({part})"), reference


# ---------------------------------------------------------------- 12. clipping and the optimizer step


def _total_norm(parameters) -> float:
    norms = [p.grad.detach().double().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _steps_taken(optimizer) -> int:
    states = [optimizer.state.get(p, {}) for group in optimizer.param_groups for p in group["params"]]
    counts = [int(state["step"]) for state in states if "step" in state]
    return max(counts) if counts else 0


def _clip_and_step_reference(model, optimizer, max_norm, memory=None):
    """What the notebook goes on with: the gradients clipped and the optimizer stepped, whichever of the two the
    learner's lines did not do (a step is never taken twice)."""
    parameters = [p for p in model.parameters() if p.grad is not None]
    already = memory is not None and _steps_taken(optimizer) > memory.get(id(optimizer), 0)
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm) if not already else torch.tensor(_total_norm(parameters))
    if not already:
        optimizer.step()
    if memory is not None:
        memory[id(optimizer)] = _steps_taken(optimizer)
    return norm


@_training_exercise("clip_and_step", "gradient clipping and the optimizer step", (
    "After loss.backward(): first scale the gradients down so that their global norm is at most "
    "TRAINING.grad_clip, then let the optimizer take one step with them.",
    "grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), TRAINING.grad_clip), then optimizer.step()."),
    _clip_and_step_reference, summarize=_summary_of_probes,
    unchecked="the training loop has not run yet: the check speaks after the training cell",
    minutes=4, difficulty=2)
def _clip_and_step(answer, *, model, optimizer, max_norm, memory):
    before = memory.get(id(optimizer), 0)
    taken = _steps_taken(optimizer) - before
    judged = memory.get("judged", 0)
    if judged >= JUDGED_STEPS and memory.get("verdict") is not None and memory["verdict"].kind == CORRECT:
        memory[id(optimizer)] = before + taken
        return memory["verdict"], answer  # judged in full on the first steps: the learner's own lines go on
    memory["judged"] = judged + 1
    parameters = [p for p in model.parameters() if p.grad is not None]
    norm_now = _total_norm(parameters)
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        reported = float(answer)
    elif isinstance(answer, (int, float)) and not isinstance(answer, bool):
        reported = float(answer)
    else:
        verdict = Verdict(WRONG, "grad_norm should be what clip_grad_norm_ returns: the gradients' global norm "
                                 f"before clipping; yours is a {type(answer).__name__}")
        return verdict, _clip_and_step_reference(model, optimizer, max_norm, memory)
    exp_avgs = memory.get("exp_avg")
    first = next(p for p in model.parameters() if p.grad is not None)
    state = optimizer.state.get(first, {})
    verdict = None
    if taken == 0:
        verdict = Verdict(WRONG, "the optimizer did not step: call optimizer.step() after clipping")
    elif taken > 1:
        verdict = Verdict(WRONG, f"the optimizer stepped {taken} times in one training step: once is right")
    elif norm_now > max_norm * (1 + 1e-4) + 1e-12:
        verdict = Verdict(WRONG, f"the gradients were not clipped: their global norm is {norm_now:.3g}, above "
                                 f"TRAINING.grad_clip = {max_norm:g}")
    elif not math.isclose(norm_now, min(reported, max_norm), rel_tol=1e-3, abs_tol=1e-9):
        verdict = Verdict(WRONG, "grad_norm is not the gradients' global norm before clipping (what "
                                 "clip_grad_norm_ returns), or they were clipped to another bound")
    elif "exp_avg" in state and reported > max_norm * (1 + 1e-3):
        beta1 = optimizer.param_groups[0]["betas"][0]
        previous = exp_avgs if exp_avgs is not None and before > 0 else torch.zeros_like(state["exp_avg"])
        expected = beta1 * previous + (1 - beta1) * first.grad
        if not torch.allclose(state["exp_avg"], expected, rtol=1e-4, atol=1e-8):
            verdict = Verdict(WRONG, "the optimizer stepped before the gradients were clipped: clip first, then step")
    if "exp_avg" in state:
        memory["exp_avg"] = state["exp_avg"].detach().clone()
    memory[id(optimizer)] = before + taken
    if verdict is None:
        verdict = Verdict(CORRECT, f"the gradients clipped to a global norm of at most {max_norm:g}, then one "
                                   "optimizer step, at every step judged")
        memory["verdict"] = verdict
        return verdict, answer
    memory["verdict"] = verdict
    if taken == 0:
        memory[id(optimizer)] = before
        return verdict, _clip_and_step_reference(model, optimizer, max_norm, memory)
    return verdict, answer
