"""`gait eval` / `gait identify` never answer from embeddings made for something else.

Issue 8: items 1 (other test subjects), 2 (another pack under the same name), 4 (identify's
normalization), identify on unreadable frames, another model's gallery, a second writer of a
report, and a full disk while embedding.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gaittrain.evaluation.embeddings_file import read_embeddings
from tests.cli import FAST, SAMPLE, TINY, assert_one_line_error, gait, make_pack

RAW = SAMPLE
SHORT = ("--train-subjects", "first:4", "--iterations", "4")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Two packs named sample.h5 with different content, and two runs of different seeds."""
    base = tmp_path_factory.mktemp("evalid")
    a = make_pack(base / "a" / "sample.h5")
    b = make_pack(base / "b" / "sample.h5", binarize=True, largest_blob=True)
    runs = []
    for seed in (0, 1):
        run = base / f"run{seed}"
        r = gait("train", TINY, "--pack", a, "--out", run, "--seed", seed, *FAST, *SHORT)
        assert r.exit_code == 0, r.output
        runs.append(run)
    return {"base": base, "a": a, "b": b, "runs": runs}


def fresh_copy(run: Path, dest: Path) -> Path:
    """The run folder without any embeddings or report: what a first evaluation sees."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("embeddings-*", "report.*"))
    return dest


def evaluate(run: Path, pack: Path, *extra) -> dict:
    out = run.parent / f"{run.name}-report.json"
    r = gait("eval", run, "--pack", pack, "--report", "json", "--out", out, *extra)
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


def rank1(report: dict) -> dict:
    return {k: c["rank1"] for k, c in report["conditions"].items()}


# Item 1 ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_other_test_subjects_are_embedded_again(setup, tmp_path: Path) -> None:
    run = fresh_copy(setup["runs"][0], tmp_path / "run")
    first = evaluate(run, setup["a"], "--test-subjects", "004-005")
    assert first["test_subjects"] == 2
    wider = evaluate(run, setup["a"], "--test-subjects", "004-006")
    reference = evaluate(
        fresh_copy(run, tmp_path / "ref"), setup["a"], "--test-subjects", "004-006"
    )
    assert rank1(wider) == rank1(reference)
    emb, _ = read_embeddings(run / "embeddings-sample.h5")
    assert {k[0] for k in emb} == {"004", "005", "006"}
    # disjoint subjects after a first evaluation: real numbers, not nulls
    other = evaluate(run, setup["a"], "--test-subjects", "006")
    assert all(v is not None for v in rank1(other).values())


@pytest.mark.slow
def test_an_unchanged_evaluation_reuses_its_embeddings(setup, tmp_path: Path) -> None:
    run = fresh_copy(setup["runs"][0], tmp_path / "run")
    evaluate(run, setup["a"], "--test-subjects", "004-006")
    emb = run / "embeddings-sample.h5"
    stamp = emb.stat().st_mtime_ns
    r = gait("eval", run, "--pack", setup["a"], "--test-subjects", "004-006")
    assert r.exit_code == 0 and "embedded again" not in r.output
    assert emb.stat().st_mtime_ns == stamp
    r = gait("eval", run, "--pack", setup["a"], "--test-subjects", "004-006", "--max-frames", "5")
    assert r.exit_code == 0 and "embedded again: --max-frames changed" in r.output


# Item 2 ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_another_pack_under_the_same_name_is_embedded_again(setup, tmp_path: Path) -> None:
    run = fresh_copy(setup["runs"][0], tmp_path / "run")
    evaluate(run, setup["a"], "--test-subjects", "004-006")
    r = gait("eval", run, "--pack", setup["b"], "--test-subjects", "004-006")
    assert r.exit_code == 0, r.output
    assert "embedded again: the pack's content differs" in r.output
    on_b = evaluate(run, setup["b"], "--test-subjects", "004-006")
    reference = evaluate(
        fresh_copy(run, tmp_path / "ref"), setup["b"], "--test-subjects", "004-006"
    )
    assert rank1(on_b) == rank1(reference)
    _, attrs = read_embeddings(run / "embeddings-sample.h5")
    assert attrs["pack"] == str(setup["b"]) and attrs["normalization.binarize"]


@pytest.mark.slow
def test_a_new_checkpoint_is_embedded_again(setup, tmp_path: Path) -> None:
    run = fresh_copy(setup["runs"][0], tmp_path / "run")
    evaluate(run, setup["a"], "--test-subjects", "004-006")
    other = setup["runs"][1] / "checkpoints" / "iter-000004.pt"
    shutil.copy(other, run / "checkpoints" / "iter-000004.pt")  # same path, other weights
    r = gait("eval", run, "--pack", setup["a"], "--test-subjects", "004-006")
    assert r.exit_code == 0 and "embedded again: the checkpoint changed" in r.output


# Item 4 ------------------------------------------------------------------------------------------


def test_identify_normalizes_the_probe_like_its_gallery_from_any_folder(
    setup, tmp_path: Path, monkeypatch
) -> None:
    """The gallery's pack is given by a relative path and binarized: from another folder the
    probe must still be binarized, so a gallery sequence finds itself at distance ~0."""
    work = tmp_path / "work"
    (work / "packs").mkdir(parents=True)
    shutil.copy(setup["b"], work / "packs" / "b.h5")
    run = setup["runs"][0]
    monkeypatch.chdir(work)
    r = gait("embed", run, "packs/b.h5", "--out", tmp_path / "gallery.h5", "--subjects", "005")
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(tmp_path)  # packs/b.h5 no longer resolves
    r = gait("identify", run, tmp_path / "gallery.h5", RAW / "005" / "nm-01" / "090", "--json")
    assert r.exit_code == 0, r.output
    best = json.loads(r.output)["matches"][0]
    assert best["subject"] == "005" and best["nearest"] == "005-nm-01-090"
    assert best["distance"] < 1e-4


def test_identify_refuses_a_gallery_embedded_by_another_model(setup, tmp_path: Path) -> None:
    gallery = tmp_path / "gallery.h5"
    assert gait("embed", setup["runs"][0], setup["a"], "--out", gallery).exit_code == 0
    r = gait("identify", setup["runs"][1], gallery, RAW / "005" / "nm-01" / "090")
    assert_one_line_error(r, str(gallery), "was embedded by", "gait embed")


def test_identify_names_frames_it_cannot_decode(setup, tmp_path: Path) -> None:
    folder = tmp_path / "probe"
    folder.mkdir()
    for i in range(3):
        (folder / f"frame-{i:03d}.png").write_bytes(b"not a png at all" * 8)
    r = gait("identify", setup["runs"][0], setup["a"], folder)
    assert_one_line_error(r, "cannot be read", "frame-000.png", str(folder))


# Outputs: a second writer, a full disk ----------------------------------------------------------


def test_a_report_being_written_by_another_process_is_refused(setup, tmp_path: Path) -> None:
    from gaitprep.files import OutputLock  # new in issue 8

    run = fresh_copy(setup["runs"][0], tmp_path / "run")
    out = tmp_path / "report.html"
    with OutputLock(out):
        r = gait("eval", run, "--pack", setup["a"], "--test-subjects", "004-006", "--out", out)
    assert_one_line_error(r, str(out), f"pid {os.getpid()}")
    assert not out.exists()


@pytest.fixture()
def small_disk(tmp_path: Path):
    """An 8 MiB tmpfs (the tests run as root here); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def test_a_full_disk_while_embedding_is_one_line_and_leaves_nothing(
    setup, small_disk: Path
) -> None:
    run = small_disk / "run"
    shutil.copytree(setup["runs"][0], run, ignore=shutil.ignore_patterns("tensorboard", "log*"))
    fill = small_disk / "filler"
    fd = os.open(fill, os.O_WRONLY | os.O_CREAT)  # fill the disk, then free a few kB:
    try:  # fewer than the embeddings need
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(fill, fill.stat().st_size - 16 * 1024)
    r = gait("eval", run, "--pack", setup["a"], "--test-subjects", "004-006")
    assert_one_line_error(r, "embeddings-sample.h5", "no space left on device")
    assert not list(run.glob("embeddings-*")) and not list(run.glob("*.partial"))
    fill.unlink()  # room again: the same command works
    r = gait("eval", run, "--pack", setup["a"], "--test-subjects", "004-006")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "text, needle",
    [
        ("- just\n- a list\n", "must be a mapping"),
        ("name: x\ntrain: '1-2'\ntest: '3-4'\nevaluation: {probes: {NM: [nm-05]}}\n", "gallery"),
        (
            "name: x\ntrain: '1-2'\ntest: '3-4'\n"
            "evaluation: {gallery: [nm-01], probes: {NM: nm-05}}\n",
            "probes",
        ),
    ],
)
def test_a_malformed_protocol_file_is_one_line(setup, tmp_path: Path, text, needle) -> None:
    proto = tmp_path / "mine.yaml"
    proto.write_text(text)
    r = gait("eval", setup["runs"][0], "--pack", setup["a"], "--protocol", proto)
    assert_one_line_error(r, needle)


@pytest.mark.slow
def test_evaluating_on_training_subjects_is_flagged(setup, tmp_path: Path) -> None:
    """The runs trained on 001-004 of pack a: 004 as a test subject is not an unseen person."""
    run = fresh_copy(setup["runs"][0], tmp_path / "run")
    out = tmp_path / "r.html"
    r = gait("eval", run, "--pack", setup["a"], "--test-subjects", "004-006", "--report", "html",
             "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "warning: 1 of the 3 test subjects (004) were training subjects of this run:" in r.output
    assert "were training subjects of this run" in out.read_text()
    clean = evaluate(run, setup["a"], "--test-subjects", "005-006")
    assert clean["warnings"] == []
    # pack b holds the same people normalized otherwise: still flagged, saying so
    other = evaluate(run, setup["b"], "--test-subjects", "004-006")
    assert len(other["warnings"]) == 1
    assert (
        "(004) were training subjects of this run (in another pack of the same dataset)"
        in (other["warnings"][0])
    )


def test_an_embeddings_file_being_written_by_another_process_is_refused(
    setup, tmp_path: Path
) -> None:
    from gaitprep.files import OutputLock  # new in issue 8

    out = tmp_path / "gallery.h5"
    with OutputLock(out):
        r = gait("embed", setup["runs"][0], setup["a"], "--out", out)
    assert_one_line_error(r, str(out), f"pid {os.getpid()}")
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("record", ["[]", '{"packs": [1]}', "{}", "not json"])
def test_a_damaged_run_record_does_not_break_eval(setup, tmp_path: Path, record: str) -> None:
    run = fresh_copy(setup["runs"][0], tmp_path / "run")
    (run / "data.json").write_text(record)
    assert evaluate(run, setup["a"], "--test-subjects", "005-006")["warnings"] == []


def test_identify_refuses_an_hdf5_file_that_is_half_an_embeddings_file(
    setup, tmp_path: Path
) -> None:
    import h5py

    gallery = tmp_path / "half.h5"
    with h5py.File(gallery, "w") as f:
        f["embeddings"] = [[0.0]]
    r = gait("identify", setup["runs"][0], gallery, RAW / "005" / "nm-01" / "090")
    assert_one_line_error(r, str(gallery), "not a readable embeddings file")
