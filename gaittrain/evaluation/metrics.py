r"""Retrieval metrics for gait recognition: distances in blocks, CMC, mAP and mINP.

Embeddings are arrays [n, parts, dim]. Three distances between a probe p and a gallery sequence g,
each with P parts :math:`p_k, g_k`, are offered:

* ``euclidean`` (the field's default): :math:`\frac{1}{P}\sum_k \lVert p_k - g_k \rVert`;
* ``cosine`` (the field's cosine, OpenGait's ``cos``): :math:`1 - \frac{1}{P}\sum_k
  \hat p_k \cdot \hat g_k` with every part normalized on its own,
  :math:`\hat x_k = x_k / \lVert x_k \rVert`;
* ``cosine-flat``: :math:`1 - \hat{\mathrm{vec}}(p) \cdot \hat{\mathrm{vec}}(g)`, one cosine of
  the flattened embeddings, which weighs the parts by their norms.

Probe x gallery distances are computed in blocks of probes sized to a memory cap, so the full
matrix never exists; only per-probe results are kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from gaittrain.evaluation import certified, lowrank
from gaittrain.evaluation.ranking import match_ranks, score_ranks

METRICS = ("euclidean", "cosine", "cosine-flat")
#: How distances are computed: float32 products (``fp32``), or, Euclidean only, int8 products
#: (``int8``, :mod:`~gaittrain.evaluation.certified`) or low-rank float32 products (``lowrank``,
#: :mod:`~gaittrain.evaluation.lowrank`) re-checked to exact (``--precision auto`` chooses among
#: them: :mod:`gaittrain.evaluation.cost`).
PATHS = ("fp32", "int8", "lowrank")


#: Bytes of ranking scratch per probe x gallery pair: the boolean masks :func:`match_ranks`
#: compares a row with one match's distance through (d < d_m, d = d_m, the gallery order, their
#: conjunction), one byte each, and the int64 copy PyTorch makes of a mask to count it (8; measured:
#: a bool tensor's ``sum`` and ``count_nonzero`` convert it whole); nothing is sorted.
RANK_BYTES = 12


def _block_rows(n_gallery: int, parts: int, max_memory: int, dim: int = 0) -> int:
    """Probes per block so that a block's working set stays under ``max_memory`` bytes.

    A probe row costs, per gallery sequence, its distance and one part's squares (2 x 4 bytes) and
    the ranking scratch (:data:`RANK_BYTES`); per part, its sums and ``dim`` floats where the
    block's probes are copied (normalized) rather than viewed.
    """
    per_row = n_gallery * (8 + RANK_BYTES) + 4 * parts * (dim + 1)
    return max(1, int(max_memory // max(per_row, 1)))


def _unit_parts(x: torch.Tensor) -> torch.Tensor:
    r"""Every part's vector scaled to unit length, :math:`x_k / \max(\lVert x_k \rVert,
    10^{-12})` (a zero part stays zero)."""
    return torch.nn.functional.normalize(x, dim=-1)


def _cosine_blocks(
    probe: torch.Tensor, gallery: torch.Tensor, rows: int
) -> Iterator[tuple[int, torch.Tensor]]:
    r"""Per-part cosine distances, :math:`D_{ij} = 1 - \frac{1}{P} \sum_k \hat p_{ik} \cdot
    \hat g_{jk}`, accumulated one part at a time into each block."""
    parts = probe.shape[1]
    g = _unit_parts(gallery)
    for s in range(0, probe.shape[0], rows):
        p = _unit_parts(probe[s : s + rows])
        d = torch.zeros(p.shape[0], g.shape[0], dtype=probe.dtype, device=probe.device)
        for k in range(parts):
            d.addmm_(p[:, k], g[:, k].T)  # + p_k . g_k, in place
        yield s, d.mul_(-1.0 / parts).add_(1.0)


def _cosine_flat_blocks(
    probe: torch.Tensor, gallery: torch.Tensor, rows: int
) -> Iterator[tuple[int, torch.Tensor]]:
    r"""Cosine distances of the flattened embeddings, :math:`D_{ij} = 1 - \hat{\mathrm{vec}}
    (p_i) \cdot \hat{\mathrm{vec}}(g_j)`."""
    g = torch.nn.functional.normalize(gallery.flatten(1), dim=1)
    for s in range(0, probe.shape[0], rows):
        p = torch.nn.functional.normalize(probe[s : s + rows].flatten(1), dim=1)
        yield s, 1.0 - p @ g.T


def squared_norms(x: torch.Tensor) -> torch.Tensor:
    """Every part's squared length, [n, parts] of embeddings [n, parts, dim]: what the Euclidean
    distance needs of each side; compute them once for embeddings used in many retrievals."""
    return (x**2).sum(-1)


def _euclidean_blocks(
    probe: torch.Tensor,
    gallery: torch.Tensor,
    rows: int,
    norms: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    r"""Euclidean distances averaged over parts, :math:`D_{ij} = \frac{1}{P} \sum_k
    \sqrt{\lVert p_{ik} \rVert^2 + \lVert g_{jk} \rVert^2 - 2 p_{ik} \cdot g_{jk}}`."""
    parts = probe.shape[1]
    p_all, g_sq = norms if norms is not None else (squared_norms(probe), squared_norms(gallery))
    for s in range(0, probe.shape[0], rows):
        p = probe[s : s + rows]
        p_sq = p_all[s : s + rows]  # [b, parts]
        d = torch.zeros(p.shape[0], gallery.shape[0], dtype=probe.dtype, device=probe.device)
        sq = torch.empty_like(d)
        for k in range(parts):  # one part at a time keeps the block small
            torch.add(p_sq[:, k, None], g_sq[:, k], out=sq)  # |p|^2 + |g|^2
            sq.addmm_(p[:, k], gallery[:, k].T, alpha=-2.0)  # - 2 p.g, in place
            d += sq.clamp_min_(0.0).sqrt_()
        yield s, d.div_(parts)


def distance_blocks(
    probe: torch.Tensor,
    gallery: torch.Tensor,
    metric: str = "euclidean",
    max_memory: int = 256 << 20,
    norms: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, D)`` with D [b, n_gallery]: the distances of probes start..start+b-1.

    Parameters
    ----------
    probe, gallery : Tensor
        Embeddings [n, parts, dim].
    metric : {"euclidean", "cosine", "cosine-flat"}
        See the module's docstring for each definition.
    max_memory : int
        Cap in bytes on one block's working set; it sets the number of probes per block.
    norms : (Tensor, Tensor), optional
        :func:`squared_norms` of probe and gallery, when already computed (Euclidean only;
        the same figures either way).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}")
    blocks = {
        "euclidean": _euclidean_blocks,
        "cosine": _cosine_blocks,
        "cosine-flat": _cosine_flat_blocks,
    }[metric]
    copied = 0 if metric == "euclidean" else probe.shape[2]  # cosines normalize a copy
    rows = _block_rows(gallery.shape[0], probe.shape[1], max_memory, copied)
    if metric == "euclidean":
        yield from _euclidean_blocks(probe, gallery, rows, norms)
    else:
        yield from blocks(probe, gallery, rows)


@dataclass
class Retrieval:
    """Per-probe outcomes of ranking a gallery (ties broken by gallery order).

    Attributes
    ----------
    first : ndarray of int [n_probe]
        The rank (from 0) of the first correct match; the probe is a rank-1 hit iff it is 0.
    ap, inp : ndarray of float [n_probe]
        Average precision and inverse negative penalty.
    nearest : ndarray of int [n_probe]
        The gallery index ranked first.
    nearest_match : ndarray of int [n_probe]
        The gallery index of the first correct match (ranked ``first``).

    A probe whose subject is not in the gallery has ``first`` and ``nearest_match`` -1 and AP,
    INP 0.
    """

    first: np.ndarray
    ap: np.ndarray
    inp: np.ndarray
    nearest: np.ndarray
    nearest_match: np.ndarray

    @classmethod
    def concat(cls, parts: list[Retrieval]) -> Retrieval:
        """The retrievals of consecutive blocks of probes as one."""
        names = ("first", "ap", "inp", "nearest", "nearest_match")
        return cls(*(np.concatenate([getattr(r, n) for r in parts]) for n in names))

    @property
    def has_match(self) -> np.ndarray:
        return self.first >= 0

    def cmc(self, k: int, drop_unmatched: bool = False) -> np.ndarray:
        """Rank-1..k accuracy; probes without a gallery match count as misses unless dropped."""
        first = self.first[self.has_match] if drop_unmatched else self.first
        if first.size == 0:
            return np.full(k, np.nan)
        hits = (first[:, None] >= 0) & (first[:, None] <= np.arange(k)[None, :])
        return hits.mean(axis=0)

    def mean_ap(self) -> float:
        return float(self.ap[self.has_match].mean()) if self.has_match.any() else float("nan")

    def mean_inp(self) -> float:
        return float(self.inp[self.has_match].mean()) if self.has_match.any() else float("nan")


def _integer_ids(
    probe_ids: np.ndarray, gallery_ids: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe and gallery subject ids as int32 codes on ``device``, equal iff the ids are."""
    p, g = np.asarray(probe_ids).ravel(), np.asarray(gallery_ids).ravel()
    if p.size and g.size:
        _, codes = np.unique(np.concatenate([p, g]), return_inverse=True)
    else:  # nothing to compare (and an empty array may not concatenate with strings)
        codes = np.zeros(p.size + g.size, np.int64)
    codes = torch.from_numpy(codes.reshape(-1).astype(np.int32))
    return codes[: p.size].to(device), codes[p.size :].to(device)


def _match_table(probe_ids: torch.Tensor, gallery_ids: torch.Tensor) -> torch.Tensor:
    """[n_probe, M]: each probe's correct gallery indices in gallery order, padded with -1 (M:
    the most any probe has; at least 1)."""
    n_codes = (
        int(
            max(
                probe_ids.max().item() if probe_ids.numel() else 0,
                gallery_ids.max().item() if gallery_ids.numel() else 0,
            )
        )
        + 1
    )
    counts = torch.bincount(gallery_ids.long(), minlength=n_codes)
    width = max(int(counts.max().item()) if counts.numel() else 0, 1)
    order = torch.argsort(gallery_ids, stable=True)  # gallery indices grouped by id, in order
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(order), device=order.device) - start[gallery_ids[order].long()]
    table = torch.full((n_codes, width), -1, dtype=torch.int64, device=gallery_ids.device)
    table[gallery_ids[order].long(), slot] = order
    return table[probe_ids.long()]


def _score_block(d: torch.Tensor, matches: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:func:`score_ranks` of a block of distances [b, G]; the nearest is the first of equal
    minima (gallery order)."""
    return score_ranks(match_ranks(d, matches), matches, d.argmin(dim=1), d.shape[1])


def retrieve(
    probe: torch.Tensor,
    probe_ids: np.ndarray,
    gallery: torch.Tensor,
    gallery_ids: np.ndarray,
    metric: str = "euclidean",
    max_memory: int = 256 << 20,
    norms: tuple[torch.Tensor, torch.Tensor] | None = None,
    precision: str = "fp32",
    prepared: certified.Quantized | lowrank.Projected | None = None,
) -> Retrieval:
    """Rank the gallery for every probe (ties broken by gallery order) and score the ranking.

    Subject ids become integer codes on the embeddings' device once; ranking and scoring stay
    there, and only the per-probe results are copied to the host, once. ``norms``: see
    :func:`distance_blocks`. ``precision`` (one of :data:`PATHS`; Euclidean only but fp32)
    "int8" ranks with :mod:`gaittrain.evaluation.certified`, "lowrank" with
    :mod:`gaittrain.evaluation.lowrank`: the same figures, exact in float64, from int8 or
    low-rank products; ``prepared``: the gallery's
    :func:`~gaittrain.evaluation.certified.quantize` or
    :func:`~gaittrain.evaluation.lowrank.project`, when already made.
    """
    if precision not in PATHS:
        raise ValueError(
            f"precision must be one of {', '.join(PATHS)} (auto: resolve it first, "
            "gaittrain.evaluation.cost.resolve_precision)"
        )
    if precision != "fp32" and metric != "euclidean":
        raise ValueError(f"precision {precision} computes the euclidean metric only")
    n, device = probe.shape[0], probe.device
    p_ids, g_ids = _integer_ids(probe_ids, gallery_ids, device)
    first = torch.full((n,), -1, dtype=torch.int64, device=device)
    nearest = torch.full((n,), -1, dtype=torch.int64, device=device)
    nearest_match = torch.full((n,), -1, dtype=torch.int64, device=device)
    ap = torch.zeros(n, dtype=torch.float64, device=device)
    inp = torch.zeros(n, dtype=torch.float64, device=device)
    if gallery.shape[0] and precision != "fp32":
        matches = _match_table(p_ids, g_ids)
        rank, rows, threads = _certified_ranker(gallery, precision, max_memory, prepared)
        with threads:
            for s in range(0, n, rows):
                b = slice(s, s + rows)
                found = rank(probe[b], matches[b])
                scores = score_ranks(found.ranks, matches[b], found.nearest, gallery.shape[0])
                first[b], ap[b], inp[b], nearest[b], nearest_match[b] = scores
    elif gallery.shape[0]:
        matches = _match_table(p_ids, g_ids)
        for s, d in distance_blocks(probe, gallery, metric, max_memory, norms):
            b = slice(s, s + d.shape[0])
            first[b], ap[b], inp[b], nearest[b], nearest_match[b] = _score_block(d, matches[b])
    host = [x.cpu().numpy() for x in (first, ap, inp, nearest, nearest_match)]
    return Retrieval(*host)


def _certified_ranker(gallery: torch.Tensor, precision: str, max_memory: int, prepared):
    """``(rank, rows, threads)`` of a certified path: ``rank(probe_block, matches)`` gives its
    :class:`~gaittrain.evaluation.certified.BlockRanks`, ``rows`` probes a block, within
    ``threads`` (the native kernels take PyTorch's threads)."""
    n, parts, dim = gallery.shape
    if precision == "int8":
        gq = prepared if prepared is not None else certified.quantize(gallery, False)
        rows = certified.block_rows(n, parts, dim, max_memory, gq.packed)

        def rank(p, matches):
            return certified.rank_block(p, gallery, certified.quantize(p, True), gq, matches)

        return rank, rows, certified.threads_for(gq)
    gp = prepared if prepared is not None else lowrank.project(gallery, lowrank.fit(gallery), False)
    rows = lowrank.block_rows(n, parts, dim, gp.basis.rank, max_memory)

    def rank(p, matches):
        return lowrank.rank_block(p, gallery, lowrank.project(p, gp.basis, True), gp, matches)

    return rank, rows, contextlib.nullcontext()
