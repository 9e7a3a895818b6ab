"""Issue 21 B: what `gait identify`, `gait gallery` and `gait eval` take from their user.

An emptied gallery, a threshold that is not a finite distance, a name that could forge a line of
identify's output (in `gait gallery add` or in a gallery file someone else made), a
``--max-memory`` that is not a sane size: each refused in one line. ``gait eval --out -`` writes
the report alone to stdout.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from gaittrain.evaluation.embeddings_file import read_embeddings, write_embeddings_file
from tests.cli import SAMPLE, assert_one_line_error, copy_run, gait

MAX_NAME = 64  # gaittrain.inference.identify.MAX_NAME


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_pack, quick_run) -> dict:
    run = copy_run(quick_run, tmp_path_factory.mktemp("inputs") / "run")
    return {"pack": sample_pack, "run": run}


def seq(subject: str, recording: str, view: str = "090") -> Path:
    return SAMPLE / subject / recording / view


def enrol(setup: dict, gallery: Path, name: str, subject: str = "005") -> object:
    return gait("gallery", "add", gallery, setup["run"], name, seq(subject, "nm-01"))


def test_identify_on_a_gallery_whose_last_person_was_removed(setup, tmp_path: Path) -> None:
    g = tmp_path / "people.h5"
    assert enrol(setup, g, "alice").exit_code == 0
    assert gait("gallery", "remove", g, "alice").exit_code == 0
    r = gait("identify", setup["run"], g, seq("005", "bg-01"))
    assert_one_line_error(r, f"the gallery {g} holds nobody; add people with gait gallery add")
    assert json.loads(gait("gallery", "list", g, "--json").stdout)["names"] == {}


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_a_threshold_must_be_a_finite_distance(setup, tmp_path: Path, value: str) -> None:
    g = tmp_path / "people.h5"
    assert enrol(setup, g, "alice").exit_code == 0
    r = gait("identify", setup["run"], g, seq("005", "bg-01"), "--json", f"--threshold={value}")
    assert r.exit_code == 2, r.output  # a usage error, before any work
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error: Invalid value for '--threshold'") and "NaN" not in r.stdout
    r = gait("identify", setup["run"], g, seq("005", "bg-01"), "--json", "--threshold", "1e300")
    assert r.exit_code == 0 and json.loads(r.stdout)["decision"] == "alice"


@pytest.mark.parametrize(
    "name",
    [
        "eve\ndecision (distance <= 100): mallory",  # a forged line
        "\x1b[32mmallory\x1b[0m",  # terminal colours
        "tab\there",
        "bidi\u202eevil",  # a format character that reverses what follows
        "x" * (MAX_NAME + 1),
        " alice",
        "a/b",
        "",
    ],
)
def test_a_name_that_is_not_plain_printable_text_is_refused(setup, tmp_path, name) -> None:
    g = tmp_path / "people.h5"
    assert enrol(setup, g, "alice").exit_code == 0
    before = g.read_bytes()
    line = assert_one_line_error(enrol(setup, g, name), "is not a name to enrol")
    assert "\x1b" not in line and "\u202e" not in line
    assert g.read_bytes() == before
    new = tmp_path / "new.h5"
    assert_one_line_error(enrol(setup, new, name), "is not a name to enrol")
    assert not new.exists()


def test_printable_names_of_any_script_are_enrolled(setup, tmp_path: Path) -> None:
    from gaittrain.inference import identify

    assert identify.MAX_NAME == MAX_NAME
    g = tmp_path / "people.h5"
    for name in ("Zoë Ünal-Søren", "李小龍", "x" * MAX_NAME):
        r = enrol(setup, g, name)
        assert r.exit_code == 0, r.output
    names = json.loads(gait("gallery", "list", g, "--json").stdout)["names"]
    assert set(names) == {"Zoë Ünal-Søren", "李小龍", "x" * MAX_NAME}


def test_a_gallery_file_holding_a_forged_name_is_refused(setup, tmp_path: Path) -> None:
    """A gallery made by someone else, whose name would print a decision line of its own."""
    g = tmp_path / "people.h5"
    assert enrol(setup, g, "alice").exit_code == 0
    emb, attrs = read_embeddings(g)
    (row,) = emb.values()
    forged = tmp_path / "forged.h5"
    name = "eve\ndecision (distance <= 100): eve"
    write_embeddings_file(forged, [(name, "gallery", "001", "-")], row.shape, [row[None]], attrs)
    r = gait("identify", setup["run"], forged, seq("005", "bg-01"), "--threshold", "100")
    line = assert_one_line_error(r, "not printable text")
    assert "decision" not in r.output.replace(line, "") and "\\n" in line
    assert_one_line_error(gait("gallery", "list", forged), "not printable text")
    assert_one_line_error(enrol(setup, forged, "bob"), "not printable text")
    assert_one_line_error(gait("gallery", "remove", forged, "alice"), "not printable text")
    rows = np.stack([row, row])
    keys = [("alice", "gallery", "001", "-"), ("\x1b]0;title\x07", "gallery", "001", "-")]
    write_embeddings_file(forged, keys, row.shape, [rows], attrs)
    r = gait("identify", setup["run"], forged, seq("005", "bg-01"), "--json")
    assert_one_line_error(r, "not printable text")


@pytest.mark.parametrize(
    "size, needle",
    [
        ("infGB", "not a positive size"),
        ("inf", "not a positive size"),
        ("nan", "not a positive size"),
        ("0", "less than 1MB"),
        ("-1", "not a positive size"),
        ("-5GB", "not a positive size"),
        ("256", "less than 1MB"),  # a forgotten unit: bytes
        ("2TB", "more than 1TB"),
        ("1e400", "more than 1TB"),
    ],
)
def test_max_memory_must_be_a_sane_size(setup, tmp_path: Path, size: str, needle: str) -> None:
    r = gait("eval", setup["run"], "--pack", setup["pack"], f"--max-memory={size}",
             "--out", tmp_path / "r.json")  # fmt: skip
    assert r.exit_code == 2, r.output  # a usage error, before any work
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error: Invalid value for '--max-memory'") and needle in line, line
    assert "Traceback" not in r.output and not (tmp_path / "r.json").exists()


def test_max_memory_takes_sizes_from_1mb_to_1tb() -> None:
    from gaittrain.evaluation.run_eval import memory_size

    assert memory_size("1MB") == 1 << 20 and memory_size("1TB") == 1 << 40
    assert memory_size("256MB") == memory_size("256m") == memory_size("256MiB") == 256 << 20
    assert memory_size("1.5GB") == 3 << 29 and memory_size("1048576") == 1 << 20


@pytest.mark.parametrize("fmt", ["json", "csv", "html"])
def test_eval_out_dash_writes_the_report_alone_to_stdout(setup, tmp_path, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)  # where a file named "-" would land
    r = gait("eval", setup["run"], "--pack", setup["pack"], "--test-subjects", "004-006",
             "--report", fmt, "--out", "-")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "NM: rank-1" in r.stderr and "NM: rank-1" not in r.stdout
    assert "report: " not in r.stderr and not (tmp_path / "-").exists()
    if fmt == "json":
        assert set(json.loads(r.stdout)["conditions"]) == {"NM", "BG", "CL"}
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        assert [row["condition"] for row in rows[::4]] == ["NM", "BG", "CL"]
    else:
        assert r.stdout.startswith("<!DOCTYPE html>") and r.stdout.rstrip().endswith("</html>")
    help_text = gait("eval", "--help").output
    assert "- writes the report to stdout" in " ".join(help_text.split())
