"""The training notebook's exercise copy and its checks (llama3_support/training_exercises.py).

- The committed copy is what tests/make_exercises.py writes from the training notebook's marks; it keeps no
  progress bar as a stderr block, and its last cell says how to open the learner's checkpoint in the walkthrough.
- WRONG_ANSWERS: plausible mistakes, at least two per exercise, written as a learner would write them (a module's
  forward, a loop, a line); each gets its own line naming the mistake, and none crashes. A module's mistakes that
  keep its values right but lose its gradients are caught too.
- The blank copy runs to its end on a few steps under a time budget (LLAMA3_TRAIN_MINUTES), every line
  "not attempted yet"; the solutions copy says "correct" everywhere, and the model it trains is made of the
  notebook's own classes, its parameters the ones the optimizer updates.
"""

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import make_exercises
from llama3_support import exercises, training_exercises
from llama3_support.exercises import CORRECT, NOT_ATTEMPTED, WRONG, check, exercise, verdict_of
from llama3_support.training_exercises import TRAINING_EXERCISES
from test_training import TINY_SETTINGS
from training_runner import execute_training_notebook

TRAINING_LESSON = make_exercises.LESSONS["training"]
# the list of steps, each covered by one exercise at least
COVERED = {"counting pairs": "bpe_pairs", "one merge": "bpe_merge", "RMSNorm": "rmsnorm_module",
           "rotations": "rope_rotate", "grouped-query attention": "gqa_attention", "SwiGLU": "swiglu_module",
           "two residuals": "block_residuals", "next-token cross-entropy": "next_token_loss",
           "AdamW's groups": "adamw_groups", "warm-up and cosine": "lr_schedule",
           "clipping and the step": "clip_and_step", "temperature": "temperature"}


def test_the_committed_training_copy_is_what_the_training_notebook_gives():
    source = nbformat.read(TRAINING_LESSON.notebook, as_version=4)
    expected = make_exercises.written(make_exercises.exercise_notebook(source, lesson=TRAINING_LESSON))
    assert TRAINING_LESSON.copy.read_text() == expected, \
        "train_llama3_from_scratch.exercises.ipynb is out of date: run python tests/make_exercises.py"


def test_the_training_copy_has_ten_exercises_or_more_each_blank_checked_and_reported():
    assert len(TRAINING_EXERCISES) >= 10 and set(COVERED.values()) <= set(TRAINING_EXERCISES)
    assert [exercise.number for exercise in TRAINING_EXERCISES.values()] == list(range(1, len(TRAINING_EXERCISES) + 1))
    notebook = nbformat.read(TRAINING_LESSON.copy, as_version=4)
    source = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    for name, exercise in TRAINING_EXERCISES.items():
        assert f"# exercise {exercise.number} ({name}): your code" in source
        assert f'check("{name}", ' in source
        assert f'report("{name}"' in source or f"report({name!r}" in source
    reports = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.startswith("report(")]
    stored = "".join(output.text for cell in reports for output in cell.outputs)
    assert stored.count("not attempted yet") == len(TRAINING_EXERCISES)


def test_the_training_copy_stores_no_progress_bar_and_ends_with_the_way_to_the_walkthrough():
    notebook = nbformat.read(TRAINING_LESSON.copy, as_version=4)
    assert not [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
                if output.output_type == "stream" and output.name == "stderr"]
    last = notebook.cells[-1]
    assert last.cell_type == "markdown" and "LLAMA3_DIR" in last.source
    assert "llama3_from_scratch.exercises.ipynb" in last.source and "$env:LLAMA3_DIR" in last.source


# ---------------------------------------------------------------- the learner's code, right and wrong


@dataclass(frozen=True)
class Args:
    """The notebook's ModelArgs, as much of it as the modules read."""
    dim: int = 32
    n_heads: int = 4
    n_kv_heads: int = 2
    norm_eps: float = 1e-5
    max_seq_len: int = 8

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        return 2 * self.dim


def right_rope(x, rotations):
    x_as_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(x_as_complex * rotations).flatten(-2).type_as(x)


def halves_rope(x, rotations):
    half = x.shape[-1] // 2
    x_as_complex = torch.complex(x[..., :half].float(), x[..., half:].float())
    turned = x_as_complex * rotations
    return torch.cat([turned.real, turned.imag], dim=-1).type_as(x)


def rmsnorm_class(formula):
    class RMSNorm(nn.Module):
        def __init__(self, width, eps):
            super().__init__()
            self.eps, self.weight = eps, nn.Parameter(torch.ones(width))

        def forward(self, x):
            x_float = x.float()
            normed = formula(self, x_float, x)
            normed = check("rmsnorm_module", normed, module=self, x=x)
            return normed
    return RMSNorm


def rope_function(formula):
    def apply_rope(x, rotations):
        rotated = formula(x, rotations)
        rotated = check("rope_rotate", rotated, x=x, rotations=rotations)
        return rotated
    return apply_rope


def attention_class(formula):
    class Attention(nn.Module):
        def __init__(self, args):
            super().__init__()
            self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
            self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
            self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
            self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
            self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

        def forward(self, x, rotations):
            batch, positions, _ = x.shape
            q = right_rope(self.wq(x).view(batch, positions, self.n_heads, self.head_dim), rotations).transpose(1, 2)
            k = right_rope(self.wk(x).view(batch, positions, self.n_kv_heads, self.head_dim), rotations).transpose(1, 2)
            v = self.wv(x).view(batch, positions, self.n_kv_heads, self.head_dim).transpose(1, 2)
            heads = formula(q, k, v)
            heads = check("gqa_attention", heads, q=q, k=k, v=v)
            return self.wo(heads.transpose(1, 2).reshape(batch, positions, self.n_heads * self.head_dim))
    return Attention


def tiled_attention(q, k, v):
    ratio = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat(1, ratio, 1, 1), v.repeat(1, ratio, 1, 1), is_causal=True)


def feed_forward_class(formula, checked: bool = True):
    class FeedForward(nn.Module):
        def __init__(self, args):
            super().__init__()
            self.w1 = nn.Linear(args.dim, args.ffn_dim, bias=False)
            self.w2 = nn.Linear(args.ffn_dim, args.dim, bias=False)
            self.w3 = nn.Linear(args.dim, args.ffn_dim, bias=False)

        def forward(self, x):
            ffn_output = formula(self, x)
            if checked:
                ffn_output = check("swiglu_module", ffn_output, module=self, x=x)
            return ffn_output
    return FeedForward


def right_swiglu(self, x):
    return self.w2(F.silu(self.w1(x)) * self.w3(x))


class PlainRMSNorm(nn.Module):
    def __init__(self, width, eps):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


def block_class(formula):
    Attention, FeedForward = attention_class(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=True)), feed_forward_class(right_swiglu, checked=False)

    class TransformerBlock(nn.Module):
        def __init__(self, args):
            super().__init__()
            self.attention_norm, self.attention = PlainRMSNorm(args.dim, args.norm_eps), Attention(args)
            self.ffn_norm, self.feed_forward = PlainRMSNorm(args.dim, args.norm_eps), FeedForward(args)

        def forward(self, x, rotations):
            block_output = formula(self, x, rotations)
            block_output = check("block_residuals", block_output, module=self, x=x, rotations=rotations)
            return block_output
    return TransformerBlock


def right_block(self, x, rotations):
    after_attention = x + self.attention(self.attention_norm(x), rotations)
    return after_attention + self.feed_forward(self.ffn_norm(after_attention))


def model_and_optimizer(gradient_scale: float):
    """A small model with gradients from one backward pass (norm about gradient_scale), its AdamW."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99))
    inputs = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    (gradient_scale * model(inputs).pow(2).sum()).backward()
    return model, optimizer


def clip_and_step_run(lines: str, gradient_scale: float = 50.0, steps: int = 2):
    """The loop's two lines as a learner wrote them, run for a few steps with the check after them."""
    model, optimizer = model_and_optimizer(gradient_scale)
    inputs = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        (gradient_scale * model(inputs).pow(2).sum()).backward()
        namespace = {"torch": torch, "model": model, "optimizer": optimizer, "grad_norm": ...}
        exec(lines, namespace)
        check("clip_and_step", namespace["grad_norm"], model=model, optimizer=optimizer, max_norm=1.0)


PIECES = dict(training_exercises.PAIRS_PROBE)
BATCH_LOGITS = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(7)).requires_grad_()
BATCH_TARGETS = torch.randint(11, (2, 5), generator=torch.Generator().manual_seed(8))
LAST_LOGITS = 3 * torch.randn(11, generator=torch.Generator().manual_seed(9))
MODEL_FOR_GROUPS = nn.Sequential(nn.Embedding(7, 4), PlainRMSNorm(4, 1e-5), nn.Linear(4, 7, bias=False))
MATRICES = [p for p in MODEL_FOR_GROUPS.parameters() if p.dim() >= 2]
GAINS = [p for p in MODEL_FOR_GROUPS.parameters() if p.dim() < 2]
SCHEDULE = {"warmup_steps": 3, "n_steps": 20, "peak_lr": 0.002, "min_lr": 0.0002}


def schedule_run(formula):
    for step in range(SCHEDULE["n_steps"]):
        check("lr_schedule", formula(step, **SCHEDULE), step=step, **SCHEDULE)


def count_pairs_with(add):
    def count_pairs(pieces_with_counts):
        pair_counts = {}
        for pieces, count in pieces_with_counts.items():
            add(pair_counts, pieces, count)
        return check("bpe_pairs", pair_counts, pieces_with_counts=pieces_with_counts)
    return count_pairs


def merge_pair_with(merge):
    def merge_pair(pieces, pair):
        return check("bpe_merge", merge(pieces, pair), pieces=pieces, pair=pair)
    return merge_pair


def merge_first_only(pieces, pair):
    for i in range(len(pieces) - 1):
        if pieces[i:i + 2] == pair:
            return list(pieces[:i]) + [pair[0] + pair[1]] + list(pieces[i + 2:])
    return list(pieces)


def merge_keeping_the_pair(pieces, pair):
    merged, i = [], 0
    while i < len(pieces):
        if pieces[i:i + 2] == pair:
            merged.append(pair)
            i += 2
        else:
            merged.append(pieces[i])
            i += 1
    return merged


def merge_from_the_right(pieces, pair):
    merged, i = [], len(pieces)
    while i > 0:
        if i >= 2 and pieces[i - 2:i] == pair:
            merged.insert(0, pair[0] + pair[1])
            i -= 2
        else:
            merged.insert(0, pieces[i - 1])
            i -= 1
    return merged


ARGS = Args()
# (exercise, what the learner wrote, a call that runs it as the notebook does, words its line must hold)
WRONG_ANSWERS = [
    ("bpe_pairs", "each chunk counted once", count_pairs_with(
        lambda counts, pieces, count: [counts.__setitem__(pair, counts.get(pair, 0) + 1) for pair in zip(pieces, pieces[1:])]),
     "weight it by how often the chunk occurs"),
    ("bpe_pairs", "a set of pairs per chunk", count_pairs_with(
        lambda counts, pieces, count: [counts.__setitem__(pair, counts.get(pair, 0) + count)
                                       for pair in set(zip(pieces, pieces[1:]))]),
     "count every position"),
    ("bpe_merge", "first occurrence only", merge_pair_with(merge_first_only), "only the first occurrence"),
    ("bpe_merge", "the pair kept as a tuple", merge_pair_with(merge_keeping_the_pair), "bytes joined"),
    ("bpe_merge", "merged from the right", merge_pair_with(merge_from_the_right), "merged from the right"),
    ("rmsnorm_module", "no eps", rmsnorm_class(
        lambda self, x_float, x: x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True)) * self.weight),
     "eps is missing"),
    ("rmsnorm_module", "no gain", rmsnorm_class(
        lambda self, x_float, x: x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + self.eps)),
     "the gain is missing"),
    ("rmsnorm_module", "LayerNorm", rmsnorm_class(
        lambda self, x_float, x: F.layer_norm(x_float, x.shape[-1:], eps=self.eps) * self.weight), "LayerNorm"),
    ("rmsnorm_module", "the gain detached", rmsnorm_class(
        lambda self, x_float, x: x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        * self.weight.detach()), "no gradient reaches weight"),
    ("rope_rotate", "halves paired", rope_function(halves_rope), "first and the second half"),
    ("rope_rotate", "the conjugate", rope_function(
        lambda x, rotations: right_rope(x, rotations.conj())), "the wrong way"),
    ("rope_rotate", "computed outside autograd", rope_function(
        lambda x, rotations: right_rope(x.detach(), rotations)), "no gradient flows back"),
    ("gqa_attention", "heads tiled, not interleaved", attention_class(tiled_attention), "repeat_interleave, not repeat"),
    ("gqa_attention", "no causal mask", attention_class(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=True)),
     "causal mask is missing"),
    ("gqa_attention", "no scaling", attention_class(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=1.0)),
     "not scaled"),
    ("swiglu_module", "SiLU on w3", feed_forward_class(lambda self, x: self.w2(self.w1(x) * F.silu(self.w3(x)))),
     "SiLU is on the w3 branch"),
    ("swiglu_module", "ReLU", feed_forward_class(lambda self, x: self.w2(F.relu(self.w1(x)) * self.w3(x))),
     "that is ReLU"),
    ("swiglu_module", "no gate", feed_forward_class(lambda self, x: self.w2(F.silu(self.w1(x)))),
     "the gate is missing"),
    ("block_residuals", "no attention residual", block_class(
        lambda self, x, r: (lambda a: a + self.feed_forward(self.ffn_norm(a)))(self.attention(self.attention_norm(x), r))),
     "the attention's output replaces the stream"),
    ("block_residuals", "feed-forward reads x", block_class(
        lambda self, x, r: x + self.attention(self.attention_norm(x), r) + self.feed_forward(self.ffn_norm(x))),
     "the feed-forward network reads x"),
    ("block_residuals", "post-norm", block_class(
        lambda self, x, r: (lambda a: self.ffn_norm(a + self.feed_forward(a)))(
            self.attention_norm(x + self.attention(x, r)))), "post-norm"),
    ("next_token_loss", "summed", lambda: check(
        "next_token_loss", F.cross_entropy(BATCH_LOGITS.view(-1, 11), BATCH_TARGETS.reshape(-1), reduction="sum"),
        logits=BATCH_LOGITS, targets=BATCH_TARGETS), "summed over the positions"),
    ("next_token_loss", "shifted twice", lambda: check(
        "next_token_loss", F.cross_entropy(BATCH_LOGITS[:, :-1].reshape(-1, 11), BATCH_TARGETS[:, 1:].reshape(-1)),
        logits=BATCH_LOGITS, targets=BATCH_TARGETS), "shifted a second time"),
    ("next_token_loss", "softmax first", lambda: check(
        "next_token_loss", F.cross_entropy(BATCH_LOGITS.softmax(-1).view(-1, 11), BATCH_TARGETS.reshape(-1)),
        logits=BATCH_LOGITS, targets=BATCH_TARGETS), "softmax is applied before cross_entropy"),
    ("temperature", "multiplied", lambda: check(
        "temperature", torch.softmax(LAST_LOGITS * 0.8, dim=-1), last_logits=LAST_LOGITS, temperature=0.8),
     "multiplied by the temperature"),
    ("temperature", "no temperature", lambda: check(
        "temperature", torch.softmax(LAST_LOGITS, dim=-1), last_logits=LAST_LOGITS, temperature=0.8),
     "the temperature is missing"),
    ("temperature", "log-probabilities", lambda: check(
        "temperature", torch.log_softmax(LAST_LOGITS / 0.8, dim=-1), last_logits=LAST_LOGITS, temperature=0.8),
     "log-probabilities"),
    ("adamw_groups", "everything decays", lambda: check(
        "adamw_groups", (list(MODEL_FOR_GROUPS.parameters()), []), model=MODEL_FOR_GROUPS), "gains"),
    ("adamw_groups", "swapped", lambda: check(
        "adamw_groups", (GAINS, MATRICES), model=MODEL_FOR_GROUPS), "swapped"),
    ("adamw_groups", "the gains forgotten", lambda: check(
        "adamw_groups", (MATRICES, []), model=MODEL_FOR_GROUPS), "neither group"),
    ("lr_schedule", "warm-up from 0", lambda: schedule_run(
        lambda step, warmup_steps, n_steps, peak_lr, min_lr: peak_lr * step / warmup_steps if step < warmup_steps
        else training_exercises._lr_truth(step, warmup_steps, n_steps, peak_lr, min_lr)), "starts at 0"),
    ("lr_schedule", "down to 0", lambda: schedule_run(
        lambda step, warmup_steps, n_steps, peak_lr, min_lr: training_exercises._lr_truth(
            step, warmup_steps, n_steps, peak_lr, 0.0)), "ends at 0"),
    ("lr_schedule", "a straight line", lambda: schedule_run(
        lambda step, warmup_steps, n_steps, peak_lr, min_lr: peak_lr * (step + 1) / warmup_steps
        if step < warmup_steps else peak_lr - (peak_lr - min_lr) * (step - warmup_steps) / (n_steps - warmup_steps)),
     "straight line"),
    ("clip_and_step", "no step", lambda: clip_and_step_run(
        "grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)"), "did not step"),
    ("clip_and_step", "no clipping", lambda: clip_and_step_run(
        "grad_norm = torch.tensor(1.0)\noptimizer.step()"), "not clipped"),
    ("clip_and_step", "step before clipping", lambda: clip_and_step_run(
        "optimizer.step()\ngrad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)"),
     "stepped before the gradients were clipped"),
    ("clip_and_step", "two steps", lambda: clip_and_step_run(
        "grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\noptimizer.step()\noptimizer.step()"),
     "stepped 2 times"),
]
RIGHT_ANSWERS = [
    ("bpe_pairs", count_pairs_with(lambda counts, pieces, count: [
        counts.__setitem__(pair, counts.get(pair, 0) + count) for pair in zip(pieces, pieces[1:])])),
    ("bpe_merge", merge_pair_with(training_exercises._merge_pair_reference)),
    ("rmsnorm_module", rmsnorm_class(lambda self, x_float, x: (x_float * torch.rsqrt(
        x_float.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight)),
    ("rope_rotate", rope_function(right_rope)),
    ("gqa_attention", attention_class(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=True))),
    ("swiglu_module", feed_forward_class(right_swiglu)),
    ("block_residuals", block_class(right_block)),
    ("clip_and_step", lambda: clip_and_step_run(
        "grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\noptimizer.step()", steps=3)),
]


def run_learner(name: str, learner):
    """Run what the learner wrote as the notebook's report cell would (a module through its probe)."""
    exercises._progress.pop(name, None)
    probes = {"bpe_pairs": lambda: training_exercises.probe_bpe_pairs(learner),
              "bpe_merge": lambda: training_exercises.probe_bpe_merge(learner),
              "rmsnorm_module": lambda: training_exercises.probe_rmsnorm(learner),
              "rope_rotate": lambda: training_exercises.probe_rope(learner),
              "gqa_attention": lambda: training_exercises.probe_attention(learner, ARGS),
              "swiglu_module": lambda: training_exercises.probe_swiglu(learner, ARGS),
              "block_residuals": lambda: training_exercises.probe_block(learner, ARGS)}
    (probes[name]() if name in probes else learner)()
    return verdict_of(name)


@pytest.mark.parametrize("name, mistake, learner, words", WRONG_ANSWERS, ids=[f"{n}-{m}" for n, m, *_ in WRONG_ANSWERS])
def test_a_typical_mistake_gets_its_own_wrong_line(name, mistake, learner, words):
    verdict = run_learner(name, learner)
    assert verdict.kind == WRONG and words in verdict.message, verdict.message
    line = exercises.line_of(name, verdict)
    assert line.startswith(f"exercise {TRAINING_EXERCISES[name].number} ({name}): wrong: ")
    assert "the cells below use the reference result" in line


def test_every_exercise_has_two_typical_mistakes_or_more():
    counts = {name: sum(1 for wrong in WRONG_ANSWERS if wrong[0] == name) for name in TRAINING_EXERCISES}
    assert min(counts.values()) >= 2, counts


@pytest.mark.parametrize("name, learner", RIGHT_ANSWERS, ids=[name for name, _ in RIGHT_ANSWERS])
def test_a_right_answer_is_correct(name, learner):
    verdict = run_learner(name, learner)
    assert verdict.kind == CORRECT, verdict.message


def test_a_module_that_raises_is_a_wrong_line_not_a_crash():
    def broken(self, x_float, x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    verdict = run_learner("rmsnorm_module", rmsnorm_class(broken))
    assert verdict.kind == WRONG and "raised RuntimeError: mat1 and mat2" in verdict.message


def test_a_blank_module_falls_back_to_the_reference_on_its_own_weights():
    exercises._progress.pop("rmsnorm_module", None)
    module = rmsnorm_class(lambda self, x_float, x: ...)(6, 1e-5)
    x = torch.randn(2, 6)
    out = module(x)
    assert verdict_of("rmsnorm_module").kind == NOT_ATTEMPTED
    out.sum().backward()
    assert module.weight.grad is not None  # the learner's own parameter trains through the reference arithmetic


def test_a_correct_module_hands_back_its_own_output():
    exercises._progress.pop("swiglu_module", None)
    training_exercises.probe_swiglu(feed_forward_class(right_swiglu), ARGS)()
    exercises.report("swiglu_module")
    module = feed_forward_class(right_swiglu)(ARGS)
    x = torch.randn(2, 3, ARGS.dim)
    mine = right_swiglu(module, x)
    assert torch.equal(module(x), mine)


def right_rmsnorm(self, x_float, x):
    return (x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def copy_form_rmsnorm(line):
    """RMSNorm as the copy writes it: the learner's line inside `with exercise(...)`, the check after it."""
    class RMSNorm(nn.Module):
        def __init__(self, width, eps):
            super().__init__()
            self.eps, self.weight = eps, nn.Parameter(torch.linspace(0.5, 1.5, width))

        def forward(self, x):
            x_float = x.float()
            with exercise("rmsnorm_module", module=self, x=x) as normed:
                normed = line(self, x_float, x)
            normed = check("rmsnorm_module", normed)
            return normed
    return RMSNorm


def test_in_the_copys_form_a_module_and_an_input_needing_gradients_are_judged_on_their_gradients():
    exercises._progress.pop("rmsnorm_module", None)
    module = copy_form_rmsnorm(right_rmsnorm)(6, 1e-5)
    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1)).requires_grad_()
    normed = module(x)
    assert verdict_of("rmsnorm_module").kind == CORRECT, verdict_of("rmsnorm_module").message
    assert "gradients" in verdict_of("rmsnorm_module").message
    normed.sum().backward()  # the learner's own output, still in autograd's graph: the input and the gain train
    assert x.grad is not None and module.weight.grad is not None


def test_in_the_copys_form_a_raising_line_is_named_and_the_reference_still_trains_the_learners_weights():
    exercises._progress.pop("rmsnorm_module", None)
    def raising(self, x_float, x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    module = copy_form_rmsnorm(raising)(6, 1e-5)
    x = torch.randn(2, 3, 6).requires_grad_()
    normed = module(x)
    verdict = verdict_of("rmsnorm_module")
    assert verdict.kind == WRONG and "raised RuntimeError: mat1 and mat2" in verdict.message
    normed.sum().backward()
    assert x.grad is not None and module.weight.grad is not None


def test_the_checks_never_show_the_expected_values():
    for name, _, learner, _ in WRONG_ANSWERS:
        message = run_learner(name, learner).message
        assert "expected" not in message and "should be [" not in message


# ---------------------------------------------------------------- the copies, executed on a few steps

REPORTS_SAVED = """
from llama3_support.training_exercises import TRAINING_EXERCISES, last_verdict
import json
json.dump({"verdicts": {name: last_verdict(name).kind for name in TRAINING_EXERCISES},
           "classes": sorted({type(module).__name__ for module in model.modules() if type(module).__module__ == "__main__"}),
           "optimized": sorted(id(p) for group in optimizer.param_groups for p in group["params"]) == sorted(id(p) for p in model.parameters()),
           "steps_done": history[-1][0], "minutes": json.load(open(out_dir / "source.json"))["settings"]["minutes"]},
          open(RESULTS, "w"))
"""


def run_copy(path: Path, settings: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="llama3-training-copy-") as scratch:
        results = Path(scratch) / "results.json"
        notebook = execute_training_notebook(Path(scratch) / "out", settings, REPORTS_SAVED.replace(
            "RESULTS", repr(str(results))), notebook_path=path)
        saved = json.loads(results.read_text())
    saved["lines"] = [line for cell in notebook.cells if cell.cell_type == "code" and cell.source.startswith("report(")
                      for output in cell.outputs for line in output.get("text", "").splitlines()]
    return saved


def test_the_blank_copy_runs_to_its_end_within_a_time_budget():
    settings = {**TINY_SETTINGS, "LLAMA3_TRAIN_STEPS": "100000", "LLAMA3_TRAIN_MINUTES": "0.1",
                "LLAMA3_TRAIN_EVAL_INTERVAL": "1000"}
    saved = run_copy(TRAINING_LESSON.copy, settings)
    assert set(saved["verdicts"].values()) == {NOT_ATTEMPTED}
    assert len(saved["lines"]) == len(TRAINING_EXERCISES) and all("not attempted yet" in line for line in saved["lines"])
    assert 1 <= saved["steps_done"] < 100000 and saved["minutes"] == 0.1  # the budget stopped it


def test_the_solutions_copy_is_correct_everywhere_and_trains_the_learners_modules():
    with tempfile.TemporaryDirectory(prefix="llama3-training-solutions-") as scratch:
        assert make_exercises.main(["--check", "--solutions", scratch]) == 0
        saved = run_copy(Path(scratch) / TRAINING_LESSON.solution_name,
                         {**TINY_SETTINGS, "LLAMA3_TRAIN_STEPS": "12", "LLAMA3_TRAIN_EVAL_INTERVAL": "6"})
    assert saved["verdicts"] == {name: CORRECT for name in TRAINING_EXERCISES}
    assert len(saved["lines"]) == len(TRAINING_EXERCISES) and all(": correct: " in line for line in saved["lines"])
    assert saved["classes"] == ["Attention", "FeedForward", "RMSNorm", "Transformer", "TransformerBlock"]
    assert saved["optimized"] is True  # the optimizer updates the parameters of the notebook's own modules


def test_the_solution_of_a_loop_prints_the_training_notebooks_lines_with_their_indentation(capsys):
    exercises._progress.pop("bpe_pairs", None)
    exercises.hint("bpe_pairs")
    exercises.hint("bpe_pairs", 2)
    capsys.readouterr()
    exercises.solution("bpe_pairs")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "exercise 1 (bpe_pairs), train_llama3_from_scratch.ipynb's own lines:"
    assert printed[1:] == ["    for pieces, count in pieces_with_counts.items():",
                           "        for pair in zip(pieces, pieces[1:]):",
                           "            pair_counts[pair] += count"]
