"""k-reciprocal re-ranking (gaittrain/evaluation/rerank.py): precision="float64" against a
literal loop reference written from Zhong et al. (CVPR 2017) and OpenGait's definitions,
precision="opengait" bit for bit against a loop reference of OpenGait's float32/float16
arithmetic, both against OpenGait's own HID submissions (through the function and `gait score`),
and its memory bound and refusal."""

from __future__ import annotations

import csv
import doctest
import json
import math
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from gaitprep.errors import GaitError
from gaittrain.evaluation import rerank as rerank_module
from gaittrain.evaluation import wild
from gaittrain.evaluation.rerank import (
    PRECISIONS,
    RerankMemoryError,
    nearest_gallery,
    opengait_distances,
    rerank,
    rerank_memory,
)
from tests.cli import assert_one_line_error, gait

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
    got = rerank(d, q, k1=k1, k2=k2, lam=lam, precision="float64")
    assert got.shape == (q, n - q) and got.dtype == np.float64
    np.testing.assert_allclose(got, reference_rerank(d, q, k1, k2, lam), rtol=0, atol=1e-12)


def test_float32_distances_give_the_float64_figures_of_their_values() -> None:
    d = embedding_distances(np.random.default_rng(11), 28).astype(np.float32)
    ref = reference_rerank(d.astype(np.float64), 10, 6, 6, 0.3)
    np.testing.assert_allclose(rerank(d, 10, precision="float64"), ref, rtol=0, atol=1e-12)


def tied_distances(seed: int, n: int = 26) -> np.ndarray:
    """Symmetric, of three values only: most distances tie."""
    d = np.random.default_rng(seed).integers(1, 4, size=(n, n)).astype(np.float64)
    d = np.minimum(d, d.T)
    np.fill_diagonal(d, 0)
    return d


def test_equal_distances_rank_by_index() -> None:
    d = tied_distances(12)
    for k1, k2 in ((6, 6), (3, 2), (2, 1)):
        ref = reference_rerank(d, 9, k1, k2, 0.3)
        got = rerank(d, 9, k1=k1, k2=k2, precision="float64")
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_tiny_blocks_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stage split into many blocks (one row, a few pairs) gives the same figures: in
    float64 to the rounding of the sums' order, OpenGait's bit for bit (its order is fixed)."""
    rng = np.random.default_rng(13)
    d = embedding_distances(rng, 60)
    whole = rerank(d, 25, precision="float64")
    whole_opengait = rerank(d, 25)
    monkeypatch.setattr(rerank_module, "BLOCK_BYTES", 64)
    np.testing.assert_allclose(rerank(d, 25, precision="float64"), whole, rtol=0, atol=1e-12)
    assert_same_bits(rerank(d, 25), whole_opengait)
    d = asymmetric_distances(rng, 40)
    whole = reference_rerank(d, 13, 5, 4, 0.3)
    got = rerank(d, 13, k1=5, k2=4, precision="float64")
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-12)
    assert_same_bits(rerank(d, 13, k1=5, k2=4), opengait_reference(d, 13, 5, 4, 0.3))


# ---------------------------------------------------------------------------------------------
# OpenGait's arithmetic: a second reference, in plain loops over numpy scalars of the dtype each
# stage of OpenGait's re_ranking has (float32 distances and weights, float16 encodings, float16
# Jaccard sums added in its order), and the numpy behaviour it relies on.


def numpy_pairwise_sum(values: list) -> np.float32:
    """numpy's float32 sum of a 1-D array, written out: below 8 values one after the other from
    0; up to 128, eight interleaved partial sums then the rest one by one; beyond, the sums of
    the two halves, cut at a multiple of 8."""
    n = len(values)
    if n < 8:
        total = np.float32(0)
        for value in values:
            total = total + value
        return total
    if n > 128:
        half = n // 2 - (n // 2) % 8
        return numpy_pairwise_sum(values[:half]) + numpy_pairwise_sum(values[half:])
    p = list(values[:8])
    i = 8
    while i < n - n % 8:
        for j in range(8):
            p[j] = p[j] + values[i + j]
        i += 8
    total = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]))
    for value in values[i:]:
        total = total + value
    return total


def opengait_reference(dist: np.ndarray, q: int, k1: int, k2: int, lam: float) -> np.ndarray:
    f16, f32 = np.float16, np.float32
    n = len(dist)
    big = [[f32(v) for v in row] for row in dist]  # OpenGait receives float32 distances
    top = [max(big[m][i] for m in range(n)) for i in range(n)]
    # d[i][j] = D[j][i] / max D[:, i], a float32 quotient.
    d = [[big[j][i] / top[i] for j in range(n)] for i in range(n)]
    # OpenGait ranks with np.argsort, numpy's default sort (its order of equal values included).
    order = [list(np.argsort(np.array(d[i], dtype=f32))) for i in range(n)]

    def reciprocal(i: int, k: int) -> set[int]:
        return {j for j in order[i][: k + 1] if i in order[j][: k + 1]}

    half = int(np.round(k1 / 2))
    v = [[f16(0)] * n for _ in range(n)]
    for i in range(n):
        own = reciprocal(i, k1)
        expanded = set(own)
        for c in own:
            theirs = reciprocal(c, half)
            if len(theirs & own) > 2 / 3 * len(theirs):
                expanded |= theirs
        members = sorted(expanded)
        weights = [np.exp(-d[i][j]) for j in members]  # float32
        total = numpy_pairwise_sum(weights)
        for j, w in zip(members, weights, strict=True):
            v[i][j] = f16(w / total)  # a float32 quotient stored in float16
    if k2 > 1:
        mean = [[f16(0)] * n for _ in range(n)]
        for i in range(n):
            group = order[i][:k2]
            for c in range(n):
                acc = f32(0)
                for m in group:
                    acc = acc + f32(v[m][c])
                mean[i][c] = f16(acc / f32(len(group)))
        v = mean
    out = np.zeros((q, n - q), dtype=f32)
    for i in range(q):
        running = [f16(0)] * n
        for c in range(n):  # the probe's non-zero columns, in ascending order
            if v[i][c] == 0:
                continue
            for m in range(n):
                if v[m][c] != 0:
                    running[m] = running[m] + min(v[i][c], v[m][c])  # a float16 addition
        for j in range(q, n):
            s = running[j]
            jaccard = f16(1) - s / (f16(2) - s)
            out[i][j - q] = f32(jaccard * f16(1 - lam)) + d[i][j] * f32(lam)
    return out


def assert_same_bits(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))


def test_numpys_float32_sum_is_the_pairwise_sum_written_out() -> None:
    rng = np.random.default_rng(20)
    for size in [*range(1, 140), 255, 256, 300, 1000]:
        values = (rng.random(size) * 3).astype(np.float32)
        assert np.sum(values) == numpy_pairwise_sum(list(values)), size
        rows = np.stack([values, values[::-1]])  # each row of a 2-D array summed as alone
        assert rows.sum(axis=1).tolist() == [np.sum(values), np.sum(values[::-1].copy())]


def test_weight_sums_are_numpys_sum_of_each_row_alone() -> None:
    """OpenGait divides each row's float32 weights by their np.sum; the encoding sums the rows of
    a block together, as numpy would sum each alone (its grouping depends on the length)."""
    rng = np.random.default_rng(26)
    counts = rng.integers(0, 60, size=300)
    values = rng.random(counts.sum()).astype(np.float32)
    starts = np.cumsum(counts) - counts
    runs = [values[a : a + c] for a, c in zip(starts, counts, strict=True)]
    alone = np.array([np.sum(run) for run in runs], dtype=np.float32)
    assert_same_bits(rerank_module._row_sums(values, counts), alone)
    # Not vacuous: summed one after the other, or in float64, some runs would differ.
    in_turn = [np.cumsum(run)[-1] if len(run) else 0 for run in runs]
    in_float64 = [np.float32(run.sum(dtype=np.float64)) for run in runs]
    assert (alone != in_turn).any() and (alone != in_float64).any()


def test_numpys_float16_mean_is_a_float32_sum_in_row_order() -> None:
    """What OpenGait's query expansion computes: np.mean of k2 float16 rows adds them in float32,
    one row after the other, divides by k2 and returns float16."""
    rng = np.random.default_rng(21)
    for k2 in range(1, 13):
        for n in (1, 3, 40, 3000):
            rows = (rng.random((k2, n)) * rng.choice([0, 0.05, 0.3, 1], size=(k2, n))).astype(
                np.float16
            )
            acc = np.zeros(n, dtype=np.float32)
            for row in rows:
                acc = acc + row.astype(np.float32)
            mean = np.mean(rows, axis=0)
            assert mean.dtype == np.float16
            assert_same_bits(mean, (acc / np.float32(k2)).astype(np.float16))


OPENGAIT_CASES = [
    *CASES,
    (30, 60, 25, 6, 6, 0.3, "embedding"),
    (31, 45, 20, 6, 6, 0.3, "asymmetric"),
    (32, 50, 30, 7, 9, 0.45, "embedding"),
    (33, 26, 9, 6, 6, 0.3, "tied"),
    (34, 26, 9, 3, 2, 0.3, "tied"),
    (35, 30, 12, 2, 1, 0.3, "tied"),
    (36, 9, 4, 10, 12, 0.3, "tied"),  # every list is everyone, sorted whole
]


@pytest.mark.parametrize(("seed", "n", "q", "k1", "k2", "lam", "kind"), OPENGAIT_CASES)
def test_opengait_precision_is_the_float16_reference_bit_for_bit(
    seed, n, q, k1, k2, lam, kind
) -> None:
    rng = np.random.default_rng(seed)
    d = {
        "embedding": lambda: embedding_distances(rng, n),
        "asymmetric": lambda: asymmetric_distances(rng, n),
        "tied": lambda: tied_distances(seed, n),
    }[kind]()
    ref = opengait_reference(d, q, k1, k2, lam)
    assert_same_bits(rerank(d, q, k1=k1, k2=k2, lam=lam), ref)
    assert_same_bits(rerank(d, q, k1=k1, k2=k2, lam=lam, precision="opengait"), ref)
    # OpenGait's input is float32: a float32 matrix gives the same bits as its float64 values.
    assert_same_bits(rerank(d.astype(np.float32), q, k1=k1, k2=k2, lam=lam), ref)


def test_the_precisions_differ_by_float16s_rounding_only() -> None:
    d = embedding_distances(np.random.default_rng(22), 80)
    exact = rerank(d, 30, precision="float64")
    rounded = rerank(d, 30)
    assert 0 < np.abs(rounded - exact).max() < 3e-3


def test_nearest_gallery_breaks_ties_as_numpys_sort() -> None:
    rng = np.random.default_rng(23)
    reranked = rng.integers(0, 3, size=(200, 40)).astype(np.float32)  # many tied minima
    expected = np.argsort(reranked, axis=1)[:, 0]
    np.testing.assert_array_equal(nearest_gallery(reranked), expected)
    distinct = rng.random((50, 30)).astype(np.float32)
    np.testing.assert_array_equal(nearest_gallery(distinct), distinct.argmin(axis=1))


def test_opengait_distances_are_the_per_part_distances_in_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(24)
    x = rng.normal(size=(70, 16, 4)).astype(np.float32)
    euc = opengait_distances(x)
    assert euc.dtype == np.float32 and euc.shape == (70, 70)
    off = ~np.eye(70, dtype=bool)  # float32's cancellation leaves self-distances near 1e-3
    np.testing.assert_allclose(euc[off], per_part_euclidean(x, x)[off], rtol=1e-5, atol=0)
    assert 0 < np.abs(np.diag(euc)).max() < 1e-2
    cos = opengait_distances(x, "cosine")
    np.testing.assert_allclose(cos, wild.distances(x, x, "cosine"), rtol=0, atol=1e-6)
    monkeypatch.setattr(rerank_module, "BLOCK_BYTES", 64)  # one row a block: the same bits
    assert_same_bits(opengait_distances(x), euc)
    assert_same_bits(opengait_distances(x, "cosine"), cos)
    with pytest.raises(ValueError, match="metric must be euclidean or cosine"):
        opengait_distances(x, "euc")


def test_the_hid_protocol_names_the_same_precisions() -> None:
    assert wild.RERANK_PRECISIONS == PRECISIONS and PRECISIONS[0] == "opengait"


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
@pytest.mark.parametrize("precision", PRECISIONS)
def test_hid_reranked_submission_is_opengaits(precision: str) -> None:
    probes, gallery, gallery_labels, videos, rows = hid_inputs("hid-rerank-true")
    feat = np.concatenate([probes, gallery])
    # OpenGait's arithmetic from its float32 distances on; or everything in float64.
    dist = opengait_distances(feat) if precision == "opengait" else per_part_euclidean(feat, feat)
    reranked = rerank(dist, len(probes), k1=6, k2=6, lam=0.3, precision=precision)
    nearest = nearest_gallery(reranked)
    ours = [[str(v), str(gallery_labels[i])] for v, i in zip(videos, nearest, strict=True)]
    assert ours == rows[1:]
    # Not vacuous: re-ranking changes some answer of the submission without it.
    _, _, _, _, plain = hid_inputs("hid-rerank-false")
    assert plain != rows


@needs_fixtures
@pytest.mark.parametrize(
    ("folder", "options"),
    [
        ("hid-rerank-true", ["--rerank"]),
        ("hid-rerank-true", ["--rerank", "--rerank-precision", "opengait"]),
        ("hid-rerank-true", ["--rerank", "--rerank-precision", "float64"]),
        ("hid-rerank-false", []),
    ],
)
def test_gait_score_writes_opengaits_hid_submission(tmp_path: Path, folder, options) -> None:
    csv_path, report = tmp_path / "hid.csv", tmp_path / "hid.json"
    r = gait(
        "score", FIXTURES / folder / "inputs.npz", "--protocol", "hid", *options,
        "--out", report, "--submission", csv_path,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert csv_path.read_bytes() == (FIXTURES / folder / "submission.csv").read_bytes()
    precision = options[-1] if len(options) == 3 else "opengait"
    expected = {"k1": 6, "k2": 6, "lam": 0.3, "precision": precision} if options else None
    assert json.loads(report.read_text())["rerank"] == expected


def test_rerank_precision_needs_rerank_and_a_known_name(tmp_path: Path) -> None:
    npz = tmp_path / "in.npz"
    np.savez(
        npz,
        embeddings=np.random.default_rng(25).normal(size=(6, 4, 2)).astype(np.float32),
        labels=np.array(["probe", "probe", "1", "1", "2", "2"]),
        types=np.array(["a"] * 6),
        views=np.array([f"v{i}" for i in range(6)]),
    )
    out = tmp_path / "r.json"
    r = gait("score", npz, "--protocol", "hid", "--rerank-precision", "float64", "--out", out)
    assert_one_line_error(r, "--rerank-precision", "--rerank")
    r = gait(
        "score", npz, "--protocol", "hid", "--rerank", "--rerank-precision", "half", "--out", out
    )
    assert r.exit_code == 2 and "half" in r.output
    assert not out.exists()
    r = gait("score", npz, "--protocol", "hid", "--rerank", "--out", out)
    assert r.exit_code == 0, r.output
    assert "--rerank-precision [opengait|float64]" in gait("score", "--help").output


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


@pytest.mark.parametrize("precision", PRECISIONS)
def test_memory_stays_under_the_stated_bound(precision: str) -> None:
    n, q = 700, 300
    d = embedding_distances(np.random.default_rng(14), n, dim=8)
    free, peak = peak_bytes(lambda: rerank(d, q, precision=precision))
    assert peak <= rerank_memory(n, q)
    cap = rerank_memory(n, q) // 2  # smaller blocks, same figures
    capped, peak = peak_bytes(lambda: rerank(d, q, max_memory=cap, precision=precision))
    assert peak <= cap
    if precision == "opengait":
        assert_same_bits(capped, free)
    else:
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
        ((np.ones((4, 4)), 1), {"precision": "float16"}, "precision must be one of opengait"),
    ],
)
def test_bad_inputs_are_one_line_value_errors(args, kwargs, words) -> None:
    with pytest.raises(ValueError) as caught:
        rerank(*args, **kwargs)
    assert words in str(caught.value) and "\n" not in str(caught.value)
