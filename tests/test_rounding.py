"""The tolerance rule of tests/rounding.py: it cannot collapse by luck, and wider means wider everywhere."""

import pytest
import torch

from rounding import SAFETY, assert_within_rounding, decided, rounding_floor, rounding_tolerance, ulp


def test_ulp_is_the_spacing_of_the_dtype_at_the_value():
    assert ulp(6.0, torch.float32) == 2.0**-21  # [4, 8): float32's 24 bits leave steps of 2^-21
    assert ulp(4.5, torch.bfloat16) == 2.0**-5  # bf16's 8 bits
    assert ulp(0.0, torch.float32) > 0  # at zero, that of the smallest normal number


def test_a_lucky_zero_error_still_leaves_room_for_another_summation_order():
    """A float32 loss of 256 positions that happened to round exactly: the tolerance is the floor's, not one ulp.
    Two ulps (what JAX's sum differed by on a CPU without AVX-512) must pass with room to spare."""
    loss = torch.tensor([6.0012664794921875], dtype=torch.float64)
    tolerance = rounding_tolerance(loss, loss, torch.float32, terms=256)
    assert tolerance == rounding_floor(loss, torch.float32, 256) == 17 * 2.0**-21
    assert 2 * ulp(6.0, torch.float32) <= 0.5 * tolerance


def test_a_measured_error_above_the_floor_sets_the_tolerance():
    truth = torch.tensor([4.0, -2.0], dtype=torch.float64)
    reference = truth + torch.tensor([0.05, 0.0], dtype=torch.float64)  # above bf16's one ulp at 4 (2^-5)
    assert rounding_tolerance(reference, truth, torch.bfloat16, terms=256) == pytest.approx(SAFETY * 0.05)


def test_a_result_beyond_the_tolerance_fails():
    truth = torch.zeros(3, dtype=torch.float64)
    bound = 2.0**-10  # exact in float32
    assert_within_rounding(torch.tensor([0.0, bound, 0.0]), truth, bound, "at the bound")
    with pytest.raises(AssertionError, match="more than the 0.000977 rounding explains"):
        assert_within_rounding(torch.tensor([0.0, 2 * bound, 0.0]), truth, bound, "beyond it")


def test_float_means_double_keeps_float64_only_inside():
    from rounding import float_means_double

    x = torch.ones(2, dtype=torch.float64)
    with float_means_double():
        assert x.float().dtype == torch.float64
        assert torch.arange(3).float().dtype == torch.float64
    assert x.float().dtype == torch.float32


def test_a_choice_is_decided_only_where_the_lead_beats_twice_the_errors():
    truth = torch.tensor([[3.0, 2.0, 0.0], [3.0, 2.9, 0.0]], dtype=torch.float64)
    off_by = torch.tensor([[0.0, 0.3, 0.0], [0.0, 0.1, 0.0]])  # raises the runner-up of each row
    assert decided(truth, truth.float() + off_by).tolist() == [True, False]  # lead 1.0 > 0.6; lead 0.1 < 0.2
    assert decided(truth, truth.float()).tolist() == [True, True]
