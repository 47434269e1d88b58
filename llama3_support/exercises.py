"""The exercise notebook's checks: each learner's answer against the truth, in one line.

llama3_from_scratch.exercises.ipynb (written by tests/make_exercises.py from the walkthrough) leaves some lines
blank (`name = ...`). Right after each blank, still inside the cell, a line hands the answer to check():

    x_normed = check("rms_norm", x_normed, x_float=x_float, norm_eps=norm_eps)

check() takes the answer and the inputs it was computed from (the notebook's own variables, so it works on any
checkpoint), judges it, and returns the value the notebook goes on with: the reference result, computed from
those inputs with the walkthrough's own arithmetic. A blank left as it is, or a wrong answer, so never stops the
lesson. The cell after the exercise calls report(name), which prints one line:

    exercise 3 (rms_norm): not attempted yet: the cells below use the reference result; hint('rms_norm') helps
    exercise 3 (rms_norm): correct: equals the float64 truth to 1 unit in the last place of torch.float32
    exercise 3 (rms_norm): wrong: ... (what is wrong, never the expected values) ...

Numbers are held to the truth computed in float64 from the same inputs, with the project's rounding rule
(llama3_support/rounding.py): an answer is right when it is as close to the truth as the walkthrough's own
result, in the compute dtype, could be (SAFETY times its error, never less than the rounding floor). Ids,
lookups, masks, cache writes and the layer loop involve no rounding and are compared exactly.

A check inside a function (RMSNorm, the logits, the cache) judges every call until report() has spoken for
that definition of the function; from then on it only hands back the learner's result when it was right and
the reference when not, without recomputing the truth. Running the function's cell again defines it anew and
arms the check again. hint(name) and hint(name, 2) print two levels of hints.
"""

import math
import sys
from dataclasses import dataclass, field

import torch

from llama3_support.rounding import rounding_tolerance, ulp
from llama3_support.vocabulary import LLAMA3_STOP_TOKENS

NOT_ATTEMPTED, CORRECT, WRONG = "not attempted yet", "correct", "wrong"
FALLBACK = "the cells below use the reference result"
TRUTH_DTYPE = torch.float64
TRUTH_ROWS_PER_CHUNK = 8192  # output-projection rows converted to float64 at a time (0.27 GB at the 8B's width)


@dataclass
class Verdict:
    kind: str          # NOT_ATTEMPTED, CORRECT or WRONG
    message: str = ""  # what the number means, or what is wrong


@dataclass
class Exercise:
    number: int
    name: str
    title: str
    judge: callable                # judge(answer, **inputs) -> (Verdict, reference)
    reference: callable            # reference(**inputs): what the notebook goes on with
    hints: tuple                   # two levels
    summarize: callable = None     # summarize(verdicts) -> Verdict, for a check called once per head or layer
    unchecked: str = "the cell has not run the line with the blank yet: run the exercise's cell first"
    answer_is: str = None          # the input that the answer itself is (the cache, written in place)


@dataclass
class _Progress:
    verdicts: list = field(default_factory=list)
    code: object = None           # the code object whose calls were judged
    reported_code: object = None  # the code object report() spoke for
    final: Verdict = None
    memory: dict = field(default_factory=dict)  # what a loop's check carries from one call to the next


EXERCISES = {}      # the walkthrough's, numbered 1, 2, ... in its order
ALL_EXERCISES = {}  # every notebook's (each set numbered on its own), by name: check, report and hint look here
_progress = {}


def _exercise(name: str, title: str, hints: tuple, reference: callable, registry: dict = None, **options):
    """Register judge as exercise `name`, numbered next in registry (default: the walkthrough's EXERCISES)."""
    registry = EXERCISES if registry is None else registry

    def register(judge):
        if name in ALL_EXERCISES:
            raise ValueError(f"two exercises are named {name!r}: each name is one exercise of one notebook")
        registry[name] = ALL_EXERCISES[name] = Exercise(len(registry) + 1, name, title, judge, reference, hints,
                                                        **options)
        return judge
    return register


# ---------------------------------------------------------------- what the learner sees


def _blank(answer) -> bool:
    if answer is Ellipsis:
        return True
    return isinstance(answer, tuple) and any(part is Ellipsis for part in answer)


def check(name: str, answer, **inputs):
    """Judge answer against the truth computed from inputs; return what the notebook goes on with."""
    exercise, progress = ALL_EXERCISES[name], _progress.setdefault(name, _Progress())
    if exercise.answer_is:
        inputs[exercise.answer_is] = answer
    caller = sys._getframe(1).f_code
    if progress.reported_code is caller and progress.final is not None:  # judged already, this definition
        return answer if progress.final.kind == CORRECT else exercise.reference(**inputs, memory=progress.memory)
    if caller is not progress.code:
        progress.verdicts, progress.code = [], caller
    if _blank(answer):
        verdict, reference = Verdict(NOT_ATTEMPTED), exercise.reference(**inputs, memory=progress.memory)
    else:
        verdict, reference = exercise.judge(answer, **inputs, memory=progress.memory)
    progress.verdicts.append(verdict)
    return reference


def verdict_of(name: str) -> Verdict:
    """The one verdict on everything check(name, ...) judged since the last report."""
    exercise, progress = ALL_EXERCISES[name], _progress.setdefault(name, _Progress())
    verdicts = progress.verdicts
    if not verdicts:
        return Verdict(NOT_ATTEMPTED, exercise.unchecked)
    if exercise.summarize is not None:
        return exercise.summarize(verdicts)
    for kind in (NOT_ATTEMPTED, WRONG):
        first = next((verdict for verdict in verdicts if verdict.kind == kind), None)
        if first is not None:
            return first
    return verdicts[0]


def line_of(name: str, verdict: Verdict) -> str:
    exercise = ALL_EXERCISES[name]
    head = f"exercise {exercise.number} ({name}): {verdict.kind}"
    if verdict.kind == CORRECT:
        return f"{head}: {verdict.message}"
    detail = f"{verdict.message}; " if verdict.message else ""
    return f"{head}: {detail}{FALLBACK}; hint({name!r}) helps"


def report(name: str, probe: callable = None) -> None:
    """Print the exercise's one line; probe() first runs code that reaches the exercise (a sampler, say).
    The verdict stays in last_verdict(name); nothing is returned, so a cell ending in report() shows only the line."""
    if probe is not None:
        probe()
    progress = _progress.setdefault(name, _Progress())
    if progress.verdicts or progress.final is None:  # else nothing was judged since: the same verdict again
        progress.final, progress.reported_code = verdict_of(name), progress.code
        progress.verdicts = []
    print(line_of(name, progress.final))


def last_verdict(name: str) -> Verdict:
    """What report(name) printed last (None before the first report)."""
    return _progress.setdefault(name, _Progress()).final


def hint(name: str, level: int = 1) -> None:
    """Print the exercise's first hint, or with level 2 the second, more direct one."""
    exercise = ALL_EXERCISES[name]
    if level not in (1, 2):
        raise ValueError(f"hint({name!r}, {level}): there are two levels of hints, 1 and 2.")
    print(f"exercise {exercise.number} ({name}), {exercise.title}, hint {level}: {exercise.hints[level - 1]}")


def not_attempted_line(name: str) -> str:
    """The line report(name) prints for a blank left as it is: the exercise notebook stores it."""
    return line_of(name, Verdict(NOT_ATTEMPTED))


def sample_once(choose_token: callable, logits: torch.Tensor) -> None:
    """Call the notebook's choose_token once with sampling on (temperature 1 if the notebook's is 0) and a
    sampler of its own, so that the top-p line runs whatever LLAMA3_TEMPERATURE says; the notebook's
    temperature and sampler are left as they were."""
    namespace = choose_token.__globals__
    saved = {name: namespace[name] for name in ("temperature", "sampler")}
    namespace["temperature"] = saved["temperature"] or 1.0
    namespace["sampler"] = torch.Generator().manual_seed(0)
    try:
        choose_token(logits)
    finally:
        namespace.update(saved)


# ---------------------------------------------------------------- comparing tensors


def _is_tensor(answer, what: str):
    if not isinstance(answer, torch.Tensor):
        return Verdict(WRONG, f"{what} should be a torch.Tensor, and yours is a {type(answer).__name__}")
    return None


def _shape_dtype_device(answer, reference, what: str, axes: tuple = (), dtype_advice: str = ""):
    """A wrong type, shape (which axis), dtype or device, as a verdict; None when all agree."""
    problem = _is_tensor(answer, what)
    if problem:
        return problem
    if answer.dim() != reference.dim():
        named = f" ({', '.join(axes)})" if axes else ""
        return Verdict(WRONG, f"{what} has {answer.dim()} axes, shape {tuple(answer.shape)}, where it should have "
                              f"{reference.dim()}{named}")
    for axis, (mine, theirs) in enumerate(zip(answer.shape, reference.shape)):
        if mine != theirs:
            named = f" ({axes[axis]})" if axis < len(axes) else ""
            return Verdict(WRONG, f"{what} has the wrong shape {tuple(answer.shape)}: axis {axis} has {mine} entries "
                                  f"where it should have {theirs}{named}")
    if answer.dtype != reference.dtype:
        return Verdict(WRONG, f"{what} is {answer.dtype}, where the walkthrough's is {reference.dtype}{dtype_advice}")
    if answer.device != reference.device:
        return Verdict(WRONG, f"{what} is on {answer.device}, where the walkthrough's is on {reference.device}")
    return None


def _units_in_the_last_place(difference: float, truth: torch.Tensor, dtype: torch.dtype) -> str:
    units = math.ceil(difference / ulp(truth.abs().max().item(), dtype)) if difference > 0 else 0
    return "exactly" if units == 0 else f"to {units} unit{'s' * (units != 1)} in the last place of {dtype}"


def _close(answer: torch.Tensor, other: torch.Tensor, tolerance: float) -> bool:
    if answer.shape != other.shape:
        return False
    difference = (answer.to(TRUTH_DTYPE) - other.to(device=answer.device, dtype=TRUTH_DTYPE)).abs()
    return bool(torch.nan_to_num(difference, nan=math.inf).max() <= tolerance) if difference.numel() else True


def _judge_values(answer, reference, truth, *, what, meaning, terms, axes=(), dtype_advice="", mistakes=(),
                  rows=None, dtype=None):
    """The verdict on a floating-point answer: right when within the rounding rule's tolerance of the truth.
    meaning: what is compared, with its verb ("your RMSNorm equals").
    mistakes: (function giving a typical mistake's result in float64, message), tried when the answer is wrong.
    rows: what a wrong answer right only in row 0 probably did (row 0 is the first token, or the first layer)."""
    problem = _shape_dtype_device(answer, reference, what, axes, dtype_advice)
    if problem:
        return problem
    dtype = dtype or reference.dtype  # the dtype the result was computed in (bf16 logits are handed back as float32)
    truth = truth.to(reference.device)
    tolerance = rounding_tolerance(reference, truth, dtype, terms)
    error = (answer.to(TRUTH_DTYPE) - truth).abs()
    if torch.isnan(error).any():
        error = torch.nan_to_num(error, nan=math.inf)
    if error.numel() == 0 or error.max().item() <= tolerance:
        difference = error.max().item() if error.numel() else 0.0
        return Verdict(CORRECT, f"{meaning} the float64 truth {_units_in_the_last_place(difference, truth, dtype)}")
    for mistake, message in mistakes:
        if _close(answer, mistake(), tolerance):
            return Verdict(WRONG, message)
    if rows is not None and answer.dim() >= 2 and answer.shape[0] > 1:
        right_rows = error.flatten(1).max(dim=1).values <= tolerance
        if right_rows[0] and not right_rows[1:].any():
            return Verdict(WRONG, f"row 0 is right, later rows are not: {rows}")
    right = int((error <= tolerance).sum())
    return Verdict(WRONG, f"{right} of {error.numel()} values are right; the largest difference from the truth, "
                          f"{error.max().item():.3g}, is more than rounding explains ({tolerance:.2g})")


def _judge_exact(answer, reference, *, what, meaning, axes=(), dtype_advice="", mistakes=()):
    problem = _shape_dtype_device(answer, reference, what, axes, dtype_advice)
    if problem:
        return problem
    if torch.equal(answer, reference):
        return Verdict(CORRECT, meaning)
    for mistake, message in mistakes:
        other = mistake()
        if other.shape == answer.shape and torch.equal(answer, other.to(device=answer.device, dtype=answer.dtype)):
            return Verdict(WRONG, message)
    if torch.isnan(answer.float()).any():
        return Verdict(WRONG, f"{what} holds NaN (0 times -inf is NaN, say)")
    same = answer == reference
    return Verdict(WRONG, f"{int(same.sum())} of {same.numel()} values are right")


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(TRUTH_DTYPE)


def _rms_normed(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


# ---------------------------------------------------------------- 1. the tokenizer


def _prompt_ids_reference(prompt_ids, bos_id, starts_with_bos, memory=None):
    return torch.tensor([bos_id] * starts_with_bos + list(prompt_ids))


@_exercise("prompt_ids", "the prompt's ids, BOS first", (
    "tokens is a 1-dimensional torch.Tensor of ids: the ids of a special token that begins every text on this "
    "checkpoint (prompt_starts_with_bos says whether it has one), then prompt_ids.",
    "Build a Python list, [bos_id] once when prompt_starts_with_bos is True (a list times a bool repeats it once "
    "or not at all), followed by prompt_ids, and hand it to torch.tensor."), _prompt_ids_reference)
def _prompt_ids(answer, *, prompt_ids, bos_id, starts_with_bos, memory=None):
    reference = _prompt_ids_reference(prompt_ids, bos_id, starts_with_bos)
    problem = _is_tensor(answer, "tokens")
    if problem is None and answer.dim() == 1 and answer.tolist() == reference.tolist() and answer.dtype != reference.dtype:
        problem = Verdict(WRONG, f"tokens is {answer.dtype}: ids are integers, {reference.dtype}")
    if problem is None:
        ids = answer.tolist() if answer.dim() == 1 else None
        if ids == reference.tolist():
            return Verdict(CORRECT, f"the {len(ids)} ids are this checkpoint's"), reference
        if ids == list(prompt_ids) and starts_with_bos:
            problem = Verdict(WRONG, "the ids start with the text's first token: on this checkpoint every prompt "
                                     "begins with a special token")
        elif ids == list(prompt_ids) + [bos_id]:
            problem = Verdict(WRONG, "the special token that begins a text is there, but at the end")
        elif ids == [bos_id] + list(prompt_ids) and not starts_with_bos:
            problem = Verdict(WRONG, "this checkpoint's prompts start without a special token "
                                     "(prompt_starts_with_bos is False)")
        else:
            problem = _shape_dtype_device(answer, reference, "tokens", ("tokens",)) or Verdict(
                WRONG, f"{sum(a == b for a, b in zip(ids, reference.tolist()))} of {len(ids)} ids are right")
    return problem, reference


# ---------------------------------------------------------------- 2. the embedding


def _embedding_reference(embedding_table, tokens, device, dtype, memory=None):
    return embedding_table[tokens].to(device=device, dtype=dtype)


@_exercise("embedding", "the embedding lookup", (
    "Each token id picks one row of embedding_table; the result has one row per token, dim wide, on the compute "
    "device and in the compute dtype.",
    "Index the table with the whole tensor of ids at once (table[ids] gives [n_tokens, dim]), then "
    ".to(device=device, dtype=compute_dtype)."), _embedding_reference)
def _embedding(answer, *, embedding_table, tokens, device, dtype, memory=None):
    reference = _embedding_reference(embedding_table, tokens, device, dtype)
    n_tokens = len(tokens)
    verdict = _judge_exact(
        answer, reference, what="token_embeddings", axes=("tokens", "dim"),
        meaning=f"each of the {n_tokens} rows is its token's row of the table",
        dtype_advice=f": convert the rows to the compute dtype, {dtype}",
        mistakes=[(lambda: embedding_table[:n_tokens].to(device=device, dtype=dtype),
                   "row i is the table's row i, not the row of the i-th token's id: index the table with the ids")])
    return verdict, reference


# ---------------------------------------------------------------- 3. RMSNorm


def _rms_norm_reference(x_float, norm_eps, memory=None):
    return x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + norm_eps)


@_exercise("rms_norm", "RMSNorm", (
    "Divide each token's vector (one row of x_float) by its root mean square: the square root of the mean of its "
    "squared coordinates, plus norm_eps inside the root.",
    "x_float.pow(2).mean(dim=-1, keepdim=True) is each row's mean square, kept as a column so that it broadcasts; "
    "torch.rsqrt gives 1 / sqrt(...) in one step."), _rms_norm_reference)
def _rms_norm(answer, *, x_float, norm_eps, memory=None):
    reference, x = _rms_norm_reference(x_float, norm_eps), _wide(x_float)
    verdict = _judge_values(
        answer, reference, _rms_normed(x, norm_eps), what="x_normed", meaning="your RMSNorm equals",
        terms=x.shape[-1], axes=("tokens", "dim"),
        mistakes=[(lambda: x * torch.rsqrt(x.pow(2).mean(dim=0, keepdim=True) + norm_eps),
                   "each vector is divided by a mean over the tokens (axis 0): RMSNorm takes each token's own mean, "
                   "over its coordinates"),
                  (lambda: x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True)),
                   "close, but norm_eps is missing"),
                  (lambda: x / (x.pow(2).mean(dim=-1, keepdim=True) + norm_eps),
                   "you divide by the mean square itself: RMSNorm divides by its square root")])
    return verdict, reference


# ---------------------------------------------------------------- 4. one head's weights


def _heads_reference(wq, wk, wv, n_heads, n_kv_heads, head_dim, memory=None):
    dim = wq.shape[1]
    return wq.view(n_heads, head_dim, dim), wk.view(n_kv_heads, head_dim, dim), wv.view(n_kv_heads, head_dim, dim)


@_exercise("heads", "unpacking the query, key and value weights head by head", (
    "wq stacks the query matrices of all heads along its rows: n_heads blocks of head_dim rows. wk and wv hold "
    "only n_kv_heads blocks.",
    "A view reshapes without copying: wq.view(heads, rows of one head, dim), with the numbers of heads and "
    "head_dim from params.json."), _heads_reference)
def _heads(answer, *, wq, wk, wv, n_heads, n_kv_heads, head_dim, memory=None):
    references = _heads_reference(wq, wk, wv, n_heads, n_kv_heads, head_dim)
    names = ("wq_per_head", "wk_per_kv_head", "wv_per_kv_head")
    if not isinstance(answer, tuple) or len(answer) != 3:
        return Verdict(WRONG, "three tensors are expected: wq_per_head, wk_per_kv_head, wv_per_kv_head"), references
    for name, mine, reference, whole, heads in zip(names, answer, references, (wq, wk, wv),
                                                   (n_heads, n_kv_heads, n_kv_heads)):
        rows_last = whole.T.reshape(heads, head_dim, whole.shape[1]) if whole.shape[0] == heads * head_dim else whole
        verdict = _judge_exact(mine, reference, what=name, axes=("heads", "head_dim", "dim"), meaning="",
                               mistakes=[(lambda rows_last=rows_last: rows_last,
                                          f"{name} cuts the heads from the wrong axis of the matrix: each head is a "
                                          "block of head_dim consecutive rows")])
        if verdict.kind != CORRECT:
            return verdict, references
    return Verdict(CORRECT, "each head's rows are exactly those of wq, wk and wv"), references


# ---------------------------------------------------------------- 5. RoPE frequencies


def _rope_frequencies_reference(pair_index, rope_theta, head_dim, memory=None):
    return 1.0 / (rope_theta ** (pair_index / head_dim))


@_exercise("rope_frequencies", "the RoPE frequencies", (
    "Pair i turns by rope_theta ** (-2i / head_dim) radians per position: 1 for the first pair, falling "
    "geometrically towards 1 / rope_theta.",
    "pair_index already holds 2i (0, 2, 4, ...): divide it by head_dim, raise rope_theta to that power, and "
    "take the reciprocal."), _rope_frequencies_reference)
def _rope_frequencies(answer, *, pair_index, rope_theta, head_dim, memory=None):
    reference, index = _rope_frequencies_reference(pair_index, rope_theta, head_dim), _wide(pair_index)
    verdict = _judge_values(
        answer, reference, 1.0 / (rope_theta ** (index / head_dim)), what="base_rope_frequencies",
        meaning="each frequency equals", terms=1, axes=("pairs",),
        mistakes=[(lambda: rope_theta ** (index / head_dim),
                   "your frequencies grow from pair to pair: the first pair turns fastest, the last slowest"),
                  (lambda: 1.0 / (rope_theta ** (2 * index / head_dim)),
                   "the exponent counts each pair twice: pair_index already steps by 2")])
    return verdict, reference


# ---------------------------------------------------------------- 6. the rotation, with complex numbers


def _rope_rotation_reference(q_per_token, rope_rotations, memory=None):
    n_tokens, head_dim = q_per_token.shape
    as_complex = torch.view_as_complex(q_per_token.float().view(n_tokens, -1, 2))
    rotated = torch.view_as_real(as_complex * rope_rotations).view(n_tokens, head_dim).type_as(q_per_token)
    return as_complex, rotated


def _rotated_wide(q: torch.Tensor, rotations: torch.Tensor, pairs: str = "neighbours", turn: str = "forward"):
    n_tokens, head_dim = q.shape
    q = _wide(q)
    if pairs == "neighbours":
        as_complex = torch.view_as_complex(q.reshape(n_tokens, -1, 2).contiguous())
    else:  # (x_i, x_{i + head_dim / 2}): the halves
        as_complex = torch.complex(q[:, :head_dim // 2], q[:, head_dim // 2:])
    rotations = rotations.to(torch.complex128)
    turned = as_complex * (rotations.conj() if turn == "backward" else rotations)
    return torch.view_as_real(turned).reshape(n_tokens, head_dim)


@_exercise("rope_rotation", "the rotation, with complex numbers", (
    "View each row of the queries as head_dim / 2 complex numbers, one per neighbouring pair (x0, x1), (x2, x3), "
    "...; multiply by the rotation of the row's position; view the product as real pairs again.",
    "torch.view_as_complex wants a float32 tensor whose last axis has 2 entries: q_per_token.float().view(n_tokens, "
    "-1, 2). rope_rotations is [n_tokens, head_dim / 2], one row per position, so a plain * lines them up. "
    "torch.view_as_real(...).view(n_tokens, head_dim) undoes the pairing, and .type_as(q_per_token) rounds back."),
    _rope_rotation_reference)
def _rope_rotation(answer, *, q_per_token, rope_rotations, memory=None):
    references = _rope_rotation_reference(q_per_token, rope_rotations)
    if not isinstance(answer, tuple) or len(answer) != 2:
        return Verdict(WRONG, "two tensors are expected: q_per_token_as_complex and q_per_token_rotated"), references
    as_complex, rotated = answer
    problem = _shape_dtype_device(as_complex, references[0], "q_per_token_as_complex", ("tokens", "pairs"),
                                  ": view_as_complex of float32 pairs gives complex64")
    if problem:
        return problem, references
    problem = _shape_dtype_device(rotated, references[1], "q_per_token_rotated", ("tokens", "head_dim"),
                                  ": round the rotated queries back with .type_as(q_per_token)")
    if problem:
        return problem, references
    wide = _wide(rotated)
    pair_lengths = wide.view(*wide.shape[:-1], -1, 2).pow(2).sum(-1)
    original_lengths = _wide(q_per_token).view(*wide.shape[:-1], -1, 2).pow(2).sum(-1)
    truth = _rotated_wide(q_per_token, rope_rotations)
    tolerance = rounding_tolerance(references[1], truth, references[1].dtype, terms=2)
    if not _close(pair_lengths.sqrt(), original_lengths.sqrt(), 2 * tolerance):
        return Verdict(WRONG, "the neighbouring pairs (x0, x1), (x2, x3), ... changed length, so the rotation turned "
                              "other pairs: the coordinates that form a complex number are neighbours"), references
    verdict = _judge_values(
        rotated, references[1], truth, what="q_per_token_rotated", meaning="your rotated queries equal", terms=2,
        mistakes=[(lambda: _rotated_wide(q_per_token, rope_rotations, turn="backward"),
                   "every pair turned the wrong way round: multiply by the rotations, not by their conjugates")],
        rows="is the rotation using each token's own position?")
    return verdict, references


# ---------------------------------------------------------------- 7. scores, 8. the causal mask, 9. softmax


def _scores_reference(q, k, head_dim, memory=None):
    return q @ k.T / math.sqrt(head_dim)


@_exercise("scores", "the scores, scaled by sqrt(head_dim)", (
    "Every query scores every key with a dot product, scaled so that the scores keep a unit scale whatever "
    "head_dim is: row = the query's token, column = the key's.",
    "One matrix product of the rotated queries [n_tokens, head_dim] with the transposed rotated keys, divided by "
    "math.sqrt(head_dim)."), _scores_reference)
def _scores(answer, *, q, k, head_dim, memory=None):
    reference, q_wide, k_wide = _scores_reference(q, k, head_dim), _wide(q), _wide(k)
    verdict = _judge_values(
        answer, reference, q_wide @ k_wide.T / math.sqrt(head_dim), what="scores", meaning="your scores equal",
        terms=head_dim, axes=("queries", "keys"),
        mistakes=[(lambda: q_wide @ k_wide.T, "the scores are sqrt(head_dim) times too large: they are not scaled"),
                  (lambda: q_wide @ k_wide.T / head_dim, "the scores are divided by head_dim: the scale is its square root"),
                  (lambda: k_wide @ q_wide.T / math.sqrt(head_dim),
                   "rows and columns are swapped: a row is the query's token, a column the key's")])
    return verdict, reference


def _causal_mask_reference(n_tokens, device, dtype, memory=None):
    return torch.full((n_tokens, n_tokens), float("-inf"), device=device, dtype=dtype).triu(diagonal=1)


@_exercise("causal_mask", "the causal mask", (
    "A token may look at itself and at the tokens before it, never after: -inf where the key comes after the "
    "query, 0 elsewhere, in the compute dtype.",
    "torch.full((n, n), float('-inf'), device=device, dtype=compute_dtype) and .triu(diagonal=...): which "
    "diagonal is the first one to hide?"), _causal_mask_reference)
def _causal_mask(answer, *, n_tokens, device, dtype, memory=None):
    reference = _causal_mask_reference(n_tokens, device, dtype)
    full = torch.full((n_tokens, n_tokens), float("-inf"), device=device, dtype=dtype)
    verdict = _judge_exact(
        answer, reference, what="causal_mask", axes=("queries", "keys"), dtype_advice=": the mask is added to "
        f"scores in the compute dtype, {dtype}", meaning="-inf exactly where the key comes after the query",
        mistakes=[(lambda: full.triu(diagonal=0), "the mask is off by one: it hides the diagonal too, and a token "
                                                  "may look at itself"),
                  (lambda: full.triu(diagonal=2), "the mask is off by one: each token can see the token right after it"),
                  (lambda: full.tril(diagonal=-1), "the mask hides the past instead of the future")])
    return verdict, reference


def _softmax_reference(masked_scores, memory=None):
    return torch.softmax(masked_scores.float(), dim=-1).type_as(masked_scores)


@_exercise("softmax", "the softmax", (
    "Each query's row of masked scores becomes probabilities that sum to 1: exponentiate, normalise. As Meta's "
    "code does, compute it in float32 and round back.",
    "torch.softmax(masked_scores.float(), dim=...) over the keys, one row per query, then .type_as(masked_scores)."),
    _softmax_reference)
def _softmax(answer, *, masked_scores, memory=None):
    reference, wide = _softmax_reference(masked_scores), _wide(masked_scores)
    verdict = _judge_values(
        answer, reference, torch.softmax(wide, dim=-1), what="attention_weights", meaning="your attention weights equal",
        terms=masked_scores.shape[-1], axes=("queries", "keys"),
        dtype_advice=": round the float32 softmax back with .type_as(masked_scores)",
        mistakes=[(lambda: torch.softmax(wide, dim=0), "the columns sum to 1, not the rows: the softmax ran over the "
                                                       "wrong axis (axis 0, the queries)"),
                  (lambda: torch.softmax(torch.nan_to_num(wide, neginf=0.0), dim=-1),
                   "later tokens get weight: the mask's -inf did not reach the softmax")])
    return verdict, reference


# ---------------------------------------------------------------- 10. grouped-query attention


def _kv_head_reference(head, heads_per_kv_head, n_kv_heads, memory=None):
    return head // heads_per_kv_head


def _kv_head_summary(verdicts) -> Verdict:
    if any(verdict.kind == NOT_ATTEMPTED for verdict in verdicts):
        return Verdict(NOT_ATTEMPTED)
    wrong = [verdict for verdict in verdicts if verdict.kind == WRONG]
    if not wrong:
        return Verdict(CORRECT, f"every one of the {len(verdicts)} query heads reads its group's key/value head")
    return Verdict(WRONG, f"{len(verdicts) - len(wrong)} of {len(verdicts)} query heads read the right key/value "
                          f"head; {wrong[0].message}")


@_exercise("kv_head", "which key/value head a query head reads (GQA)", (
    "Consecutive query heads form groups of heads_per_kv_head, and each group shares one key/value head.",
    "Query heads 0 .. heads_per_kv_head - 1 read key/value head 0, the next heads_per_kv_head read head 1: "
    "integer division."), _kv_head_reference, summarize=_kv_head_summary)
def _kv_head(answer, *, head, heads_per_kv_head, n_kv_heads, memory=None):
    reference = _kv_head_reference(head, heads_per_kv_head, n_kv_heads)
    if isinstance(answer, torch.Tensor) and answer.numel() == 1 and not answer.is_floating_point():
        answer = int(answer)
    if not isinstance(answer, int):
        return Verdict(WRONG, f"kv_head_for_this_head should be an int, and yours is a {type(answer).__name__}"), reference
    if answer == reference:
        return Verdict(CORRECT), reference
    if answer == head % n_kv_heads:
        return Verdict(WRONG, "the query heads take turns over the key/value heads (head % n_kv_heads): in grouped-"
                              "query attention consecutive query heads share one"), reference
    return Verdict(WRONG, f"query head {head} reads key/value head {answer}, which is not its group's"), reference


# ---------------------------------------------------------------- 11. and 13. the residual additions


def _residual_reference(residual, branch, memory=None):
    return residual + branch


def _judge_residual(answer, residual, branch, what: str, branch_name: str):
    reference = _residual_reference(residual, branch)
    verdict = _judge_values(
        answer, reference, _wide(residual) + _wide(branch), what=what, meaning=f"your {what} equals", terms=2,
        axes=("tokens", "dim"),
        mistakes=[(lambda: _wide(branch), f"this is {branch_name} alone: the residual connection is missing (the "
                                          "branch's result is added to the stream it read)"),
                  (lambda: _wide(residual), f"{branch_name} is missing: this is the stream the branch read")])
    return verdict, reference


@_exercise("attention_residual", "the attention's residual addition", (
    "The attention does not replace the residual stream: its output is added to what the layer read.",
    "The layer read token_embeddings; add attention_output to it."), _residual_reference)
def _attention_residual(answer, *, residual, branch, memory=None):
    return _judge_residual(answer, residual, branch, "after_attention", "the attention's output")


# ---------------------------------------------------------------- 12. SwiGLU


def _swiglu_reference(ffn_input, w1, w2, w3, memory=None):
    gate = torch.nn.functional.silu(ffn_input @ w1.T)
    up = ffn_input @ w3.T
    return gate, up, (gate * up) @ w2.T


@_exercise("swiglu", "the SwiGLU feed-forward network", (
    "Two projections up to ffn_dim, one of them passed through SiLU to gate the other coordinate by coordinate, "
    "then one projection down: w2( silu(w1 x) * w3 x ).",
    "gate = silu(ffn_input @ w1.T) and up = ffn_input @ w3.T, both [n_tokens, ffn_dim]; ffn_output = "
    "(gate * up) @ w2.T, [n_tokens, dim]. weight(name) gives each matrix."), _swiglu_reference)
def _swiglu(answer, *, ffn_input, w1, w2, w3, memory=None):
    references = _swiglu_reference(ffn_input, w1, w2, w3)
    if not isinstance(answer, tuple) or len(answer) != 3:
        return Verdict(WRONG, "three tensors are expected: gate, up and ffn_output"), references
    silu = torch.nn.functional.silu
    x, w1_wide, w3_wide, w2_wide = _wide(ffn_input), _wide(w1), _wide(w3), _wide(w2)
    up_projection, gate_projection = x @ w3_wide.T, x @ w1_wide.T
    for name, mine, reference in zip(("gate", "up"), answer[:2], references[:2]):
        problem = _shape_dtype_device(mine, reference, name, ("tokens", "ffn_dim"))
        if problem:
            return problem, references
    verdict = _judge_values(
        answer[2], references[2], (silu(gate_projection) * up_projection) @ w2_wide.T, what="ffn_output",
        meaning="your feed-forward output equals", terms=w1.shape[0] + w1.shape[1], axes=("tokens", "dim"),
        mistakes=[(lambda: (silu(up_projection) * gate_projection) @ w2_wide.T,
                   "gate and up are swapped: the SiLU is on the wrong projection (in Meta's naming w1 gates, w3 "
                   "goes up)"),
                  (lambda: (gate_projection * up_projection) @ w2_wide.T, "the gate has no SiLU")])
    return verdict, references


@_exercise("layer_output", "the feed-forward network's residual addition: one whole layer", (
    "Like the attention's, the feed-forward network's output is added to the stream it read: after_attention.",
    "layer0_output = the stream after attention plus ffn_output."), _residual_reference)
def _layer_output(answer, *, residual, branch, memory=None):
    return _judge_residual(answer, residual, branch, "layer0_output", "the feed-forward network's output")


# ---------------------------------------------------------------- 14. the layer loop


def _layer_loop_reference(layer, first_input, layer_function, memory):
    layer_input = first_input if layer == 0 else memory["output"]
    memory["output"] = layer_function(layer_input, layer)
    return memory["output"]


def _layer_loop_summary(verdicts) -> Verdict:
    if any(verdict.kind == NOT_ATTEMPTED for verdict in verdicts):
        return Verdict(NOT_ATTEMPTED)
    wrong = [index for index, verdict in enumerate(verdicts) if verdict.kind == WRONG]
    if not wrong:
        return Verdict(CORRECT, f"each of the {len(verdicts)} layers gives exactly transformer_layer(its input, layer)")
    if wrong[0] > 0:
        return Verdict(WRONG, f"layers 0 to {wrong[0] - 1} are right, later layers are not: {verdicts[wrong[0]].message}")
    return verdicts[0]


@_exercise("layer_loop", "the loop over every layer", (
    "Each layer reads the residual stream that the layer before it wrote, and uses its own weights.",
    "Inside the loop, hand the stream and the layer's number to transformer_layer, and keep what it returns as "
    "the new stream."), _layer_loop_reference, summarize=_layer_loop_summary)
def _layer_loop(answer, *, layer, first_input, layer_function, memory):
    layer_input = first_input if layer == 0 else memory["output"]
    reference = _layer_loop_reference(layer, first_input, layer_function, memory)
    verdict = _judge_exact(
        answer, reference, what="hidden", axes=("tokens", "dim"), meaning="",
        mistakes=[(lambda: layer_function(first_input, layer),
                   f"layer {layer} read the embeddings, not the output of layer {layer - 1}"),
                  (lambda: layer_function(layer_input, 0), f"layer {layer} ran with the weights of layer 0")])
    return verdict, reference


# ---------------------------------------------------------------- 15. the logits


def _logits_reference(last_hidden, norm_weight, output_weight, norm_eps, memory=None):
    x = last_hidden.float()
    normed = (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + norm_eps)).type_as(last_hidden) * norm_weight
    return (normed @ output_weight.T).float().cpu()


def _logits_truth(last_hidden, norm_weight, output_weight, norm_eps, normed: bool = True) -> torch.Tensor:
    """The float64 logits, the output matrix converted a block of rows at a time (0.27 GB at the 8B's width)."""
    x = _wide(last_hidden)
    if normed:
        x = _rms_normed(x, norm_eps) * _wide(norm_weight)
    blocks = [x @ _wide(output_weight[start:start + TRUTH_ROWS_PER_CHUNK]).T
              for start in range(0, output_weight.shape[0], TRUTH_ROWS_PER_CHUNK)]
    return torch.cat(blocks, dim=-1).cpu()


@_exercise("logits", "the logits", (
    "Before the output projection, the residual stream goes through one last RMSNorm (its weight is "
    "norm.weight); the projection gives one score per token of the vocabulary, as float32 on the CPU.",
    "rms_norm(last_hidden, weight('norm.weight')) @ weight(output_weight_name).T, then .float().cpu()."),
    _logits_reference)
def _logits(answer, *, last_hidden, norm_weight, output_weight, norm_eps, memory=None):
    reference = _logits_reference(last_hidden, norm_weight, output_weight, norm_eps)
    verdict = _judge_values(
        answer, reference, _logits_truth(last_hidden, norm_weight, output_weight, norm_eps),
        what="the logits", meaning="your logits equal", terms=last_hidden.shape[-1], axes=("positions", "vocabulary"),
        dtype_advice=": the walkthrough hands back float32 logits (.float())",
        dtype=output_weight.dtype,
        mistakes=[(lambda: _logits_truth(last_hidden, norm_weight, output_weight, norm_eps, normed=False),
                   "the final RMSNorm is missing")])
    return verdict, reference


# ---------------------------------------------------------------- 16. the KV cache


def _kv_cache_reference(kv_cache, layer, start_position, keys, values, memory=None):
    end_position = start_position + keys.shape[0]
    kv_cache["keys"][layer, start_position:end_position] = keys
    kv_cache["values"][layer, start_position:end_position] = values
    return kv_cache


@_exercise("kv_cache", "writing the KV cache", (
    "The new tokens sit at positions start_position, start_position + 1, ...: their keys and values go into "
    "this layer's part of the cache at exactly those positions.",
    "kv_cache['keys'] is [n_layers, positions, n_kv_heads, head_dim]: assign k to "
    "kv_cache['keys'][layer, start_position:end_position], and v likewise."), _kv_cache_reference,
    unchecked="generation has not run yet: the check speaks after the cell that generates", answer_is="kv_cache")
def _kv_cache(answer, *, kv_cache, layer, start_position, keys, values, memory=None):
    end_position = start_position + keys.shape[0]
    written = {name: answer[name][layer] for name in ("keys", "values")}
    mine = {name: tensor[start_position:end_position] for name, tensor in written.items()}
    if torch.equal(mine["keys"], keys) and torch.equal(mine["values"], values):
        return Verdict(CORRECT, "every key and value sits at its position, in its layer"), answer
    if not any(tensor[:end_position + 1].any() for tensor in written.values()) and (keys.any() or values.any()):
        return Verdict(NOT_ATTEMPTED), _kv_cache_reference(answer, layer, start_position, keys, values)
    if torch.equal(mine["keys"], values) and torch.equal(mine["values"], keys):
        verdict = Verdict(WRONG, "the keys are where the values belong, and the values where the keys belong")
    elif all(torch.equal(written[name][start_position + 1:end_position + 1], new)
             for name, new in (("keys", keys), ("values", values))):
        verdict = Verdict(WRONG, "the new keys and values sit one position later than the tokens they belong to")
    else:
        verdict = Verdict(WRONG, f"the cache does not hold this layer's new keys and values at positions "
                                 f"{start_position} to {end_position - 1}")
    return verdict, _kv_cache_reference(answer, layer, start_position, keys, values)


# ---------------------------------------------------------------- 17. the stop tokens


def _stop_tokens_reference(memory=None):
    return LLAMA3_STOP_TOKENS


@_exercise("stop_tokens", "the stop tokens", (
    "Generation ends where Meta's tokenizer says a model's text can end: the end of a whole text, the end of a "
    "chat turn, and the end of a message that hands over to a tool. Name them as NAMED_SPECIAL_TOKENS does.",
    "Three of the names in NAMED_SPECIAL_TOKENS: one ends a text, one ends a turn (eot), one ends a message (eom)."),
    _stop_tokens_reference)
def _stop_tokens(answer, memory=None):
    reference = _stop_tokens_reference()
    if isinstance(answer, str) or not all(isinstance(name, str) for name in answer):
        return Verdict(WRONG, "give the special tokens' names, strings such as '<|begin_of_text|>'"), reference
    mine, meta = set(answer), set(reference)
    if mine == meta:
        return Verdict(CORRECT, f"the {len(meta)} stop tokens of Meta's tokenizer"), reference
    extra, missing = sorted(mine - meta), meta - mine
    if extra:
        return Verdict(WRONG, f"{extra[0]} does not end generation in Meta's code"), reference
    return Verdict(WRONG, f"{len(missing)} of Meta's {len(meta)} stop tokens {'is' if len(missing) == 1 else 'are'} "
                          "missing: a text, a chat turn and a message that calls a tool each have an end"), reference


# ---------------------------------------------------------------- 18. top-p sampling


def _top_p_reference(sorted_probabilities, top_p, memory=None):
    return sorted_probabilities.cumsum(dim=-1) - sorted_probabilities > top_p


@_exercise("top_p", "top-p sampling: the nucleus", (
    "The nucleus is the smallest set of the most likely tokens whose probabilities add up to top_p; "
    "outside_nucleus is True for every other token.",
    "The probabilities are sorted, largest first: a token is outside when the probabilities before it already "
    "add up to more than top_p (cumsum minus its own)."), _top_p_reference,
    unchecked="choose_token has not sampled yet")
def _top_p(answer, *, sorted_probabilities, top_p, memory=None):
    reference = _top_p_reference(sorted_probabilities, top_p)
    cumulative = sorted_probabilities.cumsum(dim=-1)
    verdict = _judge_exact(
        answer, reference, what="outside_nucleus", axes=("vocabulary",), dtype_advice=": a mask of bools",
        meaning=f"the nucleus keeps {int((~reference).sum())} tokens, exactly the reference's",
        mistakes=[(lambda: cumulative > top_p, "the token that carries the sum past top_p is left out of the "
                                              "nucleus: the nucleus reaches top_p, so it includes that token"),
                  (lambda: cumulative - sorted_probabilities <= top_p,
                   "your mask marks the tokens inside the nucleus: it should be True for the tokens to drop")])
    return verdict, reference
