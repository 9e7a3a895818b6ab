"""`gait segment` on a camera that misbehaves (issue 26), measured against the true masks.

Short, small renders of `gait synth video` (160 x 120, 20 empty frames then 30 of the walk, the
first 10 learned from), one condition at a time, as bench/segment_bench.py varies them; the
held-out scene is the bench's own, made apart from `gait synth video`. The floors are the
figures measured here (in the comments) less a margin, not values tuned to pass.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from gaitprep.segment import (
    CHANGED,
    Adaptive,
    Segmented,
    SegmentError,
    clean_mask,
    doubts,
    person_problem,
    segment,
    write_mp4,
)
from gaitprep.synth.artifacts import Artifacts
from gaitprep.synth.sequence import SequenceSpec, render_sequence
from gaitprep.synth.video import Conditions, render_video
from tests.cli import ROOT, gait

SIZE, EMPTY, WALK, LEARN = (160, 120), 20, 30, 10


def _bench():
    """bench/segment_bench.py as a module (its held-out scene and its scoring)."""
    spec = importlib.util.spec_from_file_location(
        "segment_bench", ROOT / "bench" / "segment_bench.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _bench()


def run(video: np.ndarray, masks: np.ndarray, folder: Path, **options) -> tuple[Segmented, dict]:
    """Segment ``video`` (written as mp4 into ``folder``) and score it: mean IoU over the frames
    with a walker, and the false walkers among the empty frames after the learned ones."""
    path = folder / "walk.mp4"
    write_mp4(path, video)
    try:
        found = segment(path, learn_frames=LEARN, **options)
    except SegmentError:
        found = None
    s = BENCH.score(found, masks, LEARN)
    return found, {"iou": float(np.mean(s["ious"])), "false": s["false"], "empty": s["empty"]}


def synth(subject: int = 1, condition: str = "nm", view: int = 90, **conditions):
    return render_video(subject, condition, 1, view, WALK, SIZE, 0, EMPTY, Conditions(**conditions))


@pytest.mark.parametrize(
    "options, floor",
    [
        ({}, 0.90),  # measured 0.965
        ({"drift": 0.2}, 0.90),  # 0.962
        ({"drift": -0.3}, 0.87),  # 0.968
        ({"jumps": 2}, 0.88),  # 0.967 (at frames 38 and 49, during the walk)
        ({"colour_drift": 0.2}, 0.88),  # 0.962
        ({"contrast": 0.25}, 0.84),  # 0.918: clothes 21 grey levels from the scene's colour
        ({"noise": 15.0}, 0.90),  # 0.958
        ({"lamps": 2}, 0.89),  # 0.965
        ({"shadow": 0.4, "distractors": 3, "drift": 0.2}, 0.83),  # 0.938
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else None,
)
def test_the_adaptive_model_holds_under_one_condition(options, floor, tmp_path: Path) -> None:
    found, s = run(*synth(**options), tmp_path)
    print(f"{options}: mean IoU {s['iou']:.3f}, {s['false']} false of {s['empty']} empty")
    assert s["iou"] >= floor
    assert s["false"] == 0 and s["empty"] == EMPTY - LEARN


def test_what_failed_before_holds_now(tmp_path: Path) -> None:
    """The brightness rising 40 % over the clip: today's method (MOG2 learning at 0.001 after
    the learned frames) loses the walker (IoU 0.011 here: nearly every frame is foreground and
    rejected), the adaptive model keeps it (0.960)."""
    video, masks = synth(drift=0.4)
    _, before = run(video, masks, tmp_path, method="mog2")
    _, after = run(video, masks, tmp_path, method="adaptive")
    print(f"drift +40 %: mog2 {before['iou']:.3f}, adaptive {after['iou']:.3f}")
    assert before["iou"] < 0.3 and after["iou"] >= 0.9 and after["false"] == 0


@pytest.mark.parametrize("i", [0, 1])
def test_the_held_out_scene_meets_the_target(i: int, tmp_path: Path) -> None:
    """The bench's held-out scene (stripes and blotches, noise σ 4, a swaying pole, the walker's
    shadow, brightness +20 % over the clip): the target is mean IoU >= 0.85 and no silhouette
    in an empty frame (measured 0.955 and 0.929)."""
    condition, view = BENCH.RECORDINGS[i]
    spec = SequenceSpec("casia-b", 11 + i, condition, 1, view, WALK, *SIZE, 0, Artifacts.none())
    video, masks = BENCH.held_out_video(render_sequence(spec), EMPTY, i)
    _, s = run(video, masks, tmp_path)
    print(f"held-out {i}: mean IoU {s['iou']:.3f}, {s['false']} false of {s['empty']} empty")
    assert s["iou"] >= 0.85 and s["false"] == 0


def _light_switched(video: np.ndarray, at: int) -> np.ndarray:
    """``video`` with, from frame ``at`` on, its left half 50 % brighter and its right half 20 %
    darker: a change no gain smooth across the image undoes."""
    out = video.astype(np.float64)
    half = video.shape[2] // 2
    out[at:, :, :half] *= 1.5
    out[at:, :, half:] *= 0.8
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("at, floor", [(15, 0.88), (35, 0.80)])  # measured 0.964, 0.883
def test_a_switched_light_is_relearned_not_a_walker(at: int, floor: float, tmp_path) -> None:
    """The frame where the light changes is rejected and counted (the model takes it as the new
    scene), no empty frame gets a silhouette; switched while the walker is in view, the part of
    the scene it hides is guessed from the light around it."""
    video, masks = synth()
    found, s = run(_light_switched(video, at), masks, tmp_path)
    print(f"light switched at {at}: mean IoU {s['iou']:.3f}, rejected {found.rejected}")
    assert found.rejected.get(CHANGED) == 1
    assert s["false"] == 0 and s["iou"] >= floor


def test_gait_segment_prints_what_it_rejected(tmp_path: Path) -> None:
    """A flash (one frame of another scene) in the walk, and a wide thing crossing instead of
    the walker for a while: each rejected frame is counted by reason in the summary line."""
    video, masks = synth()
    video = video.copy()
    video[40] = 255 - video[40]  # a flash
    for t in range(45, 50):  # the walker replaced by something lying down
        video[t] = video[5]
        cv2.rectangle(video[t], (10 + 4 * t - 180, 80), (70 + 4 * t - 180, 100), (20, 20, 20), -1)
    path = tmp_path / "walk.mp4"
    write_mp4(path, video)
    r = gait("segment", path, tmp_path / "sil", "--learn-frames", LEARN)
    assert r.exit_code == 0, r.output
    line = r.output.strip().splitlines()[0]
    assert f"1 {CHANGED}" in line and "5 not shaped like a person" in line, line
    assert "rejected" in line and len(list((tmp_path / "sil").iterdir())) == WALK - 6


def test_a_person_is_tall_not_huge_and_of_a_steady_size() -> None:
    frame = np.zeros((120, 160), np.uint8)
    person = frame.copy()
    person[30:100, 60:85] = 255
    assert person_problem(person, []) is None
    lying = frame.copy()
    lying[80:100, 20:90] = 255
    assert person_problem(lying, []) == "not shaped like a person"
    pole = frame.copy()
    pole[0:120, 10:30] = 255  # as tall as the frame: not a whole person
    assert person_problem(pole, []) == "not shaped like a person"
    assert person_problem(np.full_like(frame, 255), []) == "covers most of the frame"
    area = int((person > 0).sum())
    assert person_problem(person, [area // 3] * 5) == "size jump"
    assert person_problem(person, [area] * 5) is None


def _found(areas: list[int], rejected: dict) -> Segmented:
    masks = []
    for i, a in enumerate(areas):
        m = np.zeros((100, 100), np.uint8)
        m[: a // 10, :10] = 255
        masks.append((i, m))
    return Segmented(masks=masks, read=len(areas), rejected=rejected)


def test_doubts_say_when_not_to_trust_the_silhouettes() -> None:
    assert doubts(_found([600, 620, 640, 610, 600], {})) == []
    assert doubts(_found([600, 620], {"size jump": 1})) == []
    (line,) = doubts(_found([600, 620], {"not shaped like a person": 3}))
    assert "3 frames were rejected and only 2 kept" in line
    (line,) = doubts(_found([300, 600, 300, 600, 300, 600], {}))
    assert "sizes jump" in line and "5 of 5 steps" in line


def test_synth_video_conditions_are_seeded(tmp_path: Path) -> None:
    """The same arguments give the same bytes (video and masks); the seed changes them; a
    value out of range is refused before anything is written."""
    args = ["--frames", 8, "--empty", 4, "--size", "96x72", "--drift", 0.3, "--jumps", 1]
    args += ["--colour-drift", -0.1, "--noise", 6, "--contrast", 0.5, "--shadow", 0.4]
    args += ["--distractors", 3, "--lamps", 1]
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        r = gait("synth", "video", tmp_path / f"{name}.mp4", *args, "--seed", seed)
        assert r.exit_code == 0, r.output

    def content(name: str) -> list[bytes]:
        masks = sorted((tmp_path / f"{name}.mp4.masks").iterdir())
        return [(tmp_path / f"{name}.mp4").read_bytes()] + [p.read_bytes() for p in masks]

    assert content("a") == content("b") != content("c")
    assert len(content("a")) == 1 + 12
    r = gait("synth", "video", tmp_path / "d.mp4", "--drift", 0.5)
    assert r.exit_code == 2 and "--drift" in r.output and not (tmp_path / "d.mp4").exists()


def test_the_plain_scene_is_the_default() -> None:
    """Conditions() is the scene `gait synth video` made before it had conditions."""
    a, _ = render_video(2, "bg", 1, 90, 4, SIZE, 5, 2)
    b, _ = render_video(2, "bg", 1, 90, 4, SIZE, 5, 2, Conditions(drift=0.0, noise=3.0))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="shadow"):
        Conditions(shadow=0.9)


def test_identify_warns_when_the_silhouettes_are_in_doubt(quick_run, tmp_path: Path) -> None:
    """A video where, after a few frames of the walker, something lying down crosses instead:
    most frames are rejected, and identify says so (a UserWarning, and ``warnings`` in its
    result) rather than answering silently."""
    from gaitprep.process import Params
    from gaittrain.device import resolve_device
    from gaittrain.inference.identify import embed_folder
    from gaittrain.trained_model import load_model

    video, masks = synth()
    video = video.copy()
    for t in range(EMPTY + 6, EMPTY + WALK):
        video[t] = video[5]
        x = 4 * t - 100
        cv2.rectangle(video[t], (x, 80), (x + 60, 100), (20, 20, 20), -1)
    path = tmp_path / "walk.mp4"
    write_mp4(path, video)
    device = resolve_device("cpu")
    trained = load_model(quick_run, device)
    with pytest.warns(UserWarning, match="rejected and only 6 kept"):
        _, info = embed_folder(path, trained.model, trained.cfg, Params(), device)
    assert info["frames_rejected"] > 6 and len(info["warnings"]) == 1
    plain = tmp_path / "plain.mp4"
    write_mp4(plain, synth()[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a video without trouble
        _, info = embed_folder(plain, trained.model, trained.cfg, Params(), device)
    assert info["warnings"] == [] and info["frames_rejected"] == 0


@pytest.mark.parametrize("edge", ["left", "right"])
def test_a_walker_cut_by_the_frames_edge_is_judged_by_its_share_only(edge: str) -> None:
    """Entering or leaving, the part of the walker in view has neither a person's shape nor the
    walker's size: it is kept (an independent held-out render, a walker crossing the whole frame,
    lost its entry and exit frames to these checks: mean IoU 0.75-0.84 before, 0.79-0.86 after),
    and only a blob covering most of the frame is refused."""
    blob = np.zeros((120, 160), np.uint8)
    columns = slice(0, 8) if edge == "left" else slice(152, 160)
    blob[20:110, columns] = 255  # 90 x 8: taller than ASPECT allows, far smaller than the walker
    assert person_problem(blob, []) is None
    assert person_problem(blob, [5000]) is None
    inside = np.roll(blob, 40 if edge == "left" else -40, axis=1)
    assert person_problem(inside, []) == "not shaped like a person"
    full = np.full((120, 160), 255, np.uint8)
    assert person_problem(full, []) == "covers most of the frame"


def _swaying_pole_scene(
    empty: int = 30, walk: int = 40, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A textured scene (160 x 120, noise σ 3) with a thin bar swaying ±3 px about column 80
    (period 11 frames), then a walker-shaped blob in a cloth of its own crossing in front of
    it, 2 px a frame: the frames and the walker's true masks. (`gait synth video`'s swaying
    pole stands at the frame's right edge, which its walker does not reach.)"""
    rng = np.random.default_rng(seed)
    h, w = 120, 160
    scene = 120 + cv2.GaussianBlur(rng.normal(0, 30, (h, w, 3)), (0, 0), 1.5)
    cloth = np.array([40.0, 90.0, 190.0]) + cv2.GaussianBlur(
        rng.normal(0, 20, (h, w, 3)), (0, 0), 1
    )
    frames, masks = [], []
    for t in range(empty + walk):
        x = 80 + 3 * np.sin(2 * np.pi * t / 11)
        bar = np.clip(2.5 - np.abs(np.arange(w) - x), 0, 1)[None, :, None]  # 4 px, soft edges
        img = scene * (1 - bar) + np.array([70.0, 70.0, 80.0]) * bar
        mask = np.zeros((h, w), np.uint8)
        if t >= empty:
            cx = 40 + 2 * (t - empty)
            cv2.ellipse(mask, (cx, 72), (8, 30), 0, 0, 360, 255, -1)
            cv2.circle(mask, (cx, 34), 7, 255, -1)
            img[mask > 0] = cloth[mask > 0]
        img = img + rng.normal(0, 3, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(mask)
    return frames, masks


def test_a_swaying_pole_neither_hides_the_walker_nor_becomes_one(tmp_path: Path) -> None:
    """A pixel that a swaying pole covers in some frames keeps the scene's tolerance (the pole
    is another state of the scene, not noise): the walker in front of the pole is found there,
    and the pole alone is no walker. Measured: 0.89 or more of the walker's pixels over the
    pole's band found in every frame (0.22 before the samples and the robust variance), mean
    IoU 0.957 while it crosses the band (0.273: the walker was cut in two there and 4 frames
    were rejected), 0.983 over the walk, no silhouette in the 10 empty frames after the 20
    learned."""
    learn, empty = 20, 30
    frames, masks = _swaying_pole_scene(empty=empty)
    band = np.zeros(masks[0].shape, bool)
    band[:, 74:87] = True  # where the pole sways
    model = Adaptive()
    for img in frames[:learn]:
        model.teach(img)
    shares = []
    for img, mask in zip(frames[learn:], masks[learn:], strict=True):
        fg, changed = model.foreground(img)
        over = (mask > 0) & band
        if over.sum() > 50:
            shares.append(float((fg[over] > 0).mean()))
        model.learn(mask if mask.any() else None, changed)
    for t, img in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{t:04d}.png"), img)
    found = segment(tmp_path, learn_frames=learn)
    got = dict(found.masks)
    ious = {}
    for t in range(empty, len(frames)):
        true, mine = masks[t] > 0, got.get(t, np.zeros_like(masks[t])) > 0
        ious[t] = (true & mine).sum() / (true | mine).sum()
    crossing = [ious[t] for t in ious if ((masks[t] > 0) & band).sum() > 50]
    print(f"over the pole: {min(shares):.2f}; crossing IoU {np.mean(crossing):.3f}")
    assert min(shares) >= 0.8
    assert (
        np.mean(crossing) >= 0.85 and min(crossing) >= 0.75 and np.mean(list(ious.values())) >= 0.9
    )
    assert not any(learn <= t < empty for t in got) and found.rejected == {}


def test_what_a_cut_walker_encloses_with_the_frames_edge_is_no_hole() -> None:
    """The scene between the arm and the leg of a walker cut by the frame's edge goes on beyond
    the frame: it is not filled as a hole (it was, and cost an entering walker up to a fifth of
    its IoU on the independent held-out render); what the walker encloses is."""
    fg = np.zeros((120, 160), np.uint8)
    fg[20:110, 130:145] = 255  # the body, near the right edge
    fg[40:46, 145:160] = 255  # an arm reaching the edge
    fg[90:96, 145:160] = 255  # a leg reaching the edge
    fg[56:74, 16:64] = 255
    fg[62:68, 24:56] = 0  # a ring: its inside is a hole
    mask = clean_mask(fg)
    assert mask[50:85, 148:160].max() == 0
    assert mask[62:68, 24:56].min() == 255
