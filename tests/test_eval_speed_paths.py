"""The evaluation's vectorized paths equal the slow, obvious versions they replace: the segment
max of set pooling, ranking and scoring on the device with integer ids, and embedding through a
DataLoader with or without worker processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gaitprep.pack import PackWriter
from gaittrain.data.dataset import PackDataset, to_model_input
from gaittrain.evaluation.embed import embed_dataset, even_frames
from gaittrain.evaluation.metrics import METRICS, _block_rows, distance_blocks, retrieve
from gaittrain.models import SetModel
from gaittrain.models.set_model import segment_max
from gaittrain.trained_model import load_model
from tests.cli import make_pack, train_tiny

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def loop_max(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Set pooling as it was: one ``amax`` per sequence."""
    return torch.stack([s.amax(dim=0) for s in torch.split(x, lengths)])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lengths", [[3, 1, 7, 2, 2, 5], [4, 4, 4], [1], [9, 1, 1, 30, 2]], ids=str)
def test_segment_max_equals_the_loop(lengths: list[int], device: str) -> None:
    g = torch.Generator().manual_seed(len(lengths))
    x = torch.randn(sum(lengths), 3, 4, 2, generator=g, dtype=torch.float64)
    x[1:3] = x[0]  # tied maxima: the gradient is split between them in both versions
    x = x.to(device).requires_grad_(True)
    want, got = loop_max(x, lengths), segment_max(x, lengths)
    assert torch.equal(got, want)
    grad = torch.randn(want.shape, generator=g, dtype=torch.float64).to(device)
    (g_want,) = torch.autograd.grad(want, x, grad)
    (g_got,) = torch.autograd.grad(got, x, grad)
    assert torch.equal(g_got, g_want)


def test_segment_max_refuses_lengths_that_do_not_fit() -> None:
    x = torch.zeros(5, 2)
    for bad in ([2, 2], [5, 0], []):
        with pytest.raises(ValueError, match="lengths must be positive and sum to the 5 rows"):
            segment_max(x, bad)


def test_model_pooling_equals_the_loop_version() -> None:
    torch.manual_seed(0)
    m = SetModel((4, 8, 8), (4, 2, 1), 8).eval()
    lengths = [2, 9, 1, 5, 5]
    flat = torch.rand(sum(lengths), 32, 22)
    with torch.no_grad():
        want = m.pyramid(loop_max(m.backbone(flat.unsqueeze(1)), lengths))
        assert torch.equal(m(flat, lengths), want)


def reference_retrieve(d: np.ndarray, p_ids, g_ids) -> dict[str, list]:
    """First correct rank, AP, INP, nearest and nearest correct gallery index, probe by probe in
    plain Python from a distance matrix (ties by gallery order)."""
    out: dict[str, list] = {k: [] for k in ("first", "ap", "inp", "nearest", "nearest_match")}
    for i, row in enumerate(d):
        order = sorted(range(len(row)), key=lambda j: (row[j], j))
        correct = [r for r, j in enumerate(order) if g_ids[j] == p_ids[i]]
        out["nearest"].append(order[0] if order else -1)
        if not correct:
            for k, v in (("first", -1), ("ap", 0.0), ("inp", 0.0), ("nearest_match", -1)):
                out[k].append(v)
            continue
        out["first"].append(correct[0])
        out["nearest_match"].append(order[correct[0]])
        out["ap"].append(sum((k + 1) / (r + 1) for k, r in enumerate(correct)) / len(correct))
        out["inp"].append(len(correct) / (correct[-1] + 1))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
def test_retrieve_equals_a_slow_reference(metric: str, device: str) -> None:
    rng = np.random.default_rng(1)
    # small integers: many exactly tied distances, so the tie rule (gallery order) is exercised
    gallery = rng.integers(0, 3, (40, 3, 2)).astype(np.float32)
    gallery[rng.random(40) < 0.05] = 0.0  # zero embeddings: a tie for every cosine
    probe = np.concatenate([gallery[[3, 3, 17, 39]], rng.integers(0, 3, (25, 3, 2))])
    probe = probe.astype(np.float32)
    g_ids = np.array([f"s{k}" for k in rng.integers(0, 8, 40)])
    p_ids = np.array([f"s{k}" for k in rng.integers(0, 10, len(probe))])  # s8, s9: no match
    p_ids[:2] = ["zz", g_ids[3]]  # the same embedding as gallery 3, without and with its id
    assert not set(p_ids) <= set(g_ids)
    p, g = torch.from_numpy(probe).to(device), torch.from_numpy(gallery).to(device)
    cap = 2_000  # bytes: a few probes per block
    assert _block_rows(len(gallery), 3, cap, 2) < len(probe) // 4
    d = torch.cat([b for _, b in distance_blocks(p, g, metric, cap)]).cpu().numpy()
    assert (np.sort(d, axis=1)[:, 1:] == np.sort(d, axis=1)[:, :-1]).any(axis=1).all()  # ties
    r = retrieve(p, p_ids, g, g_ids, metric, max_memory=cap)
    want = reference_retrieve(d, p_ids, g_ids)
    for k in ("first", "nearest", "nearest_match"):
        assert getattr(r, k).tolist() == want[k], k
        assert getattr(r, k).dtype == np.int64
    for k in ("ap", "inp"):
        np.testing.assert_allclose(getattr(r, k), want[k], rtol=1e-12, atol=0)
    assert r.first[0] == -1 and r.nearest_match[0] == -1 and r.ap[0] == 0.0


def test_retrieve_with_integer_ids_and_an_empty_gallery() -> None:
    p = torch.tensor([[[0.0]], [[5.0]]])
    g = torch.tensor([[[1.0]], [[4.0]], [[6.0]]])
    r = retrieve(p, np.array([7, 9]), g, np.array([9, 7, 9]))
    assert r.first.tolist() == [1, 1] and r.nearest.tolist() == [0, 1]  # 5.0: 4 and 6 tie,
    assert r.nearest_match.tolist() == [1, 2]  # gallery order ranks 4.0 (subject 7) first
    assert r.ap.tolist() == [0.5, (1 / 2 + 2 / 3) / 2] and r.inp.tolist() == [0.5, 2 / 3]
    empty = retrieve(p, np.array(["a", "b"]), g[:0], np.array([], dtype=str))
    assert empty.first.tolist() == [-1, -1] and empty.nearest.tolist() == [-1, -1]
    assert empty.ap.tolist() == [0.0, 0.0] and np.isnan(empty.mean_ap())


@pytest.fixture(scope="module")
def varied_pack(tmp_path_factory) -> Path:
    """Sequences of 1 to 40 random frames, in no order of length."""
    path = tmp_path_factory.mktemp("speed") / "v.h5"
    w = PackWriter(path, 64)
    rng = np.random.default_rng(3)
    for s in range(1, 6):
        for q in range(1, 5):
            n = int(rng.integers(1, 41))
            meta = {"subject": f"{s:03d}", "condition": "nm", "seq": f"{q:02d}", "view": "090"}
            frames = (rng.random((n, 64, 64)) < 0.3).astype(np.uint8) * 255
            w.append({**meta, "source": "x"}, frames, np.arange(n))
    w.close()
    return path


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_frames", [0, 12])
def test_embed_dataset_workers_and_a_per_sequence_loop_agree(
    varied_pack: Path, max_frames: int, device: str
) -> None:
    torch.manual_seed(0)
    dev = torch.device(device)
    model = SetModel((4, 8, 8), (4, 2, 1), 8).to(dev).eval()
    data = PackDataset([varied_pack], frames=None, height=32, cut=True)
    try:
        lengths = [len(data[j][0]) for j in range(len(data))]
        assert len(set(lengths)) > 5 and lengths != sorted(lengths)
        # batches of at most 60 frames: several sequences per batch, several batches
        runs = {
            w: embed_dataset(model, data, dev, max_frames, batch_frames=60, num_workers=w)
            for w in (0, 2)
        }
        alone = embed_dataset(model, data, dev, max_frames, batch_frames=1, num_workers=2)
        with torch.no_grad():
            loop = np.stack(
                [
                    model(to_model_input(s[even_frames(len(s), max_frames)], dev)[None])[:, 0]
                    .cpu()
                    .numpy()
                    for s in (data[j][0] for j in range(len(data)))
                ]
            )
    finally:
        data.close()
    assert runs[0].shape == (len(lengths), 7, 8) and runs[0].dtype == np.float32
    np.testing.assert_array_equal(runs[2], runs[0])
    # one sequence a batch is the loop exactly; in shared batches the convolutions may round the
    # last bits differently (the library picks its algorithm by batch size)
    np.testing.assert_array_equal(alone, loop)
    np.testing.assert_allclose(runs[0], loop, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_the_cpu_embeds_in_channels_last_as_the_default_layout_does(varied_pack, tmp_path) -> None:
    """load_model puts a CPU model in channels_last (train.memory_format auto, as in training):
    the same embeddings as PyTorch's default layout, to float rounding, in batches of any size."""
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    model = SetModel((4, 8, 8), (4, 2, 1), 8).eval()
    fast = SetModel((4, 8, 8), (4, 2, 1), 8).eval()
    fast.load_state_dict(model.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    data = PackDataset([varied_pack], frames=None, height=32, cut=True)
    try:
        plain = embed_dataset(model, data, cpu, batch_frames=4096)
        quick = embed_dataset(fast, data, cpu)  # the CPU default: 512 frames per batch
    finally:
        data.close()
    np.testing.assert_allclose(quick, plain, rtol=1e-5, atol=1e-6)
    r = train_tiny(make_pack(tmp_path / "p.h5"), tmp_path / "run", "--iterations", "1")
    assert r.exit_code == 0, r.output
    loaded = load_model(tmp_path / "run", cpu).model
    convs = [m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def test_kept_galleries_and_precomputed_norms_change_no_figure() -> None:
    """evaluate keeps stacked galleries (with their squared norms) while they fit in
    max_memory: a cap too small to keep any gives the same result, figure for figure."""
    from gaittrain.evaluation.protocol import evaluate, load_eval_protocol

    rng = np.random.default_rng(3)
    recordings = [("nm", f"{i:02d}") for i in range(1, 7)] + [("bg", "01"), ("cl", "01")]
    keys = [
        (f"{s:03d}", c, q, f"{v:03d}")
        for s in range(75, 81)
        for c, q in recordings
        for v in (0, 18, 36)
    ]
    emb = {k: rng.integers(0, 3, (4, 3)).astype(np.float32) for k in keys}  # ties aplenty
    protocol = load_eval_protocol("casia-b-lt")
    kept = evaluate(emb, protocol, max_memory=256 << 20)
    none = evaluate(emb, protocol, max_memory=200)  # no gallery fits: stacked per cell
    assert kept == none
    assert kept["conditions"]["NM"]["rank1"] == none["conditions"]["NM"]["rank1"]
