"""The training losses never wait for the device on a step that does not log.

On a GPU every host synchronization (reading a value back, or an op whose output shape depends on
the data) stalls the pipeline. Here every Python entry point that makes one is wrapped and counted:
a loss's forward and backward must make none, and reading ``stats`` afterwards at most one, with
the same values as the statistics' definitions (docs/losses.md). An op-level counter (a
``TorchDispatchMode``) also catches what never passes through Python: boolean-mask indexing,
``nonzero``, ``unique``, ``.item()`` and the like inside composite ops. On CUDA, when there is one,
PyTorch's own sync debug mode has the last word.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable
from itertools import product

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from gaittrain.config import load_config
from gaittrain.losses import CenterRankedLoss, PartCrossEntropyLoss, RankedListLoss, TripletLoss
from gaittrain.losses.geometry import batch_geometry
from gaittrain.objective import Objective
from tests.reference import ref_center_ranked_variant

PARTS, P, K, DIM = 3, 4, 3, 8
IDS = (7, 1003, 42, 5)  # subject ids as a dataset has them

# Python-level entry points that read a tensor back to the host (or size a tensor by its data).
TENSOR_METHODS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu", "nonzero")
TORCH_FUNCTIONS = ("unique", "nonzero")

# aten ops that synchronize: a value read back, or an output whose shape depends on the data.
SYNC_OPS = {
    "aten::_local_scalar_dense",
    "aten::is_nonzero",
    "aten::equal",
    "aten::allclose",
    "aten::nonzero",
    "aten::argwhere",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::unique_dim_consecutive",
    "aten::bincount",
}


def sync_label(func, args: tuple, kwargs: dict) -> str | None:
    """The name under which an aten call counts as a synchronization; None if it is not one."""
    name = func._schema.name
    if name in SYNC_OPS:
        return name
    if name in ("aten::index", "aten::index_put", "aten::index_put_"):
        masks = (torch.bool, torch.uint8)
        if any(isinstance(i, torch.Tensor) and i.dtype in masks for i in args[1]):
            return f"{name} (mask)"  # boolean-mask indexing: nonzero inside
    repeats_tensor = func._schema.overload_name in ("Tensor", "self_Tensor")
    if name == "aten::repeat_interleave" and repeats_tensor and kwargs.get("output_size") is None:
        return name  # the output size is the sum of the repeats
    return None


class SyncOps(TorchDispatchMode):
    """Records the aten ops that synchronize, including boolean-mask indexing."""

    def __init__(self, record: Callable[[str], None]) -> None:
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        label = sync_label(func, args, kwargs)
        if label is not None:
            self.record(label)
        return func(*args, **kwargs)


class Syncs:
    """``with syncs as calls:`` counts, by entry point, the host synchronizations in the block."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.mode: SyncOps | None = None

    def record(self, label: str) -> None:
        if self.mode is not None:
            self.calls[label] += 1

    def __enter__(self) -> Counter:
        self.calls = Counter()
        self.mode = SyncOps(self.record)
        self.mode.__enter__()
        return self.calls

    def __exit__(self, *exc: object) -> None:
        mode, self.mode = self.mode, None
        mode.__exit__(*exc)


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Syncs:
    """The counter, with every Python entry point that synchronizes wrapped for it."""
    counter = Syncs()

    def count(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def counted(*args, **kwargs):
            counter.record(label)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    for name in TENSOR_METHODS:
        count(torch.Tensor, name, f"Tensor.{name}")
    for name in TORCH_FUNCTIONS:
        count(torch, name, f"torch.{name}")
    one_hot = F.one_hot

    def counted_one_hot(tensor: torch.Tensor, num_classes: int = -1) -> torch.Tensor:
        if num_classes < 0:  # the number of classes is read from the data: max() to the host
            counter.record("one_hot without num_classes")
        return one_hot(tensor, num_classes)

    monkeypatch.setattr(F, "one_hot", counted_one_hot)
    return counter


# ---------------------------------------------------------------------------------------------
# Inputs and slow references of the statistics (docs/losses.md, "Statistics")


def make_batch(seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features [parts, P*K, dim] and P x K subject ids, shuffled."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(IDS).repeat_interleave(K)[torch.randperm(P * K, generator=g)]
    features = torch.randn(PARTS, P * K, DIM, generator=g, dtype=torch.float64)
    return features.to(dtype), labels


def indices(labels: torch.Tensor) -> torch.Tensor:
    return torch.tensor([sorted(set(labels.tolist())).index(y) for y in labels.tolist()])


def mean(values: list[float]) -> float:
    """The mean; nan over an empty set, as the statistics define it."""
    return sum(values) / len(values) if values else math.nan


def fraction(flags: list[bool]) -> float:
    return mean([float(f) for f in flags])


def ranked_stats(queries: list[list[tuple[float, bool, bool]]], parts: int) -> dict:
    """The statistics of ranked pairs, from each query cell's (part, query) pairs ``(distance,
    positive, violated)``."""
    pairs = [pair for cell in queries for pair in cell]
    pos = [(d, bad) for d, positive, bad in pairs if positive]
    neg = [(d, bad) for d, positive, bad in pairs if not positive]
    return {
        "active": fraction([bad for _, _, bad in pairs]),
        "active_pos": fraction([bad for _, bad in pos]),
        "active_neg": fraction([bad for _, bad in neg]),
        "queries": len(queries) / parts,
        "active_queries": fraction([any(bad for _, _, bad in cell) for cell in queries]),
        "pos_dist": mean([d for d, _ in pos]),
        "neg_dist": mean([d for d, _ in neg]),
    }


def ref_stats(loss: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> dict:
    """The statistics of one call, by their definitions, in float64 loops."""
    f = features.double()
    parts, n, _ = f.shape
    y = labels.tolist()
    cells = [(p, i) for p in range(parts) for i in range(n)]
    if isinstance(loss, PartCrossEntropyLoss):
        logits = f @ loss.weight.detach().double()
        return {"accuracy": mean([float(logits[p, i].argmax() == y[i]) for p, i in cells])}
    if isinstance(loss, TripletLoss):
        d = torch.cdist(f, f).tolist()
        positives = {(p, a): [q for q in range(n) if q != a and y[q] == y[a]] for p, a in cells}
        negatives = {(p, a): [m for m in range(n) if y[m] != y[a]] for p, a in cells}

        def violated(p: int, a: int, q: int, m: int) -> bool:
            return loss.margin + d[p][a][q] - d[p][a][m] > 0

        pos = [(p, a, q) for p, a in cells for q in positives[p, a]]
        neg = [(p, a, m) for p, a in cells for m in negatives[p, a]]
        triplets = [(p, a, q, m) for p, a, q in pos for m in negatives[p, a]]
        return {
            "active": fraction([violated(*t) for t in triplets]),
            "active_pos": fraction([any(violated(*t, m) for m in negatives[t[:2]]) for t in pos]),
            "active_neg": fraction(
                [any(violated(p, a, q, m) for q in positives[p, a]) for p, a, m in neg]
            ),
            "queries": n,
            "active_queries": fraction(
                [
                    any(violated(p, a, q, m) for q, m in product(positives[p, a], negatives[p, a]))
                    for p, a in cells
                ]
            ),
            "pos_dist": mean([d[p][a][q] for p, a, q in pos]),
            "neg_dist": mean([d[p][a][m] for p, a, m in neg]),
        }
    x = f / f.norm(dim=-1, keepdim=True) if getattr(loss, "normalize", True) else f
    lo, hi = loss.alpha - loss.margin, loss.alpha  # the positive and the negative boundary

    def pair(distance: float, positive: bool) -> tuple[float, bool, bool]:
        return distance, positive, distance > lo if positive else distance < hi

    if isinstance(loss, CenterRankedLoss) and loss.reading != "r0":
        return ref_reading_stats(loss, x, labels, pair)
    if isinstance(loss, CenterRankedLoss):  # (sample, center) pairs
        centers = {k: x[:, labels == k].mean(1) for k in set(y)}
        memory = {}
        if loss.centers == "memory":  # remembered classes absent from the batch (kept as they were)
            memory = {"memory": loss.memory.double(), "seen": loss.seen.tolist()}
            seen = [k for k in range(loss.num_classes) if memory["seen"][k] and k not in centers]
            centers.update({k: memory["memory"][:, k] for k in seen})
        d = {k: (x - c[:, None]).norm(dim=-1).tolist() for k, c in centers.items()}
        if loss.anchor == "sample":  # each sample ranks the centers
            queries = [[pair(d[k][p][i], k == y[i]) for k in centers] for p, i in cells]
        else:  # each class ranks the samples
            queries = [
                [pair(d[k][p][i], k == y[i]) for i in range(n)]
                for p in range(parts)
                for k in centers
            ]
        stats = ranked_stats(queries, parts)
        if loss.anchor == "both":
            hyper = {k: getattr(loss, k) for k in ("alpha", "margin", "t_n", "t_p", "lam")}
            terms = ref_center_ranked_variant(
                f, labels, **hyper, normalize=loss.normalize, **memory, terms=True
            )
            stats.update(center_loss=terms[0].item(), sample_loss=terms[1].item())
        return stats
    # ranked list: (sample, other sample) pairs
    d = torch.cdist(x, x).tolist()
    queries = [[pair(d[p][i][j], y[j] == y[i]) for j in range(n) if j != i] for p, i in cells]
    return ranked_stats(queries, parts)


def ref_reading_stats(loss: CenterRankedLoss, x: torch.Tensor, labels: torch.Tensor, pair) -> dict:
    """The statistics of readings r1-r3 (batch centers) from the (normalized) features x."""
    parts, n, _ = x.shape
    y = labels.tolist()
    cells = [(p, i) for p in range(parts) for i in range(n)]
    centers = {k: x[:, labels == k].mean(1) for k in set(y)}
    d = {k: (x - c[:, None]).norm(dim=-1).tolist() for k, c in centers.items()}
    if loss.reading == "r1":  # own center positive, other classes' samples negative
        xx = torch.cdist(x, x).tolist()
        queries = [
            [pair(d[y[i]][p][i], True)]
            + [pair(xx[p][i][j], False) for j in range(n) if y[j] != y[i]]
            for p, i in cells
        ]
        return ranked_stats(queries, parts)
    if loss.reading == "r2":  # (sample, other center) terms, violated when the exponent is > 0
        terms = [
            [d[y[i]][p][i] - d[k][p][i] + loss.margin > 0 for k in centers if k != y[i]]
            for p, i in cells
        ]
        flat = [t for cell in terms for t in cell]
        return {
            "active": fraction(flat),
            "active_pos": fraction([any(cell) for cell in terms]),
            "active_neg": fraction(flat),
            "queries": n,
            "active_queries": fraction([any(cell) for cell in terms]),
            "pos_dist": mean([d[y[i]][p][i] for p, i in cells]),
            "neg_dist": mean([d[k][p][i] for p, i in cells for k in centers if k != y[i]]),
        }
    xx = torch.cdist(x, x).tolist()  # r3: the ranked list, and the pull
    queries = [[pair(xx[p][i][j], y[j] == y[i]) for j in range(n) if j != i] for p, i in cells]
    pull = mean([0.5 * d[y[i]][p][i] ** 2 for p, i in cells])
    return {**ranked_stats(queries, parts), "pull": pull}


def ref_geometry(features: torch.Tensor, labels: torch.Tensor) -> dict:
    """The batch's geometry (gaittrain.losses.geometry), by its definitions, in float64 loops."""
    f = features.double()
    parts, n, _ = f.shape
    y = labels.tolist()
    x = f / f.norm(dim=-1, keepdim=True)
    center = {k: x[:, labels == k].mean(1) for k in set(y)}  # [parts, dim] per class

    def d(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a - b).norm().item()

    cells = [(p, i) for p in range(parts) for i in range(n)]
    own = mean([d(x[p, i], center[y[i]][p]) for p, i in cells])
    pos = mean([d(x[p, i], x[p, j]) for p, i in cells for j in range(n) if j != i and y[j] == y[i]])
    return {
        "own_center": own,
        "other_center": mean(
            [d(x[p, i], center[y[j]][p]) for p, i in cells for j in range(n) if y[j] != y[i]]
        ),
        "pos_pair": pos,
        "neg_pair": mean([d(x[p, i], x[p, j]) for p, i in cells for j in range(n) if y[j] != y[i]]),
        "center_to_pair": own / pos,
        "norm": mean([f[p, i].norm().item() for p, i in cells]),
    }


def test_geometry_of_one_class_per_sample_has_no_positives():
    """K = 1: no positive pair, every sample its own center: nan where a set is empty, not 0."""
    features = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    stats = {k: v.item() for k, v in batch_geometry(features, torch.arange(4)).items()}
    assert stats["own_center"] == pytest.approx(0, abs=1e-4)  # float32 cancellation
    assert math.isnan(stats["pos_pair"]) and math.isnan(stats["center_to_pair"])
    assert stats == pytest.approx(ref_geometry(features, torch.arange(4)), nan_ok=True, abs=1e-4)


LOSSES: dict[str, Callable[[], torch.nn.Module]] = {
    "center_ranked": lambda: CenterRankedLoss(),
    "center_ranked-sample": lambda: CenterRankedLoss(
        reading="r0", anchor="sample", detach_center=True
    ),
    "center_ranked-both-raw": lambda: CenterRankedLoss(
        reading="r0", anchor="both", normalize=False, alpha=4.0, margin=1.5
    ),
    "center_ranked-both-memory": lambda: CenterRankedLoss(
        reading="r0", anchor="both", centers="memory", num_classes=P + 2, parts=PARTS, dim=DIM
    ),
    "center_ranked-sample-memory": lambda: CenterRankedLoss(
        reading="r0", anchor="sample", centers="memory", num_classes=P, parts=PARTS, dim=DIM
    ),
    "center_ranked-r1": lambda: CenterRankedLoss(reading="r1"),
    "center_ranked-r2": lambda: CenterRankedLoss(reading="r2", margin=0.3),
    "center_ranked-r2-raw": lambda: CenterRankedLoss(reading="r2", normalize=False, margin=0.5),
    "center_ranked-r3": lambda: CenterRankedLoss(reading="r3", beta=0.5),
    "ranked_list": lambda: RankedListLoss(t_p=2.0),
    "triplet": lambda: TripletLoss(margin=0.5),
    "cross_entropy": lambda: PartCrossEntropyLoss(P, DIM, PARTS, label_smoothing=0.1),
}


def loss_inputs(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    features, labels = make_batch(seed)
    if name == "cross_entropy" or name.endswith("memory"):
        labels = indices(labels)  # class indices, as the trainer maps the subject ids
    return features.requires_grad_(True), labels


# ---------------------------------------------------------------------------------------------
# The losses


@pytest.mark.parametrize("name", LOSSES)
def test_loss_forward_and_backward_make_no_host_sync(name: str, syncs: Syncs):
    loss = LOSSES[name]()
    features, labels = loss_inputs(name, 0)
    with syncs as calls:
        before = loss.stats
        loss(features, labels).backward()
    assert calls == Counter(), f"{name}: host synchronizations {dict(calls)}"
    assert before == {}
    assert features.grad is not None and features.grad.any()
    kept = loss.stat_tensors  # what stats converts when it is read: detached scalar tensors
    assert all(t.shape == () and not t.requires_grad for t in kept.values()), kept


@pytest.mark.parametrize("name", LOSSES)
def test_reading_stats_makes_one_sync_and_gives_their_definitions(name: str, syncs: Syncs):
    loss = LOSSES[name]()
    features, labels = loss_inputs(name, 1)
    loss(features, labels).backward()
    with syncs as calls:
        stats = loss.stats
    assert sum(calls.values()) <= 1, dict(calls)
    with syncs as calls:
        assert loss.stats == stats  # converted once per call, then kept
    assert calls == Counter()
    assert all(type(v) is float for v in stats.values())
    expected = ref_stats(loss, features.detach(), labels)
    assert list(stats) == list(expected)
    assert stats == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_stats_are_those_of_the_last_call(name: str, syncs: Syncs):
    loss = LOSSES[name]()
    batches = [loss_inputs(name, seed) for seed in (2, 3, 4)]
    with syncs as calls:
        for features, labels in batches:  # steps that do not log
            loss(features, labels).backward()
    assert calls == Counter()
    assert loss.stats == pytest.approx(ref_stats(loss, features.detach(), labels), rel=1e-5)


@pytest.mark.parametrize("centers", ["batch", "memory"])
@pytest.mark.parametrize("anchor", ["center", "sample", "both"])
@pytest.mark.parametrize("labels", [IDS, (42,) * 5, (7, 7, 3, 3, 3, 9)], ids=["K=1", "P=1", "P*K"])
def test_center_ranked_odd_batches_make_no_sync(
    anchor: str, centers: str, labels: tuple, syncs: Syncs
):
    """One sample per class, one class, unequal classes: every slot full, one, or some; with a
    memory, a first call (nothing remembered) and a second (other classes remembered)."""
    labels = torch.tensor(labels)
    features = torch.randn(PARTS, len(labels), DIM, requires_grad=True)
    loss = CenterRankedLoss(reading="r0", anchor=anchor)
    if centers == "memory":
        labels = torch.tensor([sorted(set(IDS + (3, 9))).index(y) for y in labels.tolist()])
        loss = CenterRankedLoss(
            reading="r0", anchor=anchor, centers="memory", num_classes=6, parts=PARTS, dim=DIM
        )
        loss(torch.randn(PARTS, 6, DIM), torch.arange(6))  # every class remembered
    with syncs as calls:
        loss(features, labels).backward()
    assert calls == Counter()
    assert torch.isfinite(features.grad).all()
    expected = ref_stats(loss, features.detach(), labels)
    assert loss.stats == pytest.approx(expected, rel=1e-5, abs=1e-6, nan_ok=True)


# ---------------------------------------------------------------------------------------------
# The objective the trainer calls


# The loss section of each objective under test, by name.
OBJECTIVES = {
    "center_ranked": "{name: center_ranked}",
    "center_ranked-memory": "{name: center_ranked, reading: r0, anchor: sample, centers: memory, "
    "normalize: false, alpha: 4.0, margin: 1.5}",
    "ranked_list": "{name: ranked_list}",
    "triplet": "{name: triplet}",
}


def objective(name: str) -> Objective:
    torch.manual_seed(0)
    sets = [f"loss={OBJECTIVES[name]}", "cross_entropy.weight=0.25", f"model.dim={DIM}"]
    cfg = load_config(None, sets)
    assert cfg.cross_entropy.weight > 0
    return Objective(cfg, num_classes=P, parts=PARTS)


def objective_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    features, labels = make_batch(seed)
    return features.requires_grad_(True), indices(labels)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_makes_no_host_sync_and_reads_its_stats_once(name: str, syncs: Syncs):
    obj = objective(name)
    features, labels = objective_inputs(5)
    with syncs as calls:
        before = obj.stats
        total = obj(features, labels)
        total.backward()
    assert calls == Counter(), f"{name}: host synchronizations {dict(calls)}"
    assert before == {}

    with syncs as calls:
        stats = obj.stats
    assert sum(calls.values()) <= 1, dict(calls)
    with syncs as calls:
        assert obj.stats == stats
    assert calls == Counter()

    # The keys of the log, in order: the metric's statistics and loss, the batch's geometry,
    # then the cross-entropy's.
    metric_keys = ["active", "active_pos", "active_neg", "queries", "active_queries"]
    metric_keys += ["pos_dist", "neg_dist", "loss"]
    geometry = ref_geometry(features.detach(), labels)
    ce_keys = ["cross_entropy/accuracy", "cross_entropy/loss"]
    prefix = obj.name  # the loss's name in the config
    keys = [f"{prefix}/{k}" for k in metric_keys] + [f"geometry/{k}" for k in geometry] + ce_keys
    assert list(stats) == keys
    assert all(type(v) is float and math.isfinite(v) for v in stats.values())
    features = features.detach()
    expected = {f"{prefix}/{k}": v for k, v in ref_stats(obj.metric, features, labels).items()}
    expected.update({f"geometry/{k}": v for k, v in geometry.items()})
    with torch.no_grad():
        expected[f"{prefix}/loss"] = obj.metric(features, labels).item()
        expected["cross_entropy/accuracy"] = ref_stats(obj.ce, features, labels)["accuracy"]
        expected["cross_entropy/loss"] = obj.ce(features, labels).item()
    assert stats == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert total.item() == pytest.approx(
        stats[f"{prefix}/loss"] + 0.25 * stats["cross_entropy/loss"], rel=1e-6
    )


def test_objective_stats_are_those_of_the_last_step(syncs: Syncs):
    obj = objective("center_ranked")
    batches = [objective_inputs(seed) for seed in (6, 7, 8)]
    with syncs as calls:
        for features, labels in batches:
            obj(features, labels).backward()
    assert calls == Counter()
    expected = ref_stats(obj.metric, features.detach(), labels)
    stats = obj.stats
    assert {k: stats[f"center_ranked/{k}"] for k in expected} == pytest.approx(expected, rel=1e-5)


def test_counter_sees_the_syncs_it_is_for(syncs: Syncs):
    """The counter itself: each entry point it wraps is counted when used."""
    t = torch.tensor([3, 1, 3])
    with syncs as calls:
        t.item  # noqa: B018  (the attribute alone is no call)
    assert calls == Counter()
    with syncs as calls:
        t[0].item()
        t.tolist()
        float(t[0])
        int(t[0])
        bool(t[0])
        t.numpy()
        torch.unique(t)
        t.nonzero()
        t[t > 1]  # boolean-mask indexing: seen at the op level
        F.one_hot(t)
        F.one_hot(t, num_classes=4)  # not counted: the size is known
        t.repeat_interleave(t)  # the output size is the sum of the repeats
    expected = {f"Tensor.{name}" for name in TENSOR_METHODS if name != "cpu"} | {
        "torch.unique",
        "aten::index (mask)",
        "one_hot without num_classes",
        "aten::repeat_interleave",
    }
    assert expected <= set(calls), expected - set(calls)
    assert calls["one_hot without num_classes"] == 1


# ---------------------------------------------------------------------------------------------
# CUDA: PyTorch's own detector of synchronizing calls


@pytest.mark.cuda
@pytest.mark.parametrize("name", [*LOSSES, *(f"objective:{n}" for n in OBJECTIVES)])
def test_cuda_sync_debug_mode_sees_no_sync(name: str):
    def build() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        if name.startswith("objective:"):
            return objective(name.split(":")[1]), *objective_inputs(9)
        return LOSSES[name](), *loss_inputs(name, 9)

    cpu, features, labels = build()
    cpu(features, labels).backward()
    module = build()[0].cuda()
    features = features.detach().cuda().requires_grad_(True)
    labels = labels.cuda()
    module(features, labels).backward()  # warm-up: allocations, library handles
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        module(features, labels).backward()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert module.stats == pytest.approx(cpu.stats, rel=1e-4, abs=1e-5)
