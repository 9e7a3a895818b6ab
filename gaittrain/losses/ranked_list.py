"""Ranked List Loss (Wang et al., "Ranked List Loss for Deep Metric Learning", CVPR 2019).

Per part, on L2-normalized features f̂ and Euclidean distances d, each sample i of the batch is a
query and ranks the other samples:

* a positive j (same label, j ≠ i) is *active* when it lies beyond the positive boundary,
  ``d_ij > α − m``, and contributes ``d_ij − (α − m)``;
* a negative j (other label) is active when it lies inside the negative boundary, ``d_ij < α``,
  and contributes ``α − d_ij``;

each side is a weighted mean over its active set::

    L_P(i) = Σ_j w⁺_ij (d_ij − (α − m))   over the active positives j of i
    L_N(i) = Σ_j w⁻_ij (α − d_ij)         over the active negatives j of i
    w⁺_i·  = softmax of T_p (d_ij − (α − m)) over the active positives of i
    w⁻_i·  = softmax of T_n (α − d_ij) over the active negatives of i
    L(i)   = L_P(i) + λ L_N(i)            (an empty active set contributes 0)

and the loss is the mean of L(i) over the samples, then over the parts. The weights are computed on
detached distances: they are constants in the backward pass, as in the paper. RLL itself weights
positives uniformly, which is ``T_p = 0`` (a plain mean); ``T_p > 0`` leans on the hardest ones.
With normalized features every distance lies in [0, 2], so α and m are on that scale.

The same boundary terms, with class centers as queries or candidates, give the center-ranked loss
(:mod:`gaittrain.losses.center_ranked`); :class:`RankedLossBase` holds what both share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from gaittrain.losses._common import (
    PartLoss,
    distance_stats,
    masked_mean,
    pair_masks,
    pairwise_distance,
    query_stats,
)
from gaittrain.schema import ConfigError, float_field


@dataclass
class RankedListLossConfig:
    """``loss: {name: ranked_list, ...}``: :class:`RankedListLoss`."""

    name: str = field(default="ranked_list", init=False)
    alpha: float = float_field(1.2, above=0.0)
    margin: float = float_field(0.4, 0.0)  # must be < alpha
    t_n: float = float_field(10.0, 0.0)
    t_p: float = float_field(0.0, 0.0)
    lam: float = float_field(1.0, 0.0)

    def check(self) -> None:
        """What the ranges alone do not check (ConfigError naming the keys)."""
        if not self.margin < self.alpha:
            raise ConfigError(
                f"loss.margin must be less than loss.alpha (the positive boundary is "
                f"alpha - margin); got margin {self.margin}, alpha {self.alpha}"
            )


@torch.no_grad()
def constant_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax of logits over the masked entries of the last dim; 0 elsewhere and on empty rows.

    Runs without gradient, so the weights it returns are constants in the backward pass.
    """
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)


class RankedLossBase(PartLoss):
    """The ranked-list boundaries α − m (positives) and α (negatives) and the loss they define.

    Args:
        alpha: negative boundary α: negatives closer than α are penalized.
        margin: m, the gap between the boundaries: positives farther than α − m are penalized.
        t_n: temperature of the softmax weighting of the active negatives (0: plain mean).
        t_p: temperature of the softmax weighting of the active positives (0: plain mean).
        lam: λ, weight of the negative term.
    """

    def __init__(
        self,
        alpha: float = RankedListLossConfig.alpha,
        margin: float = RankedListLossConfig.margin,
        t_n: float = RankedListLossConfig.t_n,
        t_p: float = RankedListLossConfig.t_p,
        lam: float = RankedListLossConfig.lam,
    ) -> None:
        super().__init__()
        values = {"alpha": alpha, "margin": margin, "t_n": t_n, "t_p": t_p, "lam": lam}
        for name, value in values.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if alpha == 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if not margin < alpha:
            raise ValueError(
                f"margin must be < alpha (the positive boundary is alpha - margin), got "
                f"margin={margin!r}, alpha={alpha!r}"
            )
        self.alpha = float(alpha)
        self.margin = float(margin)
        self.t_n = float(t_n)
        self.t_p = float(t_p)
        self.lam = float(lam)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, margin={self.margin}, t_n={self.t_n}, t_p={self.t_p}, "
            f"lam={self.lam}"
        )

    def ranked_terms(
        self, dist: Tensor, pos: Tensor, neg: Tensor, queries: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """L(q) = L_P(q) + λ L_N(q) for each query q of each part, and the statistics.

        Args:
            dist: distances ``[parts, queries, candidates]``.
            pos, neg: boolean ``[queries, candidates]`` masks of each query's positive and
                negative candidates (disjoint).
            queries: boolean ``[queries]``, the rows that are queries (default: all); it only
                changes the query statistics.

        Returns:
            ``[parts, queries]`` losses, and the statistics: "active" (fraction of the
            query-candidate pairs, positive or negative, that violate their boundary, over all
            parts), "active_pos" and "active_neg" (the same fraction among positive pairs and among
            negative pairs), "pos_dist" and "neg_dist" (mean distance of the positive pairs and of
            the negative pairs, active or not), "queries" (queries per part) and "active_queries"
            (the fraction of them whose loss is not zero, over all parts); nan where the set of
            pairs is empty.
        """
        pos_gap = dist - (self.alpha - self.margin)
        neg_gap = self.alpha - dist
        pos_active = pos & (pos_gap > 0)
        neg_active = neg & (neg_gap > 0)
        pos_loss = (constant_softmax(self.t_p * pos_gap, pos_active) * pos_gap).sum(-1)
        neg_loss = (constant_softmax(self.t_n * neg_gap, neg_active) * neg_gap).sum(-1)
        with torch.no_grad():
            stats = {
                "active": masked_mean((pos_active | neg_active).to(dist.dtype), pos | neg),
                "active_pos": masked_mean(pos_active.to(dist.dtype), pos),
                "active_neg": masked_mean(neg_active.to(dist.dtype), neg),
                **query_stats((pos_active | neg_active).any(-1), queries),
                **distance_stats(dist, pos, neg),
            }
        return pos_loss + self.lam * neg_loss, stats


class RankedListLoss(RankedLossBase):
    """Ranked List Loss, per part: every sample ranks the other samples of the batch.

    ``loss(features [parts, batch, dim], labels [batch]) -> scalar``; see the module docstring for
    the formulas and :meth:`RankedLossBase.ranked_terms` for the statistics left in ``stats``.
    """

    Config = RankedListLossConfig

    def compute(self, features: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        features = F.normalize(features, dim=-1)
        dist = pairwise_distance(features, features)
        pos, neg = pair_masks(labels)
        loss, stats = self.ranked_terms(dist, pos, neg)
        return loss.mean(), stats
