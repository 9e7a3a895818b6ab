"""Center-ranked loss (Su, Zhao & Li, "Deep metric learning based on center-ranked loss for gait
recognition", ICASSP 2020), RECONSTRUCTED.

The paper's full text is not public. This is a reconstruction from its abstract and published
descriptions: the Ranked List Loss (:mod:`gaittrain.losses.ranked_list`) with the samples of each
class replaced by the class center on one side of every pair. The formulas below are this
implementation's definition, not a quotation; they may differ from the authors' code in details
(the weighting, the normalization, the reductions).

Per part, independently, with f̂_i = f_i / ‖f_i‖ and Euclidean distances d:

    c_k = mean of f̂_i over the batch samples of class k     (gradients flow through c_k unless
                                                             ``detach_center``)

``anchor="center"`` (default): every class k present in the batch is a query; its positives are its
samples i, its negatives the samples j of the other classes::

    L_P(k) = Σ_i w⁺_i (d(f̂_i, c_k) − (α − m))  over i of class k with d(f̂_i, c_k) > α − m
    L_N(k) = Σ_j w⁻_j (α − d(f̂_j, c_k))        over j of other classes with d(f̂_j, c_k) < α
    w⁺ = softmax of T_p (d − (α − m)) over those active positives,
    w⁻ = softmax of T_n (α − d) over those active negatives     (constants in the backward pass)
    L(k) = L_P(k) + λ L_N(k)                                    (an empty active set gives 0)

and the loss is the mean of L(k) over the classes in the batch, then over the parts.

``anchor="sample"``: every sample i is a query; its single positive is its own center c_{y_i}
(weight 1), its negatives are the other classes' centers, with the same boundaries and weights;
the loss is the mean of L(i) over the samples, then over the parts.

Distances between normalized features lie in [0, 2]. A class with one sample in the batch has its
center on that sample, so its positive distance is 0 and never active.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gaittrain.losses._common import masked_mean, pairwise_distance
from gaittrain.losses.ranked_list import RankedLossBase

ANCHORS = ("center", "sample")


class CenterRankedLoss(RankedLossBase):
    """Center-ranked loss, per part: samples are ranked against the class centers of the batch.

    ``loss(features [parts, batch, dim], labels [batch]) -> scalar``; see the module docstring for
    the formulas. ``stats`` after a call: "active", "active_pos", "active_neg" (fractions of the
    sample-center pairs that violate their boundary: all pairs, positive pairs, negative pairs;
    the pairs are the same for both anchors), "pos_dist" (mean distance of a sample to its own
    center), "neg_dist" (mean distance of a sample to the other centers).

    Args:
        alpha, margin, t_n, t_p, lam: the ranked-list hyper-parameters (:class:`RankedLossBase`).
        anchor: "center" (classes rank samples) or "sample" (samples rank centers).
        detach_center: stop the gradient through the class centers.
    """

    def __init__(
        self,
        alpha: float = 1.2,
        margin: float = 0.4,
        t_n: float = 10.0,
        t_p: float = 0.0,
        lam: float = 1.0,
        anchor: str = "center",
        detach_center: bool = False,
    ) -> None:
        super().__init__(alpha=alpha, margin=margin, t_n=t_n, t_p=t_p, lam=lam)
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        if not isinstance(detach_center, bool):
            raise ValueError(f"detach_center must be a bool, got {detach_center!r}")
        self.anchor = anchor
        self.detach_center = detach_center

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, anchor={self.anchor!r}, detach_center={self.detach_center}"

    def compute(self, features: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        features = F.normalize(features, dim=-1)
        own, slot = class_slots(labels)
        members = own.to(features.dtype)
        sizes = members.sum(0).clamp_min(1)  # empty slots: a zero center, masked out below
        centers = members.T @ features / sizes[:, None]  # [parts, slots, dim]
        if self.detach_center:
            centers = centers.detach()
        other = ~own & slot  # sample i and a class other than its own
        if self.anchor == "center":
            dist = pairwise_distance(centers, features)  # [parts, slots, batch]
            loss, stats = self.ranked_terms(dist, own.T, other.T)
            return masked_mean(loss, slot), stats  # mean over the classes, not the empty slots
        dist = pairwise_distance(features, centers)  # [parts, batch, slots]
        loss, stats = self.ranked_terms(dist, own, other)
        return loss.mean(), stats


def class_slots(labels: Tensor) -> tuple[Tensor, Tensor]:
    """The classes of a batch as slots, without a device synchronization.

    The number of classes depends on the labels, so it cannot size a tensor without reading them
    back to the host (as ``torch.unique`` does). Instead there is one slot per sample: class k
    takes the slot of its first sample in the batch, and the other slots stay empty.

    Returns:
        ``own``: boolean ``[batch, batch]``, sample i belongs to the class of slot s;
        ``slot``: boolean ``[batch]``, slot s holds a class (as many true as classes).
    """
    position = torch.arange(len(labels), device=labels.device)
    same = labels[:, None] == labels[None, :]
    first = torch.where(same, position, len(labels)).amin(1)  # first sample of i's class
    own = first[:, None] == position
    return own, own.any(0)
