"""The statistics of `gait study` (gaittrain/study/stats.py) against cases computed by hand."""

from __future__ import annotations

import doctest
import math

import pytest

from gaittrain.study import stats
from gaittrain.study.stats import (
    bootstrap_ci,
    iterations_to_reach,
    mean_ci,
    paired_difference,
)


def test_the_t_interval_of_three_numbers() -> None:
    # 1, 2, 3: mean 2, s = 1, standard error 1 / sqrt(3) = 0.577350;
    # t(0.975, 2 df) = 4.302653 (tables), half width 4.302653 * 0.577350 = 2.484138.
    m = mean_ci([1.0, 2.0, 3.0])
    assert m.n == 3 and m.mean == 2.0
    assert m.low == pytest.approx(2 - 2.484138, abs=1e-6)
    assert m.high == pytest.approx(2 + 2.484138, abs=1e-6)
    assert m.half_width == pytest.approx(2.484138, abs=1e-6)
    # 90 %: t(0.95, 2 df) = 2.919986, half width 2.919986 * 0.577350 = 1.685854.
    assert mean_ci([1, 2, 3], confidence=0.90).half_width == pytest.approx(1.685854, abs=1e-6)


def test_the_t_interval_of_five_rank1_figures() -> None:
    # 0.60, 0.62, 0.65, 0.61, 0.67: mean 3.15 / 5 = 0.63; deviations -0.03, -0.01, 0.02, -0.02,
    # 0.04, squares summing to 0.0034; s^2 = 0.0034 / 4 = 0.00085, s = 0.0291548;
    # standard error s / sqrt(5) = 0.0130384; t(0.975, 4 df) = 2.776445; half width 0.0362004.
    m = mean_ci([0.60, 0.62, 0.65, 0.61, 0.67])
    assert m.mean == pytest.approx(0.63)
    assert (m.low, m.high) == pytest.approx((0.63 - 0.0362004, 0.63 + 0.0362004), abs=1e-6)


def test_one_value_has_no_interval_and_bad_input_is_refused() -> None:
    m = mean_ci([0.7])
    assert m.mean == 0.7 and m.n == 1 and math.isnan(m.low) and math.isnan(m.high)
    with pytest.raises(ValueError, match="empty"):
        mean_ci([])
    with pytest.raises(ValueError, match="not finite"):
        mean_ci([0.5, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1, 2], confidence=1.0)


def test_the_paired_t_test_of_three_seeds() -> None:
    # Differences 0.1, 0.0, 0.2: mean 0.1, s = 0.1, standard error 0.1 / sqrt(3) = 0.057735,
    # t = sqrt(3) = 1.732051 with 2 df. With 2 df the t distribution has the closed form
    # F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so p = 2 (1 - F) = 1 - sqrt(3) / sqrt(5) = 0.225403.
    # Interval: 0.1 -+ 4.302653 * 0.057735 = [-0.148414, 0.348414].
    d = paired_difference([0.5, 0.6, 0.7], [0.4, 0.6, 0.5])
    assert d.n == 3 and d.mean == pytest.approx(0.1)
    assert d.p_value == pytest.approx(1 - math.sqrt(3) / math.sqrt(5), abs=1e-9)
    assert (d.low, d.high) == pytest.approx((-0.148414, 0.348414), abs=1e-6)
    assert 0.0 <= d.boot_low <= d.mean <= d.boot_high <= 0.2 + 1e-12  # within the data


def test_the_paired_t_test_of_five_seeds() -> None:
    # Differences 0.02, 0.03, 0.01, 0.04, 0.05: mean 0.03, s^2 = (1 + 0 + 4 + 1 + 4) e-4 / 4
    # = 0.00025, s = 0.0158114, standard error 0.00707107, t = 4.242641 (= sqrt(18)), 4 df.
    # With 4 df the t distribution has the closed form F(t) = 1/2 + (3/8) u (1 - u^2 / 12) with
    # u = t / sqrt(1 + t^2 / 4) = 4.242641 / sqrt(5.5) = 1.809068 (u^2 = 3.272727), so
    # F = 1/2 + 0.375 * 1.809068 * 0.727273 = 0.993382 and p = 2 (1 - F) = 0.013236.
    variant = [0.62, 0.63, 0.61, 0.64, 0.65]
    reference = [0.60, 0.60, 0.60, 0.60, 0.60]
    d = paired_difference(variant, reference)
    assert d.mean == pytest.approx(0.03)
    assert d.p_value == pytest.approx(0.013236, abs=1e-6)
    # t interval: 0.03 -+ 2.776445 * 0.00707107 = 0.03 -+ 0.0196324.
    assert (d.low, d.high) == pytest.approx((0.0103676, 0.0496324), abs=1e-6)


def test_undefined_p_values_are_nan() -> None:
    same = paired_difference([0.6, 0.7], [0.5, 0.6])  # every seed +0.1: s = 0, t undefined
    assert math.isnan(same.p_value) and same.low == pytest.approx(0.1) == same.high
    assert same.boot_low == pytest.approx(0.1) == same.boot_high
    one = paired_difference([0.6], [0.5])
    assert one.mean == pytest.approx(0.1) and math.isnan(one.p_value) and math.isnan(one.boot_low)
    with pytest.raises(ValueError, match="pair them by seed"):
        paired_difference([0.1, 0.2], [0.1])


def test_the_bootstrap_is_seeded_and_matches_a_hand_case() -> None:
    # Two values 0 and 1: a resampled mean is 0 (probability 1/4), 0.5 (1/2) or 1 (1/4); with
    # 10,000 resamples about 2,500 are 0 and 2,500 are 1, so the 2.5 % and 97.5 % quantiles of
    # the resampled means are exactly 0 and 1.
    assert bootstrap_ci([0.0, 1.0], seed=0) == (0.0, 1.0)
    x = [0.01, 0.04, -0.02, 0.05, 0.03]
    first = bootstrap_ci(x, seed=7)
    assert first == bootstrap_ci(x, seed=7)  # deterministic
    assert first != bootstrap_ci(x, seed=8)
    assert min(x) <= first[0] < sum(x) / len(x) < first[1] <= max(x)
    assert paired_difference(x, [0] * 5, seed=7).boot_low == first[0]
    assert all(math.isnan(v) for v in bootstrap_ci([0.3]))


def test_iterations_to_reach_a_target() -> None:
    its = [250, 500, 750, 1000]
    assert iterations_to_reach(its, [0.41, 0.58, 0.63, 0.60], 0.60) == 750  # first, not last
    assert iterations_to_reach(its, [0.41, 0.60, 0.63, 0.60], 0.60) == 500  # at it counts
    assert iterations_to_reach(its, [0.41, 0.6 - 1e-12, 0.5, 0.5], 0.60) == 500  # rounding
    assert iterations_to_reach(its, [0.41, 0.6 - 1e-6, 0.5, 0.5], 0.60) is None
    assert iterations_to_reach([], [], 0.5) is None
    with pytest.raises(ValueError, match="increase"):
        iterations_to_reach([500, 250], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="values"):
        iterations_to_reach([250, 500], [0.1], 0.5)


def test_the_examples_in_the_docstrings_hold() -> None:
    failures, tried = doctest.testmod(stats, raise_on_error=False)
    assert tried > 5 and failures == 0
