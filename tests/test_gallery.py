"""`gait gallery add | list | remove` and `gait identify RUN GALLERY.h5 DIR --threshold`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import SAMPLE, assert_one_line_error, gait, train_tiny


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_pack) -> dict:
    base = tmp_path_factory.mktemp("gallery")
    pack = sample_pack
    out = []
    for seed in (0, 1):
        run = base / f"run{seed}"
        r = train_tiny(
            pack, run, "--train-subjects", "first:4", "--seed", seed, "--iterations", "4"
        )
        assert r.exit_code == 0, r.output
        out.append(run)
    return {"pack": pack, "runs": out}


def seq(subject: str, recording: str, view: str = "090") -> Path:
    return SAMPLE / subject / recording / view


def test_gallery_round_trip_and_identify_by_name(runs, tmp_path: Path) -> None:
    g = tmp_path / "people.h5"
    run = runs["runs"][0]
    for name, subject in (("alice", "005"), ("bob", "006")):
        for rec in ("nm-01", "nm-02"):
            r = gait("gallery", "add", g, run, name, seq(subject, rec), "--pack", runs["pack"])
            assert r.exit_code == 0, r.output
    listed = json.loads(gait("gallery", "list", g, "--json").stdout)
    assert listed["names"] == {"alice": 2, "bob": 2}
    # another walk of each: identified by name; a threshold of 0 leaves everyone unknown
    for name, subject in (("alice", "005"), ("bob", "006")):
        r = gait("identify", run, g, seq(subject, "bg-01"), "--json", "--threshold", "100")
        assert r.exit_code == 0, r.output
        found = json.loads(r.stdout)
        assert found["matches"][0]["subject"] == name and found["decision"] == name
    r = gait("identify", run, g, seq("005", "bg-01"), "--threshold", "0")
    assert r.exit_code == 0 and "decision (distance <= 0): unknown" in r.stdout
    r = gait("gallery", "remove", g, "bob")
    assert r.exit_code == 0 and "removed bob (2 sequences)" in r.output
    assert json.loads(gait("gallery", "list", g, "--json").stdout)["names"] == {"alice": 2}


def test_a_gallery_refuses_another_model_and_bad_input(runs, tmp_path: Path) -> None:
    g = tmp_path / "people.h5"
    first, other = runs["runs"]
    assert gait("gallery", "add", g, first, "alice", seq("005", "nm-01")).exit_code == 0
    before = g.read_bytes()
    r = gait("gallery", "add", g, other, "bob", seq("006", "nm-01"))
    assert_one_line_error(r, "distances between models mean nothing")
    r = gait("identify", other, g, seq("005", "bg-01"))
    assert_one_line_error(r, "distances between models mean nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(gait("gallery", "add", g, first, "carol", empty), "no png")
    assert_one_line_error(gait("gallery", "remove", g, "nobody"), "nobody named 'nobody'")
    assert g.read_bytes() == before  # nothing changed by the refusals
    new = tmp_path / "new.h5"
    assert_one_line_error(gait("gallery", "add", new, first, "carol", empty), "no png")
    assert not new.exists()
