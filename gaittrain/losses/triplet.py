"""Batch-all triplet loss, per part: the GaitSet baseline (Chao et al., AAAI 2019).

Per part, on the features as they are (not normalized) with Euclidean distances d, every triplet of
an anchor a, a positive p (same label, p ≠ a) and a negative n (other label) gives::

    ℓ(a, p, n) = max(0, margin + d(a, p) − d(a, n))

The loss of a part is the mean of ℓ over its non-zero terms (0 when there are none): averaging over
the triplets that still violate the margin keeps the gradient from fading as most triplets become
satisfied. The loss is the mean over the parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gaittrain.losses._common import (
    PartLoss,
    distance_stats,
    masked_mean,
    pair_masks,
    pairwise_distance,
    query_stats,
)
from gaittrain.schema import float_field


@dataclass
class TripletLossConfig:
    """``loss: {name: triplet, margin}``: :class:`TripletLoss` (GaitSet's margin 0.2)."""

    name: str = field(default="triplet", init=False)
    margin: float = float_field(0.2, 0.0)


class TripletLoss(PartLoss):
    """Batch-all triplet loss with a margin, per part, on unnormalized features.

    ``loss(features [parts, batch, dim], labels [batch]) -> scalar``; see the module docstring for
    the formula. ``stats`` after a call: "active" (fraction of all anchor-positive-negative
    triplets, over all parts, whose term is non-zero), "active_pos" and "active_neg" (fraction of
    the positive and of the negative pairs that are in a non-zero term), "queries" (anchors per
    part) and "active_queries" (fraction of the anchors with a non-zero term), "pos_dist" and
    "neg_dist" (mean distance of
    the positive pairs and of the negative pairs); nan where the batch has no such triplet or pair.

    Args:
        margin: the required gap between the positive and the negative distance.
    """

    Config = TripletLossConfig

    def __init__(self, margin: float = TripletLossConfig.margin) -> None:
        super().__init__()
        if not math.isfinite(margin) or margin < 0:
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
        self.margin = float(margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"

    def compute(self, features: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        parts = features.shape[0]
        dist = pairwise_distance(features, features)  # [parts, batch, batch]
        pos, neg = pair_masks(labels)
        threshold = self.margin + dist  # ℓ(a, p, n) > 0 exactly when d(a, n) < threshold[a, p]
        nonzero, count, weight = active_counts(threshold.detach(), dist.detach(), pos, neg)
        # Σ over the (a, p, n) with ℓ ≥ 0 of threshold[a, p] − d(a, n): the sum of the terms, and
        # the gradient of clamp_min(·, 0), which passes at 0. In float64 against the cancellation
        # between the two sums (their difference, the loss, is much smaller).
        above = (count * threshold.to(torch.float64)).sum((1, 2))
        total = above - (weight * dist.to(torch.float64)).sum((1, 2))
        loss = (total / nonzero.clamp_min(1)).mean().to(dist.dtype)
        with torch.no_grad():
            triplets = (pos.sum(1) * neg.sum(1)).sum()
            # (a, p) is in an active triplet when a's nearest negative is inside its threshold,
            # (a, n) when n is inside a's largest threshold (its farthest positive's)
            nearest = dist.masked_fill(~neg, float("inf")).amin(-1, keepdim=True)
            pos_active = pos & (threshold > nearest)
            widest = threshold.masked_fill(~pos, float("-inf")).amax(-1, keepdim=True)
            neg_active = neg & (dist < widest)
            stats = {
                "active": nonzero.sum() / (triplets * parts),
                "active_pos": masked_mean(pos_active.to(dist.dtype), pos),
                "active_neg": masked_mean(neg_active.to(dist.dtype), neg),
                **query_stats(pos_active.any(-1)),
                **distance_stats(dist, pos, neg),
            }
        return loss, stats


def active_counts(
    threshold: Tensor, dist: Tensor, pos: Tensor, neg: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """How many triplet terms are non-zero, and how many terms each pair is in.

    The term of (a, p, n) is ``max(0, threshold[a, p] − dist[a, n])``. Sorting each anchor's
    negative distances (and its positive thresholds) turns the counts into binary searches:
    ``[parts, batch, batch]`` work instead of a ``[parts, batch, batch, batch]`` table, and no
    shape that depends on the labels (which would need a device synchronization).

    Args:
        threshold: ``margin + d(a, p)``, ``[parts, batch, batch]``.
        dist: ``d(a, n)``, ``[parts, batch, batch]``.
        pos, neg: boolean ``[batch, batch]`` masks of the positive and the negative pairs.

    Returns:
        int64 ``nonzero [parts]``: the number of non-zero terms of each part; int64
        ``[parts, batch, batch]`` ``count[:, a, p]``: the negatives n with
        ``dist[a, n] <= threshold[a, p]``, 0 unless (a, p) is a positive pair, and
        ``weight[:, a, n]``: the positives p with the same, 0 unless (a, n) is a negative pair.
    """
    n = pos.shape[0]
    negatives = dist.masked_fill(~neg, float("inf")).sort(-1).values  # ascending, then inf
    thresholds = threshold.masked_fill(~pos, float("-inf")).sort(-1).values  # -inf, ascending
    below = torch.searchsorted(negatives, threshold).masked_fill(~pos, 0)  # d(a, n) < threshold
    count = torch.searchsorted(negatives, threshold, right=True).masked_fill(~pos, 0)
    weight = n - torch.searchsorted(thresholds, dist)  # #{p : threshold[a, p] >= d(a, n)}
    return below.sum((1, 2)), count, weight.masked_fill(~neg, 0)
