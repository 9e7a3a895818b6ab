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

import torch
from torch import Tensor

from gaittrain.losses._common import PartLoss, distance_stats, pair_masks, pairwise_distance


def packed_columns(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Column indices of the true entries of each row of mask ``[n, m]``, left-aligned.

    Returns ``(index, valid)``, both ``[n, w]`` with w the largest row count: row r holds its true
    columns first, then padding (arbitrary columns, ``valid`` false). With P classes of K samples a
    row has K − 1 positives and n − K negatives, so the triplet table is ``[parts, n, K−1, n−K]``
    instead of ``[parts, n, n, n]``.
    """
    count = mask.sum(1)
    width = int(count.max())
    index = torch.argsort(mask.to(torch.uint8), dim=1, descending=True, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device) < count[:, None]
    return index, valid


class TripletLoss(PartLoss):
    """Batch-all triplet loss with a margin, per part, on unnormalized features.

    ``loss(features [parts, batch, dim], labels [batch]) -> scalar``; see the module docstring for
    the formula. ``stats`` after a call: "active" (fraction of all anchor-positive-negative
    triplets, over all parts, whose term is non-zero), "pos_dist" and "neg_dist" (mean distance of
    the positive pairs and of the negative pairs); nan where the batch has no such triplet or pair.

    Args:
        margin: the required gap between the positive and the negative distance.
    """

    def __init__(self, margin: float = 0.2) -> None:
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
        pos_index, pos_valid = packed_columns(pos)
        neg_index, neg_valid = packed_columns(neg)
        anchor_pos = dist.gather(2, pos_index.expand(parts, -1, -1))  # [parts, batch, positives]
        anchor_neg = dist.gather(2, neg_index.expand(parts, -1, -1))  # [parts, batch, negatives]
        valid = pos_valid[:, :, None] & neg_valid[:, None, :]  # [batch, positives, negatives]
        terms = (self.margin + anchor_pos[..., :, None] - anchor_neg[..., None, :]).clamp_min(0)
        terms = terms * valid
        nonzero = (terms > 0).sum((1, 2, 3))
        loss = (terms.sum((1, 2, 3)) / nonzero.clamp_min(1)).mean()
        with torch.no_grad():
            stats = {
                "active": nonzero.sum() / (valid.sum() * parts),
                **distance_stats(dist, pos, neg),
            }
        return loss, stats
