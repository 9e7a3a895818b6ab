"""Fair tuning: the search space of a study's ``tune:`` section and its seeded random search.

A space maps dotted config keys to one of four forms:

* ``[lo, hi]``: a float drawn uniformly from [lo, hi];
* ``{log: [lo, hi]}``: a float drawn log-uniformly (0 < lo);
* ``{int: [lo, hi]}``: a whole number drawn uniformly from lo, ..., hi;
* ``{choice: [a, b, ...]}``: one of the values, each as likely.

The search is random and seeded, and stateless: the value of one key in trial ``i`` of one
variant depends only on ``(seed, variant name, i, key)``, through a NumPy generator of its own
seeded with ``SeedSequence([seed, crc32(variant), i, crc32(key)])``. So trial ``i`` is the same
whatever order trials are run in, whatever other variants the study has, and whatever other keys
the space holds; resuming a search is running the trials that are missing. Trial 0 is always
the defaults (the variant's config unchanged): :func:`point` is only asked for ``i >= 1``.
Floats are rounded to 4 significant digits (kept within [lo, hi]) so that configs and reports
stay readable.

Examples
--------
>>> space = {"optim.lr": parse("optim.lr", {"log": [0.0003, 0.003]}),
...          "loss.margin": parse("loss.margin", [0.1, 0.4])}
>>> p = point(space, seed=0, variant="triplet", trial=1)
>>> p == point(dict(reversed(space.items())), seed=0, variant="triplet", trial=1)
True
>>> 0.0003 <= p["optim.lr"] <= 0.003 and 0.1 <= p["loss.margin"] <= 0.4
True
>>> p == point(space, seed=0, variant="center_ranked", trial=1)  # another variant, other draws
False
>>> parse("loss.margin", {"log": [0, 1]})
Traceback (most recent call last):
...
gaittrain.study.tune.SpaceError: log: [lo, hi] needs 0 < lo, got lo 0
>>> best([0.5, 0.75, None, 0.75])  # the highest score; a tie goes to the lower trial
1
"""

from __future__ import annotations

import copy
import difflib
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from gaittrain.schema import show

FORMS = ("log", "int", "choice")  #: the mapping forms; a plain [lo, hi] is uniform
DIGITS = 4  #: significant digits of a drawn float


class SpaceError(ValueError):
    """A value of the space that is not one of the forms; the message names no key (the
    caller does)."""


@dataclass(frozen=True)
class Dimension:
    """One key of a space: ``kind`` is ``uniform``, ``log``, ``int`` or ``choice``; ``low`` and
    ``high`` bound a range, ``choices`` lists the options of a choice."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple = ()

    def form(self) -> Any:
        """The dimension as written in the study file (for study.json)."""
        if self.kind == "uniform":
            return [self.low, self.high]
        if self.kind == "choice":
            return {"choice": copy.deepcopy(list(self.choices))}
        return {self.kind: [self.low, self.high]}


def _number(value: Any, whole: bool = False) -> bool:
    if isinstance(value, bool):
        return False
    if whole:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _range(value: Any, form: str, whole: bool = False) -> tuple:
    what = "whole numbers" if whole else "finite numbers"
    if not (isinstance(value, list) and len(value) == 2 and all(_number(v, whole) for v in value)):
        raise SpaceError(f"{form}[lo, hi] needs two {what}, got {show(value)}")
    lo, hi = value
    if not lo < hi:
        raise SpaceError(
            f"{form}[lo, hi] needs lo < hi, got {show(value)} (a fixed value is an override, "
            "not a tuned key)"
        )
    return (lo, hi) if whole else (float(lo), float(hi))


def parse(key: str, value: Any) -> Dimension:
    """The :class:`Dimension` of ``key`` written as ``value``; :class:`SpaceError` if it is
    none of the forms."""
    if isinstance(value, list):
        return Dimension(key, "uniform", *_range(value, ""))
    if not isinstance(value, dict) or len(value) != 1:
        raise SpaceError(
            "use [lo, hi], {log: [lo, hi]}, {int: [lo, hi]} or {choice: [a, b, ...]}, "
            f"got {show(value)}"
        )
    form, arg = next(iter(value.items()))
    if form not in FORMS:
        close = difflib.get_close_matches(str(form), FORMS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpaceError(f"unknown form {form!r}{hint}; use log, int or choice, or [lo, hi]")
    if form == "choice":
        if not isinstance(arg, list) or len(arg) < 2:
            raise SpaceError(f"choice: needs a list of at least 2 values, got {show(arg)}")
        for i, v in enumerate(arg):
            if v in arg[:i]:
                raise SpaceError(f"choice: {show(v)} is listed twice")
        return Dimension(key, "choice", choices=tuple(copy.deepcopy(arg)))
    lo, hi = _range(arg, f"{form}: ", whole=form == "int")
    if form == "log" and not lo > 0:
        raise SpaceError(f"log: [lo, hi] needs 0 < lo, got lo {lo:g}")
    return Dimension(key, form, lo, hi)


def generator(seed: int, variant: str, trial: int, key: str) -> np.random.Generator:
    """The generator of ``key`` in trial ``trial`` of ``variant`` (names hashed by CRC-32,
    stable across processes and Python versions, unlike ``hash``)."""
    words = [seed, zlib.crc32(variant.encode()), trial, zlib.crc32(key.encode())]
    return np.random.default_rng(np.random.SeedSequence(words))


def _round(x: float, lo: float, hi: float) -> float:
    return min(max(float(f"{x:.{DIGITS}g}"), lo), hi)


def draw(dim: Dimension, rng: np.random.Generator) -> Any:
    """One value of ``dim`` (a plain Python value: float, int or the chosen option)."""
    if dim.kind == "choice":
        return copy.deepcopy(dim.choices[int(rng.integers(len(dim.choices)))])
    if dim.kind == "int":
        return int(rng.integers(dim.low, dim.high, endpoint=True))
    if dim.kind == "log":
        x = math.exp(rng.uniform(math.log(dim.low), math.log(dim.high)))
    else:
        x = rng.uniform(dim.low, dim.high)
    return _round(x, dim.low, dim.high)


def point(space: dict[str, Dimension], seed: int, variant: str, trial: int) -> dict:
    """The values of trial ``trial`` (>= 1) of ``variant``: one draw per key, in the space's
    order (the draws do not depend on it)."""
    if trial < 1:
        raise ValueError("trial 0 is the defaults, not a random point")
    return {k: draw(d, generator(seed, variant, trial, k)) for k, d in space.items()}


def best(scores: list[float | None]) -> int:
    """The index of the best trial: the highest score, the lowest index among equals; a trial
    without a score (undefined) never wins over one with a score; 0 when none has one."""
    scored = [(s, i) for i, s in enumerate(scores) if s is not None and not math.isnan(s)]
    if not scored:
        return 0
    top = max(s for s, _ in scored)
    return min(i for s, i in scored if s == top)
