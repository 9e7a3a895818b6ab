"""What every part-wise loss shares: the input contract, the precision rule, distances, statistics.

A part-wise loss takes features ``[parts, batch, dim]`` (one feature per horizontal strip of a gait
model, per sample) and labels ``[batch]`` and returns a scalar, without a host synchronization (no
value read back, no shape that depends on the data). The losses here compare distances:
in float16/bfloat16 the differences they threshold are lost to rounding, so the computation always
runs in float32 (or float64 when given float64), outside any autocast region.
"""

from __future__ import annotations

from dataclasses import fields
from typing import ClassVar

import torch
from torch import Tensor, nn

_HALF = (torch.float16, torch.bfloat16)

# Squared distances are clamped here before the square root: sqrt has an infinite slope at 0,
# which identical points (a sample and its own center when its class has one sample) would hit.
_SQUARED_EPS = 1e-12


def config_arguments(section) -> dict:
    """A loss's config section as its constructor's keyword arguments (``name`` left out)."""
    return {f.name: getattr(section, f.name) for f in fields(section) if f.init}


class PartLoss(nn.Module):
    """Base of the part-wise losses: ``loss(features, labels) -> scalar``, statistics in ``stats``.

    Subclasses implement :meth:`compute`. ``forward`` checks the inputs, casts half-precision
    features to float32, disables autocast around :meth:`compute`, and keeps the statistics of the
    call as detached scalar tensors (:attr:`stat_tensors`): computing the loss and its backward
    never waits for the device. :attr:`stats` converts them to Python floats when it is read, with
    one device synchronization, at most once per call.
    """

    #: The config section of a metric loss (``loss: {name: ..., ...}``), whose fields and
    #: defaults are the constructor's keyword arguments.
    Config: ClassVar[type]

    @classmethod
    def from_config(cls, section, **context) -> PartLoss:
        """The loss of a config section: its keys are the constructor's arguments. ``context``
        (the training classes, parts and dimension) is for a loss that needs it."""
        return cls(**config_arguments(section))

    def __init__(self) -> None:
        super().__init__()
        self._stat_tensors: dict[str, Tensor] = {}
        self._stat_floats: dict[str, float] | None = {}

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        check_inputs(features, labels)
        with torch.autocast(features.device.type, enabled=False):
            if features.dtype in _HALF:
                features = features.float()
            loss, stats = self.compute(features, labels)
        self._stat_tensors = {key: value.detach() for key, value in stats.items()}
        self._stat_floats = None
        return loss

    @property
    def stat_tensors(self) -> dict[str, Tensor]:
        """The statistics of the last call as detached scalar tensors, on the features' device."""
        return dict(self._stat_tensors)

    @property
    def stats(self) -> dict[str, float]:
        """The statistics of the last call as Python floats ({} before the first call).

        Converted on the first read after a call (one device synchronization), then cached.
        """
        if self._stat_floats is None:
            self._stat_floats = to_floats(self._stat_tensors)
        return dict(self._stat_floats)

    def compute(self, features: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss (scalar) and its statistics (scalar tensors, computed without gradient)."""
        raise NotImplementedError


def check_inputs(features: Tensor, labels: Tensor) -> None:
    """Raise ValueError unless features is floating [parts, batch, dim] and labels int64 [batch]."""
    if features.dim() != 3 or not features.is_floating_point():
        raise ValueError(
            f"features must be a floating tensor [parts, batch, dim], got {features.dtype} "
            f"{tuple(features.shape)}"
        )
    if labels.dim() != 1 or labels.dtype != torch.int64:
        raise ValueError(
            f"labels must be an int64 tensor [batch], got {labels.dtype} {tuple(labels.shape)}"
        )
    if labels.shape[0] != features.shape[1] or labels.shape[0] == 0:
        raise ValueError(
            f"labels {tuple(labels.shape)} must match the non-empty batch of features "
            f"{tuple(features.shape)}"
        )
    if labels.device != features.device:
        raise ValueError(f"labels on {labels.device}, features on {features.device}")


def pairwise_distance(x: Tensor, y: Tensor) -> Tensor:
    """Distances ``[..., n, m]`` between the rows of x ``[..., n, d]`` and y ``[..., m, d]``.

    Computed from squared norms and one matrix product (no ``[n, m, d]`` difference tensor); the
    squared distance is clamped to 1e-12 so the gradient stays finite at coincident points (there
    it is 0).
    """
    squared = (
        x.pow(2).sum(-1, keepdim=True)
        + y.pow(2).sum(-1).unsqueeze(-2)
        - 2 * x @ y.transpose(-1, -2)
    )
    return squared.clamp_min(_SQUARED_EPS).sqrt()


def pair_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean ``[batch, batch]`` masks of the positive pairs (same label, i ≠ j) and negatives."""
    same = labels[:, None] == labels[None, :]
    itself = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~itself, ~same


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of values where the (broadcast) mask is true; nan when the mask is empty."""
    mask = mask.expand_as(values)
    return values.masked_fill(~mask, 0).sum() / mask.sum()


@torch.no_grad()
def distance_stats(dist: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
    """Mean distance of the positive pairs ("pos_dist") and of the negative pairs ("neg_dist")."""
    return {"pos_dist": masked_mean(dist, pos), "neg_dist": masked_mean(dist, neg)}


@torch.no_grad()
def query_stats(active: Tensor, queries: Tensor | None = None) -> dict[str, Tensor]:
    """ "queries" (per part) and "active_queries" (the fraction of them, over all parts, whose loss
    is not zero) from ``active`` ``[parts, rows]`` and the boolean ``queries`` ``[rows]`` (the rows
    that are queries; default: all)."""
    if queries is None:
        queries = torch.ones_like(active[0])
    return {
        "queries": queries.sum().to(torch.float32),
        "active_queries": masked_mean(active.to(torch.float32), queries),
    }


@torch.no_grad()
def to_floats(stats: dict[str, Tensor]) -> dict[str, float]:
    """Scalar tensors to Python floats, with a single device-to-host copy (none when empty)."""
    if not stats:
        return {}
    values = torch.stack([value.to(torch.float64) for value in stats.values()]).tolist()
    return dict(zip(stats, values, strict=True))
