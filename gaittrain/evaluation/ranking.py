"""Ranks and scores of a block of probes from its distances: what both the float path
(:mod:`gaittrain.evaluation.metrics`) and the certified int8 path
(:mod:`gaittrain.evaluation.certified`) rank with, kept apart so that neither imports the other's
caller.

Ties are broken by gallery order everywhere: gallery item j ranks #{i : d_i < d_j} + #{i < j :
d_i = d_j}, as a stable sort of the distances would place it.

Examples
--------
>>> import torch
>>> d = torch.tensor([[0.5, 0.2, 0.5, 0.9]])
>>> match_ranks(d, torch.tensor([[2, -1]]))[0, 0].item()  # after 0.2 and the earlier 0.5
2
"""

from __future__ import annotations

import torch


def match_ranks(d: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
    """[b, M]: the rank (from 0) of each probe's correct gallery indices ``matches`` [b, M]
    (padded with -1; their rank: the largest int64) in its row of distances ``d`` [b, G], ties
    broken by gallery order, without sorting the gallery: gallery item j ranks
    #{i : d_i < d_j} + #{i < j : d_i = d_j}, one pass over the row per match."""
    n_gallery = d.shape[1]
    valid = matches >= 0
    column = torch.arange(n_gallery, device=d.device)
    big = torch.iinfo(torch.int64).max
    ranks = torch.full(matches.shape, big, dtype=torch.int64, device=d.device)
    for t in range(matches.shape[1]):
        m = matches[:, t].clamp(min=0)
        dm = d.gather(1, m[:, None])
        rank = (d < dm).sum(dim=1)
        rank += ((d == dm) & (column < m[:, None])).sum(dim=1)
        ranks[:, t] = torch.where(valid[:, t], rank, big)
    return ranks


def score_ranks(
    ranks: torch.Tensor, matches: torch.Tensor, nearest: torch.Tensor, n_gallery: int
) -> tuple[torch.Tensor, ...]:
    """``(first, ap, inp, nearest, nearest_match)`` of a block from its matches' ranks
    (:func:`match_ranks`) and each probe's nearest gallery index."""
    big = torch.iinfo(torch.int64).max
    ranks, slot = torch.sort(ranks, dim=1)  # the matches in ranked order
    count = (matches >= 0).sum(dim=1)
    found = count > 0
    first = ranks[:, 0]
    last = ranks.gather(1, (count - 1).clamp(min=0)[:, None]).squeeze(1)
    position = torch.arange(1, matches.shape[1] + 1, device=ranks.device, dtype=torch.float64)
    precision = torch.where(
        ranks < big, position / (ranks.to(torch.float64) + 1), torch.zeros((), dtype=torch.float64)
    )
    ap = precision.sum(dim=1) / count.clamp(min=1)  # 0 without a match
    inp = torch.where(found, count.to(torch.float64) / (last.clamp(max=n_gallery) + 1), 0.0)
    nearest_match = matches.gather(1, slot[:, :1]).squeeze(1)
    return (
        first.masked_fill_(~found, -1),
        ap,
        inp,
        nearest,
        nearest_match.masked_fill_(~found, -1),
    )
