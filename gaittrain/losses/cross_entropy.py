"""Cross-entropy per part: a separate linear classifier on each part's feature.

For part p with classifier W_p ``[dim, num_classes]`` the logits of sample i are ``z = f_{p,i} W_p``
and, with label smoothing ε over C classes (the target is (1 − ε) on y_i plus ε / C everywhere)::

    ℓ_p(i) = −(1 − ε) log softmax(z)_{y_i} − (ε / C) Σ_c log softmax(z)_c

The loss is the mean over the samples, then over the parts. It carries parameters (the classifiers),
so it is trained with the model; the trainer adds it, weighted, to a metric loss.

:class:`LogitCrossEntropyLoss` is the same loss on logits a model computes itself (GaitBase's
BNNeck: cosines between normalized features and class weights, multiplied by ``scale``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gaittrain.losses._common import PartLoss


class PartCrossEntropyLoss(PartLoss):
    """Per-part linear classifiers trained with (label-smoothed) cross-entropy.

    ``loss(features [parts, batch, dim], labels [batch]) -> scalar``. The labels are class indices
    in ``[0, num_classes)``: the trainer maps subject ids to indices. ``stats`` after a call:
    "accuracy" (top-1 accuracy of the classifiers, mean over the parts).

    Args:
        num_classes: number of training identities.
        dim: feature size of a part.
        parts: number of parts.
        label_smoothing: ε in [0, 1], as in ``torch.nn.functional.cross_entropy``.
        scale: the logits are multiplied by it (1: as they are).
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        parts: int,
        label_smoothing: float = 0.0,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in {"num_classes": num_classes, "dim": dim, "parts": parts}.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 <= label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.scale = _check_scale(scale)
        # nn.Linear's default scale: logits start small whatever the feature size.
        bound = 1 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(parts, dim, num_classes).uniform_(-bound, bound))

    def extra_repr(self) -> str:
        parts, dim, num_classes = self.weight.shape
        return (
            f"num_classes={num_classes}, dim={dim}, parts={parts}, "
            f"label_smoothing={self.label_smoothing}"
        )

    def compute(self, features: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        parts, dim, _ = self.weight.shape
        if features.shape[0] != parts or features.shape[2] != dim:
            raise ValueError(
                f"features {tuple(features.shape)} do not match the classifiers: "
                f"[{parts}, batch, {dim}]"
            )
        check_class_indices(labels, self.num_classes)
        logits = features @ self.weight.to(features.dtype)  # [parts, batch, classes]
        return logit_cross_entropy(logits, labels, self.label_smoothing, self.scale)


class LogitCrossEntropyLoss(PartLoss):
    """Cross-entropy on per-part logits a model computed: ``loss(logits [parts, batch, classes],
    labels [batch]) -> scalar``, the mean over samples and parts of the (label-smoothed)
    cross-entropy of ``scale * logits``. No parameters. ``stats``: "accuracy" (top-1, mean over
    the parts).

    Args:
        label_smoothing: ε in [0, 1].
        scale: the logits are multiplied by it (OpenGait's GaitBase: 16 on cosine logits).
    """

    def __init__(self, label_smoothing: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        if not 0 <= label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.scale = _check_scale(scale)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, scale={self.scale}"

    def compute(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        check_class_indices(labels, logits.shape[-1])
        return logit_cross_entropy(logits, labels, self.label_smoothing, self.scale)


def _check_scale(scale: float) -> float:
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    return float(scale)


def logit_cross_entropy(
    logits: Tensor, labels: Tensor, label_smoothing: float, scale: float = 1.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """The mean (label-smoothed) cross-entropy of ``scale * logits`` [parts, batch, classes]
    over samples and parts, and its "accuracy" statistic."""
    parts = logits.shape[0]
    scaled = logits if scale == 1 else logits * scale
    loss = F.cross_entropy(
        scaled.flatten(0, 1), labels.repeat(parts), label_smoothing=label_smoothing
    )
    with torch.no_grad():
        stats = {"accuracy": (logits.argmax(-1) == labels).to(logits.dtype).mean()}
    return loss, stats


def check_class_indices(labels: Tensor, num_classes: int) -> None:
    """Raise ValueError unless every label is in ``[0, num_classes)``; on CUDA, without a host sync.

    The test runs where the labels are, as ``torch._assert_async``. On the CPU it fails at once
    and raises ValueError. On CUDA nothing waits for it: a bad label fails a device-side assertion,
    reported by the next synchronizing call, and the CUDA context is lost, as it is when the
    cross-entropy kernel itself meets an index out of range (without this check a label of -100,
    the default ``ignore_index``, would be skipped silently). Other devices read the result back.
    """
    message = f"labels must be class indices in [0, {num_classes})"
    inside = ((labels >= 0) & (labels < num_classes)).all()
    if labels.device.type == "cuda":
        torch._assert_async(inside, message)
        return
    if labels.device.type == "cpu":
        try:
            torch._assert_async(inside, message)  # assert inside.is_nonzero(), in C++
        except RuntimeError:
            raise ValueError(message) from None
        return
    if not inside:
        raise ValueError(message)
