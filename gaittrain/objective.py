"""The training objective named by a config: one metric loss, plus optional part cross-entropy
(on classifiers of its own, or on the logits of a model with a BNNeck: gaitbase)."""

from __future__ import annotations

import torch
from torch import nn

from gaittrain.config import Config
from gaittrain.losses import METRIC_LOSSES, LogitCrossEntropyLoss, PartCrossEntropyLoss
from gaittrain.losses._common import PartLoss, to_floats
from gaittrain.losses.geometry import batch_geometry
from gaittrain.models import BNNECK_MODELS


def metric_loss(cfg: Config, num_classes: int | None = None, parts: int | None = None) -> PartLoss:
    """The metric loss of ``cfg.loss``, built from that loss's own keys.

    ``num_classes`` and ``parts`` are needed (and used) only by the center-ranked loss with
    ``centers: memory``, whose memory of class centers ``[parts, num_classes, model.dim]`` is
    allocated here, so that a checkpoint's state loads into it before its first call.
    """
    loss = METRIC_LOSSES[cfg.loss.name]
    return loss.from_config(cfg.loss, num_classes=num_classes, parts=parts, dim=cfg.model.dim)


class Objective(nn.Module):
    """``metric(features, labels) + weight * cross_entropy(features, labels)``.

    For a model with a BNNeck (``model.name`` in :data:`~gaittrain.models.BNNECK_MODELS`:
    gaitbase, as OpenGait trains its Baseline) the cross-entropy is that of the model's own
    logits, ``weight * cross_entropy(scale * logits, labels)``: call ``objective(features,
    labels, logits)``. Otherwise it is that of per-part linear classifiers held here.

    A call makes no host synchronization. ``stats`` holds the statistics of the last call: each
    part's statistics and its loss value ("<name>/loss", "cross_entropy/loss"), prefixed by its
    name, and the batch's geometry, the same for every loss ("geometry/own_center", ...:
    :func:`~gaittrain.losses.geometry.batch_geometry`), as Python floats converted when read (one
    device synchronization, at most once per call).

    Its ``state_dict`` holds the cross-entropy's classifiers and, with ``loss.centers: memory``,
    the center-ranked loss's memory of class centers (``metric.memory``, ``metric.seen``).
    """

    def __init__(self, cfg: Config, num_classes: int, parts: int):
        super().__init__()
        self.metric = metric_loss(cfg, num_classes=num_classes, parts=parts)
        self.name = cfg.loss.name
        self.ce_weight = cfg.cross_entropy.weight
        self.uses_logits = cfg.model.name in BNNECK_MODELS
        ce = cfg.cross_entropy
        self.ce: nn.Module | None = None
        if self.ce_weight > 0 and self.uses_logits:
            self.ce = LogitCrossEntropyLoss(ce.label_smoothing, ce.scale)
        elif self.ce_weight > 0:
            self.ce = PartCrossEntropyLoss(
                num_classes, cfg.model.dim, parts, ce.label_smoothing, ce.scale
            )
        self._stat_tensors: dict[str, torch.Tensor] = {}
        self._stat_floats: dict[str, float] | None = {}

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        features = features.float()
        metric = self.metric(features, labels)
        total = metric
        stats = {f"{self.name}/{k}": v for k, v in self.metric.stat_tensors.items()}
        stats[f"{self.name}/loss"] = metric.detach()
        stats.update({f"geometry/{k}": v for k, v in batch_geometry(features, labels).items()})
        if self.ce is not None:
            if self.uses_logits and logits is None:
                raise ValueError(
                    "this objective's cross-entropy is on the model's BNNeck logits: call "
                    "objective(features, labels, logits)"
                )
            ce = self.ce(logits.float() if self.uses_logits else features, labels)
            total = total + self.ce_weight * ce
            stats.update({f"cross_entropy/{k}": v for k, v in self.ce.stat_tensors.items()})
            stats["cross_entropy/loss"] = ce.detach()
        self._stat_tensors = stats
        self._stat_floats = None
        return total

    @property
    def stats(self) -> dict[str, float]:
        """The statistics of the last call as Python floats ({} before the first call)."""
        if self._stat_floats is None:
            self._stat_floats = to_floats(self._stat_tensors)
        return dict(self._stat_floats)
