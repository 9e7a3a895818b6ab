"""`gait segment`: silhouettes from a fixed camera, measured against the true masks.

The scene is made here: the sample data's silhouettes of one walk, composited as a grey,
textured body onto a textured background with camera noise, after 20 frames of the empty scene;
a video (mp4) and a folder of frames are both segmented.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from gaitprep.segment import clean_mask, pick_walker, segment, write_mp4
from tests.cli import SAMPLE, assert_one_line_error, gait

EMPTY = 20


def scene(walk: Path, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames (BGR) and the true masks (None for the empty frames) of a walk in a scene."""
    rng = np.random.default_rng(seed)
    masks = [cv2.imread(str(p), 0) for p in sorted(walk.glob("*.png"))]
    h, w = masks[0].shape
    background = cv2.GaussianBlur(rng.integers(90, 200, (h, w, 3), dtype=np.uint8), (7, 7), 0)
    body = rng.integers(20, 70, (h, w, 3), dtype=np.uint8)
    frames, truth = [], []
    for m in [None] * EMPTY + masks:
        noise = rng.normal(0, 3, (h, w, 3))
        img = background.astype(np.float64) + noise
        if m is not None:
            img[m > 0] = body[m > 0] + noise[m > 0]
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        truth.append(m)
    return frames, truth


def mean_iou(found, truth) -> float:
    scores = []
    by_index = dict(found.masks)
    for i, m in enumerate(truth):
        if m is None or (m > 0).sum() < 400:
            continue
        got = by_index.get(i, np.zeros_like(m)) > 0
        true = m > 0
        scores.append((got & true).sum() / (got | true).sum())
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("segment")
    frames, truth = scene(SAMPLE / "005" / "nm-01" / "090")
    folder = base / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), f)
    video = base / "walk.mp4"
    write_mp4(video, frames)
    return {"base": base, "folder": folder, "video": video, "truth": truth}


@pytest.mark.parametrize("source", ["folder", "video"])
@pytest.mark.parametrize("method", ["adaptive", "mog2", "knn"])
def test_segmentation_matches_the_true_masks(walk, source, method) -> None:
    found = segment(walk[source], method=method)
    iou = mean_iou(found, walk["truth"])
    print(f"{source} {method}: mean IoU {iou:.3f}")
    assert iou >= 0.85
    assert found.learned == EMPTY and found.read == len(walk["truth"])


def test_the_cli_writes_binary_frames_identify_reads(walk, tmp_path: Path) -> None:
    out = tmp_path / "sil"
    r = gait("segment", walk["video"], out)
    assert r.exit_code == 0, r.output
    files = sorted(out.glob("*.png"))
    assert len(files) > 0 and set(np.unique(cv2.imread(str(files[0]), 0))) <= {0, 255}
    preview = tmp_path / "preview.png"
    r = gait("segment", walk["video"], tmp_path / "sil2", "--preview", preview)
    assert r.exit_code == 0, r.output
    img = cv2.imread(str(preview))
    h, w = cv2.imread(str(files[0]), 0).shape
    assert img.shape == (h, 8 * w, 3)  # 8 frames side by side, the walker in red
    reddish = (img[..., 2].astype(int) - img[..., 1]) > 60
    assert reddish.sum() > 400
    again = gait("segment", walk["video"], out)  # never into a folder that holds frames
    assert_one_line_error(again, "not an empty folder")


def test_bad_inputs_are_one_line(walk, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    assert_one_line_error(gait("segment", junk, tmp_path / "a"), "not a video")
    still = tmp_path / "still"
    still.mkdir()
    img = cv2.imread(str(next(walk["folder"].glob("*.png"))))
    for i in range(30):
        cv2.imwrite(str(still / f"{i:03d}.png"), img)
    assert_one_line_error(gait("segment", still, tmp_path / "b"), "no walker found")
    assert not (tmp_path / "b").exists()


def test_the_walker_is_tracked_past_a_bigger_distractor() -> None:
    mask = np.zeros((100, 200), np.uint8)
    mask[20:80, 10:30] = 255  # the walker, where it was
    mask[20:80, 120:155] = 255  # a larger swaying object elsewhere (under 3x the walker)
    blob, centre, problem = pick_walker(clean_mask(mask), 100, previous=(20.0, 50.0))
    assert blob[50, 20] == 255 and blob[50, 140] == 0 and problem is None


@pytest.mark.slow
def test_identify_names_the_walker_of_a_video(tmp_path: Path) -> None:
    """video -> gait segment -> gait identify against a gallery of named people."""
    from tests.cli import make_pack, train_tiny

    pack = make_pack(tmp_path / "sample.h5")
    run = tmp_path / "run"
    r = train_tiny(pack, run, "--train-subjects", "first:4", "--iterations", "4")
    assert r.exit_code == 0, r.output
    people = tmp_path / "people.h5"
    for name, subject in (("alice", "005"), ("bob", "006")):
        for rec in ("nm-01", "nm-02"):
            walk = SAMPLE / subject / rec / "090"
            assert gait("gallery", "add", people, run, name, walk).exit_code == 0
    for name, subject in (("alice", "005"), ("bob", "006")):
        frames, _ = scene(SAMPLE / subject / "bg-01" / "090", seed=1)
        video = tmp_path / f"{name}.mp4"
        write_mp4(video, frames)
        sil = tmp_path / f"{name}-sil"
        assert gait("segment", video, sil).exit_code == 0
        r = gait("identify", run, people, sil, "--top-k", "1")
        assert r.exit_code == 0, r.output
        assert r.stdout.strip().splitlines()[1].split()[1] == name


@pytest.mark.slow
def test_gait_synth_video_is_segmented_to_its_true_masks(tmp_path: Path) -> None:
    """The default scene of `gait synth video` (lighting drift, camera noise, a swaying shrub):
    mean IoU >= 0.85 against the masks written beside it."""
    video = tmp_path / "walk.mp4"
    r = gait("synth", "video", video, "--subject", "3", "--seed", "1")
    assert r.exit_code == 0, r.output
    truth = [cv2.imread(str(p), 0) for p in sorted((tmp_path / "walk.mp4.masks").glob("*.png"))]
    assert len(truth) == 60 and all(m.max() == 0 for m in truth[:20])
    for method in ("adaptive", "mog2", "knn"):
        iou = mean_iou(segment(video, method=method), truth)
        print(f"gait synth video, {method}: mean IoU {iou:.3f}")
        assert iou >= 0.85


@pytest.mark.slow
def test_gallery_and_identify_take_a_video(tmp_path: Path) -> None:
    """`gait gallery add` and `gait identify` segment a video themselves: the same ranking as
    through `gait segment`'s folder."""
    from tests.cli import make_pack, train_tiny

    pack = make_pack(tmp_path / "sample.h5")
    run = tmp_path / "run"
    assert train_tiny(pack, run, "--iterations", "4").exit_code == 0
    people = tmp_path / "people.h5"
    videos = {}
    for name, subject in (("alice", "005"), ("bob", "006")):
        frames, _ = scene(SAMPLE / subject / "nm-01" / "090", seed=3)
        videos[name] = tmp_path / f"{name}.mp4"
        write_mp4(videos[name], frames)
        r = gait("gallery", "add", people, run, name, videos[name])
        assert r.exit_code == 0, r.output
    probe = tmp_path / "probe.mp4"
    frames, _ = scene(SAMPLE / "005" / "bg-01" / "090", seed=4)
    write_mp4(probe, frames)
    direct = gait("identify", run, people, probe, "--json")
    assert direct.exit_code == 0, direct.output
    sil = tmp_path / "sil"
    assert gait("segment", probe, sil).exit_code == 0
    via = gait("identify", run, people, sil, "--json")
    first = json.loads(direct.stdout)["matches"]
    assert first == json.loads(via.stdout)["matches"] and first[0]["subject"] == "alice"
