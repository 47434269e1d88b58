"""The project's rounding rule, the core of it: how far from the truth (the same computation in a wider dtype)
a faithful floating-point result may be. tests/rounding.py explains the rule and adds what only tests need;
the exercise checks (llama3_support/exercises.py) use it at run time.

    tolerance = max(SAFETY * e, ulp_dtype(m) + sqrt(terms) * ulp_float32(m)),   m = max |truth|

where e is the distance of a reference computation in the narrow dtype from the truth.
"""

import math

import torch

SAFETY = 4


def ulp(value: float, dtype: torch.dtype) -> float:
    """Spacing of dtype's numbers at |value|: one unit in the last place (that of the smallest normal at 0)."""
    finfo = torch.finfo(dtype)
    return finfo.eps * 2.0 ** math.floor(math.log2(max(abs(value), finfo.tiny)))


def rounding_floor(truth: torch.Tensor, dtype: torch.dtype, terms: int) -> float:
    """The error no faithful computation in dtype of results summed from `terms` numbers can promise to beat."""
    largest = truth.abs().max().item()
    return ulp(largest, dtype) + math.sqrt(terms) * ulp(largest, torch.float32)


def rounding_tolerance(reference: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype, terms: int) -> float:
    """How far from truth a faithful computation in dtype may be: SAFETY times the reference's own error
    (the reference in dtype against truth), never less than rounding_floor. For the results of several
    steps, the error is the largest of them."""
    measured = (reference.double() - truth.double()).abs().max().item()
    return max(SAFETY * measured, rounding_floor(truth, dtype, terms))


def largest_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()
