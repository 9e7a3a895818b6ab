"""Retrieval metrics for gait recognition: distances in blocks, CMC, mAP and mINP.

Embeddings are arrays [n, parts, dim]. The distance between two sequences is the Euclidean
distance averaged over the parts (the field's default) or the cosine distance of the flattened
embeddings. Probe x gallery distances are computed in blocks of probes sized to a memory cap, so
the full matrix never exists; only per-probe results are kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

METRICS = ("euclidean", "cosine")


def _block_rows(n_gallery: int, parts: int, max_memory: int) -> int:
    """Probes per block so that a block's working set stays under ``max_memory`` bytes."""
    per_row = 4 * n_gallery * 3 + 4 * parts  # distances, one part's squares, ranking scratch
    return max(1, int(max_memory // max(per_row, 1)))


def distance_blocks(
    probe: torch.Tensor,
    gallery: torch.Tensor,
    metric: str = "euclidean",
    max_memory: int = 256 << 20,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, D)`` with D [b, n_gallery]: the distances of probes start..start+b-1."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}")
    parts = probe.shape[1]
    rows = _block_rows(gallery.shape[0], parts, max_memory)
    if metric == "cosine":
        g = torch.nn.functional.normalize(gallery.flatten(1), dim=1)
        for s in range(0, probe.shape[0], rows):
            p = torch.nn.functional.normalize(probe[s : s + rows].flatten(1), dim=1)
            yield s, 1.0 - p @ g.T
        return
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


@dataclass
class Retrieval:
    """Per-probe outcomes: the rank (from 0) of the first correct match, AP and INP.

    ``first`` is -1 (and AP, INP are 0) for a probe whose subject is not in the gallery.
    """

    first: np.ndarray  # int [n_probe]
    ap: np.ndarray  # float [n_probe]
    inp: np.ndarray  # float [n_probe]

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
    ap = np.zeros(n)
    inp = np.zeros(n)
    g_ids = np.asarray(gallery_ids)
    for s, d in distance_blocks(probe, gallery, metric, max_memory):
        order = torch.argsort(d, dim=1, stable=True).cpu().numpy()
        match = g_ids[order] == np.asarray(probe_ids[s : s + len(order)])[:, None]
        found = match.any(axis=1)
        rank = np.arange(1, match.shape[1] + 1)
        hits = np.cumsum(match, axis=1)
        first[s : s + len(order)] = np.where(found, match.argmax(axis=1), -1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[s : s + len(order)] = np.where(
                found, (match * hits / rank).sum(axis=1) / np.maximum(match.sum(axis=1), 1), 0.0
            )
            last = match.shape[1] - 1 - np.argmax(match[:, ::-1], axis=1)
            inp[s : s + len(order)] = np.where(found, match.sum(axis=1) / (last + 1), 0.0)
    return Retrieval(first, ap, inp)
