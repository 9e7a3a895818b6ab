"""The walker, the camera convention and the artifacts, through the Python API."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gaitprep.synth import Artifacts, SequenceSpec, render_sequence
from gaitprep.synth.artifacts import PER_FRAME, PER_SEQUENCE
from gaitprep.synth.body import ANTHRO, sample_subject
from gaitprep.synth.clothing import outfit_for

CLEAN = Artifacts.none()


def spec(
    subject=1, condition="nm", seq=1, view=90, frames=12, seed=0, artifacts=CLEAN, w=320, h=240
) -> SequenceSpec:
    return SequenceSpec("casia-b", subject, condition, seq, view, frames, w, h, seed, artifacts)


def components(img: np.ndarray) -> int:
    return cv2.connectedComponents((img > 0).astype(np.uint8), connectivity=8)[0] - 1


@pytest.mark.parametrize("view", [0, 36, 90, 144, 180])
@pytest.mark.parametrize(("condition", "seq"), [("nm", 1), ("bg", 1), ("bg", 2), ("cl", 1)])
def test_clean_frames_are_one_whole_body_inside_the_frame(view, condition, seq) -> None:
    frames = render_sequence(spec(subject=3, condition=condition, seq=seq, view=view))
    assert frames.dtype == np.uint8 and frames.shape == (12, 240, 320)
    assert set(np.unique(frames)) == {0, 255}
    for img in frames:
        assert components(img) == 1
        assert not (img[0].any() or img[-1].any() or img[:, 0].any() or img[:, -1].any())
        rows = np.flatnonzero(img.any(1))
        assert 0.35 * 240 < rows[-1] - rows[0] < 0.98 * 240  # a person-sized silhouette


def test_side_view_walks_left_to_right_and_270_right_to_left() -> None:
    def centroid_x(view):
        f = render_sequence(SequenceSpec("ou-mvlp", 1, "nm", 0, view, 25, 320, 245, 0, CLEAN))
        xs = [np.flatnonzero(img.any(0)).mean() for img in (f[0], f[-1])]
        return xs[1] - xs[0]

    assert centroid_x(90) > 20
    assert centroid_x(270) < -20


def test_frontal_walker_grows_as_it_approaches() -> None:
    f = render_sequence(spec(view=0, frames=40))
    height = [np.ptp(np.flatnonzero(img.any(1))) for img in (f[0], f[-1])]
    assert height[1] > 1.05 * height[0]
    f = render_sequence(spec(view=180, frames=40))
    height = [np.ptp(np.flatnonzero(img.any(1))) for img in (f[0], f[-1])]
    assert height[1] < 0.95 * height[0]


def test_identity_is_persistent_and_distinct() -> None:
    assert sample_subject(0, 7) == sample_subject(0, 7)
    a, b = sample_subject(0, 7), sample_subject(0, 8)
    assert a != b and a.height != b.height and a.cadence != b.cadence
    assert sample_subject(1, 7) != a
    # The same subject's nm sequences differ by recording nuisance only, not by identity.
    f1 = render_sequence(spec(subject=7, seq=1))
    f2 = render_sequence(spec(subject=7, seq=2))
    assert not np.array_equal(f1, f2)


def test_bags_differ_between_bg01_and_bg02_and_coats_widen() -> None:
    s = sample_subject(0, 4)
    bag1, bag2 = outfit_for(0, s, "bg", 1).bag, outfit_for(0, s, "bg", 2).bag
    assert bag1 and bag2 and bag1.kind != bag2.kind
    assert outfit_for(0, s, "nm", 3).bag is None and outfit_for(0, s, "cl", 1).coat is not None
    for subject in (4, 5, 6):  # area relative to height², since the walker's distance varies
        nm = side_widths(render_sequence(spec(subject=subject, view=0)), 0.0, 1.0)
        cl = side_widths(render_sequence(spec(subject=subject, condition="cl", view=0)), 0.0, 1.0)
        assert cl > 1.04 * nm


def test_clothes_belong_to_the_subject_and_the_coat_to_cl() -> None:
    s = sample_subject(0, 9)
    outfits = [outfit_for(0, s, c, n) for c, n in (("nm", 1), ("nm", 6), ("bg", 2), ("cl", 1))]
    assert all(o.clothes == outfits[0].clothes for o in outfits)
    assert outfit_for(0, s, "cl", 1).coat == outfit_for(0, s, "cl", 2).coat
    assert outfit_for(0, sample_subject(0, 10), "nm", 1).clothes != outfits[0].clothes


def test_the_average_body_has_the_survey_girths() -> None:
    s = sample_subject(3, 1, spread_scale=0.0)
    assert s.height == pytest.approx(1.70)
    assert 2 * np.pi * s.calf_r == pytest.approx(ANTHRO["calf_girth"] * 1.70)
    assert 2 * s.hip_w == pytest.approx(ANTHRO["hip_breadth"] * 1.70)
    assert 2 * s.chest_d == pytest.approx(ANTHRO["chest_depth"] * 1.70)


def side_widths(frames: np.ndarray, lo: float, hi: float) -> float:
    """Mean foreground width / body height of the rows from ``lo`` to ``hi`` of the body."""
    out = []
    for img in frames:
        rows = np.flatnonzero(img.any(1))
        top, height = rows[0], rows[-1] - rows[0] + 1
        band = img[top + int(lo * height) : top + int(hi * height)] > 0
        out.append(band.sum(1).mean() / height)
    return float(np.mean(out))


def test_coats_widen_the_hips_and_thighs_and_backpacks_the_back_in_the_side_view() -> None:
    hips = {c: [] for c in ("nm", "cl")}
    for subject in range(1, 9):
        for c in hips:
            frames = render_sequence(spec(subject=subject, condition=c, frames=16))
            hips[c].append(side_widths(frames, 0.45, 0.65))
    assert np.mean(hips["cl"]) > 1.1 * np.mean(hips["nm"])
    s = next(
        i
        for i in range(1, 30)
        if outfit_for(0, sample_subject(0, i), "bg", 1).bag.kind == "backpack"
    )
    nm = side_widths(render_sequence(spec(subject=s, frames=16)), 0.2, 0.4)
    bg = side_widths(render_sequence(spec(subject=s, condition="bg", frames=16)), 0.2, 0.4)
    assert bg > 1.2 * nm


def hits(name: str, rate: float, n_seq: int, frames: int):
    """Render n_seq sequences with only ``name`` at ``rate`` and their clean twins."""
    arts = CLEAN.with_rates({name: rate})
    out = []
    for i in range(n_seq):
        clean = render_sequence(
            spec(subject=1 + i % 5, seq=1 + i // 5, view=18 * (i % 11), frames=frames, w=160, h=120)
        )
        noisy = render_sequence(
            spec(
                subject=1 + i % 5,
                seq=1 + i // 5,
                view=18 * (i % 11),
                frames=frames,
                w=160,
                h=120,
                artifacts=arts,
            )
        )
        out.append((clean, noisy))
    return out


def within(count: int, n: int, rate: float) -> bool:
    """``count`` of ``n`` Bernoulli(rate) trials is within 4.5 standard deviations of the rate."""
    sd = np.sqrt(n * rate * (1 - rate))
    return abs(count - n * rate) <= 4.5 * sd + 1


@pytest.mark.parametrize("name", PER_FRAME)
def test_per_frame_artifacts_hit_at_their_rate(name: str) -> None:
    rate = 0.3
    pairs = hits(name, rate, n_seq=20, frames=20)
    changed = [
        (c, n)
        for clean, noisy in pairs
        for c, n in zip(clean, noisy, strict=True)
        if not np.array_equal(c, n)
    ]
    assert within(len(changed), 400, rate), len(changed)
    for c, n in changed:
        added, removed = (n > c).any(), (n < c).any()
        if name in ("speckle", "blob"):
            assert added and not removed
            assert components(n) > components(c)  # detached specks and blobs
        elif name == "holes":
            assert removed and not added
        elif name == "empty":
            assert not n.any()
        elif name == "ragged":
            kernel = np.ones((5, 5), np.uint8)
            band = cv2.dilate(c, kernel) != cv2.erode(c, kernel)
            assert not (n != c)[~band].any()  # only the outline changes


@pytest.mark.parametrize("name", PER_SEQUENCE)
def test_per_sequence_artifacts_hit_at_their_rate(name: str) -> None:
    rate = 0.4
    pairs = hits(name, rate, n_seq=50, frames=8)
    changed = [(c, n) for c, n in pairs if not np.array_equal(c, n)]
    assert within(len(changed), 50, rate), len(changed)
    for c, n in changed:
        if name == "short":
            assert 1 <= sum(img.any() for img in n) < 5
        elif name == "out_of_frame":
            e = n[[0, -1]]
            assert e[:, 0].any() or e[:, -1].any() or e[:, :, 0].any() or e[:, :, -1].any()
        elif name == "shadow":
            assert (n >= c).all() and (n > c)[:, 60:].any()  # added pixels, low in the frame


def test_default_artifacts_are_realistic_but_not_overwhelming() -> None:
    frames = np.concatenate(
        [
            render_sequence(spec(subject=s, view=v, frames=10, artifacts=Artifacts()))
            for s in (1, 2)
            for v in (0, 90)
        ]
    )
    nonempty = [f for f in frames if f.any()]
    assert len(nonempty) >= 0.8 * len(frames)
    assert np.mean([components(f) > 1 for f in nonempty]) > 0.1
