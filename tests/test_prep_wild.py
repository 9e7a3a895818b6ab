"""`gait prep gait3d | grew | ccpg` and `gait prep opengait --dataset` (issue 24, item 1).

Each test writes a tiny tree in the dataset's layout (a few subjects, sequences of a few drawn
silhouettes of varying sizes) and checks the pack: its keys, the strings OpenGait's evaluator
would see for each sequence (``gaitprep.wild.opengait_keys``), its frames against a literal
version of OpenGait's pretreatment of that dataset, the manifest, and one-line errors.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from gaitprep import prep
from gaitprep.errors import GaitError
from gaitprep.pack import Pack, PackError
from gaitprep.prep import PrepInterrupted, PrepJob, run_prep
from gaitprep.process import Params
from gaitprep.wild import layout, opengait_keys
from tests.cli import assert_one_line_error, gait
from tests.reference import reference_normalize

# --- tiny trees ----------------------------------------------------------------------------------


def silhouette(h: int, w: int, seed: int) -> np.ndarray:
    """A walker drawn on an h x w canvas: head, torso and two legs, the stride set by ``seed``."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.uint8)
    cx = w // 2 + int(rng.integers(-w // 8, w // 8 + 1))
    cv2.circle(img, (cx, h // 8), max(h // 12, 2), 255, -1)
    cv2.ellipse(img, (cx, h * 2 // 5), (max(w // 6, 2), h // 5), 0, 0, 360, 255, -1)
    stride, thick = int(rng.integers(2, w // 4)), max(w // 12, 2)
    cv2.line(img, (cx, h * 3 // 5), (cx - stride, h - 3), 255, thick)
    cv2.line(img, (cx, h * 3 // 5), (cx + stride, h - 3), 255, thick)
    return img


def write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def write_sequence(folder: Path, seed: int, frames: int = 3, size=None) -> None:
    """``frames`` silhouettes of varying size (or all ``size``, h x w) in ``folder``."""
    rng = np.random.default_rng(seed)
    for i in range(frames):
        h, w = size or (int(rng.integers(70, 150)), int(rng.integers(36, 90)))
        write_png(folder / f"{i + 1:05d}.png", silhouette(h, w, seed * 10 + i))


def manifest(pack: Path) -> dict:
    return json.loads(pack.with_name(pack.name + ".manifest.json").read_text())


def contents(path: Path) -> list[tuple]:
    with Pack(path) as p:
        return [(k, p[i].tobytes(), bool(p.labelled[i])) for i, k in enumerate(p.keys())]


def prep_ok(*args) -> None:
    r = gait("prep", *args, "--workers", "1")
    assert r.exit_code == 0, r.output


def read_grey(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


GAIT3D_SEQUENCES = (
    "0001/camid0_videoid2/seq0",
    "0001/camid0_videoid2/seq1",
    "0001/camid10_videoid1/seq0",
    "0012/camid3_videoid2/seq0",
    "3000/camid9_videoid3/seq0",
)


@pytest.fixture(scope="module")
def gait3d(tmp_path_factory) -> tuple[Path, Path]:
    """Gait3D's 2D_Silhouettes (4-digit ids, already-cropped frames of varying sizes, one empty
    frame) and its pack."""
    root = tmp_path_factory.mktemp("gait3d")
    raw = root / "2D_Silhouettes"
    for n, folder in enumerate(GAIT3D_SEQUENCES):
        write_sequence(raw / folder, n)
    write_png(raw / "0012/camid3_videoid2/seq0/00009.png", np.zeros((90, 40), np.uint8))
    out = root / "gait3d.h5"
    prep_ok("gait3d", raw, out)
    return raw, out


# --- Gait3D --------------------------------------------------------------------------------------


def test_gait3d_keys_and_opengait_strings(gait3d) -> None:
    raw, out = gait3d
    with Pack(out) as pack:
        assert pack.attrs["dataset"] == "gait3d" and pack.attrs["version"] == 2
        assert pack.attrs["layout"] == layout("gait3d")
        assert pack.keys() == [
            ("0001", "videoid1", "seq0", "camid10"),
            ("0001", "videoid2", "seq0", "camid0"),
            ("0001", "videoid2", "seq1", "camid0"),
            ("0012", "videoid2", "seq0", "camid3"),
            ("3000", "videoid3", "seq0", "camid9"),
        ]
        assert pack.labelled.all()
        keys = pack.keys()
        opengait = [opengait_keys("gait3d", k) for k in keys]
        # OpenGait's label, type and view are the three folders of the sequence
        assert sorted("/".join(k) for k in opengait) == sorted(GAIT3D_SEQUENCES)
        for i, key in enumerate(keys):
            assert pack.meta(i)["source"] == "/".join(opengait_keys("gait3d", key))


def test_gait3d_frames_are_opengaits_pretreatment(gait3d) -> None:
    raw, out = gait3d
    with Pack(out) as pack:
        for i in range(len(pack)):
            folder = raw / pack.meta(i)["source"]
            files = sorted(folder.iterdir())
            want = [reference_normalize(read_grey(f)) for f in files]
            kept = [j for j, w in enumerate(want) if w is not None]
            np.testing.assert_array_equal(pack[i], np.stack([want[j] for j in kept]))
            np.testing.assert_array_equal(pack.frame_source(i), kept)
    m = manifest(out)
    assert m["dropped_frames"] == [
        {"file": "0012/camid3_videoid2/seq0/00009.png", "reason": "too little foreground"}
    ]
    assert m["frames"]["read"] == 16 and m["frames"]["kept"] == 15
    assert m["sequences"]["written"] == 5 and m["sequences"]["empty"] == []


def test_gait3d_bad_trees_are_one_line(tmp_path: Path) -> None:
    raw = tmp_path / "2D_Silhouettes"
    write_sequence(raw / "0001/camid0videoid2/seq0", 0, frames=1)
    r = gait("prep", "gait3d", raw, tmp_path / "o.h5")
    assert_one_line_error(
        r, "0001/camid0videoid2/seq0/00001.png does not fit the layout", "2D_Silhouettes folder"
    )
    r = gait("prep", "gait3d", tmp_path / "nothing", tmp_path / "o.h5")
    assert_one_line_error(r, "nothing is not a folder")
    deep = tmp_path / "Gait3D"
    write_sequence(deep / "2D_Silhouettes/0001/camid0_videoid2/seq0", 0, frames=1)
    r = gait("prep", "gait3d", deep, tmp_path / "o.h5")
    assert_one_line_error(r, "2D_Silhouettes/0001/camid0_videoid2/seq0/00001.png does not fit")
    assert not (tmp_path / "o.h5").exists()


# --- GREW ----------------------------------------------------------------------------------------


def grew_tree(raw: Path, distractors: bool = True) -> None:
    """GREW as it unpacks: 5-digit ids, 64 x 64 frames, GEIs and pose files beside them."""
    write_sequence(raw / "train/00001/4XPn5Z28", 1, size=(64, 64))
    write_sequence(raw / "train/00001/9aBc", 2, size=(64, 64))
    write_sequence(raw / "train/20000/Qq7", 3, size=(64, 64))
    write_png(raw / "train/00001/4XPn5Z28_gei.png", silhouette(64, 64, 0))
    (raw / "train/00001/4XPn5Z28/00001_2d_pose.txt").write_text("w,h\n")
    write_sequence(raw / "test/gallery/00001/zz9", 4, size=(64, 64))
    write_sequence(raw / "test/gallery/00001/aa1", 5, size=(64, 64))
    write_sequence(raw / "test/gallery/06000/Mm", 6, size=(64, 64))
    write_sequence(raw / "test/probe/etaGVnWf", 7, size=(64, 64))
    write_sequence(raw / "test/probe/eT1EXpgZ", 8, size=(64, 64))
    write_png(raw / "test/probe/etaGVnWf_gei.png", silhouette(64, 64, 1))
    # GREW keeps empty frames; a frame of another size cannot be stored as it is
    write_png(raw / "test/probe/etaGVnWf/00004.png", np.zeros((64, 64), np.uint8))
    write_png(raw / "test/probe/etaGVnWf/00005.png", silhouette(64, 44, 2))
    if distractors:
        write_sequence(raw / "distractor/edXJefi8", 9, size=(64, 64))


GREW_KEYS = [  # the pack's keys, and what OpenGait's evaluator sees for each
    (("00001", "01", "aa1", "000"), ("00001", "01", "aa1")),
    (("00001", "02", "zz9", "000"), ("00001", "02", "zz9")),
    (("00001train", "00", "4XPn5Z28", "000"), ("00001train", "00", "4XPn5Z28")),
    (("00001train", "00", "9aBc", "000"), ("00001train", "00", "9aBc")),
    (("06000", "01", "Mm", "000"), ("06000", "01", "Mm")),
    (("20000train", "00", "Qq7", "000"), ("20000train", "00", "Qq7")),
    (("distractor", "distractor", "edXJefi8", "000"), ("distractor", "distractor", "edXJefi8")),
    (("probe", "03", "eT1EXpgZ", "000"), ("probe", "03", "eT1EXpgZ")),
    (("probe", "03", "etaGVnWf", "000"), ("probe", "03", "etaGVnWf")),
]


@pytest.fixture(scope="module")
def grew(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("grew")
    grew_tree(root / "GREW")
    out = root / "grew.h5"
    prep_ok("grew", root / "GREW", out)
    return root / "GREW", out


def test_grew_keys_labels_and_the_unlabelled(grew) -> None:
    raw, out = grew
    with Pack(out) as pack:
        keys = pack.keys()
        assert keys == [k for k, _ in GREW_KEYS]
        assert [opengait_keys("grew", k) for k in keys] == [o for _, o in GREW_KEYS]
        assert pack.attrs["dataset"] == "grew" and pack.attrs["imported_from"] == "grew-png"
        assert pack.attrs["version"] == 3  # a pack with sequences of no known subject
        unknown = {k[0] for k, known in zip(keys, pack.labelled, strict=True) if not known}
        assert unknown == {"probe", "distractor"} and (~pack.labelled).sum() == 3
        assert pack.meta(pack.index("probe-03-etaGVnWf-000"))["labelled"] is False
        assert pack.meta(0)["labelled"] is True
    with h5py.File(out, "r") as f:
        assert f["sequences/labelled"].dtype == np.uint8
        assert f["sequences/labelled"][()].tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0]


def test_grew_frames_are_stored_as_they_are(grew) -> None:
    raw, out = grew
    with Pack(out) as pack:
        for i in range(len(pack)):
            files = sorted((raw / pack.meta(i)["source"]).glob("*.png"))
            want = [read_grey(f) for f in files]
            kept = [j for j, w in enumerate(want) if w.shape == (64, 64)]
            np.testing.assert_array_equal(pack[i], np.stack([want[j] for j in kept]))
        assert not pack["probe-03-etaGVnWf-000"][3].any()  # the empty frame is kept
    m = manifest(out)
    assert m["dropped_frames"] == [
        {
            "file": "test/probe/etaGVnWf/00005.png",
            "reason": "frame is 64 x 44, not 64 x 64 (GREW's frames are stored as they are)",
        }
    ]
    assert m["unreadable"] == [] and m["sequences"]["written"] == 9


def test_grew_without_probes_or_distractors_is_version_2(tmp_path: Path) -> None:
    write_sequence(tmp_path / "GREW/train/00001/a", 0, size=(64, 64))
    prep_ok("grew", tmp_path / "GREW", tmp_path / "t.h5")
    with Pack(tmp_path / "t.h5") as pack:
        assert pack.attrs["version"] == 2 and pack.labelled.tolist() == [True]
    with h5py.File(tmp_path / "t.h5", "r") as f:
        assert "labelled" not in f["sequences"]


def test_grew_resumes_with_its_marks(grew, tmp_path: Path, monkeypatch) -> None:
    raw, full = grew
    out = tmp_path / "r.h5"
    job = PrepJob(
        raw=raw,
        out=out,
        dataset="grew",
        layout=layout("grew"),
        params=Params(64, 0),
        reader="as-they-are",
    )
    real, calls = prep.read_as_they_are, {"n": 0, "stop": 8}

    def counted(*args):
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(prep, "read_as_they_are", counted)
    with pytest.raises(PrepInterrupted, match="after 7 of 9 sequences"):
        run_prep(job, workers=1)
    calls.update(n=0, stop=None)
    assert run_prep(job, workers=1)["resumed"]
    assert calls["n"] == 2
    assert contents(out) == contents(full)
    with Pack(out) as a, Pack(full) as b:
        assert a.fingerprint == b.fingerprint


def test_grew_bad_trees_are_one_line(tmp_path: Path) -> None:
    out = tmp_path / "o.h5"
    (tmp_path / "empty").mkdir()
    r = gait("prep", "grew", tmp_path / "empty", out)
    assert_one_line_error(r, "empty holds none of GREW's folders train/, test/gallery/")
    third = tmp_path / "third"
    for name in ("a", "b", "c"):
        write_sequence(third / "test/gallery/00007" / name, 0, frames=1, size=(64, 64))
    r = gait("prep", "grew", third, out)
    assert_one_line_error(r, "test/gallery/00007 holds more than 2 sequences")
    packed = tmp_path / "packed"  # the probes' archives not unpacked yet
    write_sequence(packed / "train/00001/a", 0, frames=1, size=(64, 64))
    (packed / "test/probe").mkdir(parents=True)
    (packed / "test/probe/part1.tgz").write_bytes(b"")
    r = gait("prep", "grew", packed, out)
    assert_one_line_error(r, "no image frames under", "'test/probe/{seq}/*.png'")
    loose = tmp_path / "loose"
    write_sequence(loose / "train/00001/a/extra", 0, frames=1, size=(64, 64))
    r = gait("prep", "grew", loose, out)
    assert_one_line_error(r, "train/00001/a/extra/00001.png does not fit the layout")
    assert not out.exists()


# --- CCPG ----------------------------------------------------------------------------------------


def reference_area(img: np.ndarray, size: int = 64) -> np.ndarray | None:
    """OpenGait's CCPG steps (datasets/CCPG/organize_ccpg.py), literally: crop to the rows with
    foreground, resize to height ``size`` by area, centre on the column mass, cut, zero-padded."""
    rows = np.flatnonzero(img.sum(axis=1))
    if rows.size == 0:
        return None
    img = img[rows[0] : rows[-1] + 1]
    width = int(size * (img.shape[1] / img.shape[0]))
    img = cv2.resize(img, (width, size), interpolation=cv2.INTER_AREA)
    columns = img.sum(axis=0).cumsum()
    centre = next(i for i, c in enumerate(columns) if c > img.sum() / 2)
    half = size // 2
    padded = np.zeros((size, width + 2 * half), np.uint8)
    padded[:, half : half + width] = img
    return padded[:, centre : centre + size]


CCPG_SEQUENCES = ("000/U0_D0_BG/01_3", "000/U1_D1/02_1", "000/U0_D0/10_1", "199/U3_D3/01_2")


@pytest.fixture(scope="module")
def ccpg(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ccpg")
    raw = root / "CCPG"
    for n, folder in enumerate(CCPG_SEQUENCES):
        write_sequence(raw / folder, 20 + n)
    write_png(raw / "000/U1_D1/02_1/00009.png", np.zeros((80, 50), np.uint8))
    cv2.imwrite(str(raw / "000/U1_D1/02_1/00001.jpg"), np.full((80, 50, 3), 99, np.uint8))  # RGB
    tiny = np.zeros((100, 60), np.uint8)
    tiny[50:53, 30:32] = 255  # 6 pixels: kept by CCPG's steps (OpenGait's threshold is not used)
    write_png(raw / "199/U3_D3/01_2/00004.png", tiny)
    out = root / "ccpg.h5"
    prep_ok("ccpg", raw, out)
    return raw, out


def test_ccpg_keys_and_opengait_strings(ccpg) -> None:
    raw, out = ccpg
    with Pack(out) as pack:
        assert (keys := pack.keys()) == [
            ("000", "U0_D0", "1", "10"),
            ("000", "U0_D0_BG", "3", "01"),
            ("000", "U1_D1", "1", "02"),
            ("199", "U3_D3", "2", "01"),
        ]
        assert [opengait_keys("ccpg", k) for k in keys] == [
            ("000", "U0_D0", "10_1"),
            ("000", "U0_D0_BG", "01_3"),
            ("000", "U1_D1", "02_1"),
            ("199", "U3_D3", "01_2"),
        ]
        a = pack.attrs
        assert (a["dataset"], a["version"], a["interpolation"], a["min_sum"]) == (
            "ccpg",
            2,
            "area",
            0,
        )
        assert "imported_from" not in a and pack.labelled.all()


def test_ccpg_frames_are_opengaits_steps_by_area(ccpg) -> None:
    raw, out = ccpg
    with Pack(out) as pack:
        for i in range(len(pack)):
            files = sorted((raw / pack.meta(i)["source"]).glob("*.png"))
            want = [reference_area(read_grey(f)) for f in files]
            kept = [j for j, w in enumerate(want) if w is not None]
            np.testing.assert_array_equal(pack[i], np.stack([want[j] for j in kept]))
            np.testing.assert_array_equal(pack.frame_source(i), kept)
        assert len(pack["199-U3_D3-2-01"]) == 4  # the 6-pixel frame is kept
    m = manifest(out)
    assert m["dropped_frames"] == [
        {"file": "000/U1_D1/02_1/00009.png", "reason": "too little foreground"}
    ]
    assert m["frames"]["read"] == 14  # the RGB frame (jpg) is not read


def test_ccpg_bad_tree_is_one_line(tmp_path: Path) -> None:
    write_sequence(tmp_path / "CCPG/000/U0_D0/013", 0, frames=1)
    r = gait("prep", "ccpg", tmp_path / "CCPG", tmp_path / "o.h5")
    assert_one_line_error(r, "000/U0_D0/013/00001.png does not fit the layout", "{camera}_{n}")


# --- OpenGait's pickles of the same sequences ---------------------------------------------------


def opengait_tree(pack_path: Path, dataset: str, root: Path) -> None:
    """The pickle tree OpenGait's pretreatment writes for the pack's sequences: each at
    ``label/type/view/``, with the files OpenGait puts beside it."""
    with Pack(pack_path) as pack:
        for i, key in enumerate(pack.keys()):
            label, typ, view = opengait_keys(dataset, key)
            folder = root / label / typ / view
            folder.mkdir(parents=True)
            frames = pickle.dumps(pack[i])
            if dataset == "ccpg":  # organize_ccpg.py: OpenGait's CCPG configs read the first
                (folder / f"{view}-aligned-sils.pkl").write_bytes(frames)
                for other in ("ratios", "rgbs", "sils"):
                    (folder / f"{view}-{other}.pkl").write_bytes(pickle.dumps(np.ones(3)))
            elif dataset == "gait3d":  # merge_two_modality.py puts the SMPLs beside them
                (folder / f"sils-{view}.pkl").write_bytes(frames)
                (folder / f"smpls-{view}.pkl").write_bytes(pickle.dumps(np.ones((3, 85))))
            else:
                (folder / f"{view}.pkl").write_bytes(frames)


@pytest.mark.parametrize("which", ["gait3d", "grew", "ccpg"])
def test_opengaits_pickles_give_the_same_pack(which, request, tmp_path: Path) -> None:
    _, made = request.getfixturevalue(which)
    pkl = tmp_path / f"{which}-pkl"
    opengait_tree(made, which, pkl)
    out = tmp_path / "og.h5"
    prep_ok("opengait", pkl, out, "--dataset", which)
    assert contents(out) == contents(made)
    with Pack(out) as a, Pack(made) as b:
        keys = a.keys()
        assert a.attrs["dataset"] == which and a.attrs["imported_from"] == "opengait-pickle"
        assert a.attrs["version"] == b.attrs["version"]
        assert a.attrs.get("interpolation") == b.attrs.get("interpolation")
        assert a.attrs["min_sum"] == (10000 if which == "gait3d" else 0)
        assert [opengait_keys(which, k) for k in keys] == [
            tuple(a.meta(i)["source"].split("/")) for i in range(len(a))
        ]


def test_opengait_bad_trees_are_one_line(tmp_path: Path) -> None:
    out = tmp_path / "o.h5"
    r = gait("prep", "opengait", tmp_path, out, "--dataset", "grew", "--layout", "x")
    assert r.exit_code == 2 and "give --dataset or --layout, not both" in r.output
    pkl = tmp_path / "CCPG-pkl/000/U0_D0/01_1"
    pkl.mkdir(parents=True)
    (pkl / "01_1.pkl").write_bytes(pickle.dumps(np.zeros((2, 64, 64), np.uint8)))
    r = gait("prep", "opengait", tmp_path / "CCPG-pkl", out, "--dataset", "ccpg")
    assert_one_line_error(r, "no pickles (*.pkl) under", "*-aligned-sils.pkl")
    deep = tmp_path / "GREW-pkl/probe/03/etaGVnWf/sils"
    deep.mkdir(parents=True)
    (deep / "etaGVnWf.pkl").write_bytes(pickle.dumps(np.zeros((2, 64, 64), np.uint8)))
    r = gait("prep", "opengait", tmp_path / "GREW-pkl", out, "--dataset", "grew")
    assert_one_line_error(
        r, "probe/03/etaGVnWf/sils/etaGVnWf.pkl does not fit", "pretreatment of grew"
    )
    assert not out.exists()


# --- the keys, the marks and the format ----------------------------------------------------------


def test_opengait_keys_of_another_dataset_is_one_line() -> None:
    with pytest.raises(GaitError, match="known for packs of gait3d, grew, ccpg, not of 'casia-b'"):
        opengait_keys("casia-b", ("001", "nm", "01", "090"))


def test_a_version_3_pack_without_its_marks_is_refused(grew, tmp_path: Path) -> None:
    _, out = grew
    damaged = tmp_path / "d.h5"
    damaged.write_bytes(out.read_bytes())
    with h5py.File(damaged, "r+") as f:
        del f["sequences/labelled"]
    with pytest.raises(PackError, match="the sequence table is damaged"):
        Pack(damaged)
    with h5py.File(damaged, "r+") as f:
        f.attrs["version"] = 4
    r = gait("inspect", damaged)
    assert_one_line_error(r, "version 4", "reads versions 2 and 3")


def test_grew_shards_merge_with_their_marks(grew, tmp_path: Path) -> None:
    raw, full = grew
    shards = [tmp_path / f"part{k}.h5" for k in (1, 2)]
    for k, shard in enumerate(shards, start=1):
        prep_ok("grew", raw, shard, "--shard", f"{k}/2")
    merged = tmp_path / "merged.h5"
    assert gait("pack", "merge", merged, *shards).exit_code == 0
    assert contents(merged) == contents(full)
    with Pack(merged) as pack:
        assert pack.attrs["version"] == 3


def test_merged_shards_keep_the_natural_order_of_a_single_job(tmp_path: Path) -> None:
    """camid3 before camid10, as one job orders them: merging sorted keys as text put camid10
    first, so a merged pack differed from the pack of one job."""
    raw = tmp_path / "2D_Silhouettes"
    for n, folder in enumerate(("0001/camid3_videoid1/seq0", "0001/camid10_videoid1/seq0")):
        write_sequence(raw / folder, n)
    full = tmp_path / "full.h5"
    prep_ok("gait3d", raw, full)
    shards = [tmp_path / f"part{k}.h5" for k in (1, 2)]
    for k, shard in enumerate(shards, start=1):
        prep_ok("gait3d", raw, shard, "--shard", f"{k}/2")
    merged = tmp_path / "merged.h5"
    assert gait("pack", "merge", merged, *shards).exit_code == 0
    assert [k for k, *_ in contents(full)] == [
        ("0001", "videoid1", "seq0", "camid3"),
        ("0001", "videoid1", "seq0", "camid10"),
    ]
    assert contents(merged) == contents(full)


def test_unknown_walkers_are_nobodys_subjects(grew) -> None:
    """GREW's probes and distractors carry placeholder subjects: none is a subject to train on
    or test (gaittrain.data.dataset.pack_subjects reads the marks)."""
    from gaittrain.data.dataset import pack_subjects

    _, out = grew
    known = sorted({key[0] for key, _ in GREW_KEYS if key[0] not in ("probe", "distractor")})
    assert pack_subjects([out]) == known and "probe" not in known
