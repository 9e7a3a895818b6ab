"""Center-ranked loss (Su, Zhao & Li, "Deep metric learning based on center-ranked loss for gait
recognition", ICASSP 2020), RECONSTRUCTED.

The paper's full text is not public. This is a reconstruction from its abstract and published
descriptions: the Ranked List Loss (:mod:`gaittrain.losses.ranked_list`) with the samples of each
class replaced by the class center on one side of every pair. The formulas below are this
implementation's definition, not a quotation; they may differ from the authors' code in details
(the weighting, the normalization, the reductions). The options (``anchor`` "both", ``centers``
"memory", ``normalize``) and the four readings of the abstract (below: ``reading``; the default
is r2, chosen on validation data) are this implementation's design space, not the paper's.

The reading r0, per part, independently, with f̂_i = f_i / ‖f_i‖ (``normalize``, r0's default;
with ``normalize=False``, f̂_i = f_i) and Euclidean distances d:

    c_k = mean of f̂_i over the batch samples of class k     (gradients flow through c_k unless
                                                             ``detach_center``)

K is the set of classes that have a center: the classes of the batch, B (``centers="batch"``, the
default; see below for "memory").

``anchor="center"`` (default): every class k of K is a query; its positives are its samples i, its
negatives the samples j of the other classes::

    L_P(k) = Σ_i w⁺_i (d(f̂_i, c_k) − (α − m))  over i of class k with d(f̂_i, c_k) > α − m
    L_N(k) = Σ_j w⁻_j (α − d(f̂_j, c_k))        over j of other classes with d(f̂_j, c_k) < α
    w⁺ = softmax of T_p (d − (α − m)) over those active positives,
    w⁻ = softmax of T_n (α − d) over those active negatives     (constants in the backward pass)
    L(k) = L_P(k) + λ L_N(k)                                    (an empty active set gives 0)

and the loss is the mean of L(k) over the classes k of K, then over the parts: L_center.

``anchor="sample"``: every sample i is a query; its single positive is its own center c_{y_i}
(weight 1), its negatives are the other centers c_k, k ∈ K ∖ {y_i}, with the same boundaries and
weights; the loss is the mean of L(i) over the samples, then over the parts: L_sample.

``anchor="both"``: the two terms above on the same centers and distances, averaged::

    loss = (L_center + L_sample) / 2

Both rank the same sample-center pairs, so the statistics (below) are those of either anchor;
"both" adds "center_loss" (L_center) and "sample_loss" (L_sample).

``centers="memory"``: a cross-batch memory of the class centers, so that every class of the
training set seen so far acts as a negative, not only the classes of the batch. The labels must
then be class indices 0..C−1 (C = ``num_classes``, as the trainer maps the subjects) and the loss
holds two buffers, allocated at construction and saved in the ``state_dict`` (so in the trainer's
checkpoints, and loadable into a freshly built loss before its first call): ``memory``
``[parts, C, dim]`` (M, zeros) and ``seen`` ``[C]`` (false)::

    c_k = mean of f̂_i over the batch samples of class k       k ∈ B (gradients as above)
    c_k = M_k, a constant                                       k ∉ B, seen_k
    no center: k is left out of every query and candidate set  k ∉ B, not seen_k
    K = B ∪ {k : seen_k}

The anchors then run over K as written above. With the center anchor a class k ∈ K ∖ B has no
sample in the batch, so no positive: L(k) = λ L_N(k), its samples-too-close term; the mean runs
over K, so the batch classes weigh |B| / |K| of it. With the sample anchor every sample ranks the
|K| − 1 other centers. After the loss is computed, in training mode only (``module.train()``, as
batch norm updates its running statistics; ``eval()`` reads the memory and leaves it), the memory
takes the detached batch centers, per part, for the classes k ∈ B whose center is finite::

    M_k ← c_k                          if not seen_k (first sighting)
    M_k ← μ M_k + (1 − μ) c_k          otherwise (μ = ``memory_momentum``, in [0, 1)),
          then, if ``normalize``, M_k ← M_k · ‖c_k‖ / ‖M_k‖
    seen_k ← true

An average of vectors that turn is shorter than they are; the rescaling keeps M_k at the norm of
the class's newest batch center, where a batch center of that class would lie (inside the unit
ball: a center of unit vectors is shorter than 1 unless its samples coincide). The update is in
place, without a host synchronization (masks and ``torch.where``, no ``unique`` and no boolean
indexing). Under DDP the trainer gathers the whole batch on every rank, so every rank makes the
same update and the memories stay equal without communication.

``normalize=False``: the raw features, their class means as centers and raw Euclidean distances;
α and m then live on the features' scale (not [0, 2]) and must be chosen for it.

Distances between normalized features lie in [0, 2]. A class with one sample in the batch has its
center on that sample, so its positive distance is 0 and never active.

Readings
--------
The abstract says only that the loss "integrates all positive and negative samples information",
unlike the triplet and quadruplet losses, which "only consider a small number of samples in the
mini-batch". ``reading`` chooses among the plausible readings of that sentence; each is this
implementation's, none is the paper's formula. With the same f̂, c_k, K and d as above:

``reading="r0"``: the loss above (class centers rank the samples, or the samples rank the
centers: ``anchor``); the only reading until the study of issue 23.

``reading="r1"``: every sample i is a query; its own class center is its one positive, and every
sample j of another class is a ranked negative::

    L(i) = max(0, d(f̂_i, c_{y_i}) − (α − m)) + λ Σ_j w⁻_j (α − d(f̂_i, f̂_j))   over j with y_j ≠ y_i
                                                                             and d(f̂_i, f̂_j) < α

with the ranked-list weights w⁻ (softmax of T_n (α − d) over the active negatives, constants in
the backward pass); the loss is the mean of L(i) over the samples, then over the parts.

``reading="r2"`` (the default, :data:`DEFAULT_READING`: the best by validation data with every
reading and rival tuned alike; docs/results.md): a soft triplet-center loss over every other
center, with T = ``temperature`` and the margin m in the distances' units (its tuned settings
rank the raw features, ``normalize=False``)::

    L(i) = (1/T) log(1 + Σ_{k ∈ K, k ≠ y_i} exp(T (d(f̂_i, c_{y_i}) − d(f̂_i, c_k) + m)))

the mean over the samples, then over the parts (α, T_n, T_p and λ are not used).

``reading="r3"``: the Ranked List Loss over the samples (:mod:`gaittrain.losses.ranked_list`, on
f̂) plus a pull of each sample toward its class center, center-loss style, of weight β = ``beta``::

    L = L_RLL + β · mean over i of ½ ‖f̂_i − c_{y_i}‖²

the pull's centers are the batch's, or the memory's with ``centers="memory"`` (a constant for a
class absent from the batch: then it pulls toward the class's moving average).

``anchor`` applies to r0 only. The statistics: r1 and r3 report their ranked pairs as r0 does
("active", "active_pos", "active_neg", "pos_dist", "neg_dist": r1's positives are the
sample-center pairs, its negatives the sample-sample pairs of different classes; r3's are the
ranked list's pairs), r3 adds "pull" (the mean ½ ‖f̂_i − c_{y_i}‖²); r2 reports "active" and
"active_neg" (the fraction of sample-other-center terms with a positive exponent: the margin
violated), "active_pos" (the fraction of samples with such a term), "pos_dist" (sample to own
center) and "neg_dist" (sample to the other centers). Every reading reports "queries" (per part:
r0's classes, the others' samples) and "active_queries" (the fraction of them with a violated
boundary; for r2, a margin violated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from gaittrain.losses._common import (
    config_arguments,
    distance_stats,
    masked_mean,
    pairwise_distance,
    query_stats,
)
from gaittrain.losses.cross_entropy import check_class_indices
from gaittrain.losses.ranked_list import RankedListLossConfig, RankedLossBase
from gaittrain.schema import ConfigError, float_field, show

ANCHORS = ("center", "sample", "both")
CENTERS = ("batch", "memory")
READINGS = ("r0", "r1", "r2", "r3")  #: the readings of the module docstring


#: Each reading's settings where a config or a caller leaves them out: those its 8 trials of
#: configs/studies/readings-tuned.yaml chose (seeded random search, scored on the demo pack's
#: validation subjects only; docs/results.md, "Fair tuning"), over the keys that reading uses;
#: the keys it does not use keep the ranked list's values. (Each reading's tuned learning rate
#: belongs to the optimizer: docs/results.md lists it.)
READING_DEFAULTS = {
    "r0": {"alpha": 1.281, "margin": 0.5823, "lam": 1.795, "t_n": 16.76},
    "r1": {"alpha": 1.034, "margin": 0.3893, "lam": 1.791, "t_n": 13.87},
    "r2": {"margin": 0.4279, "temperature": 1.237, "normalize": False},
    "r3": {"alpha": 1.313, "margin": 0.4031, "lam": 1.356, "t_n": 8.035, "beta": 0.09194},
}
#: The reading of ``loss: {name: center_ranked}``: the best by validation NM rank-1 (the mean of
#: its 5 seeds' runs with the tuned settings; docs/results.md).
DEFAULT_READING = "r2"
_UNTUNED = {
    "alpha": RankedListLossConfig.alpha,
    "margin": RankedListLossConfig.margin,
    "t_n": RankedListLossConfig.t_n,
    "lam": RankedListLossConfig.lam,
    "normalize": True,
    "temperature": 10.0,
    "beta": 0.1,
}


def reading_settings(reading: str, **given) -> dict:
    """The settings of ``reading``: each key of ``given`` that is not None, else the reading's
    tuned value (:data:`READING_DEFAULTS`), else the ranked list's.

    Examples
    --------
    >>> reading_settings("r2", margin=None, normalize=None)
    {'margin': 0.4279, 'normalize': False}
    >>> reading_settings("r0", alpha=1.2, beta=None)
    {'alpha': 1.2, 'beta': 0.1}
    """
    tuned = READING_DEFAULTS.get(reading, {})
    return {
        key: value if value is not None else tuned.get(key, _UNTUNED[key])
        for key, value in given.items()
    }


@dataclass
class CenterRankedLossConfig(RankedListLossConfig):
    """``loss: {name: center_ranked, ...}``: :class:`CenterRankedLoss` (the ranked-list keys,
    ranked around class centers; docs/losses.md, "The center-ranked design space"). A key left
    out takes the reading's tuned value (:data:`READING_DEFAULTS`), filled in when the section
    is made, so a run's saved config states every value it trained with."""

    name: str = field(default="center_ranked", init=False)
    alpha: float | None = float_field(None, above=0.0)
    margin: float | None = float_field(None, 0.0)  # must be < alpha
    t_n: float | None = float_field(None, 0.0)
    lam: float | None = float_field(None, 0.0)
    anchor: str = "center"  # center | sample | both (the mean of the two)
    detach_center: bool = False  # no gradient through the class centers
    centers: str = "batch"  # batch | memory (+ a moving average of every training class's center)
    # in [0, 1): the weight of the old center (memory only)
    memory_momentum: float = float_field(0.9, 0.0)
    normalize: bool | None = None  # false: raw features and distances; alpha, margin on their scale
    reading: str = DEFAULT_READING  # r0 | r1 | r2 | r3: the readings of the abstract
    temperature: float | None = float_field(None, hi=1000.0, above=0.0)  # r2's T
    beta: float | None = float_field(None, 0.0)  # r3's weight of the pull toward the class center

    def __post_init__(self) -> None:
        given = {key: getattr(self, key) for key in _UNTUNED}
        for key, value in reading_settings(self.reading, **given).items():
            setattr(self, key, value)

    def check(self) -> None:
        """What the ranges alone do not check (ConfigError naming the keys)."""
        for key, allowed in (("anchor", ANCHORS), ("centers", CENTERS), ("reading", READINGS)):
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"loss.{key} is {show(value)}; use one of {', '.join(allowed)}")
        if self.reading != "r0" and self.anchor != "center":
            raise ConfigError(
                f"loss.anchor {self.anchor} applies to reading r0 only; reading {self.reading} "
                "defines its own queries (leave anchor out)"
            )
        if not self.memory_momentum < 1:
            raise ConfigError(
                f"loss.memory_momentum must be less than 1 (got {self.memory_momentum:g})"
                "; it is in [0, 1): 1 would never let a center move"
            )
        super().check()


# The norm of a memory center is rescaled by a ratio of norms: this floor keeps it finite.
_NORM_EPS = 1e-12


class CenterRankedLoss(RankedLossBase):
    """Center-ranked loss, per part: samples are ranked against class centers.

    ``loss(features [parts, batch, dim], labels [batch]) -> scalar``; see the module docstring for
    the formulas. ``stats`` after a call: "active", "active_pos", "active_neg" (fractions of the
    sample-center pairs that violate their boundary: all pairs, positive pairs, negative pairs;
    the pairs are the same for every anchor), "pos_dist" (mean distance of a sample to its own
    center), "neg_dist" (mean distance of a sample to the other centers), "queries" and
    "active_queries" (the classes per part, and the fraction of them with a violated boundary;
    with ``anchor="sample"`` the samples); with
    ``anchor="both"`` also "center_loss" and "sample_loss" (the two terms it averages).

    Args:
        reading: "r0" | "r1" | "r2" | "r3", the reading of the abstract (module docstring);
            default :data:`DEFAULT_READING`. Every setting below left None takes the reading's
            tuned value (:data:`READING_DEFAULTS`), else the ranked list's.
        alpha, margin, t_n, t_p, lam: the ranked-list hyper-parameters (:class:`RankedLossBase`).
        temperature: r2's T; beta: r3's weight of the pull toward the class center.
        anchor: "center" (classes rank samples), "sample" (samples rank centers) or "both" (the
            mean of the two); r0 only.
        detach_center: stop the gradient through the class centers.
        centers: "batch" (the classes of the batch) or "memory" (also the remembered centers of
            the classes absent from the batch; needs ``num_classes``, ``parts`` and ``dim``).
        memory_momentum: μ in [0, 1), the weight of the old memory center in its update.
        normalize: rank L2-normalized features (true) or the raw features (false).
        num_classes, parts, dim: the size of the memory ``[parts, num_classes, dim]``; used by
            ``centers="memory"`` only.
    """

    Config = CenterRankedLossConfig

    @classmethod
    def from_config(cls, section, num_classes=None, parts=None, dim=None) -> CenterRankedLoss:
        """The loss of a config section; ``centers: memory`` keeps a center per training class,
        so it is sized by ``num_classes``, ``parts`` and ``dim`` (the Objective passes them)."""
        kwargs = config_arguments(section)
        if section.centers == "memory":
            if num_classes is None or parts is None or dim is None:
                raise ValueError(
                    "loss.centers: memory keeps a center per training class: build the loss with "
                    "metric_loss(cfg, num_classes=..., parts=...) (Objective passes them)"
                )
            kwargs.update(num_classes=num_classes, parts=parts, dim=dim)
        return cls(**kwargs)

    def __init__(
        self,
        alpha: float | None = None,
        margin: float | None = None,
        t_n: float | None = None,
        t_p: float = Config.t_p,
        lam: float | None = None,
        anchor: str = Config.anchor,
        detach_center: bool = Config.detach_center,
        centers: str = Config.centers,
        memory_momentum: float = Config.memory_momentum,
        normalize: bool | None = None,
        reading: str = Config.reading,
        temperature: float | None = None,
        beta: float | None = None,
        num_classes: int | None = None,
        parts: int | None = None,
        dim: int | None = None,
    ) -> None:
        if reading not in READINGS:
            raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
        given = dict(alpha=alpha, margin=margin, t_n=t_n, lam=lam, normalize=normalize)
        given.update(temperature=temperature, beta=beta)
        settings = reading_settings(reading, **given)
        alpha, margin, t_n, lam = (settings[k] for k in ("alpha", "margin", "t_n", "lam"))
        normalize, temperature, beta = (settings[k] for k in ("normalize", "temperature", "beta"))
        super().__init__(alpha=alpha, margin=margin, t_n=t_n, t_p=t_p, lam=lam)
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        if centers not in CENTERS:
            raise ValueError(f"centers must be one of {CENTERS}, got {centers!r}")
        if reading != "r0" and anchor != "center":
            raise ValueError(f"anchor applies to reading r0 only, got anchor={anchor!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        for name, flag in {"detach_center": detach_center, "normalize": normalize}.items():
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be a bool, got {flag!r}")
        momentum_ok = isinstance(memory_momentum, (int, float)) and not isinstance(
            memory_momentum, bool
        )
        if not momentum_ok or not (math.isfinite(memory_momentum) and 0 <= memory_momentum < 1):
            raise ValueError(f"memory_momentum must be in [0, 1), got {memory_momentum!r}")
        self.anchor = anchor
        self.detach_center = detach_center
        self.centers = centers
        self.memory_momentum = float(memory_momentum)
        self.normalize = normalize
        self.reading = reading
        self.temperature = float(temperature)
        self.beta = float(beta)
        self.num_classes = None
        if centers == "memory":
            sizes = {"num_classes": num_classes, "parts": parts, "dim": dim}
            for name, value in sizes.items():
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(
                        f"centers='memory' needs {name}, a positive int (the memory is "
                        f"[parts, num_classes, dim], allocated at construction), got {value!r}"
                    )
            self.num_classes = num_classes
            self.register_buffer("memory", torch.zeros(parts, num_classes, dim))
            self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def extra_repr(self) -> str:
        text = f"{super().extra_repr()}, anchor={self.anchor!r}, detach_center={self.detach_center}"
        if self.centers == "memory":
            parts, num_classes, dim = self.memory.shape
            text += (
                f", centers='memory', memory_momentum={self.memory_momentum}, "
                f"num_classes={num_classes}, parts={parts}, dim={dim}"
            )
        if not self.normalize:
            text += ", normalize=False"
        if self.reading != "r0":
            text += f", reading={self.reading!r}"
        if self.reading == "r2":
            text += f", temperature={self.temperature}"
        if self.reading == "r3":
            text += f", beta={self.beta}"
        return text

    def compute(self, features: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if self.normalize:
            features = F.normalize(features, dim=-1)
        if self.centers == "memory":
            own, slot, centers, batch_centers = self._memory_centers(features, labels)
        else:
            own, slot = class_slots(labels)
            members = own.to(features.dtype)
            sizes = members.sum(0).clamp_min(1)  # empty slots: a zero center, masked out below
            centers = members.T @ features / sizes[:, None]  # [parts, slots, dim]
            if self.detach_center:
                centers = centers.detach()
        other = ~own & slot  # sample i and a class other than its own
        if self.reading != "r0":
            loss, stats = self._reading(features, labels, own, other, centers)
        elif self.anchor == "center":
            dist = pairwise_distance(centers, features)  # [parts, slots, batch]
            loss, stats = self.ranked_terms(dist, own.T, other.T, queries=slot)
            loss = masked_mean(loss, slot)  # mean over the classes, not the empty slots
        elif self.anchor == "sample":
            dist = pairwise_distance(features, centers)  # [parts, batch, slots]
            loss, stats = self.ranked_terms(dist, own, other)
            loss = loss.mean()
        else:  # both: one table of distances, ranked from each side
            dist = pairwise_distance(centers, features)  # [parts, slots, batch]
            center_loss, stats = self.ranked_terms(dist, own.T, other.T, queries=slot)
            center_loss = masked_mean(center_loss, slot)
            sample_loss = self.ranked_terms(dist.transpose(-1, -2), own, other)[0].mean()
            stats["center_loss"] = center_loss.detach()
            stats["sample_loss"] = sample_loss.detach()
            loss = (center_loss + sample_loss) / 2
        if self.centers == "memory" and self.training:
            self._update_memory(batch_centers.detach(), own.any(0))
        return loss, stats

    def _reading(
        self, features: Tensor, labels: Tensor, own: Tensor, other: Tensor, centers: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of readings r1, r2 and r3 (module docstring) from the (normalized) features
        [parts, batch, dim], ``own`` / ``other`` [batch, slots] and the centers [parts, slots,
        dim]."""
        same = labels[:, None] == labels[None, :]
        if self.reading == "r1":  # own center: the positive; other classes' samples: negatives
            to_centers = pairwise_distance(features, centers)  # [parts, batch, slots]
            to_samples = pairwise_distance(features, features)  # [parts, batch, batch]
            dist = torch.cat([to_centers, to_samples], dim=-1)
            pos = torch.cat([own, torch.zeros_like(same)], dim=-1)
            neg = torch.cat([torch.zeros_like(own), ~same], dim=-1)
            loss, stats = self.ranked_terms(dist, pos, neg)
            return loss.mean(), stats
        if self.reading == "r2":  # soft triplet-center over every other center
            dist = pairwise_distance(features, centers)  # [parts, batch, slots]
            to_own = (dist * own).sum(-1, keepdim=True)  # one own center per sample
            gap = to_own - dist + self.margin
            exponent = (self.temperature * gap).masked_fill(~other, float("-inf"))
            one = torch.zeros_like(exponent[..., :1])  # log(1 + Σ exp) = logsumexp([0, ...])
            loss = torch.logsumexp(torch.cat([one, exponent], dim=-1), dim=-1) / self.temperature
            with torch.no_grad():
                violated = (gap > 0) & other
                stats = {
                    "active": masked_mean(violated.to(dist.dtype), other),
                    "active_pos": violated.any(-1).to(dist.dtype).mean(),
                    "active_neg": masked_mean(violated.to(dist.dtype), other),
                    **query_stats(violated.any(-1)),
                    **distance_stats(dist, own, other),
                }
            return loss.mean(), stats
        # r3: the ranked list over the samples, and a pull toward the class center
        dist = pairwise_distance(features, features)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        loss, stats = self.ranked_terms(dist, same & ~eye, ~same)
        own_center = own.to(features.dtype) @ centers  # [parts, batch, dim]
        pull = 0.5 * (features - own_center).pow(2).sum(-1).mean()
        stats["pull"] = pull.detach()
        return loss.mean() + self.beta * pull, stats

    def _memory_centers(self, features: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
        """``own`` ``[batch, C]`` (sample i is of class k), ``valid`` ``[C]`` (k has a center),
        the centers ``[parts, C, dim]`` (batch centers, else the memory), the batch centers."""
        parts, num_classes, dim = self.memory.shape
        if features.shape[0] != parts or features.shape[2] != dim:
            raise ValueError(
                f"features {tuple(features.shape)} do not match the memory of centers: "
                f"[{parts}, batch, {dim}]"
            )
        check_class_indices(labels, num_classes)
        own = labels[:, None] == torch.arange(num_classes, device=labels.device)
        members = own.to(features.dtype)
        present = own.any(0)
        batch_centers = members.T @ features / members.sum(0).clamp_min(1)[:, None]
        if self.detach_center:
            batch_centers = batch_centers.detach()
        centers = torch.where(present[:, None], batch_centers, self.memory.to(features.dtype))
        return own, present | self.seen, centers, batch_centers

    @torch.no_grad()
    def _update_memory(self, batch_centers: Tensor, present: Tensor) -> None:
        """The exponential moving average of the module docstring, in place, without a sync."""
        c = batch_centers.to(self.memory.dtype)  # [parts, C, dim]
        mu = self.memory_momentum
        average = mu * self.memory + (1 - mu) * c
        if self.normalize:
            norm = average.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
            average = average * (c.norm(dim=-1, keepdim=True) / norm)
        update = present & torch.isfinite(c).all(-1).all(0)  # a non-finite center is not kept
        new = torch.where(self.seen[:, None], average, c)
        self.memory.copy_(torch.where(update[:, None], new, self.memory))
        self.seen.logical_or_(update)


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
