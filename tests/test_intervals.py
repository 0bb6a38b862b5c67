"""The 95% intervals every figure carries: against values computed by hand, and the digits they allow."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tlexp.evaluation import intervals

Z = 1.959963984540054  # the standard normal's 97.5% point


def wilson_by_formula(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(30, 30), (56, 60), (0, 12), (8371, 10000)])
def test_wilson_matches_the_formula(k, n):
    found = intervals.wilson(k, n)
    low, high = wilson_by_formula(k, n)
    assert found.value == pytest.approx(k / n)
    assert (found.low, found.high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))
    assert found.n == n and found.method == "wilson"


def test_thirty_of_thirty_is_not_certainty():
    found = intervals.wilson(30, 30)
    assert found.low == pytest.approx(30 / (30 + Z**2))  # 0.8865: the bound 30 images allow
    assert str(found) == "1.00 [0.89, 1.00] on 30 images"


def test_the_text_shows_only_the_digits_the_interval_supports():
    assert intervals.wilson(56, 60).text() == "0.93 [0.84, 0.97] on 60 images"
    assert intervals.wilson(8371, 10000).text() == "0.837 [0.830, 0.844] on 10000 images"
    assert intervals.decimals_for(0.5, 0.5002) == 4
    assert intervals.decimals_for(0.40, 0.64) == 2  # never one decimal for a share


def test_t_interval_over_seeds_matches_a_hand_computation():
    found = intervals.mean([0.80, 0.82, 0.85])
    # mean 0.823333, sd 0.025166, sem 0.014530, t(0.975, df=2) = 4.302653
    assert found.value == pytest.approx(0.823333, abs=1e-6)
    assert found.low == pytest.approx(0.823333 - 4.302653 * 0.014530, abs=1e-5)
    assert found.high == pytest.approx(0.823333 + 4.302653 * 0.014530, abs=1e-5)
    assert found.n == 3 and found.unit == "seeds"


def test_a_mean_of_shares_stays_in_0_1_and_one_value_has_no_interval():
    wide = intervals.mean([0.5, 0.9], unit="folds")
    assert wide.low == 0.0 and wide.high == 1.0  # t(df=1) is 12.7: clipped, not past 1
    difference = intervals.mean([-0.5, 0.3], unit="folds", bounds=None)
    assert difference.low < -1 and difference.high > 1
    one = intervals.mean([0.8])
    assert one.low is None and str(one) == "0.80 on 1 seed"


def test_macro_f1_value_and_bootstrap_interval():
    labels = np.array([0, 0, 0, 1, 1, 2] * 20)
    predicted = np.array([0, 0, 1, 1, 1, 2] * 20)
    # class 0: P 1, R 2/3, F1 0.8; class 1: P 2/3, R 1, F1 0.8; class 2: F1 1 -> macro 0.866667
    found = intervals.macro_f1(labels, predicted, 3, seed=0)
    assert found.value == pytest.approx(2.6 / 3)
    assert found.low < found.value < found.high and found.method == "bootstrap"
    assert intervals.macro_f1(labels, predicted, 3, seed=0) == found  # seeded: the same interval again
    small = intervals.macro_f1(labels[:30], predicted[:30], 3, seed=0)
    assert (small.high - small.low) > 1.5 * (found.high - found.low)  # 4x fewer images: about 2x wider


def test_macro_f1_with_every_image_right_still_has_a_lower_bound():
    labels = np.arange(30) % 3
    found = intervals.macro_f1(labels, labels, 3)
    assert found.value == 1.0 and found.low == pytest.approx(30 / (30 + Z**2))


def test_paired_difference_of_two_models_on_the_same_images():
    rng = np.random.default_rng(0)
    a = np.ones(200, dtype=bool)
    b = rng.random(200) < 0.8
    found = intervals.paired_difference(a, b, seed=0)
    assert found.value == pytest.approx(1 - b.mean())
    assert found.excludes_zero
    same = intervals.paired_difference(b, b)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    # one image apart on 26: the interval covers zero, and the text is never "+/-0.0"
    c = np.ones(26, dtype=bool)
    d = c.copy()
    d[3] = False
    close = intervals.paired_difference(c, d)
    assert not close.excludes_zero
    assert "+0" in close.text(scale=100, signed=True)


def test_a_bound_that_rounds_to_zero_is_not_shown_as_minus_zero():
    assert intervals.Interval(0.01, -0.003, 0.02, 100, "bootstrap").text(scale=100, signed=True) == (
        "+1 [+0, +2] on 100 images"
    )
