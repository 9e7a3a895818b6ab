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

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

METRICS = ("euclidean", "cosine", "cosine-flat")


def _block_rows(n_gallery: int, parts: int, max_memory: int, dim: int = 0) -> int:
    """Probes per block so that a block's working set stays under ``max_memory`` bytes.

    A probe row costs its distances, one part's squares and the ranking scratch (3 x 4 bytes per
    gallery sequence), its per-part sums, and ``dim`` floats per part where the block's probes are
    copied (normalized) rather than viewed.
    """
    per_row = 4 * n_gallery * 3 + 4 * parts * (dim + 1)
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


def _euclidean_blocks(
    probe: torch.Tensor, gallery: torch.Tensor, rows: int
) -> Iterator[tuple[int, torch.Tensor]]:
    r"""Euclidean distances averaged over parts, :math:`D_{ij} = \frac{1}{P} \sum_k
    \sqrt{\lVert p_{ik} \rVert^2 + \lVert g_{jk} \rVert^2 - 2 p_{ik} \cdot g_{jk}}`."""
    parts = probe.shape[1]
    g_sq = (gallery**2).sum(-1)  # [G, parts]
    for s in range(0, probe.shape[0], rows):
        p = probe[s : s + rows]
        p_sq = (p**2).sum(-1)  # [b, parts]
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


def retrieve(
    probe: torch.Tensor,
    probe_ids: np.ndarray,
    gallery: torch.Tensor,
    gallery_ids: np.ndarray,
    metric: str = "euclidean",
    max_memory: int = 256 << 20,
) -> Retrieval:
    """Rank the gallery for every probe (ties broken by gallery order) and score the ranking."""
    n = probe.shape[0]
    first = np.full(n, -1, dtype=np.int64)
    nearest = np.full(n, -1, dtype=np.int64)
    nearest_match = np.full(n, -1, dtype=np.int64)
    ap = np.zeros(n)
    inp = np.zeros(n)
    g_ids = np.asarray(gallery_ids)
    for s, d in distance_blocks(probe, gallery, metric, max_memory):
        order = torch.argsort(d, dim=1, stable=True).cpu().numpy()
        b = slice(s, s + len(order))
        match = g_ids[order] == np.asarray(probe_ids[b])[:, None]
        found = match.any(axis=1)
        rank = np.arange(1, match.shape[1] + 1)
        hits = np.cumsum(match, axis=1)
        first[b] = np.where(found, match.argmax(axis=1), -1)
        if order.shape[1]:
            nearest[b] = order[:, 0]
            nearest_match[b] = np.where(found, order[np.arange(len(order)), first[b]], -1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[b] = np.where(
                found, (match * hits / rank).sum(axis=1) / np.maximum(match.sum(axis=1), 1), 0.0
            )
            last = match.shape[1] - 1 - np.argmax(match[:, ::-1], axis=1)
            inp[b] = np.where(found, match.sum(axis=1) / (last + 1), 0.0)
    return Retrieval(first, ap, inp, nearest, nearest_match)
