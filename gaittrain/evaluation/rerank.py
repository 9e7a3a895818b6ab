r"""k-reciprocal re-ranking of probe-to-gallery distances, as OpenGait's ``re_ranking`` does it.

Re-ranking replaces the distance between a probe and a gallery sequence by a mix of that distance
and a Jaccard distance between their *k-reciprocal neighbourhoods*: two sequences that are each
other's near neighbours, and share near neighbours, come closer; a gallery sequence that is near
the probe only one way moves away. It follows

    Z. Zhong, L. Zheng, D. Cao and S. Li, "Re-ranking person re-identification with k-reciprocal
    encoding", Proc. IEEE Conf. Computer Vision and Pattern Recognition (CVPR), 2017,
    pp. 1318-1327,

as OpenGait implements it (``opengait/evaluation/re_rank.py`` at commit 0efafd4, which
``HID_submission`` calls with k1 = 6, k2 = 6, λ = 0.3). :func:`rerank` computes the same
definitions (its docstring states them) in one of two precisions: ``"opengait"`` (the default),
OpenGait's own arithmetic step by step (float32 distances, float16 encodings and Jaccard
distances, its order of additions), so that its nearest gallery sequences are OpenGait's; or
``"float64"``, the definitions computed in float64. Either way with bounded memory: OpenGait holds
several dense n × n arrays (n = probes + gallery), where this module holds the q × g result,
sparse neighbourhoods and blocks of scratch (:func:`rerank_memory`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from gaitprep.errors import GaitError

#: Bytes of scratch a block of work may use when no ``max_memory`` is given (rows of distances
#: being ranked, the neighbour pairs of a block of probes); every stage works in such blocks.
BLOCK_BYTES = 64 << 20
#: The least scratch a block is given under a ``max_memory``; below it re-ranking is refused.
MIN_BLOCK_BYTES = 1 << 20
#: Bytes per entry of a sparse neighbourhood matrix (float64 weight, index of up to 8 bytes) and
#: how many such matrices can be alive at once (the encoding, its query expansion, and the
#: gallery's copy by columns with the probes' rows).
_SPARSE_ENTRY = 16
_SPARSE_COPIES = 3
#: The arithmetic :func:`rerank` can follow: OpenGait's float32/float16 steps, or float64.
PRECISIONS = ("opengait", "float64")


class RerankMemoryError(GaitError):
    """Re-ranking would need more memory than ``--max-memory`` allows."""


def half_k(k1: int) -> int:
    """The neighbourhood size of the expansion candidates: k1/2 rounded half to even (OpenGait's
    ``np.around``): 3 for k1 = 6, 2 for k1 = 5, 0 for k1 = 1.

    Examples
    --------
    >>> [half_k(k) for k in (1, 2, 3, 5, 6, 7)]
    [0, 1, 2, 2, 3, 4]
    """
    return round(k1 / 2)


def _widths(n: int, k1: int, k2: int) -> tuple[int, int, int, int, int]:
    """Entries per row: of the nearest-neighbour lists (K), of k1's and half_k's reciprocal sets,
    and at most of an encoded row before (W) and after (Wq) query expansion."""
    near = min(n, k1 + 1)
    half = min(n, half_k(k1) + 1)
    encoded = min(n, near + near * half)
    expanded = encoded if k2 == 1 else min(n, min(n, k2) * encoded)
    ranks = min(n, max(k1 + 1, k2))
    return ranks, near, half, encoded, expanded


def _fixed_bytes(n: int, num_probes: int, k1: int, k2: int) -> int:
    """Bytes that do not depend on the block size (see :func:`rerank_memory`)."""
    q, g = num_probes, n - num_probes
    ranks, near, half, encoded, expanded = _widths(n, k1, k2)
    dense = 8 * q * g
    lists = 8 * n * (ranks + near + half + 2)
    neighbourhoods = _SPARSE_ENTRY * n * (encoded + _SPARSE_COPIES * expanded)
    one_row = 64 * n + 112 * g
    return dense + lists + neighbourhoods + one_row


def _block_budget(n: int, num_probes: int, k1: int, k2: int, max_memory: int | None) -> int:
    """Scratch bytes per block: :data:`BLOCK_BYTES`, or less so that the bound fits
    ``max_memory``; :class:`RerankMemoryError` when not even :data:`MIN_BLOCK_BYTES` fits."""
    fixed = _fixed_bytes(n, num_probes, k1, k2)
    if max_memory is None:
        return BLOCK_BYTES
    budget = min(BLOCK_BYTES, (max_memory - fixed) // 2)
    if budget < MIN_BLOCK_BYTES:
        need = fixed + 2 * MIN_BLOCK_BYTES
        q, g = num_probes, n - num_probes
        raise RerankMemoryError(
            f"re-ranking {n:,} sequences ({q:,} probes x {g:,} gallery) needs about "
            f"{need / 2**30:.2f} GB, more than the {max_memory / 2**30:.2f} GB of --max-memory; "
            "raise --max-memory or re-rank fewer sequences"
        )
    return budget


def rerank_memory(n: int, num_probes: int, k1: int = 6, k2: int = 6) -> int:
    r"""An upper bound, in bytes, of the memory :func:`rerank` allocates, without ``max_memory``
    (the input distances, the caller's, are not counted).

    With q probes, g = n - q gallery sequences, :math:`a = \min(n, k_1 + 1)`,
    :math:`b = \min(n, h + 1)` (:math:`h` = :func:`half_k`), an encoded row of at most
    :math:`W = \min(n, a + ab)` entries and an expanded one of at most
    :math:`W_q = \min(n, k_2 W)` (W when :math:`k_2 = 1`), it is

    .. math::

        8qg + 8n(K + a + b + 2) + 16n(W + 3W_q) + 64n + 112g + 2B,

    the q × g float64 result (the one dense array; float32, half that, in OpenGait's precision,
    which this bound does not count on), the nearest-neighbour lists
    (:math:`K = \min(n, \max(k_1 + 1, k_2))`) and reciprocal sets, the sparse neighbourhoods
    (at most three alive at once), and scratch: two blocks of :math:`B` = :data:`BLOCK_BYTES`
    (:math:`\min(B, 64n^2)` for small n), and at least one row's.

    Examples
    --------
    >>> round(rerank_memory(20_000, 10_000) / 2**30, 2)  # GB of 2**30 bytes, as --max-memory
    1.07
    """
    if n < 2 or not 0 < num_probes < n:
        raise ValueError(f"need 0 < num_probes < n, got num_probes={num_probes}, n={n}")
    scratch = min(BLOCK_BYTES, 64 * n * n)
    return _fixed_bytes(n, num_probes, k1, k2) + 2 * scratch


def least_memory(n: int, num_probes: int, k1: int = 6, k2: int = 6) -> int:
    """The least ``max_memory`` :func:`rerank` accepts for n sequences, ``num_probes`` of them
    probes: :func:`rerank_memory` with two blocks of :data:`MIN_BLOCK_BYTES` of scratch (below it,
    :class:`RerankMemoryError`).

    Examples
    --------
    >>> round(least_memory(20_000, 10_000) / 2**30, 2)  # GB, as rerank_memory's 1.07
    0.95
    """
    if n < 2 or not 0 < num_probes < n:
        raise ValueError(f"need 0 < num_probes < n, got num_probes={num_probes}, n={n}")
    return _fixed_bytes(n, num_probes, k1, k2) + 2 * MIN_BLOCK_BYTES


def _check(dist: np.ndarray, num_probes: int, k1: int, k2: int, lam: float, precision: str) -> None:
    """One-line ValueErrors for what re-ranking cannot take (finiteness is checked in blocks)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist must be a square (q+g) x (q+g) matrix, got shape {dist.shape}")
    if not (np.issubdtype(dist.dtype, np.floating) or np.issubdtype(dist.dtype, np.integer)):
        raise ValueError(f"dist must hold real numbers, got dtype {dist.dtype}")
    n = dist.shape[0]
    for name, value in (("num_probes", num_probes), ("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 < num_probes < n:
        raise ValueError(f"num_probes must be in 1..{n - 1} (dist is {n} x {n}), got {num_probes}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be at least 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")


def _column_maxima(dist: np.ndarray, budget: int, dtype: type) -> np.ndarray:
    """Each column's maximum, in ``dtype`` (float32: the maximum of the float32 distances OpenGait
    divides by, as rounding keeps the order), checking in row blocks that every entry is finite
    and every maximum positive (it divides that column)."""
    n = dist.shape[0]
    rows = max(1, budget // (n * (dist.itemsize + 1)))
    maxima = np.full(n, -np.inf)
    for r0 in range(0, n, rows):
        block = dist[r0 : r0 + rows]
        if not np.isfinite(block).all():
            raise ValueError("dist must be finite; it holds NaN or infinite values")
        np.maximum(maxima, block.max(axis=0), out=maxima)
    maxima = maxima.astype(dtype)
    if not (maxima > 0).all():
        column = int(np.argmax(~(maxima > 0)))
        raise ValueError(
            f"every column of dist needs a positive maximum (column {column} has none); "
            "distances must not all be zero or negative"
        )
    return maxima


def _smallest(rows: np.ndarray, width: int) -> np.ndarray:
    """The column indices of the ``width`` smallest values of each row, in ascending order of
    value, equal values in ascending order of index (a stable sort's order)."""
    r, n = rows.shape
    if width >= n:
        return np.argsort(rows, axis=1, kind="stable")
    cut = np.partition(rows, width - 1, axis=1)[:, width - 1 : width]
    row, col = np.nonzero(rows <= cut)  # every row has at least `width`, more where values tie
    order = np.lexsort((col, rows[row, col], row))
    row, col = row[order], col[order]
    place = np.arange(row.size) - np.searchsorted(row, np.arange(r))[row]
    return col[place < width].reshape(r, width)


def _first_sorted(rows: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` columns of ``np.argsort(rows, axis=1)``, numpy's default sort, which
    OpenGait ranks with: where a row's ``width + 1`` smallest values are distinct they are
    :func:`_smallest`'s; a row with equal values among them is sorted whole by ``np.argsort``,
    whose order of equal values (not the order of their indices) is then OpenGait's."""
    if width >= rows.shape[1]:
        return np.argsort(rows, axis=1)
    first = _smallest(rows, width + 1)
    values = np.take_along_axis(rows, first, axis=1)
    out = first[:, :width]
    for r in np.flatnonzero((values[:, 1:] == values[:, :-1]).any(axis=1)):
        out[r] = np.argsort(rows[r])[:width]
    return out


def _scale(values: np.ndarray, maxima: np.ndarray) -> np.ndarray:
    """Normalized distances ``values / maxima`` in the maxima's dtype: float64, or float32 (the
    distances rounded to float32, as OpenGait receives them, divided in float32)."""
    return values.astype(maxima.dtype, copy=False) / maxima


def _nearest(dist: np.ndarray, maxima: np.ndarray, width: int, budget: int) -> np.ndarray:
    """[n, width]: row i lists the ``width`` sequences nearest to i, i.e. with the smallest
    normalized distance d(i, j) = dist[j, i] / max(dist[:, i]). In float64, ranked on column i of
    ``dist`` directly (dividing a column by its positive maximum keeps its order), equal values
    by index; in float32 (OpenGait's), on the float32 quotients, where rounding can make
    distinct distances equal, those ranked as ``np.argsort`` ranks them."""
    n = dist.shape[0]
    rows = max(1, budget // (64 * n))
    ranks = np.empty((n, width), dtype=np.int64)
    for c0 in range(0, n, rows):
        columns = dist[:, c0 : c0 + rows].T
        if maxima.dtype == np.float32:
            block = np.ascontiguousarray(_scale(columns, maxima[c0 : c0 + rows, None]))
            ranks[c0 : c0 + rows] = _first_sorted(block, width)
        else:
            block = np.array(columns, dtype=np.float64, order="C")
            ranks[c0 : c0 + rows] = _smallest(block, width)
    return ranks


def _reciprocal(ranks: np.ndarray, k: int, budget: int) -> np.ndarray:
    """[n, min(n, k+1)]: row i holds the k-reciprocal neighbours R(i, k) of i, those j of i's k+1
    nearest that have i among their own k+1 nearest, in i's order, -1 elsewhere."""
    n = ranks.shape[0]
    width = min(n, k + 1)
    forward = ranks[:, :width]
    out = np.empty((n, width), dtype=np.int64)
    rows = max(1, budget // (16 * width * width + 1))
    for r0 in range(0, n, rows):
        mine = forward[r0 : r0 + rows]
        me = np.arange(r0, r0 + mine.shape[0])[:, None, None]
        mutual = (forward[mine] == me).any(axis=2)
        out[r0 : r0 + rows] = np.where(mutual, mine, -1)
    return out


def _row_sums(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The sums of consecutive runs of ``counts`` values, each as ``np.sum`` gives it of the run
    alone: numpy sums pairwise, grouped by the length of the array, so the runs are summed in
    groups of one length, each group as a [runs, length] array (numpy sums each row alone)."""
    starts = np.cumsum(counts) - counts
    out = np.zeros(len(counts), dtype=values.dtype)
    for m in np.unique(counts[counts > 0]):
        runs = np.flatnonzero(counts == m)
        out[runs] = values[starts[runs, None] + np.arange(m)].sum(axis=1)
    return out


def _encode(
    dist: np.ndarray, maxima: np.ndarray, ranks: np.ndarray, k1: int, budget: int
) -> sparse.csr_matrix:
    """The sparse [n, n] encoding V: row i holds the Gaussian weights of i's expanded
    k-reciprocal set R*(i), normalized to sum 1. With float32 maxima, OpenGait's: float32
    weights over their float32 ``np.sum``, rounded to float16 (held in a float32 matrix, as
    scipy has no float16 matrices; every float16 is a float32)."""
    n = ranks.shape[0]
    near = _reciprocal(ranks, k1, budget)
    half = _reciprocal(ranks, half_k(k1), budget)
    a, b = near.shape[1], half.shape[1]
    rows = max(1, budget // (8 * a * b * (a + 6)))
    counts, members, weights = [], [], []
    for r0 in range(0, n, rows):
        own = near[r0 : r0 + rows]  # R(i, k1), -1 padded
        r = own.shape[0]
        # The candidates' half-size sets R(c, h), c in R(i, k1): [r, a, b], -1 padded.
        cand = np.where((own >= 0)[:, :, None], half[np.maximum(own, 0)], -1)
        size = (cand >= 0).sum(axis=2)
        inside = (cand[:, :, :, None] == own[:, None, None, :]).any(axis=3) & (cand >= 0)
        grows = inside.sum(axis=2) > 2 / 3 * size  # strictly more than two thirds inside
        union = np.concatenate([own, np.where(grows[:, :, None], cand, -1).reshape(r, a * b)], 1)
        union.sort(axis=1)
        keep = union >= 0
        keep[:, 1:] &= union[:, 1:] != union[:, :-1]
        row, slot = np.nonzero(keep)
        j = union[row, slot]
        i = row + r0
        w = np.exp(-_scale(dist[j, i], maxima[i]))
        count = np.bincount(row, minlength=r)
        if maxima.dtype == np.float32:
            w = (w / _row_sums(w, count)[row]).astype(np.float16).astype(np.float32)
        else:
            w = w / np.bincount(row, weights=w, minlength=r)[row]
        counts.append(count)
        members.append(j)
        weights.append(w)
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))])
    return sparse.csr_matrix(
        (np.concatenate(weights), np.concatenate(members), indptr), shape=(n, n)
    )


def _expand_queries(v: sparse.csr_matrix, ranks: np.ndarray, k2: int) -> sparse.csr_matrix:
    """Local query expansion: row i becomes the mean of the rows of i's k2 nearest (i included).
    For float32 (float16-valued) V, as numpy's mean of float16 rows: their float32 sum, added
    in rank order, over k2, rounded to float16."""
    n = v.shape[0]
    width = min(n, k2)
    if v.dtype == np.float32:
        total = v[ranks[:, 0]]
        for t in range(1, width):
            total = total + v[ranks[:, t]]  # one float32 addition per entry and row added
        total = total.tocsr()
        total.data = (total.data / np.float32(width)).astype(np.float16).astype(np.float32)
        total.eliminate_zeros()  # a mean below float16's least subnormal is 0 there too
        return total
    mean = sparse.csr_matrix(
        (np.ones(n * width), ranks[:, :width].ravel(), np.arange(0, n * width + 1, width)),
        shape=(n, n),
    )
    out = (mean @ v).tocsr()
    out.data /= width
    return out


def _add_in_order(total: np.ndarray, key: np.ndarray, value: np.ndarray, step: np.ndarray) -> None:
    """``total[key] += value`` in ``total``'s dtype (float16), one rounded addition at a time in
    ascending ``step``; each step holds at most one value per key, so one step is one vectorized
    addition."""
    order = np.argsort(step, kind="stable")
    key, value, step = key[order], value[order].astype(total.dtype), step[order]
    cuts = np.concatenate([[0], np.flatnonzero(step[1:] != step[:-1]) + 1, [step.size]])
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        total[key[a:b]] = total[key[a:b]] + value[a:b]


def _mix(
    v: sparse.csr_matrix,
    dist: np.ndarray,
    maxima: np.ndarray,
    num_probes: int,
    lam: float,
    budget: int,
    out: np.ndarray,
) -> None:
    """out[i, j] = (1 - lam) * Jaccard(V[i], V[q + j]) + lam * d(i, q + j), in blocks of probes;
    the sums of minima run over the entries V[i] and V[q + j] share, through the gallery's
    columns (an inverted index). For float32 (float16-valued) V, OpenGait's: each sum is a
    float16 one, its minima added one at a time in the order of the probe's non-zero columns,
    the Jaccard distance float16, the result float32."""
    q = num_probes
    g = v.shape[0] - q
    opengait = v.dtype == np.float32
    gallery = v[q:].tocsc()
    probes = v[:q].tocsr()
    if opengait:
        probes.sort_indices()  # each probe's non-zero columns in ascending order, OpenGait's
    column_size = np.diff(gallery.indptr)
    rows = max(1, budget // (48 * g))
    pair_limit = max(g, budget // 128)
    for i0 in range(0, q, rows):
        i1 = min(q, i0 + rows)
        e0, e1 = probes.indptr[i0], probes.indptr[i1]
        entry_row = np.repeat(np.arange(i1 - i0), np.diff(probes.indptr[i0 : i1 + 1]))
        # Of each entry, its place among its probe's non-zero columns.
        entry_step = np.arange(e0, e1) - probes.indptr[i0 + entry_row]
        pairs = column_size[probes.indices[e0:e1]]
        ends = np.cumsum(pairs)
        shared = np.zeros((i1 - i0) * g, dtype=np.float16 if opengait else np.float64)
        start = 0
        while start < e1 - e0:
            done = ends[start - 1] if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, done + pair_limit, side="right")))
            span = pairs[start:stop]
            first = gallery.indptr[probes.indices[e0 + start : e0 + stop]]
            at = np.repeat(first - (np.cumsum(span) - span), span) + np.arange(span.sum())
            key = np.repeat(entry_row[start:stop] * g, span) + gallery.indices[at]
            low = np.minimum(np.repeat(probes.data[e0 + start : e0 + stop], span), gallery.data[at])
            if opengait:
                _add_in_order(shared, key, low, np.repeat(entry_step[start:stop], span))
            else:
                shared += np.bincount(key, weights=low, minlength=shared.size)
            start = stop
        shared = shared.reshape(i1 - i0, g)
        # Each row sums to 1, so the sum of maxima is 2 minus the sum of minima. With float16
        # sums every operation is float16's, Python's floats taking the array's dtype; so is
        # the product by 1 - lam, and the float32 (or float64) distance term promotes the sum.
        jaccard = 1.0 - shared / (2.0 - shared)
        del shared
        jaccard *= 1.0 - lam
        near = _scale(dist[q:, i0:i1].T, maxima[i0:i1, None])
        near *= lam
        np.add(jaccard, near, out=out[i0:i1])


def rerank(
    dist: np.ndarray,
    num_probes: int,
    k1: int = 6,
    k2: int = 6,
    lam: float = 0.3,
    max_memory: int | None = None,
    precision: str = "opengait",
) -> np.ndarray:
    r"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) of probe-to-gallery distances, equal to
    OpenGait's ``re_ranking(dist, num_probes, k1, k2, lam)``.

    Parameters
    ----------
    dist : ndarray [n, n]
        Distances between all n = q + g sequences, the q probes first, then the gallery
        (OpenGait: ``cuda_dist(feat, feat)`` of the probes' then the gallery's features). Finite,
        every column with a positive maximum.
    num_probes : int
        q, with 0 < q < n.
    k1 : int
        Size of the k-reciprocal neighbourhoods, at least 1.
    k2 : int
        Neighbours averaged by the local query expansion, at least 1 (1: none).
    lam : float
        Weight λ ∈ [0, 1] of the original distance in the result.
    max_memory : int or None
        Bytes this call may allocate (:func:`rerank_memory`; the input is not counted). Scratch
        blocks shrink to fit; :class:`RerankMemoryError` (naming the size and ``--max-memory``)
        is raised before anything large is allocated when even the result and the sparse
        neighbourhoods do not fit. None: no limit (blocks of :data:`BLOCK_BYTES`).
    precision : {"opengait", "float64"}
        ``"opengait"`` (the default): OpenGait's arithmetic, stage by stage (below), so that the
        result, and with it the nearest gallery sequence, is OpenGait's. ``"float64"``: the same
        definitions computed in float64.

    Returns
    -------
    ndarray [q, g], float32 (``"opengait"``, OpenGait's dtype) or float64
        The re-ranked distance :math:`d^*(i, j)` from probe i to gallery sequence j.

    Notes
    -----
    With D = ``dist``:

    1. Normalized distance (OpenGait divides each column of D by its maximum, then transposes):
       :math:`d(i, j) = D_{ji} / \max_m D_{mi}`; for a symmetric D, row i of D over its maximum.
    2. :math:`N(i, k)`: the k + 1 sequences with the smallest :math:`d(i, \cdot)`, i itself
       normally among them.
    3. k-reciprocal neighbours: :math:`R(i, k) = \{j \in N(i, k) : i \in N(j, k)\}`.
    4. Expansion, with :math:`h` = :func:`half_k` (k1/2 rounded half to even):
       :math:`R^*(i) = R(i, k_1) \cup \bigcup \{R(c, h) : c \in R(i, k_1),\
       |R(c, h) \cap R(i, k_1)| > \tfrac{2}{3} |R(c, h)|\}`.
    5. Gaussian encoding: :math:`V_{ij} = e^{-d(i, j)} / \sum_{m \in R^*(i)} e^{-d(i, m)}` for
       :math:`j \in R^*(i)`, 0 elsewhere; each row sums to 1.
    6. Local query expansion (when :math:`k_2 > 1`): :math:`V_i \leftarrow \frac{1}{k_2}
       \sum_{m \in N(i, k_2 - 1)} V_m`, the mean over i's k2 nearest (rows still sum to 1).
    7. Jaccard distance, with :math:`s_{ij} = \sum_m \min(V_{im}, V_{jm})` and, as the rows sum
       to 1, :math:`\sum_m \max(V_{im}, V_{jm}) = 2 - s_{ij}`:
       :math:`d_J(i, j) = 1 - s_{ij} / (2 - s_{ij})`.
    8. :math:`d^*(i, j) = (1 - \lambda)\, d_J(i, j) + \lambda\, d(i, j)` for the probes i and
       the gallery sequences j.

    The dtype of each stage, ``"opengait"`` (OpenGait's, as ``HID_submission`` runs it on
    ``cuda_dist``'s float32 distances) / ``"float64"``:

    1. float32: D rounded to float32 (a float32 D is taken as is), each column's float32
       maximum, the quotient in float32 / float64.
    2. The ranks of those float32 quotients, equal ones (rounding can make distinct distances
       equal) in ``np.argsort``'s order, OpenGait's quicksort's / of the float64 distances,
       equal ones by index.
    3. Sets of indices, the same in both.
    4. Sets of indices, the same in both.
    5. float32 weights :math:`e^{-d}`, divided in float32 by their float32 ``np.sum`` (numpy's
       pairwise summation, in ascending order of j) and rounded to float16, as OpenGait assigns
       them into its float16 V / float64.
    6. numpy's float16 mean, which OpenGait takes: the k2 float16 rows added in float32 in rank
       order, divided by k2, rounded to float16 / float64.
    7. float16: :math:`s_{ij}` accumulated by float16 additions in OpenGait's order (for each
       probe its non-zero columns m in ascending order, each adding
       :math:`\min(V_{im}, V_{jm})` to the running sum of every gallery sequence j with
       :math:`V_{jm} \neq 0`), and :math:`d_J` by float16 operations / float64.
    8. :math:`d_J (1 - \lambda)` in float16 (numpy rounds the Python float 1 - λ to float16),
       :math:`\lambda d` in float32, their sum float32 / float64.

    Why OpenGait's by default: its float16 rounding moves the re-ranked distances by up to about
    2.4e-3, so where two gallery sequences lie that close to a probe the nearest in float64 can
    differ from OpenGait's (on clustered random embeddings, for 0 to 0.8 % of the probes, where
    this precision gave OpenGait's distances bit for bit: docs/evaluation.md, "Re-ranking"); HID
    submissions are compared with OpenGait's line for line, which only its own arithmetic gives.
    ``"float64"`` is the method without that rounding. ``lam`` is used as a Python float, as
    ``HID_submission`` passes it; the float32 weights and exponentials are numpy's, as
    OpenGait's are.

    Memory: only the [q, g] result is dense (at most 8qg bytes); the neighbour lists and the
    encodings are sparse (O(n k1² k2) entries), and the ranking of the distances and the Jaccard
    sums run in blocks of :data:`BLOCK_BYTES` of scratch. :func:`rerank_memory` gives the bound:
    1.07 GB for n = 20,000 (q = g = 10,000; 0.75 GB of it a float64 result; 0.79 GB measured),
    where OpenGait's holds several n × n arrays (the normalized float32 distances, int64 then
    int32 ranks, float16 encodings: about 14 n² bytes besides its input, 5.2 GB for n = 20,000).

    References
    ----------
    Z. Zhong, L. Zheng, D. Cao and S. Li, "Re-ranking person re-identification with k-reciprocal
    encoding", CVPR 2017, pp. 1318-1327.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(12, 4))
    >>> dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    >>> rerank(dist, num_probes=4).shape, rerank(dist, num_probes=4).dtype
    ((4, 8), dtype('float32'))
    >>> rerank(dist, num_probes=4, precision="float64").dtype
    dtype('float64')
    """
    dist = np.asarray(dist)
    _check(dist, num_probes, k1, k2, lam, precision)
    n, q = dist.shape[0], int(num_probes)
    budget = _block_budget(n, q, k1, k2, max_memory)
    # The stages follow the maxima's dtype: float32 is OpenGait's arithmetic (see above).
    dtype = np.float32 if precision == "opengait" else np.float64
    maxima = _column_maxima(dist, budget, dtype)
    width = _widths(n, k1, k2)[0]
    ranks = _nearest(dist, maxima, width, budget)
    v = _encode(dist, maxima, ranks, k1, budget)
    if k2 != 1:
        v = _expand_queries(v, ranks, k2)
    del ranks
    out = np.empty((q, n - q), dtype=dtype)
    _mix(v, dist, maxima, q, float(lam), budget, out)
    return out


def nearest_gallery(reranked: np.ndarray) -> np.ndarray:
    """Per probe (row), the gallery index ``HID_submission`` answers with, the first of
    ``np.argsort(row)``: the smallest distance's; where several gallery sequences share it,
    the one numpy's default sort puts first, as in OpenGait (not always the lowest index).

    Examples
    --------
    >>> nearest_gallery(np.array([[0.3, 0.1, 0.2], [0.5, 0.4, 0.9]], dtype=np.float32)).tolist()
    [1, 1]
    """
    reranked = np.asarray(reranked)
    nearest = np.argmin(reranked, axis=1)
    rows = max(1, BLOCK_BYTES // max(1, reranked.shape[1]))
    for r0 in range(0, len(reranked), rows):
        block = reranked[r0 : r0 + rows]
        best = block[np.arange(len(block)), nearest[r0 : r0 + rows], None]
        for r in np.flatnonzero(np.count_nonzero(block == best, axis=1) > 1):
            nearest[r0 + r] = np.argsort(block[r])[0]
    return nearest


def opengait_distances(features: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    r"""The distances ``HID_submission`` re-ranks, bit for bit: OpenGait's
    ``cuda_dist(feat, feat, metric)`` between all rows of ``features`` [n, c, p], evaluated by
    torch on the CPU with the same operations, in the same order and dtype (float32 for float32
    features). Per part k, :math:`\lVert x_k \rVert^2 + \lVert y_k \rVert^2 - 2 x_k \cdot y_k`
    (the squared norms by ``torch.sum``, the products by one n × n ``torch.matmul``), clipped at
    0, square-rooted and added up part after part, then divided by p; for ``cosine``, the
    features normalized over their channels (``F.normalize``), the products added up, and 1
    minus their sum over p.

    The same distances computed otherwise (float64, then rounded) are other float32 values for
    about a third of the pairs, the self-distances among them (float32's cancellation leaves them
    near 1e-3, not 0), which moves OpenGait's float16 encodings enough to change the nearest
    gallery sequence of about one probe in a thousand (docs/evaluation.md, "Re-ranking").

    Memory: the result and one part's products (two n × n arrays of the features' dtype) and
    row blocks of at most :data:`BLOCK_BYTES`.

    Examples
    --------
    >>> x = np.array([[[0.0], [0.0]], [[3.0], [4.0]]], dtype=np.float32)  # n 2, c 2, p 1
    >>> opengait_distances(x).tolist(), opengait_distances(x, "cosine").dtype
    ([[0.0, 5.0], [5.0, 0.0]], dtype('float32'))
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be euclidean or cosine, got {metric!r}")
    x = torch.from_numpy(np.ascontiguousarray(features))
    n, parts = x.shape[0], x.shape[2]
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, p=2, dim=1)
    total = torch.zeros(n, n)  # torch's default dtype, float32, as OpenGait's
    rows = max(1, BLOCK_BYTES // (32 * n))
    for k in range(parts):
        part = x[:, :, k]
        products = torch.matmul(part, part.transpose(0, 1))
        if metric == "cosine":
            total += products
            continue
        squares = torch.sum(part**2, 1)
        for r0 in range(0, n, rows):  # elementwise from here on: blocks change no bit
            square = squares[r0 : r0 + rows].unsqueeze(1) + squares.unsqueeze(0)
            square = square - 2 * products[r0 : r0 + rows]
            total[r0 : r0 + rows] += torch.sqrt(torch.relu(square))
        del products
    return (1 - total / parts if metric == "cosine" else total / parts).numpy()
