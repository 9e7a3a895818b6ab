"""Training data: subject splits, the P x K sampler, frame sampling, the dataset, the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gaitprep.pack import PackWriter
from gaittrain.data.dataset import PackDataset, cut_width, sample_frames, to_model_input
from gaittrain.data.sampler import PKSampler
from gaittrain.data.splits import SplitError, load_protocol, select, train_subjects
from gaittrain.models import SetModel


def test_protocol_files() -> None:
    subjects = [f"{i:03d}" for i in range(1, 125)]
    assert train_subjects(subjects, "casia-b-lt") == [f"{i:03d}" for i in range(1, 75)]
    assert len(train_subjects(subjects, "casia-b-mt")) == 62
    assert len(train_subjects(subjects, "casia-b-st")) == 24
    assert select(subjects, load_protocol("casia-b-lt")["test"])[0] == "075"
    ou = [f"{i:05d}" for i in range(1, 11)]
    assert train_subjects(ou, "ou-mvlp") == ["00001", "00003", "00005", "00007", "00009"]
    with pytest.raises(SplitError, match="unknown protocol 'nope'"):
        load_protocol("nope")


def test_selectors() -> None:
    subjects = ["3", "10", "1", "2", "bob"]
    assert select(subjects, "1-2,10") == ["1", "2", "10"]
    assert select(subjects, "first:2") == ["1", "2"]
    assert select(subjects, "last:2") == ["10", "bob"]
    assert select(subjects, "last:0") == []
    with pytest.raises(SplitError, match="use last:N"):
        select(subjects, "last:two")
    assert select(subjects, "bob,003") == ["3", "bob"]
    assert select(subjects, "even") == ["2", "10"]
    with pytest.raises(SplitError, match="no subject of the pack matches"):
        train_subjects(subjects, "casia-b-lt", "50-60")


def test_sampler_is_a_function_of_seed_and_iteration() -> None:
    labels = np.repeat(np.arange(10), [5, 5, 5, 5, 5, 5, 5, 5, 5, 2])
    a = PKSampler(labels, p=4, k=3, seed=7)
    b = PKSampler(labels, p=4, k=3, seed=7, start=5)
    first = [batch for _, batch in zip(range(8), a, strict=False)]
    assert [batch for _, batch in zip(range(3), b, strict=False)] == first[5:8]
    assert a.batch(3) == first[3] and a.batch(3) != a.batch(4)
    assert PKSampler(labels, 4, 3, seed=8).batch(3) != a.batch(3)
    for batch in first:
        lab = labels[[i for i, _ in batch]]
        assert len(batch) == 12 and len(set(lab)) == 4
        assert all((lab == c).sum() == 3 for c in set(lab))
        for c in set(lab):  # without replacement when a subject has enough sequences
            idx = [i for i, _ in batch if labels[i] == c]
            assert len(set(idx)) == 3 if c != 9 else len(set(idx)) <= 2


def test_ranks_take_disjoint_slices_of_the_same_batch() -> None:
    labels = np.repeat(np.arange(6), 4)
    full = PKSampler(labels, 4, 2, seed=1).batch(11)
    parts = [PKSampler(labels, 4, 2, seed=1, rank=r, world_size=2).local(11) for r in (0, 1)]
    assert parts[0] + parts[1] == full
    with pytest.raises(ValueError, match="does not divide"):
        PKSampler(labels, 3, 3, seed=1, world_size=2)
    with pytest.raises(ValueError, match="more than the 6 training subjects"):
        PKSampler(labels, 7, 2, seed=1)


def test_frame_sampling() -> None:
    rng = np.random.default_rng(0)
    idx = sample_frames(10, 30, ordered=False, rng=rng)
    assert len(idx) == 30 and idx.min() >= 0 and idx.max() < 10
    win = sample_frames(50, 30, ordered=True, rng=rng)
    assert np.all(np.diff(win) == 1)
    short = sample_frames(5, 8, ordered=True, rng=rng)
    assert sorted(set(short)) == [0, 1, 2, 3, 4]
    assert cut_width(64) == 10 and cut_width(128) == 20


@pytest.fixture()
def pack(tmp_path: Path) -> Path:
    path = tmp_path / "t.h5"
    w = PackWriter(path, 64)
    rng = np.random.default_rng(0)
    for s in range(1, 5):
        for q in range(1, 4):
            n = int(rng.integers(3, 12))
            frames = rng.integers(0, 256, (n, 64, 64), dtype=np.uint8)
            w.append(
                {
                    "subject": f"{s:03d}",
                    "condition": "nm",
                    "seq": f"{q:02d}",
                    "view": "090",
                    "source": "x",
                },
                frames,
                np.arange(n),
            )
    w.close()
    return path


def test_dataset_samples_crops_and_labels(pack: Path) -> None:
    ds = PackDataset([pack], subjects=["001", "003"], frames=7)
    assert len(ds) == 6 and ds.subjects == ["001", "003"]
    assert list(ds.labels) == [0, 0, 0, 1, 1, 1]
    x, y = ds[(4, 123)]
    assert x.shape == (7, 64, 44) and x.dtype == torch.uint8  # converted on the device
    assert y == 1
    again, _ = ds[(4, 123)]
    assert torch.equal(x, again)  # the seed fixes the frames, whatever the worker
    raw = ds.packs[0][ds.items[4][1]]
    whole = PackDataset([pack], subjects=["001", "003"], frames=None)[4][0]
    assert torch.equal(whole, torch.from_numpy(raw[:, :, 10:54]))
    assert torch.equal(to_model_input(whole, "cpu"), whole.float() / 255)
    small = PackDataset([pack], frames=5, height=32)
    assert small[(0, 1)][0].shape == (5, 32, 22)
    every = PackDataset([pack], frames=None, cut=False)
    assert every[0][0].shape[0] == len(every.packs[0][0])
    cached = PackDataset([pack], subjects=["001", "003"], frames=7, cache=True)
    assert torch.equal(cached[(4, 123)][0], x)


def test_model_is_a_set_function_of_any_length() -> None:
    torch.manual_seed(0)
    m = SetModel((8, 16, 32), (4, 2, 1), 16)
    x = torch.rand(3, 6, 32, 22)
    y = m(x)
    assert y.shape == (7, 3, 16)
    torch.testing.assert_close(m(x[:, torch.randperm(6)]), y)
    lengths = [2, 5, 3]
    flat = torch.rand(sum(lengths), 32, 22)
    z = m(flat, lengths)
    for i, part in enumerate(torch.split(flat, lengths)):
        torch.testing.assert_close(z[:, i], m(part.unsqueeze(0))[:, 0])
    twice = torch.cat([x, x], dim=1)  # repeating frames changes nothing (max pooling)
    torch.testing.assert_close(m(twice), y)
