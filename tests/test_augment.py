"""Training augmentation (issue 12, item 5): pure, seeded, per sequence, and off by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gaittrain.config import load_config
from gaittrain.data import augment as A
from gaittrain.data.dataset import PackDataset
from tests.cli import make_pack


def frames(t: int = 4, h: int = 16, w: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((t, h, w), np.uint8)
    x[:, 3:13, 4:8] = rng.integers(1, 256, size=(t, 10, 4), dtype=np.uint8)
    return x


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


ALWAYS = [
    lambda x, g: A.random_rotate(x, g, 1.0, 10.0),
    lambda x, g: A.random_flip(x, g, 1.0),
    lambda x, g: A.random_erase(x, g, 1.0),
    lambda x, g: A.random_perspective(x, g, 1.0, 0.25),
]


@pytest.mark.parametrize("transform", ALWAYS, ids=["rotate", "flip", "erase", "perspective"])
def test_transforms_are_pure_seeded_and_keep_the_shape(transform) -> None:
    x = frames()
    before = x.copy()
    a, b = transform(x, rng(3)), transform(x, rng(3))
    assert np.array_equal(x, before)  # the input is never changed
    assert a.dtype == np.uint8 and a.shape == x.shape and a.flags.c_contiguous
    assert np.array_equal(a, b)  # same seed, same result
    assert not np.array_equal(a, x)  # probability 1: it fired


@pytest.mark.parametrize("transform", ["rotate", "flip", "erase", "perspective"])
def test_probability_zero_changes_nothing_and_draws_nothing(transform: str) -> None:
    g = rng(5)
    x = frames()
    calls = {
        "rotate": lambda: A.random_rotate(x, g, 0.0, 10.0),
        "flip": lambda: A.random_flip(x, g, 0.0),
        "erase": lambda: A.random_erase(x, g, 0.0),
        "perspective": lambda: A.random_perspective(x, g, 0.0),
    }
    assert calls[transform]() is x
    assert g.random() == rng(5).random()  # the generator did not move


def test_each_transform_does_what_it_says() -> None:
    x = frames()
    assert np.array_equal(A.flip(A.flip(x)), x)
    assert np.array_equal(A.flip(x)[:, :, 0], x[:, :, -1])
    assert np.array_equal(A.rotate(x, 0.0), x)
    assert np.array_equal(A.rotate(A.rotate(x, 90.0), -90.0)[:, 4:12, 2:10], x[:, 4:12, 2:10])
    h, w = x.shape[1:]
    canvas = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    assert np.array_equal(A.perspective(x, canvas), x)  # the identity warp
    erased = A.erase(np.full_like(x, 255), 2, 3, 4, 5)
    assert (erased == 0).sum() == x.shape[0] * 4 * 5
    assert (erased[:, 2:6, 3:8] == 0).all()


def test_erasing_draws_area_and_aspect_in_range_once_per_sequence() -> None:
    x = np.full((3, 64, 44), 255, np.uint8)
    for seed in range(50):
        out = A.random_erase(x, rng(seed), 1.0, (0.05, 0.2), 0.3)
        zero = out[0] == 0
        assert all(np.array_equal(out[i] == 0, zero) for i in range(3))  # the same rectangle
        rows, cols = np.nonzero(zero.any(1))[0], np.nonzero(zero.any(0))[0]
        eh, ew = len(rows), len(cols)
        assert zero.sum() == eh * ew  # one rectangle
        assert 0.04 * 64 * 44 <= eh * ew <= 0.21 * 64 * 44
        assert 0.3 * 0.8 <= eh / ew <= 1 / 0.3 * 1.25


def test_rotation_fires_with_its_probability_and_angle_bound() -> None:
    x = frames(t=1)
    fired = sum(not np.array_equal(A.random_rotate(x, rng(s), 0.3, 10.0), x) for s in range(400))
    assert 80 <= fired <= 160  # 120 expected


def test_perspective_corners_stay_within_the_shift() -> None:
    # a shift of one column keeps the left corners at 0 and the right ones at w - 1: a fixed warp
    x = frames(h=64, w=64)
    a = A.random_perspective(x, rng(1), 1.0, shift=1 / 64)
    b = A.random_perspective(x, rng(2), 1.0, shift=1 / 64)
    assert np.array_equal(a, b)


def test_augment_sequence_order_and_cut() -> None:
    cfg = load_config(
        None, ["data.augment.flip.prob=1.0", "data.augment.perspective.prob=0.0"]
    ).data.augment
    x = frames(w=16)
    out = A.augment_sequence(x, rng(0), cfg, cut=2)
    assert np.array_equal(out, x[:, :, 2:14][:, :, ::-1])  # cut, then flipped
    assert not load_config(None).data.augment.active()  # off by default


@pytest.mark.slow
def test_dataset_augments_reproducibly_from_the_item_seed(tmp_path: Path) -> None:
    pack = make_pack(tmp_path / "sample.h5")
    cfg = load_config(
        None,
        [
            "data.augment.rotate.prob=1.0",
            "data.augment.erase.prob=1.0",
            "data.augment.flip.prob=0.5",
            "data.augment.perspective.prob=0.5",
        ],
    ).data.augment
    one = PackDataset([pack], frames=8, augment=cfg)
    two = PackDataset([pack], frames=8, augment=cfg, cache=True)  # another "worker"
    plain = PackDataset([pack], frames=8)
    for item in [(0, 11), (3, 12), (5, 13)]:
        a, label = one[item]
        b, _ = two[item]
        assert np.array_equal(a.numpy(), b.numpy()) and a.dtype.is_floating_point is False
        assert a.shape == plain[item][0].shape == (8, 64, 44)
        assert not np.array_equal(a.numpy(), plain[item][0].numpy())
        assert label == plain[item][1]
    again, _ = two[(0, 11)]  # the cached sequence was not changed by augmenting it
    assert np.array_equal(again.numpy(), one[(0, 11)][0].numpy())
