"""The center-ranked loss's options (anchor "both", a memory of centers, raw features) against the
loop references of tests/reference.py, written from gaittrain.losses.center_ranked's docstring.

Values, gradients, statistics and the memory after a call are compared in float64 on batches of
uneven classes, one of a single sample; the memory is checked on a hand-computed case, for its
masking of unseen classes, for its absent classes acting as negatives, and through a state_dict.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import pytest
import torch

from gaittrain.config import load_config
from gaittrain.losses import CenterRankedLoss
from gaittrain.losses._common import masked_mean, pairwise_distance
from gaittrain.losses.center_ranked import class_slots
from gaittrain.objective import Objective, metric_loss
from tests.reference import (
    ref_center_ranked_stats,
    ref_center_ranked_variant,
    ref_memory_update,
)

PARTS, DIM, CLASSES = 3, 8, 7
SIZES = (4, 1, 3, 2)  # samples per class in a batch: uneven, one class of a single sample
RAW = {"normalize": False, "alpha": 4.0, "margin": 1.5}  # boundaries on the raw features' scale
TUNED = {"alpha": 1.1, "margin": 0.5, "t_p": 4.0, "t_n": 3.0, "lam": 0.5}
#: Reading r0 with every setting the loop references default to (the ranked list's values, not
#: r0's tuned defaults, which test_center_ranked_readings.py checks): these tests are of formulas.
R0 = {"reading": "r0", "alpha": 1.2, "margin": 0.4, "t_n": 10.0, "lam": 1.0, "normalize": True}
R0 |= {"temperature": 10.0, "beta": 0.1}


def uneven_batch(
    seed: int, sizes: tuple[int, ...] = SIZES, classes: int = CLASSES
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 features around one random mean per class and part; labels are class indices."""
    g = torch.Generator().manual_seed(seed)
    which = torch.randperm(classes, generator=g)[: len(sizes)]
    labels = which.repeat_interleave(torch.tensor(sizes))
    labels = labels[torch.randperm(len(labels), generator=g)]
    means = torch.randn(PARTS, classes, DIM, generator=g, dtype=torch.float64)
    noise = torch.randn(PARTS, len(labels), DIM, generator=g, dtype=torch.float64)
    return means[:, labels] + noise, labels


def memory_state(
    seed: int, features: torch.Tensor, labels: torch.Tensor, normalize: bool
) -> tuple[torch.Tensor, list[bool]]:
    """A memory before a call: some batch classes seen, some absent classes seen, one unseen
    absent class whose (unused) slot sits on a sample, where it would be an active negative."""
    g = torch.Generator().manual_seed(100 + seed)
    memory = torch.randn(PARTS, CLASSES, DIM, generator=g, dtype=torch.float64)
    if normalize:
        memory = 0.9 * memory / memory.norm(dim=-1, keepdim=True)
    present = sorted(set(labels.tolist()))
    absent = [k for k in range(CLASSES) if k not in present]
    seen = [False] * CLASSES
    for k in present[:2] + absent[:-1]:
        seen[k] = True
    sample = features[:, 0]
    memory[:, absent[-1]] = sample / sample.norm(dim=-1, keepdim=True) if normalize else sample
    return memory, seen


def build(kwargs: dict, memory: tuple[torch.Tensor, list[bool]] | None) -> CenterRankedLoss:
    if memory is None:
        return CenterRankedLoss(**{**R0, **kwargs}).double()
    loss = CenterRankedLoss(
        **{**R0, **kwargs}, centers="memory", num_classes=CLASSES, parts=PARTS, dim=DIM
    ).double()
    loss.memory.copy_(memory[0])
    loss.seen.copy_(torch.tensor(memory[1]))
    return loss


def loss_and_grad(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    features: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    features = features.detach().clone().requires_grad_(True)
    loss = fn(features, labels)
    (grad,) = torch.autograd.grad(loss, features)
    return loss.detach(), grad


# (options, centers) -> each with normalized and raw features where it says so
CASES = [
    pytest.param({"anchor": "both"}, "batch", id="both"),
    pytest.param({"anchor": "both", **TUNED, "detach_center": True}, "batch", id="both-tuned-det"),
    pytest.param({"anchor": "both", **RAW}, "batch", id="both-raw"),
    pytest.param({"anchor": "center", **RAW}, "batch", id="center-raw"),
    pytest.param({"anchor": "sample", **RAW, "detach_center": True}, "batch", id="sample-raw-det"),
    pytest.param({"anchor": "center"}, "memory", id="center-memory"),
    pytest.param({"anchor": "sample"}, "memory", id="sample-memory"),
    pytest.param(
        {"anchor": "both", **TUNED, "detach_center": True, "memory_momentum": 0.5},
        "memory",
        id="both-memory-tuned-det",
    ),
    pytest.param({"anchor": "center", **RAW}, "memory", id="center-memory-raw"),
    pytest.param({"anchor": "sample", **RAW, "t_p": 2.0}, "memory", id="sample-memory-raw"),
    pytest.param(
        {"anchor": "both", **RAW, "memory_momentum": 0.0}, "memory", id="both-memory-raw-mu0"
    ),
]


def reference_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k != "memory_momentum"}


# ---------------------------------------------------------------------------------------------
# Values, gradients, statistics and memory updates against the loop references


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("kwargs", "centers"), CASES)
def test_variant_matches_reference(seed: int, kwargs: dict, centers: str):
    features, labels = uneven_batch(seed)
    normalize = kwargs.get("normalize", True)
    state = memory_state(seed, features, labels, normalize) if centers == "memory" else None
    loss = build(kwargs, state)
    value, grad = loss_and_grad(loss, features, labels)
    memory = {} if state is None else {"memory": state[0], "seen": state[1]}
    ref = reference_kwargs(kwargs)

    def reference(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ref_center_ranked_variant(f, y, **ref, **memory)

    ref_value, ref_grad = loss_and_grad(reference, features, labels)
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(grad, ref_grad)

    stats = loss.stats
    expected = ref_center_ranked_stats(
        features,
        labels,
        ref.get("alpha", 1.2),
        ref.get("margin", 0.4),
        normalize,
        **memory,
        anchor=kwargs["anchor"],
    )
    if kwargs["anchor"] == "both":
        center, sample = ref_center_ranked_variant(features, labels, **ref, **memory, terms=True)
        expected.update(center_loss=center.item(), sample_loss=sample.item())
    assert list(stats) == list(expected)
    assert stats == pytest.approx(expected)
    for key in ("active", "active_pos", "active_neg"):  # terms on both sides of the boundaries
        assert 0 < stats[key] < 1, (key, stats)

    if state is not None:  # the memory after the call
        mu = kwargs.get("memory_momentum", 0.9)
        ref_memory, ref_seen = ref_memory_update(*state, features, labels, mu, normalize)
        torch.testing.assert_close(loss.memory, ref_memory)
        assert loss.seen.tolist() == ref_seen


@pytest.mark.parametrize("centers", ["batch", "memory"])
@pytest.mark.parametrize("normalize", [True, False])
def test_both_is_the_mean_of_the_two_anchors(centers: str, normalize: bool):
    features, labels = uneven_batch(3)
    kwargs = {} if normalize else RAW
    state = memory_state(3, features, labels, normalize) if centers == "memory" else None
    results = {}
    for anchor in ("center", "sample", "both"):
        loss = build({**kwargs, "anchor": anchor}, state)
        results[anchor] = (*loss_and_grad(loss, features, labels), loss.stats)
    (c, c_grad, c_stats), (s, s_grad, s_stats), (b, b_grad, b_stats) = results.values()
    torch.testing.assert_close(b, (c + s) / 2)
    torch.testing.assert_close(b_grad, (c_grad + s_grad) / 2)
    # The same sample-center pairs whatever the anchor (the queries differ: classes or samples);
    # "both" has the center side's queries and adds its two terms.
    queries = ("queries", "active_queries")
    assert {k: v for k, v in c_stats.items() if k not in queries} == pytest.approx(
        {k: v for k, v in s_stats.items() if k not in queries}
    )
    assert s_stats["queries"] == len(labels)
    assert b_stats == pytest.approx({**c_stats, "center_loss": c.item(), "sample_loss": s.item()})


@pytest.mark.parametrize("centers", ["batch", "memory"])
@pytest.mark.parametrize("anchor", ["center", "sample", "both"])
@pytest.mark.parametrize(("sizes", "classes"), [((1,) * 5, 7), ((5,), 7)], ids=["K=1", "P=1"])
def test_one_sample_per_class_and_one_class(sizes: tuple, classes: int, anchor: str, centers: str):
    features, labels = uneven_batch(4, sizes, classes)
    state = memory_state(4, features, labels, True) if centers == "memory" else None
    loss = build({"anchor": anchor}, state)
    value, grad = loss_and_grad(loss, features, labels)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    memory = {} if state is None else {"memory": state[0], "seen": state[1]}
    torch.testing.assert_close(
        value, ref_center_ranked_variant(features, labels, anchor=anchor, **memory)
    )
    one_class = len(sizes) == 1
    # One class and no memory: no negative pair at all; the memory's classes give some.
    assert math.isnan(loss.stats["neg_dist"]) == (one_class and centers == "batch")


# ---------------------------------------------------------------------------------------------
# The defaults compute what the loss computed before these options, bit for bit


def earlier_center_ranked(
    features: torch.Tensor, labels: torch.Tensor, anchor: str, detach_center: bool
) -> torch.Tensor:
    """CenterRankedLoss.compute as it was before anchor "both", the memory and normalize."""
    loss = CenterRankedLoss(**R0, anchor="center", detach_center=detach_center)
    features = torch.nn.functional.normalize(features, dim=-1)
    own, slot = class_slots(labels)
    members = own.to(features.dtype)
    sizes = members.sum(0).clamp_min(1)
    centers = members.T @ features / sizes[:, None]
    if detach_center:
        centers = centers.detach()
    other = ~own & slot
    if anchor == "center":
        dist = pairwise_distance(centers, features)
        terms, _ = loss.ranked_terms(dist, own.T, other.T)
        return masked_mean(terms, slot)
    dist = pairwise_distance(features, centers)
    terms, _ = loss.ranked_terms(dist, own, other)
    return terms.mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("detach_center", [False, True])
@pytest.mark.parametrize("anchor", ["center", "sample"])
def test_defaults_are_unchanged_bit_for_bit(anchor: str, detach_center: bool, dtype):
    for seed in range(3):
        features, labels = uneven_batch(seed)
        features = features.to(dtype)
        loss = CenterRankedLoss(**R0, anchor=anchor, detach_center=detach_center)
        value, grad = loss_and_grad(loss, features, labels)
        old_value, old_grad = loss_and_grad(
            lambda f, y: earlier_center_ranked(f, y, anchor, detach_center), features, labels
        )
        assert torch.equal(value, old_value) and torch.equal(grad, old_grad)
    assert (
        dict(CenterRankedLoss(**R0).named_buffers()) == {}
    )  # no state: old checkpoints still load


# ---------------------------------------------------------------------------------------------
# The memory


def memory_loss(num_classes: int = 3, parts: int = 1, dim: int = 2, **kwargs) -> CenterRankedLoss:
    return CenterRankedLoss(
        **{**R0, **kwargs}, centers="memory", num_classes=num_classes, parts=parts, dim=dim
    ).double()


def batch(rows: list[list[float]], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([rows], dtype=torch.float64), torch.tensor(labels)


def test_memory_update_by_hand_on_raw_features():
    loss = memory_loss(normalize=False, memory_momentum=0.25)
    assert loss.memory.shape == (1, 3, 2) and not loss.seen.any()
    loss(*batch([[1, 0], [3, 0], [0, 4]], [0, 0, 2]))  # first sighting: the batch centers
    torch.testing.assert_close(loss.memory[0], torch.tensor([[2.0, 0], [0, 0], [0, 4]]).double())
    assert loss.seen.tolist() == [True, False, True]
    loss(*batch([[0, 2], [0, 6], [5, 5]], [0, 0, 1]))  # c_0 = (0, 4); class 2 absent: kept
    expected = [[0.25 * 2 + 0.75 * 0, 0.25 * 0 + 0.75 * 4], [5, 5], [0, 4]]
    torch.testing.assert_close(loss.memory[0], torch.tensor(expected).double())
    assert loss.seen.tolist() == [True, True, True]


def test_memory_update_by_hand_on_normalized_features():
    loss = memory_loss(memory_momentum=0.5)
    loss(*batch([[2, 0], [5, 0], [0, 3]], [0, 0, 1]))  # normalized: c_0 = (1, 0), c_1 = (0, 1)
    torch.testing.assert_close(loss.memory[0], torch.tensor([[1.0, 0], [0, 1], [0, 0]]).double())
    # c_0 = ((0, 1) + (1, 0)) / 2 = (.5, .5), ‖c_0‖ = √.5; the average (.75, .25), ‖·‖ = √.625,
    # rescaled to ‖c_0‖. Class 1 is absent: kept. Class 2 is seen for the first time.
    loss(*batch([[0, 3], [4, 0], [-2, 0]], [0, 0, 2]))
    expected = [[0.75 * math.sqrt(0.8), 0.25 * math.sqrt(0.8)], [0, 1], [-1, 0]]
    torch.testing.assert_close(loss.memory[0], torch.tensor(expected).double())
    assert loss.seen.tolist() == [True, True, True]


@pytest.mark.parametrize("anchor", ["center", "sample", "both"])
def test_unseen_classes_are_masked(anchor: str):
    """A fresh memory is all unseen: the loss is the batch loss, whatever the unused slots hold."""
    features, labels = uneven_batch(5)
    loss = CenterRankedLoss(
        **R0, anchor=anchor, centers="memory", num_classes=CLASSES, parts=3, dim=8
    )
    loss = loss.double()
    loss.memory.copy_(features[:, :1].expand(-1, CLASSES, -1))  # every slot on a sample
    value, grad = loss_and_grad(loss, features, labels)
    batch_loss = CenterRankedLoss(**R0, anchor=anchor)
    batch_value, batch_grad = loss_and_grad(batch_loss, features, labels)
    torch.testing.assert_close(value, batch_value)
    torch.testing.assert_close(grad, batch_grad)
    assert loss.stats == pytest.approx(batch_loss.stats)


@pytest.mark.parametrize("anchor", ["center", "sample", "both"])
def test_absent_classes_act_as_negatives(anchor: str):
    """A remembered class absent from the batch, its center near some samples: active negatives."""
    features, labels = uneven_batch(6)
    absent = next(k for k in range(CLASSES) if k not in labels.tolist())
    loss = build({"anchor": anchor}, None)
    batch_value, batch_grad = loss_and_grad(loss, features, labels)
    loss = CenterRankedLoss(
        **R0, anchor=anchor, centers="memory", num_classes=CLASSES, parts=3, dim=8
    )
    loss = loss.double()
    unit = features / features.norm(dim=-1, keepdim=True)
    near = unit[:, 0] + 0.3 * unit[:, 1]  # near sample 0, off its ray (the gradient is tangent)
    near = 0.9 * near / near.norm(dim=-1, keepdim=True)
    loss.memory[:, absent] = near
    loss.seen[absent] = True
    value, grad = loss_and_grad(loss, features, labels)
    assert value > batch_value  # the memory center adds active negatives
    assert not torch.allclose(grad, batch_grad)
    memory = {"memory": loss.memory.clone(), "seen": [k == absent for k in range(CLASSES)]}
    memory["memory"][:, absent] = near
    torch.testing.assert_close(
        value, ref_center_ranked_variant(features, labels, anchor=anchor, **memory)
    )
    # Gradient descent moves sample 0 away from the remembered center of the absent class.
    step = features[:, 0] - 1e-3 * grad[:, 0]
    x = step / step.norm(dim=-1, keepdim=True)
    assert ((x - near).norm(dim=-1) > (unit[:, 0] - near).norm(dim=-1)).all()


def test_memory_of_a_previous_batch_is_used():
    """The memory a call leaves is what the next call ranks against."""
    first, first_labels = uneven_batch(7, sizes=(2, 2, 2, 2, 2), classes=5)
    second, second_labels = uneven_batch(8, sizes=(3, 3), classes=5)
    loss = CenterRankedLoss(**R0, anchor="sample", centers="memory", num_classes=5, parts=3, dim=8)
    loss = loss.double()
    loss(first, first_labels)
    state = (loss.memory.clone(), loss.seen.tolist())
    assert all(state[1])
    value = loss(second, second_labels)
    expected = ref_center_ranked_variant(
        second, second_labels, anchor="sample", memory=state[0], seen=state[1]
    )
    torch.testing.assert_close(value, expected)
    assert not torch.isclose(value, CenterRankedLoss(**R0, anchor="sample")(second, second_labels))


def test_eval_mode_reads_the_memory_and_leaves_it():
    features, labels = uneven_batch(9)
    loss = build({"anchor": "both"}, memory_state(9, features, labels, True))
    before = (loss.memory.clone(), loss.seen.clone())
    loss.eval()
    with torch.no_grad():
        value = loss(features, labels)
    assert torch.equal(loss.memory, before[0]) and torch.equal(loss.seen, before[1])
    loss.train()
    assert torch.equal(loss(features, labels), value)  # the same memory read; then updated
    assert not torch.equal(loss.memory, before[0])


def test_non_finite_centers_are_not_remembered():
    """A nan feature (a step the trainer then skips) leaves the memory finite, as it was: the
    one-hot product spreads the nan to every center of the batch (0 · nan), so none is kept."""
    loss = memory_loss(normalize=False)
    loss(*batch([[1, 0], [0, 1]], [0, 1]))
    before = (loss.memory.clone(), loss.seen.clone())
    value = loss(*batch([[math.nan, 0], [4, 4], [0, 2]], [0, 1, 2]))
    assert math.isnan(value.item())
    assert torch.equal(loss.memory, before[0]) and torch.equal(loss.seen, before[1])
    loss(*batch([[3, 0], [4, 4], [0, 2]], [0, 1, 2]))  # and it goes on from there
    expected = [[0.9 * 1 + 0.1 * 3, 0], [0.9 * 0 + 0.1 * 4, 0.9 * 1 + 0.1 * 4], [0, 2]]
    torch.testing.assert_close(loss.memory[0], torch.tensor(expected).double())


def test_memory_on_a_float32_objective_takes_float64_features():
    loss = CenterRankedLoss(**R0, centers="memory", num_classes=CLASSES, parts=3, dim=8)
    features, labels = uneven_batch(10)
    value = loss(features, labels)
    assert value.dtype == torch.float64 and loss.memory.dtype == torch.float32
    assert loss.seen.sum() == len(set(labels.tolist()))


# ---------------------------------------------------------------------------------------------
# Through the trainer's objective: construction, state_dict, cross-entropy


def memory_config(*sets: str):
    return load_config(
        None,
        [
            "loss={name: center_ranked, reading: r0, anchor: both, centers: memory, "
            "memory_momentum: 0.8}",
            "model.dim=8",
            *sets,
        ],
    )


def test_memory_state_dict_round_trip():
    cfg = memory_config("cross_entropy.weight=0.5")
    torch.manual_seed(0)
    obj = Objective(cfg, num_classes=CLASSES, parts=PARTS).double()
    assert obj.metric.memory.shape == (PARTS, CLASSES, 8)
    for seed in range(3):
        obj(*uneven_batch(seed))
    state = obj.state_dict()
    assert {"metric.memory", "metric.seen", "ce.weight"} <= state.keys()
    buffer = io.BytesIO()
    torch.save(state, buffer)  # as the trainer's checkpoint does
    buffer.seek(0)

    torch.manual_seed(1)  # another classifier initialization, overwritten by the state
    fresh = Objective(cfg, num_classes=CLASSES, parts=PARTS).double()
    untouched = Objective(cfg, num_classes=CLASSES, parts=PARTS).double()
    untouched.load_state_dict({k: v for k, v in state.items() if k.startswith("ce.")}, strict=False)
    fresh.load_state_dict(torch.load(buffer))  # before its first call: the resume path
    for seed in (3, 4):
        features, labels = uneven_batch(seed, sizes=(2, 3))
        value = obj(features, labels)
        assert torch.equal(fresh(features, labels), value)
        assert torch.equal(fresh.metric.memory, obj.metric.memory)
        assert torch.equal(fresh.metric.seen, obj.metric.seen)
    # Without the memory the same batches give another loss: the state carried something.
    assert not torch.equal(untouched(*uneven_batch(5, sizes=(2, 3))), obj(*uneven_batch(5, (2, 3))))


def test_batch_centers_keep_the_objective_state_as_it_was():
    cfg = load_config(None, ["model.dim=8", "cross_entropy.weight=0.5"])
    assert set(Objective(cfg, num_classes=CLASSES, parts=PARTS).state_dict()) == {"ce.weight"}


OPTIONS = [
    "{name: center_ranked}",
    "{name: center_ranked, reading: r0, anchor: both}",
    "{name: center_ranked, reading: r0, anchor: sample, centers: memory}",
    "{name: center_ranked, reading: r0, anchor: both, centers: memory, normalize: false, "
    "alpha: 4, margin: 1}",
    "{name: center_ranked, reading: r0, anchor: center, normalize: false, alpha: 4, margin: 1}",
]


@pytest.mark.parametrize("section", OPTIONS)
def test_cross_entropy_combines_with_every_option(section: str):
    cfg = load_config(None, [f"loss={section}", "model.dim=8", "cross_entropy.weight=0.25"])
    torch.manual_seed(0)
    obj = Objective(cfg, num_classes=CLASSES, parts=PARTS).double()
    features, labels = uneven_batch(11)
    features.requires_grad_(True)
    total = obj(features, labels)
    total.backward()
    stats = obj.stats
    assert total.item() == pytest.approx(
        stats["center_ranked/loss"] + 0.25 * stats["cross_entropy/loss"]
    )
    assert torch.isfinite(features.grad).all() and obj.ce.weight.grad is not None


# ---------------------------------------------------------------------------------------------
# Validation


def test_memory_needs_its_sizes():
    with pytest.raises(ValueError, match="centers='memory' needs num_classes"):
        CenterRankedLoss(**R0, centers="memory")
    with pytest.raises(ValueError, match="needs dim"):
        CenterRankedLoss(**R0, centers="memory", num_classes=4, parts=3)
    with pytest.raises(ValueError, match=r"metric_loss\(cfg, num_classes=\.\.\., parts=\.\.\.\)"):
        metric_loss(memory_config())
    assert metric_loss(memory_config(), num_classes=4, parts=2).memory.shape == (2, 4, 8)
    for name in ("center_ranked", "ranked_list", "triplet"):  # the others need neither
        metric_loss(load_config(None, [f"loss.name={name}"]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"anchor": "middle"}, "anchor must be one of"),
        ({"centers": "global"}, "centers must be one of"),
        ({"memory_momentum": 1.0}, r"memory_momentum must be in \[0, 1\)"),
        ({"memory_momentum": -0.1}, "memory_momentum"),
        ({"memory_momentum": math.nan}, "memory_momentum"),
        ({"normalize": "no"}, "normalize must be a bool"),
    ],
)
def test_invalid_options_raise(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        CenterRankedLoss(**{**R0, **kwargs})


def test_memory_refuses_labels_and_features_it_cannot_hold():
    loss = memory_loss(num_classes=3, parts=1, dim=2)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        loss(*batch([[1, 0], [0, 1]], [0, 3]))
    with pytest.raises(ValueError, match="do not match the memory"):
        loss(torch.ones(2, 2, 2, dtype=torch.float64), torch.tensor([0, 1]))
    assert not loss.seen.any()
