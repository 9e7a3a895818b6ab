"""`gait prep` end to end: packs, manifests, resume after kill -9, shards, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from gaitcli.main import cli
from gaitprep.layout import CASIA_B, discover
from gaitprep.pack import Pack
from gaitprep.prep import PrepInterrupted, PrepJob, run_prep
from gaitprep.process import UNREADABLE
from tests.reference import reference_normalize

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "casia-b"


def run(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def pack_contents(path: Path) -> list[tuple]:
    with Pack(path) as p:
        return [
            (k, p[i].tobytes(), p.frame_source(i).tobytes(), p.meta(i)["source"])
            for i, k in enumerate(p.keys())
        ]


@pytest.fixture(scope="module")
def sample_pack(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "sample.h5"
    result = run("prep", "casia-b", SAMPLE, out, "--workers", "2")
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_pack_equals_the_literal_standard_steps(sample_pack: Path) -> None:
    manifest = json.loads(sample_pack.with_name("sample.h5.manifest.json").read_text())
    dropped = {d["file"] for d in manifest["dropped_frames"]}
    with Pack(sample_pack) as pack:
        assert len(pack) == 180
        assert pack.attrs["format"] == "gait-pack" and pack.attrs["version"] == 2
        assert pack.attrs["dataset"] == "casia-b" and pack.attrs["size"] == 64
        for seq in discover(SAMPLE, CASIA_B):
            i = pack.index(seq.key)
            expected, source = [], []
            for j, name in enumerate(seq.files):
                img = cv2.imread(str(SAMPLE / seq.folder / name), cv2.IMREAD_GRAYSCALE)
                out = reference_normalize(img)
                if out is None:
                    assert f"{seq.folder}/{name}" in dropped
                else:
                    expected.append(out)
                    source.append(j)
            np.testing.assert_array_equal(pack[i], np.stack(expected))
            np.testing.assert_array_equal(pack.frame_source(i), source)
            assert pack.meta(i)["source"] == seq.folder
    f = manifest["frames"]
    assert f["read"] == 2160 and f["kept"] + f["dropped"] + f["unreadable"] == 2160
    assert manifest["sequences"]["found"] == manifest["sequences"]["written"] == 180


def test_reader_by_key_and_string(sample_pack: Path) -> None:
    with Pack(sample_pack) as pack:
        key = ("001", "bg", "02", "090")
        assert pack.keys()[pack.index(key)] == key
        np.testing.assert_array_equal(pack[key], pack["001-bg-02-090"])
        assert pack[key].shape[1:] == (64, 64) and pack[key].dtype == np.uint8
        with pytest.raises(Exception, match="no sequence"):
            pack.index(("999", "nm", "01", "000"))


@pytest.mark.slow
def test_workers_do_not_change_the_pack(sample_pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "one.h5"
    assert run("prep", "casia-b", SAMPLE, out, "--workers", "1").exit_code == 0
    assert pack_contents(out) == pack_contents(sample_pack)


def test_inspect_text_json_and_montage(sample_pack: Path, tmp_path: Path) -> None:
    text = run("inspect", sample_pack)
    assert text.exit_code == 0 and "subjects   6" in text.output and "sequences  180" in text.output
    js = run("inspect", sample_pack, "--json")
    info = json.loads(js.output)
    assert info["subjects"] == 6 and info["views"] == {"036": 60, "090": 60, "144": 60}
    assert info["conditions"] == {"bg": 36, "cl": 36, "nm": 108}
    assert sum(info["length_histogram"].values()) == 180
    png = tmp_path / "m.png"
    assert run("inspect", sample_pack, "--montage", png, "--sequences", "3").exit_code == 0
    assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED).shape == (3 * 65 + 1, 12 * 65 + 1)


def test_refuses_other_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    r = run("inspect", text)
    assert r.exit_code == 1 and "not an HDF5 file" in r.output
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else"
    assert "is not a gait pack" in run("inspect", other).output
    future = tmp_path / "future.h5"
    with h5py.File(future, "w") as f:
        f.attrs.update(format="gait-pack", version=99)
    r = run("inspect", future)
    assert r.exit_code == 1 and "version 99" in r.output and "Traceback" not in r.output


def test_existing_pack_needs_overwrite(sample_pack: Path) -> None:
    before = sample_pack.stat().st_mtime_ns
    r = run("prep", "casia-b", SAMPLE, sample_pack)
    assert r.exit_code == 1 and "--overwrite" in r.output
    assert sample_pack.stat().st_mtime_ns == before


@pytest.mark.slow
def test_shards_merge_into_the_full_pack(sample_pack: Path, tmp_path: Path) -> None:
    shards = [tmp_path / f"part{k}.h5" for k in (1, 2, 3)]
    for k, s in enumerate(shards, start=1):
        assert (
            run("prep", "casia-b", SAMPLE, s, "--shard", f"{k}/3", "--workers", "1").exit_code == 0
        )
    with Pack(shards[0]) as p:
        assert len(p) == 60 and p.attrs["shard"] == "1/3"
    merged = tmp_path / "merged.h5"
    r = run("pack", "merge", merged, *shards)
    assert r.exit_code == 0, r.output
    assert pack_contents(merged) == pack_contents(sample_pack)
    manifest = json.loads((tmp_path / "merged.h5.manifest.json").read_text())
    assert manifest["frames"]["read"] == 2160
    r = run("pack", "merge", tmp_path / "bad.h5", shards[0], shards[2])
    assert r.exit_code == 1 and "missing [2]" in r.output
    assert run("prep", "casia-b", SAMPLE, tmp_path / "x.h5", "--shard", "4/3").exit_code == 2


def test_ou_mvlp_layout_is_read_directly(tmp_path: Path) -> None:
    raw = tmp_path / "oumvlp"
    assert (
        run(
            "synth",
            "ou-mvlp",
            raw,
            "--subjects",
            "2",
            "--frames",
            "6",
            "--views",
            "0,90",
            "--clean",
            "--workers",
            "1",
        ).exit_code
        == 0
    )
    out = tmp_path / "ou.h5"
    r = run("prep", "ou-mvlp", raw, out, "--workers", "1")
    assert r.exit_code == 0, r.output
    with Pack(out) as p:
        assert sorted(p.keys()) == sorted(
            (f"{s:05d}", "nm", f"{q:02d}", f"{v:03d}")
            for s in (1, 2)
            for q in (0, 1)
            for v in (0, 90)
        )
        assert p.meta(0)["source"] == "Silhouette_000-00/00001"


@pytest.mark.slow
def test_size_128_and_options_are_recorded(tmp_path: Path) -> None:
    out = tmp_path / "big.h5"
    r = run(
        "prep",
        "casia-b",
        SAMPLE,
        out,
        "--size",
        "128",
        "--binarize",
        "--largest-blob",
        "--compression",
        "lzf",
        "--workers",
        "1",
    )
    assert r.exit_code == 0, r.output
    with Pack(out) as p:
        assert p[0].shape[1:] == (128, 128)
        assert set(np.unique(p[0])) <= {0, 255}
        assert p.attrs["binarize"] and p.attrs["largest_blob"] and p.attrs["compression"] == "lzf"
        assert p.file["frames"].compression == "lzf"


# --- resume -----------------------------------------------------------------------------------

KILLABLE = """
import sys
from pathlib import Path
from gaitprep import prep
from gaitprep.layout import CASIA_B
prep.COMMIT_SECONDS = 0.02
job = prep.PrepJob(raw=Path(sys.argv[1]), out=Path(sys.argv[2]), dataset="casia-b", layout=CASIA_B)
prep.run_prep(job, workers=1)
"""


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(sample_pack: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(SAMPLE, raw)
    out = tmp_path / "killed.h5"
    journal = tmp_path / "killed.h5.partial.json"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(raw), str(out)], env=env)
    deadline = time.time() + 60
    position = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            position = json.loads(journal.read_text())["position"]
        except (OSError, ValueError):
            position = 0
        if position >= 40:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 40 <= position < 180, "the run ended before it could be killed mid-way"
    assert not out.exists()  # nothing half-written under the final name
    r = run("prep", "casia-b", raw, out, "--workers", "2")
    assert r.exit_code == 0, r.output
    assert "[resumed]" in r.output
    assert pack_contents(out) == pack_contents(sample_pack)
    manifest = (tmp_path / "killed.h5.manifest.json").read_text()
    assert json.loads(manifest)["frames"]["read"] == 2160
    # the manifest describes the pack, not the run: a resumed run writes the same one
    assert manifest == sample_pack.with_name("sample.h5.manifest.json").read_text().replace(
        '"pack": "sample.h5"', '"pack": "killed.h5"'
    ).replace(str(SAMPLE.resolve()), str(raw.resolve()))
    assert not journal.exists() and not (tmp_path / "killed.h5.partial").exists()


@pytest.mark.slow
def test_ctrl_c_commits_and_resume_skips_finished_sequences(sample_pack, tmp_path, monkeypatch):
    from gaitprep import prep

    calls = {"n": 0}
    real = prep.process_sequence

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt
        return real(*args)

    out = tmp_path / "c.h5"
    job = PrepJob(raw=SAMPLE, out=out, dataset="casia-b", layout=CASIA_B)
    monkeypatch.setattr(prep, "process_sequence", interrupted)
    with pytest.raises(PrepInterrupted, match="after 49 of 180 sequences"):
        run_prep(job, workers=1)
    calls["n"] = 0
    monkeypatch.setattr(
        prep, "process_sequence", lambda *a: (calls.__setitem__("n", calls["n"] + 1), real(*a))[1]
    )
    manifest = run_prep(job, workers=1)
    assert calls["n"] == 180 - 49  # finished sequences are not redone
    assert manifest["resumed"]
    assert pack_contents(out) == pack_contents(sample_pack)


@pytest.mark.slow
def test_a_damaged_partial_pack_is_redone(sample_pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "d.h5"
    job = PrepJob(raw=SAMPLE, out=out, dataset="casia-b", layout=CASIA_B)
    run_prep(job)
    # Fake an interrupted run whose partial file does not hold what its log promises.
    shutil.copy(out, tmp_path / "d.h5.partial")
    (tmp_path / "d.h5.partial.jsonl").write_text(
        json.dumps(
            {
                "i": 0,
                "row": {"start": 0, "length": 3},
                "crc": 1,
                "read": 3,
                "kept": 3,
                "folder": "x",
                "dropped": [],
                "unreadable": [],
            }
        )
        + "\n"
    )
    identity = job.identity(job.select(discover(SAMPLE, CASIA_B, {"condition": "nm"})))
    (tmp_path / "d.h5.partial.json").write_text(
        json.dumps({"job": identity, "position": 1, "frames": 3})
    )
    manifest = run_prep(job, overwrite=True)
    assert not manifest["resumed"]
    assert pack_contents(out) == pack_contents(sample_pack)


# --- bad input --------------------------------------------------------------------------------


def body(h: int = 240, w: int = 320, value: int = 255) -> np.ndarray:
    img = np.zeros((h, w), np.uint8)
    cv2.ellipse(img, (w // 2, h // 2), (w // 10, h // 3), 0, 0, 360, value, -1)
    return img


def make_tree(root: Path, sequences: dict[str, list[np.ndarray]], ext: str = ".png") -> None:
    for folder, frames in sequences.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(frames, start=1):
            assert cv2.imwrite(str(root / folder / f"{i:03d}{ext}"), img)


def test_bad_files_are_named_in_the_manifest_and_the_run_goes_on(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_tree(raw, {"001/nm-01/090": [body()] * 6})
    seq = raw / "001/nm-01/090"
    good = (seq / "001.png").read_bytes()
    (seq / "002.png").write_bytes(b"")  # zero bytes
    (seq / "003.png").write_bytes(good[: len(good) // 2])  # truncated
    (seq / "004.png").write_bytes(b"this is not an image")  # unreadable
    out = tmp_path / "p.h5"
    r = run("prep", "casia-b", raw, out, "--workers", "1")
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "3 unreadable" in r.output
    m = json.loads((tmp_path / "p.h5.manifest.json").read_text())
    reasons = {u["file"]: u["reason"] for u in m["unreadable"]}
    assert reasons == {
        "001/nm-01/090/002.png": "empty file (0 bytes)",
        "001/nm-01/090/003.png": UNREADABLE,
        "001/nm-01/090/004.png": UNREADABLE,
    }
    with Pack(out) as p:
        np.testing.assert_array_equal(p.frame_source(0), [0, 4, 5])
    assert m["sequences"]["short"] == [{"sequence": "001/nm-01/090", "frames": 3}]


def test_colour_and_grey_frames_are_converted(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    grey = body(value=140)
    colour = cv2.cvtColor(body(), cv2.COLOR_GRAY2BGR)
    colour[..., 0] = 0  # a yellowish silhouette
    make_tree(raw, {"001/nm-01/000": [grey] * 5, "001/nm-02/000": [colour] * 5})
    out = tmp_path / "p.h5"
    assert run("prep", "casia-b", raw, out, "--workers", "1").exit_code == 0
    with Pack(out) as p:
        np.testing.assert_array_equal(p[("001", "nm", "01", "000")][0], reference_normalize(grey))
        # Colour is read as luma (BT.601), as cv2.IMREAD_GRAYSCALE converts it.
        luma = cv2.imread(str(raw / "001/nm-02/000/001.png"), cv2.IMREAD_GRAYSCALE)
        assert np.abs(luma.astype(int) - cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)).max() <= 1
        np.testing.assert_array_equal(p[("001", "nm", "02", "000")][0], reference_normalize(luma))


def test_empty_sequence_is_not_written(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    blank = np.zeros((240, 320), np.uint8)
    make_tree(raw, {"001/nm-01/000": [body()] * 5, "001/nm-02/000": [blank] * 5})
    out = tmp_path / "p.h5"
    assert run("prep", "casia-b", raw, out, "--workers", "1").exit_code == 0
    m = json.loads((tmp_path / "p.h5.manifest.json").read_text())
    assert m["sequences"]["empty"] == ["001/nm-02/000"]
    assert len(m["dropped_frames"]) == 5
    with Pack(out) as p:
        assert p.keys() == [("001", "nm", "01", "000")]


def test_tree_that_does_not_fit_the_layout(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_tree(raw, {"001/nm-01/000": [body()], "001/stray": [body()]})
    r = run("prep", "casia-b", raw, tmp_path / "p.h5")
    assert r.exit_code == 1
    assert (
        "001/stray/001.png does not fit the layout '{subject}/{condition}-{seq}/{view}/*'"
        in r.output
    )
    assert "Traceback" not in r.output and not (tmp_path / "p.h5").exists()
    r = run("prep", "casia-b", tmp_path / "missing", tmp_path / "p.h5")
    assert r.exit_code == 1 and "is not a folder" in r.output


def test_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run("prep", "casia-b", SAMPLE, blocker / "p.h5")
    assert r.exit_code == 1 and "cannot write" in r.output and "Traceback" not in r.output


def test_folder_layout_jpg_bmp_spaces_and_unicode(tmp_path: Path) -> None:
    raw = tmp_path / "my data ü"
    make_tree(raw, {"Zoë/walk 1/000": [body()] * 5}, ext=".jpg")
    make_tree(raw, {"Zoë/walk 2/000": [body()] * 5}, ext=".bmp")
    out = tmp_path / "out dir ç" / "pack ü.h5"
    r = run(
        "prep", "folder", raw, out, "--layout", "{subject}/walk {seq}/{view}/*", "--workers", "1"
    )
    assert r.exit_code == 0, r.output
    with Pack(out) as p:
        assert p.keys() == [("Zoë", "nm", "1", "000"), ("Zoë", "nm", "2", "000")]
        assert len(p[0]) == 5 and p.attrs["dataset"] == "folder"
    r = run("prep", "folder", raw, tmp_path / "q.h5", "--layout", "{person}/*")
    assert r.exit_code == 1 and "unknown field {person}" in r.output
