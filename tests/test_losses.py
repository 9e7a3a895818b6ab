"""The part-wise losses against literal, loop-based references written from docs/losses.md.

The references loop over parts, classes and samples and sum explicitly; their softmax weights are
Python floats (constants for autograd), as the losses define them. The fast implementations must
match them in value and in gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.func import functional_call

from gaittrain.losses import CenterRankedLoss, PartCrossEntropyLoss, RankedListLoss, TripletLoss
from tests.reference import dist, ref_center_ranked_variant, weighted_mean
from tests.test_center_ranked_variants import R0

IDS = (7, 1003, 42, 5, 64, 2)  # subject ids as a dataset has them: arbitrary, not 0..P-1


# ---------------------------------------------------------------------------------------------
# References


#: The center-ranked loop reference (every option of the loss) lives with the other references.
ref_center_ranked = ref_center_ranked_variant


class CenterRankedR0(CenterRankedLoss):
    """Reading r0 with the settings the loop references default to: these tests are of r0's
    formulas (the default reading and the readings' defaults: test_center_ranked_readings.py)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**{**R0, **kwargs})


def ref_ranked_list(
    features: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.2,
    margin: float = 0.4,
    t_n: float = 10.0,
    t_p: float = 0.0,
    lam: float = 1.0,
) -> torch.Tensor:
    parts, n, _ = features.shape
    y = labels.tolist()
    total = 0.0
    for p in range(parts):
        x = [features[p, i] / features[p, i].norm() for i in range(n)]
        losses = []
        for i in range(n):
            pos = [dist(x[i], x[j]) - (alpha - margin) for j in range(n) if j != i and y[j] == y[i]]
            neg = [alpha - dist(x[i], x[j]) for j in range(n) if y[j] != y[i]]
            losses.append(weighted_mean(pos, t_p) + lam * weighted_mean(neg, t_n))
        total = total + sum(losses) / n
    return torch.as_tensor(total / parts, dtype=features.dtype)


def ref_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    parts, n, _ = features.shape
    y = labels.tolist()
    total = 0.0
    for p in range(parts):
        d = [[dist(features[p, i], features[p, j]) for j in range(n)] for i in range(n)]
        terms = []
        for a in range(n):
            for q in range(n):
                if q == a or y[q] != y[a]:
                    continue
                for m in range(n):
                    if y[m] == y[a]:
                        continue
                    term = margin + d[a][q] - d[a][m]
                    if term.item() > 0:
                        terms.append(term)
        total = total + (sum(terms) / len(terms) if terms else 0.0)
    return torch.as_tensor(total / parts, dtype=features.dtype)


def ref_cross_entropy(
    features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    parts, n, _ = features.shape
    classes = weight.shape[2]
    eps = label_smoothing
    total = 0.0
    for p in range(parts):
        part = 0.0
        for i in range(n):
            z = features[p, i] @ weight[p]
            log_prob = z - torch.log(torch.exp(z).sum())
            part = part - (1 - eps) * log_prob[labels[i]] - eps / classes * log_prob.sum()
        total = total + part / n
    return total / parts


# ---------------------------------------------------------------------------------------------
# Inputs


def make_batch(
    seed: int,
    parts: int = 3,
    classes: int = 4,
    per_class: int = 3,
    dim: int = 8,
    spread: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features around one random mean per class and part, in shuffled order, ids from IDS."""
    g = torch.Generator().manual_seed(seed)
    n = classes * per_class
    order = torch.randperm(n, generator=g)
    labels = torch.tensor(IDS[:classes]).repeat_interleave(per_class)[order]
    means = torch.randn(parts, classes, dim, generator=g, dtype=torch.float64)
    noise = torch.randn(parts, n, dim, generator=g, dtype=torch.float64)
    features = means[:, order // per_class] + spread * noise
    return features.to(dtype), labels


def separated_batch(per_class: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight clusters along orthogonal axes: every boundary of every loss here is satisfied."""
    g = torch.Generator().manual_seed(0)
    classes, dim = 4, 8
    labels = torch.tensor(IDS[:classes]).repeat_interleave(per_class)
    means = 5 * torch.eye(dim, dtype=torch.float64)[:classes].repeat_interleave(per_class, 0)
    features = means + 0.02 * torch.randn(3, len(labels), dim, generator=g, dtype=torch.float64)
    return features, labels


def normalized_distances(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """All sample-sample and sample-center distances of the normalized features, flattened."""
    x = features / features.norm(dim=-1, keepdim=True)
    classes = labels.unique()
    centers = torch.stack([x[:, labels == k].mean(1) for k in classes], 1)
    return torch.cat([torch.cdist(x, x).flatten(), torch.cdist(x, centers).flatten()])


def triplet_terms(features: torch.Tensor, margin: float) -> torch.Tensor:
    """margin + d(a, p) − d(a, n) for every (a, p, n), valid or not."""
    d = torch.cdist(features, features)
    return (margin + d[:, :, :, None] - d[:, :, None, :]).flatten()


# ---------------------------------------------------------------------------------------------
# Cases: (loss class, reference, hyper-parameters)

METRIC_CASES = [
    pytest.param(CenterRankedR0, ref_center_ranked, {}, id="center_ranked"),
    pytest.param(
        CenterRankedR0,
        ref_center_ranked,
        {"alpha": 1.1, "margin": 0.5, "t_p": 4.0, "t_n": 3.0, "lam": 0.5, "detach_center": True},
        id="center_ranked-tuned-detached",
    ),
    pytest.param(
        CenterRankedR0, ref_center_ranked, {"anchor": "sample"}, id="center_ranked-sample"
    ),
    pytest.param(
        CenterRankedR0,
        ref_center_ranked,
        {
            "anchor": "sample",
            "alpha": 1.1,
            "margin": 0.6,
            "t_p": 2.0,
            "t_n": 0.0,
            "lam": 2.0,
            "detach_center": True,
        },
        id="center_ranked-sample-tuned-detached",
    ),
    pytest.param(RankedListLoss, ref_ranked_list, {}, id="ranked_list"),
    pytest.param(
        RankedListLoss,
        ref_ranked_list,
        {"alpha": 1.3, "margin": 0.5, "t_p": 4.0, "t_n": 0.0, "lam": 0.5},
        id="ranked_list-tuned",
    ),
    pytest.param(TripletLoss, ref_triplet, {}, id="triplet"),
    pytest.param(TripletLoss, ref_triplet, {"margin": 3.0}, id="triplet-margin3"),
]


def loss_and_grad(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    features: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    features = features.detach().clone().requires_grad_(True)
    loss = fn(features, labels)
    (grad,) = torch.autograd.grad(loss, features)
    return loss.detach(), grad


# ---------------------------------------------------------------------------------------------
# Values and gradients against the references


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("cls", "reference", "kwargs"), METRIC_CASES)
def test_metric_loss_matches_reference(seed: int, cls: type, reference: Callable, kwargs: dict):
    features, labels = make_batch(seed)
    loss = cls(**kwargs)
    value, grad = loss_and_grad(loss, features, labels)
    # terms on both sides of the boundaries (a margin of 3 makes every triplet active)
    everything = 1 if kwargs.get("margin") == 3.0 else None
    for key in ("active", "active_pos", "active_neg"):
        assert 0 < loss.stats[key] < 1 or loss.stats[key] == everything, key
    ref_value, ref_grad = loss_and_grad(lambda f, y: reference(f, y, **kwargs), features, labels)
    torch.testing.assert_close(value, ref_value)
    # The gradients agree only if the fast loss treats its weights (and detached centers) as
    # constants, as the reference does.
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_matches_reference(label_smoothing: float):
    torch.manual_seed(0)
    features, labels = make_batch(0, spread=0.3)
    indices = torch.unique(labels, return_inverse=True)[1]
    loss = PartCrossEntropyLoss(4, 8, 3, label_smoothing=label_smoothing).double()
    value, grad = loss_and_grad(loss, features, indices)
    ref_value, ref_grad = loss_and_grad(
        lambda f, y: ref_cross_entropy(f, y, loss.weight, label_smoothing), features, indices
    )
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(grad, ref_grad)
    logits = features @ loss.weight.detach()
    accuracy = (logits.argmax(-1) == indices).double().mean().item()
    assert loss.stats == pytest.approx({"accuracy": accuracy})


# Finite differences see the forward pass, which moves the softmax weights and the centers with
# the input; the backward holds them constant by definition. So gradcheck applies where both agree:
# uniform weights (T = 0) and centers that are not detached, on inputs away from the boundaries.
GRADCHECK_CASES = [
    pytest.param(CenterRankedR0(t_n=0.0), 1, id="center_ranked"),
    pytest.param(CenterRankedR0(t_n=0.0, anchor="sample"), 1, id="center_ranked-sample"),
    pytest.param(RankedListLoss(t_n=0.0), 1, id="ranked_list"),
    pytest.param(TripletLoss(), 0, id="triplet"),
]


@pytest.mark.parametrize(("loss", "seed"), GRADCHECK_CASES)
def test_gradcheck(loss: torch.nn.Module, seed: int):
    features, labels = make_batch(seed, parts=2, classes=3, per_class=2, dim=4)
    if isinstance(loss, TripletLoss):
        gaps = triplet_terms(features, loss.margin).abs()
    else:
        d = normalized_distances(features, labels)
        gaps = torch.cat([(d - loss.alpha).abs(), (d - (loss.alpha - loss.margin)).abs()])
    assert gaps.min() > 1e-3  # every term stays on its side of its boundary under perturbation
    features.requires_grad_(True)
    assert loss(features, labels) > 0
    assert torch.autograd.gradcheck(lambda f: loss(f, labels), (features,))


def test_gradcheck_cross_entropy():
    torch.manual_seed(0)
    features, labels = make_batch(0, parts=2, classes=3, per_class=2, dim=4)
    indices = torch.unique(labels, return_inverse=True)[1]
    loss = PartCrossEntropyLoss(3, 4, 2, label_smoothing=0.1).double()
    weight = loss.weight.detach().clone().requires_grad_(True)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda f, w: functional_call(loss, {"weight": w}, (f, indices)), (features, weight)
    )


# ---------------------------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize(("cls", "reference", "kwargs"), METRIC_CASES)
@pytest.mark.parametrize(("classes", "per_class"), [(6, 1), (1, 5)], ids=["K=1", "P=1"])
def test_one_sample_per_class_and_one_class(
    classes: int, per_class: int, cls: type, reference: Callable, kwargs: dict
):
    features, labels = make_batch(3, classes=classes, per_class=per_class)
    loss = cls(**kwargs)
    value, grad = loss_and_grad(loss, features, labels)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(value, reference(features, labels, **kwargs).detach())
    if cls is TripletLoss:  # no positive (K=1) or no negative (P=1): no triplet
        assert value == 0 and not grad.any()
    if classes == 1:
        assert math.isnan(loss.stats["neg_dist"])  # a mean over no pair
    elif cls is CenterRankedR0:
        assert loss.stats["pos_dist"] < 1e-5  # each sample is its own center


@pytest.mark.parametrize(("cls", "reference", "kwargs"), METRIC_CASES)
def test_satisfied_batch_gives_exact_zero(cls: type, reference: Callable, kwargs: dict):
    features, labels = separated_batch()
    loss = cls(**kwargs)
    value, grad = loss_and_grad(loss, features, labels)
    assert value.item() == 0.0
    assert not grad.any()
    assert loss.stats["active"] == 0.0


@pytest.mark.parametrize(("cls", "reference", "kwargs"), METRIC_CASES)
def test_batch_order_and_label_values_do_not_matter(cls: type, reference: Callable, kwargs: dict):
    features, labels = make_batch(4)
    loss = cls(**kwargs)
    value = loss(features, labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss(features[:, order], labels[order]), value)
    indices = torch.unique(labels, return_inverse=True)[1]
    torch.testing.assert_close(loss(features, indices), value)
    torch.testing.assert_close(loss(features, 1000 * labels - 3), value)


# ---------------------------------------------------------------------------------------------
# Statistics, precision, devices


@pytest.mark.parametrize(("cls", "reference", "kwargs"), METRIC_CASES)
def test_stats_are_finite_floats_and_keep_autograd(cls: type, reference: Callable, kwargs: dict):
    features, labels = make_batch(5, dtype=torch.float32)
    features.requires_grad_(True)
    loss = cls(**kwargs)
    assert loss.stats == {}
    value = loss(features, labels)
    assert value.shape == () and value.dtype == torch.float32 and value.requires_grad
    assert {"active", "pos_dist", "neg_dist"} <= loss.stats.keys()
    assert all(type(v) is float and math.isfinite(v) for v in loss.stats.values())
    assert 0 <= loss.stats["active"] <= 1
    value.backward()
    assert torch.isfinite(features.grad).all()
    torch.testing.assert_close(
        value.double(), cls(**kwargs)(features.double(), labels), rtol=1e-5, atol=1e-6
    )


def mean(values: list) -> float:
    return sum(float(v) for v in values) / len(values)


def pair_stats(loss) -> dict:
    keys = ("active", "active_pos", "active_neg", "pos_dist", "neg_dist")
    return {k: loss.stats[k] for k in keys if k in loss.stats}


def test_stats_match_their_definitions():
    """The pair statistics (the query statistics: tests/test_loss_syncs.py)."""
    features, labels = make_batch(0)
    parts, n, _ = features.shape
    y = labels.tolist()
    x = features / features.norm(dim=-1, keepdim=True)
    centers = {k: x[:, labels == k].mean(1) for k in set(y)}
    cells = [(p, i) for p in range(parts) for i in range(n)]

    # Center-ranked, both anchors: the pairs are (sample, center).
    pos = [dist(x[p, i], centers[y[i]][p]) for p, i in cells]
    neg = [dist(x[p, i], centers[k][p]) for p, i in cells for k in centers if k != y[i]]
    expected = {
        "active": mean([d > 0.8 for d in pos] + [d < 1.2 for d in neg]),
        "active_pos": mean([d > 0.8 for d in pos]),
        "active_neg": mean([d < 1.2 for d in neg]),
        "pos_dist": mean(pos),
        "neg_dist": mean(neg),
    }
    for anchor in ("center", "sample"):
        loss = CenterRankedR0(anchor=anchor)
        loss(features, labels)
        assert pair_stats(loss) == pytest.approx(expected)

    # Ranked list: the pairs are (sample, other sample).
    pos = [dist(x[p, i], x[p, j]) for p, i in cells for j in range(n) if j != i and y[j] == y[i]]
    neg = [dist(x[p, i], x[p, j]) for p, i in cells for j in range(n) if y[j] != y[i]]
    loss = RankedListLoss(alpha=1.3, margin=0.5)
    loss(features, labels)
    assert pair_stats(loss) == pytest.approx(
        {
            "active": mean([d > 0.8 for d in pos] + [d < 1.3 for d in neg]),
            "active_pos": mean([d > 0.8 for d in pos]),
            "active_neg": mean([d < 1.3 for d in neg]),
            "pos_dist": mean(pos),
            "neg_dist": mean(neg),
        }
    )

    # Triplet: unnormalized distances; "active" counts the non-zero triplets.
    d = torch.cdist(features, features)
    same = [[y[i] == y[j] for j in range(n)] for i in range(n)]
    triplets = [
        3.0 + d[p, a, q] - d[p, a, m]
        for p, a in cells
        for q in range(n)
        if q != a and same[a][q]
        for m in range(n)
        if not same[a][m]
    ]
    loss = TripletLoss(margin=3.0)
    loss(features, labels)
    assert {k: loss.stats[k] for k in ("active", "pos_dist", "neg_dist")} == pytest.approx(
        {
            "active": mean([t > 0 for t in triplets]),
            "pos_dist": mean(
                [d[p, i, j] for p, i in cells for j in range(n) if j != i and same[i][j]]
            ),
            "neg_dist": mean([d[p, i, j] for p, i in cells for j in range(n) if not same[i][j]]),
        }
    )


@pytest.mark.parametrize(
    "loss",
    [CenterRankedR0(), RankedListLoss(), TripletLoss(), PartCrossEntropyLoss(4, 8, 3)],
    ids=["center_ranked", "ranked_list", "triplet", "cross_entropy"],
)
def test_half_precision_and_autocast_compute_in_float32(loss: torch.nn.Module):
    features, labels = make_batch(6, dtype=torch.float32)
    labels = torch.unique(labels, return_inverse=True)[1]
    projection = torch.eye(8) + 0.1 * torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = features @ projection
        assert low.dtype == torch.bfloat16
        value = loss(low, labels)
    assert value.dtype == torch.float32
    assert torch.equal(value, loss(low.float(), labels))  # autocast is off inside the loss
    assert loss(low.half(), labels).dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.parametrize(("cls", "reference", "kwargs"), METRIC_CASES)
def test_cuda_matches_cpu(cls: type, reference: Callable, kwargs: dict):
    features, labels = make_batch(7, dtype=torch.float32)
    value, grad = loss_and_grad(cls(**kwargs), features, labels)
    cuda_value, cuda_grad = loss_and_grad(cls(**kwargs), features.cuda(), labels.cuda())
    torch.testing.assert_close(cuda_value.cpu(), value)
    torch.testing.assert_close(cuda_grad.cpu(), grad)


# ---------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: CenterRankedLoss(anchor="class"), "anchor"),
        (lambda: CenterRankedLoss(alpha=0.5, margin=0.5), "margin must be < alpha"),
        (lambda: CenterRankedLoss(alpha=0.0, margin=0.0), "alpha must be > 0"),
        (lambda: CenterRankedLoss(margin=-0.1), "margin"),
        (lambda: CenterRankedLoss(t_n=-1.0), "t_n"),
        (lambda: CenterRankedLoss(t_p=float("nan")), "t_p"),
        (lambda: CenterRankedLoss(lam=-1.0), "lam"),
        (lambda: CenterRankedLoss(detach_center="yes"), "detach_center"),
        (lambda: RankedListLoss(alpha=1.0, margin=1.5), "margin must be < alpha"),
        (lambda: TripletLoss(margin=-0.2), "margin"),
        (lambda: PartCrossEntropyLoss(0, 8, 3), "num_classes"),
        (lambda: PartCrossEntropyLoss(4, 8, 3, label_smoothing=1.5), "label_smoothing"),
    ],
)
def test_invalid_arguments_raise(make: Callable, match: str):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("features", "labels", "match"),
    [
        (torch.randn(12, 8), torch.zeros(12, dtype=torch.long), "features"),
        (torch.zeros(3, 12, 8, dtype=torch.long), torch.zeros(12, dtype=torch.long), "features"),
        (torch.randn(3, 12, 8), torch.zeros(12), "labels"),
        (torch.randn(3, 12, 8), torch.zeros(12, dtype=torch.int32), "labels"),
        (torch.randn(3, 12, 8), torch.zeros(11, dtype=torch.long), "match"),
        (torch.randn(3, 0, 8), torch.zeros(0, dtype=torch.long), "non-empty"),
    ],
)
def test_invalid_inputs_raise(features: torch.Tensor, labels: torch.Tensor, match: str):
    for loss in (CenterRankedR0(), RankedListLoss(), TripletLoss()):
        with pytest.raises(ValueError, match=match):
            loss(features, labels)


def test_cross_entropy_checks_shapes_and_label_range():
    loss = PartCrossEntropyLoss(4, 8, 3)
    with pytest.raises(ValueError, match="classifiers"):
        loss(torch.randn(2, 6, 8), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="class indices"):
        loss(torch.randn(3, 6, 8), torch.full((6,), 4))
