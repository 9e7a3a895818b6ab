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
definitions (its docstring states them), in float64 where OpenGait rounds some arrays to float16,
with bounded memory: OpenGait holds several dense
n × n arrays (n = probes + gallery), where this module holds the q × g result, sparse
neighbourhoods and blocks of scratch (:func:`rerank_memory`).
"""

from __future__ import annotations

import numpy as np
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

    the q × g float64 result (the one dense array), the nearest-neighbour lists
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


def _check(dist: np.ndarray, num_probes: int, k1: int, k2: int, lam: float) -> None:
    """One-line ValueErrors for what re-ranking cannot take (finiteness is checked in blocks)."""
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


def _column_maxima(dist: np.ndarray, budget: int) -> np.ndarray:
    """Each column's maximum, checking in row blocks that every entry is finite and every
    maximum positive (it divides that column)."""
    n = dist.shape[0]
    rows = max(1, budget // (n * (dist.itemsize + 1)))
    maxima = np.full(n, -np.inf)
    for r0 in range(0, n, rows):
        block = dist[r0 : r0 + rows]
        if not np.isfinite(block).all():
            raise ValueError("dist must be finite; it holds NaN or infinite values")
        np.maximum(maxima, block.max(axis=0), out=maxima)
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


def _nearest(dist: np.ndarray, width: int, budget: int) -> np.ndarray:
    """[n, width]: row i lists the ``width`` sequences nearest to i, i.e. with the smallest
    normalized distance d(i, j) = dist[j, i] / max(dist[:, i]); ranked on column i of ``dist``
    directly (dividing a column by its positive maximum keeps its order)."""
    n = dist.shape[0]
    rows = max(1, budget // (64 * n))
    ranks = np.empty((n, width), dtype=np.int64)
    for c0 in range(0, n, rows):
        block = np.array(dist[:, c0 : c0 + rows].T, dtype=np.float64, order="C")
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


def _encode(
    dist: np.ndarray, maxima: np.ndarray, ranks: np.ndarray, k1: int, budget: int
) -> sparse.csr_matrix:
    """The sparse [n, n] encoding V: row i holds the Gaussian weights of i's expanded
    k-reciprocal set R*(i), normalized to sum 1."""
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
        w = np.exp(-(dist[j, i] / maxima[i]))
        total = np.bincount(row, weights=w, minlength=r)
        counts.append(np.bincount(row, minlength=r))
        members.append(j)
        weights.append(w / total[row])
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))])
    return sparse.csr_matrix(
        (np.concatenate(weights), np.concatenate(members), indptr), shape=(n, n)
    )


def _expand_queries(v: sparse.csr_matrix, ranks: np.ndarray, k2: int) -> sparse.csr_matrix:
    """Local query expansion: row i becomes the mean of the rows of i's k2 nearest (i included)."""
    n = v.shape[0]
    width = min(n, k2)
    mean = sparse.csr_matrix(
        (np.ones(n * width), ranks[:, :width].ravel(), np.arange(0, n * width + 1, width)),
        shape=(n, n),
    )
    out = (mean @ v).tocsr()
    out.data /= width
    return out


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
    columns (an inverted index)."""
    q = num_probes
    g = v.shape[0] - q
    gallery = v[q:].tocsc()
    probes = v[:q].tocsr()
    column_size = np.diff(gallery.indptr)
    rows = max(1, budget // (48 * g))
    pair_limit = max(g, budget // 128)
    for i0 in range(0, q, rows):
        i1 = min(q, i0 + rows)
        e0, e1 = probes.indptr[i0], probes.indptr[i1]
        entry_row = np.repeat(np.arange(i1 - i0), np.diff(probes.indptr[i0 : i1 + 1]))
        pairs = column_size[probes.indices[e0:e1]]
        ends = np.cumsum(pairs)
        shared = np.zeros((i1 - i0) * g)
        start = 0
        while start < e1 - e0:
            done = ends[start - 1] if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, done + pair_limit, side="right")))
            span = pairs[start:stop]
            first = gallery.indptr[probes.indices[e0 + start : e0 + stop]]
            at = np.repeat(first - (np.cumsum(span) - span), span) + np.arange(span.sum())
            key = np.repeat(entry_row[start:stop] * g, span) + gallery.indices[at]
            low = np.minimum(np.repeat(probes.data[e0 + start : e0 + stop], span), gallery.data[at])
            shared += np.bincount(key, weights=low, minlength=shared.size)
            start = stop
        shared = shared.reshape(i1 - i0, g)
        # Each row sums to 1, so the sum of maxima is 2 minus the sum of minima.
        jaccard = 1.0 - shared / (2.0 - shared)
        block = out[i0:i1]
        np.divide(dist[q:, i0:i1].T, maxima[i0:i1, None], out=block)
        block *= lam
        block += (1.0 - lam) * jaccard


def rerank(
    dist: np.ndarray,
    num_probes: int,
    k1: int = 6,
    k2: int = 6,
    lam: float = 0.3,
    max_memory: int | None = None,
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

    Returns
    -------
    ndarray [q, g], float64
        The re-ranked distance :math:`d^*(i, j)` from probe i to gallery sequence j.

    Notes
    -----
    With D = ``dist``:

    1. Normalized distance (OpenGait divides each column of D by its maximum, then transposes):
       :math:`d(i, j) = D_{ji} / \max_m D_{mi}`; for a symmetric D, row i of D over its maximum.
    2. :math:`N(i, k)`: the k + 1 sequences with the smallest :math:`d(i, \cdot)`, i itself
       normally among them; equal distances are ranked by index (a stable sort; OpenGait's
       quicksort leaves their order unspecified).
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

    Everything is computed in float64. OpenGait stores V, its expansion and the Jaccard distance
    in float16 (11 significant bits), which moves its distances by up to about 1e-3; its order of
    the gallery can then differ where two re-ranked distances are that close (docs/evaluation.md,
    "Re-ranking", gives the measured effect). This function does not reproduce that rounding.

    Memory: only the [q, g] result is dense (8qg bytes); the neighbour lists and the encodings
    are sparse (O(n k1² k2) entries), and the ranking of the distances and the Jaccard sums run
    in blocks of :data:`BLOCK_BYTES` of scratch. :func:`rerank_memory` gives the bound: 1.07 GB
    for n = 20,000 (q = g = 10,000; 0.75 GB of it the result; 0.79 GB measured), where
    OpenGait's holds several n × n arrays (the normalized float32 distances, int64 then int32
    ranks, float16 encodings: about 14 n² bytes besides its input, 5.2 GB for n = 20,000).

    References
    ----------
    Z. Zhong, L. Zheng, D. Cao and S. Li, "Re-ranking person re-identification with k-reciprocal
    encoding", CVPR 2017, pp. 1318-1327.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(12, 4))
    >>> dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    >>> rerank(dist, num_probes=4).shape
    (4, 8)
    """
    dist = np.asarray(dist)
    _check(dist, num_probes, k1, k2, lam)
    n, q = dist.shape[0], int(num_probes)
    budget = _block_budget(n, q, k1, k2, max_memory)
    maxima = _column_maxima(dist, budget)
    width = _widths(n, k1, k2)[0]
    ranks = _nearest(dist, width, budget)
    v = _encode(dist, maxima, ranks, k1, budget)
    if k2 != 1:
        v = _expand_queries(v, ranks, k2)
    del ranks
    out = np.empty((q, n - q))
    _mix(v, dist, maxima, q, float(lam), budget, out)
    return out
