"""Statistics of a study: pure functions over arrays of per-seed figures.

* :func:`mean_ci` -- the mean of a few replicates (seeds) and its 95 % confidence interval,
  from Student's t distribution with n - 1 degrees of freedom.
* :func:`paired_difference` -- two variants trained on the same seeds: the mean of the per-seed
  differences, its t interval, the two-sided paired t-test p-value and a percentile bootstrap
  interval (seeded, so the same figures give the same interval).
* :func:`bootstrap_ci` -- the percentile bootstrap interval of a mean on its own.
* :func:`iterations_to_reach` -- the first checkpoint at which a curve reaches a target.

With fewer than two values an interval, a p-value and a bootstrap interval are undefined and
returned as NaN (never an exception): one seed is a measurement, not an estimate of spread.

Examples
--------
>>> m = mean_ci([1.0, 2.0, 3.0])
>>> round(m.mean, 4), round(m.low, 4), round(m.high, 4), m.n
(2.0, -0.4841, 4.4841, 3)
>>> d = paired_difference([0.5, 0.6, 0.7], [0.4, 0.6, 0.5])
>>> round(d.mean, 4), round(d.p_value, 4)
(0.1, 0.2254)
>>> iterations_to_reach([250, 500, 750], [0.41, 0.58, 0.63], 0.55)
500
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy

#: The tolerance of :func:`iterations_to_reach`: rank-1 figures are means of fractions, and
#: 0.6 may come out as 0.59999999999999998.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval ``[low, high]`` over ``n`` values (NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        """``high - mean`` (the "±" of "mean ± half width"); NaN when undefined."""
        return self.high - self.mean


@dataclass(frozen=True)
class PairedDifference:
    """Variant minus reference over ``n`` shared seeds.

    ``mean``, ``low``, ``high``: the mean difference and its t interval; ``p_value``: the
    two-sided paired t-test; ``boot_low``, ``boot_high``: the percentile bootstrap interval.
    """

    mean: float
    low: float
    high: float
    p_value: float
    boot_low: float
    boot_high: float
    n: int


def _values(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds a value that is not finite")
    return x


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """The mean of ``values`` and its Student-t confidence interval.

    Parameters
    ----------
    values : array_like
        One figure per replicate (e.g. the rank-1 of each seed); finite, at least one.
    confidence : float
        The interval's coverage, in (0, 1).

    Returns
    -------
    Interval
        ``mean ± t(1 - (1 - confidence) / 2, n - 1) * s / sqrt(n)`` with ``s`` the sample
        standard deviation (``ddof=1``); ``low`` and ``high`` are NaN when n < 2.

    Examples
    --------
    Five values 1..5: mean 3, s = sqrt(2.5), t(0.975, 4) = 2.7764, half width 1.9632.

    >>> m = mean_ci([1, 2, 3, 4, 5])
    >>> round(m.low, 4), round(m.high, 4), round(m.half_width, 4)
    (1.0368, 4.9632, 1.9632)
    >>> mean_ci([0.7])
    Interval(mean=0.7, low=nan, high=nan, n=1)
    """
    x = _values(values)
    n, mean = x.size, float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = _t_quantile(confidence, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def _t_quantile(confidence: float, df: int) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return float(_scipy.t.ppf(1 - (1 - confidence) / 2, df))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values``.

    ``resamples`` samples of n values are drawn with replacement by NumPy's PCG64 generator
    seeded with ``seed``, so the interval is the same on every call with the same arguments.
    NaN for both ends when n < 2.

    Examples
    --------
    >>> low, high = bootstrap_ci([0.1, 0.0, 0.2, 0.1, 0.15], seed=0)
    >>> 0.0 <= low < 0.11 < high <= 0.2
    True
    >>> bootstrap_ci([0.1, 0.0, 0.2], seed=3) == bootstrap_ci([0.1, 0.0, 0.2], seed=3)
    True
    """
    x = _values(values)
    if x.size < 2:
        return math.nan, math.nan
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_difference(
    variant: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedDifference:
    """``variant - reference`` over the same seeds (element i of each is seed i's figure).

    Parameters
    ----------
    variant, reference : array_like
        One figure per seed, in the same seed order, of the same length.
    confidence : float
        Coverage of both intervals.
    resamples, seed
        The bootstrap's sample count and generator seed (see :func:`bootstrap_ci`).

    Returns
    -------
    PairedDifference
        The mean difference, its t interval (:func:`mean_ci` of the differences), the two-sided
        p-value of the paired t-test (``t = mean / (s / sqrt(n))`` with n - 1 degrees of
        freedom) and the bootstrap interval. The p-value is NaN when n < 2 or when every seed
        gives the same difference (s = 0: the t statistic is undefined).

    Examples
    --------
    Differences 0.1, 0, 0.2: mean 0.1, s = 0.1, t = 0.1 / (0.1 / sqrt(3)) = sqrt(3) with 2
    degrees of freedom, whose two-sided p-value is 1 - sqrt(3) / sqrt(5) = 0.2254.

    >>> d = paired_difference([0.5, 0.6, 0.7], [0.4, 0.6, 0.5])
    >>> round(d.p_value, 4), round(d.low, 4), round(d.high, 4), d.n
    (0.2254, -0.1484, 0.3484, 3)
    """
    a, b = _values(variant, "variant"), _values(reference, "reference")
    if a.shape != b.shape:
        raise ValueError(f"variant has {a.size} values, reference {b.size}; pair them by seed")
    diff = a - b
    interval = mean_ci(diff, confidence)
    n = diff.size
    p = math.nan
    if n >= 2:
        sd = float(diff.std(ddof=1))
        if sd > 0:
            t = interval.mean / (sd / math.sqrt(n))
            p = float(2 * _scipy.t.sf(abs(t), n - 1))
    boot = bootstrap_ci(diff, confidence, resamples, seed)
    return PairedDifference(interval.mean, interval.low, interval.high, p, *boot, n)


def iterations_to_reach(
    iterations: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray, target: float
) -> int | None:
    """The first iteration whose value is at or above ``target``, or None if none is.

    ``iterations`` are the checkpoints in increasing order and ``values`` the figure at each
    (e.g. validation rank-1); a value within :data:`TOLERANCE` below the target counts as
    reaching it.

    Examples
    --------
    >>> iterations_to_reach([250, 500, 750], [0.41, 0.58, 0.63], 0.6)
    750
    >>> iterations_to_reach([250, 500], [0.41, 0.58], 0.6) is None
    True
    """
    its = np.asarray(iterations)
    x = np.asarray(values, dtype=float)
    if its.shape != x.shape:
        raise ValueError(f"{its.size} iterations but {x.size} values")
    if its.size > 1 and not np.all(np.diff(its) > 0):
        raise ValueError("iterations must increase")
    hit = np.flatnonzero(x >= target - TOLERANCE)
    return int(its[hit[0]]) if hit.size else None
