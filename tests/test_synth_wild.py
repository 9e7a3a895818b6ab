"""`gait synth gait3d` and `gait synth grew` (issue 24, item 5): the synthetic walkers in the
wild, in Gait3D's and GREW's layouts.

Each test writes a tiny tree (a few subjects, a few frames) and checks it: same arguments give the
same bytes, `gait prep gait3d | grew` read it into packs of the subjects, cameras, probes and
distractors the plan says, the partition and answer files agree with the tree, and the frames
vary in size and occlusion as docs/synth.md says (measured).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from gaitprep.pack import Pack
from gaitprep.synth.wild import Scene, WildJob, render_wild
from tests.cli import assert_one_line_error, gait

TINY = ("--subjects", "8", "--test", "2", "--frames", "6", "--cameras", "5")


def synth(*args) -> None:
    r = gait("synth", *args)
    assert r.exit_code == 0, r.output


def digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (the hidden marker included) and its sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def folders(root: Path, depth: int) -> set[str]:
    """The sequence folders ``depth`` levels under ``root`` (those that hold frames)."""
    return {
        str(p.relative_to(root))
        for p in root.glob("/".join(["*"] * depth))
        if p.is_dir() and any(p.glob("*.png"))
    }


@pytest.fixture(scope="module")
def gait3d(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gait3d")
    synth("gait3d", root / "raw", *TINY, "--workers", "1")
    r = gait("prep", "gait3d", root / "raw" / "2D_Silhouettes", root / "g.h5", "--workers", "1")
    assert r.exit_code == 0, r.output
    return root / "raw", root / "g.h5"


@pytest.fixture(scope="module")
def grew(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("grew")
    synth("grew", root / "raw", *TINY, "--distractors", "3", "--workers", "1")
    r = gait("prep", "grew", root / "raw", root / "g.h5", "--workers", "1")
    assert r.exit_code == 0, r.output
    return root / "raw", root / "g.h5"


# --- determinism and output safety ---------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["gait3d", "grew"])
def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path, dataset, gait3d, grew) -> None:
    first = gait3d[0] if dataset == "gait3d" else grew[0]
    extra = ("--distractors", "3") if dataset == "grew" else ()
    synth(dataset, tmp_path / "a", *TINY, *extra, "--workers", "2")
    assert digest(tmp_path / "a") == digest(first)
    synth(dataset, tmp_path / "b", *TINY, *extra, "--seed", "1", "--workers", "1")
    other = digest(tmp_path / "b")
    assert other.keys() != digest(first).keys() or other != digest(first)
    # a different seed: different frames, not only different names (an empty frame, which the
    # `empty` artifact makes, is the same in both)
    frames = [v for k, v in other.items() if k.endswith(".png")]
    common = set(frames) & {v for k, v in digest(first).items() if k.endswith(".png")}
    assert len(common) <= 1


def test_resume_refuse_and_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    synth("gait3d", out, *TINY, "--workers", "1")
    whole = digest(out)
    victim = sorted((out / "2D_Silhouettes").glob("*/*/*"))[3]
    for f in victim.iterdir():
        f.unlink()
    victim.rmdir()
    synth("gait3d", out, *TINY, "--workers", "1")  # the same command writes what is missing
    assert digest(out) == whole
    r = gait("synth", "gait3d", out, *TINY, "--seed", "2")
    assert_one_line_error(r, "other arguments (seed)", "--overwrite")
    synth("gait3d", out, *TINY, "--seed", "2", "--overwrite", "--workers", "1")
    assert digest(out) != whole
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    r = gait("synth", "grew", foreign, *TINY)
    assert_one_line_error(r, "not a gait synth tree")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    r = gait("synth", "grew", tmp_path / "x", "--subjects", "3", "--test", "3")
    assert_one_line_error(r, "--test 3")


# --- Gait3D --------------------------------------------------------------------------------------


def test_gait3d_tree_pack_and_partition(gait3d) -> None:
    raw, pack = gait3d
    partition = json.loads((raw / "Gait3D.json").read_text())
    assert partition["TRAIN_SET"] == [f"{i:04d}" for i in range(1, 7)]
    assert partition["TEST_SET"] == ["0007", "0008"]
    tree = folders(raw / "2D_Silhouettes", 3)
    with Pack(pack) as p:
        assert p.attrs["dataset"] == "gait3d"
        keys = p.keys()
    manifest = json.loads(pack.with_name(pack.name + ".manifest.json").read_text())
    dropped = set(manifest["sequences"]["empty"] + manifest["sequences"]["short"])
    assert len(dropped) <= 1  # a `short` sequence (1 % of them), or none
    assert {"/".join((s, f"{v}_{c}", q)) for s, c, q, v in keys} | dropped == tree
    assert sorted({k[0] for k in keys}) == [f"{i:04d}" for i in range(1, 9)]
    cameras = {k[3] for k in keys}
    assert len(cameras) > 1 and all(c.startswith("camid") for c in cameras)
    for k in keys:
        assert k[1].startswith("videoid") and k[2].startswith("seq")
    # one probe per test subject, a sequence of the tree, with a gallery sequence beside it
    probes = partition["PROBE_SET"]
    assert sorted(p.split("-")[0] for p in probes) == partition["TEST_SET"]
    for name in probes:
        assert name.replace("-", "/") in tree
        subject = name.split("-")[0]
        assert sum(f.startswith(subject + "/") for f in tree) >= 2
    summary = gait("synth", "summary", raw)
    assert summary.exit_code == 0 and "test       2 subjects; 5 cameras" in summary.output
    # frames as Gait3D ships them: boxes of their own size
    sizes = {cv2.imread(str(f), cv2.IMREAD_GRAYSCALE).shape for f in raw.rglob("*.png")}
    assert len(sizes) > 20


def test_gait3d_partition_is_scored_by_the_gait3d_protocol(gait3d) -> None:
    """gait's Gait3D evaluator finds every probe of the partition in the pack's keys."""
    from gaitprep.wild import opengait_keys
    from gaittrain.evaluation.wild import gait3d as score_gait3d

    raw, pack = gait3d
    partition = json.loads((raw / "Gait3D.json").read_text())
    with Pack(pack) as p:
        every = p.keys()
    keys = [k for k in every if k[0] in partition["TEST_SET"]]
    labels, types, views = zip(*(opengait_keys("gait3d", k) for k in keys), strict=True)
    emb = np.array([int(s) for s in labels], float).reshape(-1, 1, 1)  # perfect embeddings
    r = score_gait3d(emb, labels, types, views, partition["PROBE_SET"])
    assert r["probes"] == 2 and r["rank1"] == 100.0


# --- GREW ----------------------------------------------------------------------------------------


def test_grew_tree_pack_and_answers(grew) -> None:
    raw, pack = grew
    with Pack(pack) as p:
        assert p.attrs["dataset"] == "grew"
        keys = p.keys()
        labelled = dict(zip(keys, p.labelled.tolist(), strict=True))
        assert {p[i].shape[1:] for i in range(len(p))} == {(64, 64)}
    train = {k[0] for k in keys if k[1] == "00"}
    assert train == {f"{i:05d}train" for i in range(1, 7)}
    gallery = sorted((k[0], k[1]) for k in keys if k[1] in ("01", "02"))
    assert gallery == [(s, t) for s in ("00001", "00002") for t in ("01", "02")]
    probes = sorted(k[2] for k in keys if k[0] == "probe")
    distractors = [k for k in keys if k[0] == "distractor"]
    assert len(probes) == 4 and len(distractors) == 3
    assert not any(labelled[k] for k in keys if k[0] in ("probe", "distractor"))
    # the answers: each probe of the tree once, two per test subject
    with open(raw / "probe_answers.csv", newline="") as f:
        answers = list(csv.DictReader(f))
    assert sorted(a["videoId"] for a in answers) == probes
    assert sorted(a["subject"] for a in answers) == ["00001", "00001", "00002", "00002"]
    assert folders(raw / "test" / "probe", 1) == set(probes)


def test_grew_probes_walk_as_their_answer_and_distractors_are_nobody() -> None:
    """In the plan, a probe's walker is its answer's gallery walker; no distractor walker is a
    subject of the tree."""
    job = WildJob("grew", tuple(range(1, 9)), 2, 3, 5, 4, 6, 0)
    sequences, extras = job.plan()
    walker = {folder: spec.walker for folder, spec in sequences}
    answers = dict(line.split(",") for line in extras["probe_answers.csv"].split()[1:])
    for video, subject in answers.items():
        gallery = {w for f, w in walker.items() if f.startswith(f"test/gallery/{subject}/")}
        assert gallery == {walker[f"test/probe/{video}"]}
    test_walkers = {w for f, w in walker.items() if f.startswith("test/")}
    assert test_walkers == {7, 8}
    distractors = [w for f, w in walker.items() if f.startswith("distractor/")]
    assert len(distractors) == 4 and not set(distractors) & set(job.subjects)


# --- what varies, measured ----------------------------------------------------------------------


def test_frames_vary_in_size_and_occlusion() -> None:
    """Over a tree's sequences: walker heights spread over a factor of two and more, and about a
    third of the frames (the chances of a passer-by or an object in the way) lose part of the
    walker; without occluders none does."""
    job = WildJob("gait3d", tuple(range(1, 13)), 3, 3, 12, 0, 8, 0)
    heights, occluded = [], []
    for _, spec in job.plan()[0]:
        frames = render_wild(spec)
        heights += [c.shape[0] for c in frames.crops]
        occluded += frames.occluded.tolist()
    lo, hi = np.percentile(heights, [10, 90])
    assert hi / lo > 1.8, (lo, hi)
    hidden = np.mean(np.array(occluded) > 0.05)
    assert 0.1 < hidden < 0.6, hidden
    open_air = WildJob("gait3d", tuple(range(1, 5)), 1, 2, 4, 0, 8, 0, scene=Scene(0.0, 0.0))
    for _, spec in open_air.plan()[0]:
        assert not render_wild(spec).occluded.any()
