"""Literal, slow references that the fast implementations are tested against.

``reference_normalize``: the standard normalization steps (docs/prep.md), written as the steps
read, close to OpenGait's pretreatment, with its column-0 check fixed; the fast implementation in
gaitprep.normalize must match it pixel for pixel.

``ref_center_ranked_variant``, ``ref_center_ranked_stats``, ``ref_memory_update``: the
center-ranked loss with its options (anchor "both", a memory of centers, raw features), as plain
loops over parts, classes and samples written from the formulas of
gaittrain.losses.center_ranked's docstring; the softmax weights are Python floats (constants for
autograd).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch


def reference_normalize(img: np.ndarray, size: int = 64, min_sum: int = 10000) -> np.ndarray | None:
    if img.sum() <= min_sum:
        return None
    y_sum = img.sum(axis=1)
    top = (y_sum != 0).argmax()
    bottom = (y_sum != 0).cumsum().argmax()
    img = img[top : bottom + 1]
    ratio = img.shape[1] / img.shape[0]
    width = int(size * ratio)
    img = cv2.resize(img, (width, size), interpolation=cv2.INTER_CUBIC)
    total = img.sum()
    columns = img.sum(axis=0).cumsum()
    centre = -1
    for i in range(columns.size):
        if columns[i] > total / 2:
            centre = i
            break
    if centre < 0:
        return None
    half = size // 2
    padded = np.zeros((size, width + 2 * half), np.uint8)
    padded[:, half : half + width] = img
    return padded[:, centre : centre + size]


# ---------------------------------------------------------------------------------------------
# The center-ranked loss and its options


def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum().sqrt()


def weighted_mean(gaps: list[torch.Tensor], temperature: float) -> torch.Tensor | float:
    """Σ w·gap over the positive gaps, w = softmax(T·gap) as constants; 0 when none is positive."""
    active = [gap for gap in gaps if gap.item() > 0]
    if not active:
        return 0.0
    exps = [math.exp(temperature * gap.item()) for gap in active]
    return sum(e / sum(exps) * gap for e, gap in zip(exps, active, strict=True))


def _centers(
    features: torch.Tensor,
    labels: torch.Tensor,
    normalize: bool,
    detach_center: bool,
    memory: torch.Tensor | None,
    seen: list[bool] | None,
) -> tuple[list[list[torch.Tensor]], list[dict[int, torch.Tensor]]]:
    """Per part: the (normalized) samples, and the center of every class that has one."""
    parts, n, _ = features.shape
    y = labels.tolist()
    classes = set(y)
    if memory is not None:
        classes |= {k for k in range(len(seen)) if seen[k]}
    samples, centers = [], []
    for p in range(parts):
        x = [
            features[p, i] / features[p, i].norm() if normalize else features[p, i]
            for i in range(n)
        ]
        part_centers = {}
        for k in sorted(classes):
            members = [x[i] for i in range(n) if y[i] == k]
            if members:
                center = sum(members) / len(members)
                part_centers[k] = center.detach() if detach_center else center
            else:  # a class of the memory, absent from the batch: a constant
                part_centers[k] = memory[p, k].detach().clone()
        samples.append(x)
        centers.append(part_centers)
    return samples, centers


def ref_center_ranked_variant(
    features: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.2,
    margin: float = 0.4,
    t_n: float = 10.0,
    t_p: float = 0.0,
    lam: float = 1.0,
    anchor: str = "center",
    detach_center: bool = False,
    normalize: bool = True,
    memory: torch.Tensor | None = None,
    seen: list[bool] | None = None,
    terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The loss; ``memory`` ``[parts, C, dim]`` and ``seen`` (C bools) for centers="memory", as
    they are before the call. ``terms``: (L_center, L_sample) instead of the loss."""
    y = labels.tolist()
    samples, centers = _centers(features, labels, normalize, detach_center, memory, seen)
    center_total, sample_total = 0.0, 0.0
    for x, part_centers in zip(samples, centers, strict=True):
        losses = []  # anchor "center": every class with a center ranks the samples
        for k, c in part_centers.items():
            pos = [dist(x[i], c) - (alpha - margin) for i in range(len(x)) if y[i] == k]
            neg = [alpha - dist(x[j], c) for j in range(len(x)) if y[j] != k]
            losses.append(weighted_mean(pos, t_p) + lam * weighted_mean(neg, t_n))
        center_total = center_total + sum(losses) / len(losses)
        losses = []  # anchor "sample": every sample ranks the centers
        for i in range(len(x)):
            pos = [dist(x[i], part_centers[y[i]]) - (alpha - margin)]
            neg = [alpha - dist(x[i], c) for k, c in part_centers.items() if k != y[i]]
            losses.append(weighted_mean(pos, t_p) + lam * weighted_mean(neg, t_n))
        sample_total = sample_total + sum(losses) / len(losses)
    dtype = features.dtype
    center = torch.as_tensor(center_total / len(samples), dtype=dtype)
    sample = torch.as_tensor(sample_total / len(samples), dtype=dtype)
    if terms:
        return center, sample
    return {"center": center, "sample": sample, "both": (center + sample) / 2}[anchor]


def ref_center_ranked_stats(
    features: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.2,
    margin: float = 0.4,
    normalize: bool = True,
    memory: torch.Tensor | None = None,
    seen: list[bool] | None = None,
    anchor: str = "center",
) -> dict[str, float]:
    """The statistics of the (sample, center) pairs: active fractions and mean distances; the
    queries (the classes, or with anchor "sample" the samples) and the fraction of them with a
    violated boundary."""
    y = labels.tolist()
    features = features.detach()
    samples, centers = _centers(features, labels, normalize, True, memory, seen)
    pos, neg = [], []
    violated = {}  # (part, query): a boundary violated
    for p, (x, part_centers) in enumerate(zip(samples, centers, strict=True)):
        for i in range(len(x)):
            for k, c in part_centers.items():
                d = dist(x[i], c).item()
                (pos if k == y[i] else neg).append(d)
                bad = d > alpha - margin if k == y[i] else d < alpha
                query = (p, i) if anchor == "sample" else (p, k)
                violated[query] = violated.get(query, False) or bad

    def mean(values: list) -> float:
        return sum(float(v) for v in values) / len(values) if values else math.nan

    return {
        "active": mean([d > alpha - margin for d in pos] + [d < alpha for d in neg]),
        "active_pos": mean([d > alpha - margin for d in pos]),
        "active_neg": mean([d < alpha for d in neg]),
        "queries": len(violated) / len(samples),
        "active_queries": mean(list(violated.values())),
        "pos_dist": mean(pos),
        "neg_dist": mean(neg),
    }


def ref_memory_update(
    memory: torch.Tensor,
    seen: list[bool],
    features: torch.Tensor,
    labels: torch.Tensor,
    momentum: float,
    normalize: bool = True,
) -> tuple[torch.Tensor, list[bool]]:
    """The memory and the seen flags after a training call on (features, labels)."""
    memory, seen = memory.detach().clone(), list(seen)
    y = labels.tolist()
    samples, _ = _centers(features.detach(), labels, normalize, True, None, None)
    for k in sorted(set(y)):
        for p, x in enumerate(samples):
            members = [x[i] for i in range(len(x)) if y[i] == k]
            c = sum(members) / len(members)
            if seen[k]:
                m = momentum * memory[p, k] + (1 - momentum) * c
                memory[p, k] = m * (c.norm() / m.norm()) if normalize else m
            else:
                memory[p, k] = c
        seen[k] = True
    return memory, seen


def ref_center_ranked_reading(
    features: torch.Tensor,
    labels: torch.Tensor,
    reading: str,
    alpha: float = 1.2,
    margin: float = 0.4,
    t_n: float = 10.0,
    t_p: float = 0.0,
    lam: float = 1.0,
    temperature: float = 10.0,
    beta: float = 0.1,
    detach_center: bool = False,
    normalize: bool = True,
    memory: torch.Tensor | None = None,
    seen: list[bool] | None = None,
) -> torch.Tensor:
    """Readings r1, r2 and r3 of the center-ranked loss, a loop per part and per sample, written
    from the formulas of gaittrain/losses/center_ranked.py's docstring."""
    y = labels.tolist()
    samples, centers = _centers(features, labels, normalize, detach_center, memory, seen)
    total = 0.0
    for x, part_centers in zip(samples, centers, strict=True):
        losses = []
        for i in range(len(x)):
            own = part_centers[y[i]]
            if reading == "r1":
                pos = [dist(x[i], own) - (alpha - margin)]
                neg = [alpha - dist(x[i], x[j]) for j in range(len(x)) if y[j] != y[i]]
                losses.append(weighted_mean(pos, t_p) + lam * weighted_mean(neg, t_n))
            elif reading == "r2":
                # every distance enters the loss here, a sample's to its own center too, which is
                # 0 for a class of one sample: the loss's squared distances are clamped at 1e-12
                # (the square root's slope at 0), so 1e-6 then, here as there
                def d(a, b):
                    return ((a - b) ** 2).sum().clamp_min(1e-12).sqrt()

                terms = [
                    temperature * (d(x[i], own) - d(x[i], c) + margin)
                    for k, c in part_centers.items()
                    if k != y[i]
                ]
                inside = 1 + sum(torch.exp(t) for t in terms)
                losses.append(torch.log(torch.as_tensor(inside)) / temperature)
            else:  # r3
                pos = [
                    dist(x[i], x[j]) - (alpha - margin)
                    for j in range(len(x))
                    if y[j] == y[i] and j != i
                ]
                neg = [alpha - dist(x[i], x[j]) for j in range(len(x)) if y[j] != y[i]]
                ranked = weighted_mean(pos, t_p) + lam * weighted_mean(neg, t_n)
                losses.append(ranked + beta * 0.5 * ((x[i] - own) ** 2).sum())
        total = total + sum(losses) / len(losses)
    return torch.as_tensor(total / len(samples), dtype=features.dtype)
