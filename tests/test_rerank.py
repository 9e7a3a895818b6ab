"""k-reciprocal re-ranking (gaittrain/evaluation/rerank.py) against a literal loop reference
written from Zhong et al. (CVPR 2017) and OpenGait's definitions, against OpenGait's own HID
submissions, and its memory bound and refusal."""

from __future__ import annotations

import csv
import doctest
import math
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from gaitprep.errors import GaitError
from gaittrain.evaluation import rerank as rerank_module
from gaittrain.evaluation.rerank import RerankMemoryError, rerank, rerank_memory

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "opengait-protocols"
needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "hid-rerank-true").is_dir(),
    reason=f"OpenGait protocol fixtures not found at {FIXTURES}",
)


# ---------------------------------------------------------------------------------------------
# The reference: Python loops and sets, one step of the method after the other.


def reference_rerank(dist: np.ndarray, q: int, k1: int, k2: int, lam: float) -> np.ndarray:
    n = len(dist)
    rows = [[float(v) for v in row] for row in dist]
    # OpenGait divides each column by its maximum, then transposes: d(i, j) = D[j][i] / max D[:, i].
    top = [max(rows[m][i] for m in range(n)) for i in range(n)]
    d = [[rows[j][i] / top[i] for j in range(n)] for i in range(n)]
    # Everyone ordered by distance from i; equal distances by index.
    order = [sorted(range(n), key=lambda j, i=i: (d[i][j], j)) for i in range(n)]

    def nearest(i: int, k: int) -> list[int]:
        return order[i][: k + 1]

    def reciprocal(i: int, k: int) -> set[int]:
        return {j for j in nearest(i, k) if i in nearest(j, k)}

    half = int(np.round(k1 / 2))  # numpy rounds half to even, as OpenGait's np.around
    v = [[0.0] * n for _ in range(n)]
    for i in range(n):
        own = reciprocal(i, k1)
        expanded = set(own)
        for c in own:
            theirs = reciprocal(c, half)
            if len(theirs & own) > 2 / 3 * len(theirs):
                expanded |= theirs
        total = sum(math.exp(-d[i][j]) for j in expanded)
        for j in expanded:
            v[i][j] = math.exp(-d[i][j]) / total
    if k2 > 1:
        expanded_v = []
        for i in range(n):
            group = order[i][:k2]
            expanded_v.append([sum(v[m][c] for m in group) / len(group) for c in range(n)])
        v = expanded_v
    out = np.zeros((q, n - q))
    for i in range(q):
        for j in range(q, n):
            low = sum(min(v[i][c], v[j][c]) for c in range(n))
            high = sum(max(v[i][c], v[j][c]) for c in range(n))
            if abs(sum(v[i]) - 1) < 1e-12 and abs(sum(v[j]) - 1) < 1e-12:
                assert abs(high - (2 - low)) < 1e-12  # the rows sum to 1: max-sum = 2 - min-sum
            jaccard = 1 - low / (2 - low)  # OpenGait's form, also where a row does not sum to 1
            out[i][j - q] = (1 - lam) * jaccard + lam * d[i][j]
    return out


def embedding_distances(rng: np.random.Generator, n: int, dim: int = 5) -> np.ndarray:
    """Euclidean distances of clustered points (a few sequences per subject), zero diagonal."""
    centres = rng.normal(size=(max(2, n // 4), dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.normal(size=(n, dim))
    return np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))


def asymmetric_distances(rng: np.random.Generator, n: int) -> np.ndarray:
    """Positive, not symmetric, with small non-zero self-distances (so that the transposition of
    OpenGait's normalization matters, and i is not always its own nearest)."""
    d = rng.random((n, n)) + 0.01
    np.fill_diagonal(d, 0.06 * rng.random(n))
    return d


CASES = [  # seed, n, q, k1, k2, lam, kind
    (0, 12, 4, 6, 6, 0.3, "embedding"),
    (1, 30, 10, 6, 6, 0.3, "embedding"),
    (2, 25, 12, 3, 1, 0.5, "embedding"),
    (3, 40, 15, 5, 3, 0.0, "embedding"),
    (4, 20, 1, 2, 4, 1.0, "embedding"),
    (5, 18, 17, 1, 2, 0.3, "embedding"),
    (6, 33, 11, 8, 5, 0.2, "asymmetric"),
    (7, 24, 9, 4, 2, 0.3, "asymmetric"),
    (8, 9, 3, 10, 12, 0.3, "embedding"),  # k1 + 1 and k2 beyond n: every list is everyone
    (9, 16, 6, 7, 1, 0.7, "asymmetric"),
]


@pytest.mark.parametrize(("seed", "n", "q", "k1", "k2", "lam", "kind"), CASES)
def test_rerank_equals_the_loop_reference(seed, n, q, k1, k2, lam, kind) -> None:
    rng = np.random.default_rng(seed)
    d = embedding_distances(rng, n) if kind == "embedding" else asymmetric_distances(rng, n)
    got = rerank(d, q, k1=k1, k2=k2, lam=lam)
    assert got.shape == (q, n - q) and got.dtype == np.float64
    np.testing.assert_allclose(got, reference_rerank(d, q, k1, k2, lam), rtol=0, atol=1e-12)


def test_float32_distances_give_the_float64_figures_of_their_values() -> None:
    d = embedding_distances(np.random.default_rng(11), 28).astype(np.float32)
    ref = reference_rerank(d.astype(np.float64), 10, 6, 6, 0.3)
    np.testing.assert_allclose(rerank(d, 10), ref, rtol=0, atol=1e-12)


def test_equal_distances_rank_by_index() -> None:
    rng = np.random.default_rng(12)
    d = rng.integers(1, 4, size=(26, 26)).astype(np.float64)
    d = np.minimum(d, d.T)
    np.fill_diagonal(d, 0)
    for k1, k2 in ((6, 6), (3, 2), (2, 1)):
        ref = reference_rerank(d, 9, k1, k2, 0.3)
        np.testing.assert_allclose(rerank(d, 9, k1=k1, k2=k2), ref, rtol=0, atol=1e-12)


def test_tiny_blocks_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stage split into many blocks (one row, a few pairs) gives the same figures, to the
    rounding of the sums' order."""
    rng = np.random.default_rng(13)
    d = embedding_distances(rng, 60)
    whole = rerank(d, 25)
    monkeypatch.setattr(rerank_module, "BLOCK_BYTES", 64)
    np.testing.assert_allclose(rerank(d, 25), whole, rtol=0, atol=1e-12)
    d = asymmetric_distances(rng, 40)
    whole = reference_rerank(d, 13, 5, 4, 0.3)
    np.testing.assert_allclose(rerank(d, 13, k1=5, k2=4), whole, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# OpenGait's own output: HID_submission with and without re-ranking.


def per_part_euclidean(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OpenGait's cuda_dist(x, y, 'euc') for [n, c, p] features, in float64: per part p,
    sqrt(relu(|x|^2 + |y|^2 - 2 x.y)), averaged over the parts."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    out = np.zeros((len(x), len(y)))
    for p in range(x.shape[2]):
        a, b = x[:, :, p], y[:, :, p]
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        out += np.sqrt(np.maximum(sq, 0))
    return out / x.shape[2]


def hid_inputs(folder: str):
    data = np.load(FIXTURES / folder / "inputs.npz")
    labels, videos = data["labels"], data["views"]
    probe = labels == "probe"
    with open(FIXTURES / folder / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["videoID", "label"]
    return (
        data["embeddings"][probe],
        data["embeddings"][~probe],
        labels[~probe],
        videos[probe],
        rows,
    )


@needs_fixtures
def test_hid_distances_are_opengaits_without_reranking() -> None:
    probes, gallery, gallery_labels, videos, rows = hid_inputs("hid-rerank-false")
    nearest = per_part_euclidean(probes, gallery).argmin(axis=1)
    ours = [[str(v), str(gallery_labels[i])] for v, i in zip(videos, nearest, strict=True)]
    assert ours == rows[1:]


@needs_fixtures
def test_hid_reranked_submission_is_opengaits() -> None:
    probes, gallery, gallery_labels, videos, rows = hid_inputs("hid-rerank-true")
    feat = np.concatenate([probes, gallery])
    reranked = rerank(per_part_euclidean(feat, feat), len(probes), k1=6, k2=6, lam=0.3)
    nearest = reranked.argmin(axis=1)
    ours = [[str(v), str(gallery_labels[i])] for v, i in zip(videos, nearest, strict=True)]
    assert ours == rows[1:]
    # Not vacuous: re-ranking changes some answer of the submission without it.
    _, _, _, _, plain = hid_inputs("hid-rerank-false")
    assert plain != rows


# ---------------------------------------------------------------------------------------------
# Memory: the bound, and the refusal before anything large is allocated.


def peak_bytes(call) -> tuple[object, int]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_under_the_stated_bound() -> None:
    n, q = 700, 300
    d = embedding_distances(np.random.default_rng(14), n, dim=8)
    free, peak = peak_bytes(lambda: rerank(d, q))
    assert peak <= rerank_memory(n, q)
    cap = rerank_memory(n, q) // 2  # smaller blocks, same figures
    capped, peak = peak_bytes(lambda: rerank(d, q, max_memory=cap))
    assert peak <= cap
    np.testing.assert_allclose(capped, free, rtol=0, atol=1e-12)


def test_too_little_memory_is_refused_before_allocating() -> None:
    n, q = 3000, 1000
    d = np.ones((n, n), dtype=np.float32)

    def refuse():
        with pytest.raises(RerankMemoryError) as caught:
            rerank(d, q, max_memory=4 << 20)
        return caught.value

    error, peak = peak_bytes(refuse)
    assert peak < 1 << 20  # refused before the 16 MB result or any block was allocated
    message = str(error)
    assert isinstance(error, GaitError) and "\n" not in message
    assert "--max-memory" in message
    need = float(re.search(r"needs about ([0-9.]+) GB", message).group(1))
    assert need * 2**30 >= 8 * q * (n - q) > 4 << 20  # at least the dense result
    # The figure is the bound with the least blocks allowed.
    least = rerank_memory(n, q) - 2 * rerank_module.BLOCK_BYTES + 2 * rerank_module.MIN_BLOCK_BYTES
    assert abs(need - least / 2**30) <= 0.005


def test_the_docstring_examples_hold() -> None:
    failures, tried = doctest.testmod(rerank_module, raise_on_error=False)
    assert tried and not failures


@pytest.mark.parametrize(
    ("args", "kwargs", "words"),
    [
        ((np.zeros((3, 4)), 1), {}, "square"),
        ((np.zeros((2, 2, 2)), 1), {}, "square"),
        ((np.ones((4, 4), dtype=complex), 1), {}, "real numbers"),
        ((np.ones((4, 4)), 0), {}, "num_probes must be in 1..3"),
        ((np.ones((4, 4)), 4), {}, "num_probes must be in 1..3"),
        ((np.ones((4, 4)), 1.5), {}, "num_probes must be an integer"),
        ((np.ones((4, 4)), 1), {"k1": 0}, "k1 and k2 must be at least 1"),
        ((np.ones((4, 4)), 1), {"k2": 0}, "k1 and k2 must be at least 1"),
        ((np.ones((4, 4)), 1), {"lam": 1.5}, "lam must be in [0, 1]"),
        ((np.ones((4, 4)), 1), {"lam": -0.1}, "lam must be in [0, 1]"),
        ((np.ones((4, 4)), 1), {"lam": float("nan")}, "lam must be in [0, 1]"),
        ((np.array([[0, 1.0], [np.nan, 0]]), 1), {}, "finite"),
        ((np.array([[0, np.inf], [1.0, 0]]), 1), {}, "finite"),
        ((np.array([[0, 1.0], [0, 0]]), 1), {}, "positive maximum (column 0"),
    ],
)
def test_bad_inputs_are_one_line_value_errors(args, kwargs, words) -> None:
    with pytest.raises(ValueError) as caught:
        rerank(*args, **kwargs)
    assert words in str(caught.value) and "\n" not in str(caught.value)
