"""The one rule for how far a floating-point result may be from the truth, for every numerical test.

What is compared. A computation in a narrow dtype (the notebook's, JAX's, Meta's or Hugging Face's, in float32
or bf16) is held to the truth: the same model on the same input computed in a wider dtype (float64 for
float32, float32 for bf16 weights), whose own rounding is negligible beside the narrow one's. No test compares
two narrow results with each other: they differ by the sum of two errors, and each error depends on the
kernels the CPU picked (PyTorch, oneDNN, MKL and XLA choose AVX-512, AVX2, NEON or plain code by the
instruction set, and with it the order of every sum), so such a bound holds on one machine and not the next.

How far. A reference computation (Meta's, or the peer's own) is run in the narrow dtype and in the wide one;
the distance e between the two is the error that a faithful computation of this size makes on this very
input. Another faithful computation, with other kernels, another order of summation or other approximations
of exp and rsqrt, makes an error of the same size but not the same one (XLA's float32 logits are about twice
as far from the truth as Meta's): the rule allows SAFETY times e. A measured e can be small by luck (a
scalar loss whose float32 sum happened to round well, measured as zero): so the tolerance is never below
the floor that no computation of this size can promise to beat, the last rounding to the dtype (one unit in
the last place of the largest |truth|) plus float32 accumulation over the `terms` numbers summed into each
result, whose rounding grows like a random walk, as sqrt(terms) float32 ulps (bf16 products accumulate in
float32 too):

    tolerance = max(SAFETY * e, ulp_dtype(m) + sqrt(terms) * ulp_float32(m)),   m = max |truth|

For float32 logits of a model 256 wide (largest logit ~4.5) that is SAFETY times e, ~1e-5 (the floor is
~8e-6); for bf16, ~0.14; for a float32 loss averaged over 256 positions that rounded exactly, the floor, 17 ulps.
SAFETY is not larger because the same tolerance decides which greedy choices are clear of rounding (a lead of
more than two tolerances), and a larger one leaves few bf16 steps decided.

A wrong index, mask, rotation or activation moves results by a sizeable fraction of their spread, orders of
magnitude beyond this (tests/check_mutations.py shows the tests notice one-character bugs).

Wider means wider everywhere. Meta's code and the notebooks upcast with .float(), meant for bf16; in a float64
run that rounds to float32 halfway. float_means_double() makes .float() give float64 for such a run.

Margins. With LLAMA3_MARGINS=path, every check appends its difference / tolerance to that file (one JSON
object a line): benchmarks/isa_margins.py runs the numerical tests under each instruction set the CPU
allows and reports the worst margin of each test.
"""

import contextlib
import json
import os
from unittest import mock

import torch

# the rule's core, one definition for the tests and the exercise checks
from llama3_support.rounding import SAFETY, largest_difference, rounding_floor, rounding_tolerance, ulp  # noqa: F401

MARGINS_FILE = "LLAMA3_MARGINS"


def assert_within_rounding(result: torch.Tensor, truth: torch.Tensor, tolerance: float, what: str) -> float:
    """Assert |result - truth| <= tolerance everywhere; record the margin (LLAMA3_MARGINS); return the difference."""
    difference = largest_difference(result, truth)
    margin = difference / tolerance
    if os.environ.get(MARGINS_FILE):
        record = {"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], "what": what,
                  "difference": difference, "tolerance": tolerance, "margin": margin}
        with open(os.environ[MARGINS_FILE], "a") as margins:
            margins.write(json.dumps(record) + "\n")
    print(f"{what}: max |difference| {difference:.3g}, tolerance {tolerance:.3g} (margin {margin:.2f})")
    assert difference <= tolerance, f"{what}: {difference:.3g} from the truth, more than the {tolerance:.3g} rounding explains"
    return difference


def decided(truth: torch.Tensor, *results: torch.Tensor) -> torch.Tensor:
    """Per row of logits: whether every one of results takes the truth's most likely token. It does wherever
    the truth's best logit leads its second by more than twice the largest distance of any result from the
    truth in that row (a result can then raise another token, and lower the best, by at most that distance).
    This uses the errors these computations made, not the tolerance, so that a greedy choice is compared
    wherever it is decided, and only there."""
    truth = truth.double().view(-1, truth.shape[-1])
    top2 = truth.topk(2, dim=-1).values
    error = torch.stack([(result.double().view_as(truth) - truth).abs().max(dim=-1).values for result in results])
    return top2[:, 0] - top2[:, 1] > 2 * error.max(dim=0).values


@contextlib.contextmanager
def float_means_double():
    """Within it, tensor.float() gives float64: code written to upcast bf16 to float32 then stays in float64."""
    with mock.patch.object(torch.Tensor, "float", torch.Tensor.double):
        yield
