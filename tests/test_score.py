"""`gait score` and the in-the-wild protocols (Gait3D, GREW, CCPG, HID), figure for figure and
line for line against OpenGait's own evaluator (ShiqiYu/OpenGait 0efafd4) run on seeded
embeddings: /work/shared/fixtures/opengait-protocols (its README.md says what each folder holds).

OpenGait rounds some figures before it returns or logs them; the tolerances below are that
rounding's and no more: 0.005 for a figure rounded to 2 decimals, 0.0005 for one logged with 3,
1e-4 for its float32 Rank-k of Gait3D and CCPG's re-identification (float32's 6e-8 relative,
times 100), 1e-9 for an unrounded float64 figure.
"""

from __future__ import annotations

import doctest
import json
import re
from pathlib import Path

import numpy as np
import pytest

from gaitprep.errors import GaitError
from gaittrain.evaluation import score as score_module
from gaittrain.evaluation import wild
from gaittrain.evaluation.score import load_inputs, score
from tests.cli import assert_one_line_error, gait

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "opengait-protocols"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"OpenGait protocol fixtures not found at {FIXTURES}"
)
GROUPS = ("CL", "UP", "DN", "BG")
ROUNDED_2 = 0.005 + 1e-9  # a figure OpenGait rounded to 2 decimals
LOGGED_3 = 0.0005 + 1e-9  # a figure OpenGait logged with '%.3f'
FLOAT32 = 1e-4  # a Rank-k OpenGait computed in float32
EXACT = 1e-9


def inputs(folder: str) -> Path:
    return FIXTURES / folder / "inputs.npz"


def opengait(folder: str) -> dict:
    return json.loads((FIXTURES / folder / "opengait.json").read_text())


def arrays(folder: str) -> dict[str, np.ndarray]:
    return load_inputs(inputs(folder))


def test_the_doctests_hold() -> None:
    assert doctest.testmod(wild).failed == 0


# --- figure for figure ---------------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize(
    ("folder", "metric"), [("gait3d-euc", "euclidean"), ("gait3d-cos", "cosine")]
)
def test_gait3d_is_opengaits_figure_for_figure(tmp_path: Path, folder: str, metric: str) -> None:
    report = score(
        inputs(folder),
        "gait3d",
        tmp_path / "r.json",
        metric=metric,
        partition=FIXTURES / folder / "Gait3D.json",
    )
    ref = opengait(folder)
    for k in (1, 5, 10):
        assert report[f"rank{k}"] == pytest.approx(
            ref[f"scalar/test_accuracy/Rank-{k}"], abs=FLOAT32
        )
    assert report["mAP"] == pytest.approx(ref["scalar/test_accuracy/mAP"], abs=EXACT)
    assert report["mINP"] == pytest.approx(ref["scalar/test_accuracy/mINP"], abs=EXACT)
    assert json.loads((tmp_path / "r.json").read_text())["mAP"] == report["mAP"]


@needs_fixtures
def test_gait3d_cosine_and_euclidean_rank_differently() -> None:
    """The metric reaches the ranking: the other metric misses OpenGait's figures."""
    a = arrays("gait3d-cos")
    probes = json.loads((FIXTURES / "gait3d-cos" / "Gait3D.json").read_text())["PROBE_SET"]
    euc = wild.gait3d(a["embeddings"], a["labels"], a["types"], a["views"], probes, "euclidean")
    assert abs(euc["mAP"] - opengait("gait3d-cos")["scalar/test_accuracy/mAP"]) > 0.1


@needs_fixtures
def test_grew_real_scene_is_opengaits() -> None:
    a = arrays("grew-real-scene")
    result = wild.grew(a["embeddings"], a["labels"], a["types"])
    ref = opengait("grew-real-scene")
    assert result["rank1"] == pytest.approx(ref["scalar/test_accuracy/Rank-1"], abs=ROUNDED_2)
    assert result["rank5"] == pytest.approx(ref["scalar/test_accuracy/Rank-5"], abs=ROUNDED_2)
    assert result["rank1"] <= result["rank5"] <= result["rank10"] <= result["rank20"] <= 100
    assert (result["probes"], result["gallery"]) == (60, 60)


@needs_fixtures
def test_grew_submission_is_opengaits_line_for_line(tmp_path: Path) -> None:
    csv = tmp_path / "submission.csv"
    score(inputs("grew-submission"), "grew-submission", tmp_path / "r.json", submission=csv)
    expected = (FIXTURES / "grew-submission" / "submission.csv").read_text().splitlines()
    assert csv.read_text().splitlines() == expected
    assert csv.read_bytes() == (FIXTURES / "grew-submission" / "submission.csv").read_bytes()


def _log_sections(text: str) -> dict[str, dict[str, object]]:
    """CCPG's log.txt: per ``===title===`` section, each group's figure (or list of figures)."""
    sections, title = {}, None
    for line in text.splitlines():
        if line.startswith("==="):
            title = line.strip("=")
            sections[title] = {}
        elif title is not None:
            for group, value in re.findall(r"(CL|UP|DN|BG): (\[[^\]]*\]|[-\d.]+)", line):
                numbers = [float(x) for x in value.strip("[]").split()]
                sections[title][group] = numbers if value.startswith("[") else numbers[0]
    return sections


@needs_fixtures
def test_ccpg_is_opengaits_figure_for_figure() -> None:
    a = arrays("ccpg")
    result = wild.ccpg(a["embeddings"], a["labels"], a["types"], a["views"])
    ref = opengait("ccpg")
    log = _log_sections((FIXTURES / "ccpg" / "log.txt").read_text())
    reid = "(Exclude identical-view cases for Person Re-Identification)"
    assert result["views"] == ["01", "02", "03", "04"]  # "VV" of "VV_x"
    for g in GROUPS:
        r = result[g]
        table = np.array(r["rank1_per_view"])
        np.testing.assert_allclose(table, ref[f"scalar/test_accuracy/{g}"], rtol=0, atol=ROUNDED_2)
        assert r["rank1_reid"] == pytest.approx(log[f"Rank-1 {reid}"][g], abs=LOGGED_3 + FLOAT32)
        assert r["mAP"] == pytest.approx(log[f"mAP {reid}"][g], abs=LOGGED_3)
        assert r["mINP"] == pytest.approx(log[f"mINP {reid}"][g], abs=LOGGED_3)
        # OpenGait averages cells it rounded to 2 decimals, then logs with 3
        both = ROUNDED_2 + LOGGED_3
        included = log["Rank-1 (Include identical-view cases)"][g]
        excluded = log["Rank-1 (Exclude identical-view cases)"][g]
        assert r["rank1_including_identical_view"] == pytest.approx(included, abs=both)
        assert r["rank1_excluding_identical_view"] == pytest.approx(excluded, abs=both)
        per_view = log["Rank-1 of each angle (Exclude identical-view cases)"][g]
        np.testing.assert_allclose(
            r["rank1_per_probe_view_excluding_identical"], per_view, rtol=0, atol=2 * ROUNDED_2
        )
        assert r["rank1_excluding_identical_view"] != pytest.approx(
            r["rank1_including_identical_view"], abs=0.1
        )


@needs_fixtures
def test_ccpg_removes_only_the_probes_own_subject_and_view() -> None:
    """Removing every same-view gallery entry, or none, would not give OpenGait's mAP: the
    fixture tells the three apart."""
    a = arrays("ccpg")
    mAP = wild.ccpg(a["embeddings"], a["labels"], a["types"], a["views"])["CL"]["mAP"]
    probes = np.flatnonzero(np.isin(a["types"], wild.CCPG_GROUPS["CL"][0]))
    gallery = np.flatnonzero(np.isin(a["types"], wild.CCPG_GROUPS["CL"][1]))
    emb = wild.Embeddings.from_opengait(a["embeddings"])
    blocks = wild._rows(emb, probes, gallery, "euclidean", wild.MAX_MEMORY)
    found = wild._ranked(blocks, a["labels"][probes], a["labels"][gallery])
    kept_all = 100 * found.ap[found.has_match].mean()
    assert mAP == pytest.approx(36.626, abs=LOGGED_3)
    assert abs(kept_all - 36.626) > 0.01


def test_a_probe_without_gallery_subject_is_left_out_by_gait3d_and_a_miss_for_grew() -> None:
    """OpenGait's evaluate_rank skips such a probe (Gait3D); evaluate_real_scene counts it."""
    emb = np.array([0.0, 1.0, 0.1, 5.0]).reshape(4, 1, 1)  # gallery a, b; probes a, c
    labels = np.array(["a", "b", "a", "c"])
    views = np.array(["s0", "s0", "s1", "s1"])
    r = wild.gait3d(emb, labels, ["t"] * 4, views, ["a-t-s1", "c-t-s1"])
    assert (r["rank1"], r["mAP"], r["mINP"], r["probes"], r["probes_scored"]) == (
        100.0,
        100.0,
        100.0,
        2,
        1,
    )
    assert wild.grew(emb, labels, ["01", "01", "02", "02"])["rank1"] == 50.0


def test_without_identical_views_leaves_out_the_diagonal() -> None:
    table = np.array([[90.0, 10.0, 20.0], [30.0, 80.0, 40.0], [50.0, 60.0, 70.0]])
    np.testing.assert_allclose(wild.without_identical_views(table), [15.0, 35.0, 55.0])


@needs_fixtures
def test_hid_without_reranking_is_opengaits_line_for_line(tmp_path: Path) -> None:
    csv = tmp_path / "hid.csv"
    score(inputs("hid-rerank-false"), "hid", tmp_path / "r.json", submission=csv)
    assert csv.read_bytes() == (FIXTURES / "hid-rerank-false" / "submission.csv").read_bytes()


@needs_fixtures
def test_hid_with_reranking_is_opengaits_line_for_line(tmp_path: Path) -> None:
    pytest.importorskip(
        "gaittrain.evaluation.rerank",
        reason="gaittrain.evaluation.rerank (k-reciprocal re-ranking) is not written yet",
    )
    csv = tmp_path / "hid.csv"
    score(inputs("hid-rerank-true"), "hid", tmp_path / "r.json", rerank=True, submission=csv)
    expected = (FIXTURES / "hid-rerank-true" / "submission.csv").read_bytes()
    assert csv.read_bytes() == expected
    plain = tmp_path / "plain.csv"
    score(inputs("hid-rerank-true"), "hid", tmp_path / "p.json", submission=plain)
    assert plain.read_bytes() != expected  # re-ranking changes a row here


# --- the command ---------------------------------------------------------------------------------


@needs_fixtures
def test_cli_writes_a_json_report(tmp_path: Path) -> None:
    out = tmp_path / "gait3d.json"
    folder = FIXTURES / "gait3d-cos"
    r = gait(
        "score",
        folder / "inputs.npz",
        "--protocol",
        "gait3d",
        "--metric",
        "cosine",
        "--partition",
        folder / "Gait3D.json",
        "--report",
        "json",
        "--out",
        out,
    )
    assert r.exit_code == 0, r.output
    assert "rank1 62.50 %" in r.output and f"report: {out}" in r.output
    report = json.loads(out.read_text())
    ref = opengait("gait3d-cos")
    assert (report["protocol"], report["metric"]) == ("gait3d", "cosine")
    assert report["inputs"]["sha256"] == score_module.sha256(folder / "inputs.npz")
    assert report["mINP"] == pytest.approx(ref["scalar/test_accuracy/mINP"], abs=EXACT)
    assert report["rank10"] == pytest.approx(ref["scalar/test_accuracy/Rank-10"], abs=FLOAT32)


@needs_fixtures
def test_cli_writes_an_html_page(tmp_path: Path) -> None:
    out = tmp_path / "ccpg.html"
    r = gait("score", inputs("ccpg"), "--protocol", "ccpg", "--report", "html", "--out", out)
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "http" not in page  # nothing loaded
    for g in GROUPS:
        assert f'id="views-{g}"' in page
    assert "53.333" in page and "36.626" in page  # CL's rank-1 and mAP (re-identification)


@needs_fixtures
def test_cli_writes_a_submission(tmp_path: Path) -> None:
    csv, out = tmp_path / "grew.csv", tmp_path / "grew.html"
    r = gait(
        "score",
        inputs("grew-submission"),
        "--protocol",
        "grew-submission",
        "--report",
        "html",
        "--out",
        out,
        "--submission",
        csv,
    )
    assert r.exit_code == 0, r.output
    assert "60 probe videos" in r.output
    assert csv.read_bytes() == (FIXTURES / "grew-submission" / "submission.csv").read_bytes()
    assert "3DehG6eD" in out.read_text()


def test_html_escapes_what_comes_from_the_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.array(["<b>x</b>", "y", "probe", "probe"])
    npz = tmp_path / "hid.npz"
    np.savez(
        npz,
        embeddings=rng.normal(size=(4, 3, 2)).astype(np.float32),
        labels=labels,
        types=labels,
        views=np.array(["g0", "g1", "<i>v</i>", "v2"]),
    )
    score(npz, "hid", tmp_path / "hid.html", fmt="html")
    page = (tmp_path / "hid.html").read_text()
    assert "&lt;i&gt;v&lt;/i&gt;" in page and "<i>" not in page


# --- one-line errors -----------------------------------------------------------------------------


def _npz(path: Path, **override) -> Path:
    rng = np.random.default_rng(1)
    a = {
        "embeddings": rng.normal(size=(6, 4, 2)).astype(np.float32),
        "labels": np.array(["1", "1", "2", "2", "3", "3"]),
        "types": np.array(["01", "02"] * 3),
        "views": np.array([f"v{i}" for i in range(6)]),
    }
    a.update(override)
    np.savez(path, **{k: v for k, v in a.items() if v is not None})
    return path


def test_a_missing_array_is_one_line(tmp_path: Path) -> None:
    npz = _npz(tmp_path / "in.npz", views=None)
    r = gait("score", npz, "--protocol", "grew", "--out", tmp_path / "r.json")
    assert_one_line_error(r, str(npz), "no views array", "np.savez")
    assert not (tmp_path / "r.json").exists()


def test_a_wrong_shape_is_one_line(tmp_path: Path) -> None:
    npz = _npz(tmp_path / "in.npz", embeddings=np.zeros((6, 8), np.float32))
    r = gait("score", npz, "--protocol", "grew", "--out", tmp_path / "r.json")
    assert_one_line_error(r, str(npz), "shape [6, 8]", "[n, c, p]")
    npz = _npz(tmp_path / "in2.npz", labels=np.array(["1", "2"]))
    r = gait("score", npz, "--protocol", "grew", "--out", tmp_path / "r.json")
    assert_one_line_error(r, "labels", "not 6 strings")


def test_a_file_that_is_no_npz_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "in.npz"
    bad.write_text("not an archive")
    r = gait("score", bad, "--protocol", "grew", "--out", tmp_path / "r.json")
    assert_one_line_error(r, f"cannot read {bad}")


@needs_fixtures
def test_gait3d_without_its_partition_file_is_one_line(tmp_path: Path) -> None:
    r = gait("score", inputs("gait3d-euc"), "--protocol", "gait3d", "--out", tmp_path / "r.json")
    assert_one_line_error(r, "Gait3D.json", "--partition")
    missing = tmp_path / "Gait3D.json"
    r = gait(
        "score",
        inputs("gait3d-euc"),
        "--protocol",
        "gait3d",
        "--partition",
        missing,
        "--out",
        tmp_path / "r.json",
    )
    assert_one_line_error(r, str(missing), "not found")
    assert not (tmp_path / "r.json").exists()


def test_an_output_that_is_a_folder_is_one_line(tmp_path: Path) -> None:
    npz = _npz(tmp_path / "in.npz")
    r = gait("score", npz, "--protocol", "grew", "--out", tmp_path)
    assert_one_line_error(r, str(tmp_path), "folder")


def test_options_of_another_protocol_are_refused(tmp_path: Path) -> None:
    npz = _npz(tmp_path / "in.npz")
    r = gait("score", npz, "--protocol", "grew", "--partition", npz, "--out", tmp_path / "r.json")
    assert_one_line_error(r, "--partition is Gait3D's")
    r = gait("score", npz, "--protocol", "hid", "--distractors", "--out", tmp_path / "r.json")
    assert_one_line_error(r, "--distractors is GREW's")
    r = gait(
        "score",
        npz,
        "--protocol",
        "grew",
        "--out",
        tmp_path / "r.json",
        "--submission",
        tmp_path / "s.csv",
    )
    assert_one_line_error(r, "--submission")


def test_too_small_a_gallery_for_grews_submission_is_one_line(tmp_path: Path) -> None:
    npz = _npz(tmp_path / "in.npz", types=np.array(["01", "03"] * 3))
    with pytest.raises(GaitError, match="20 gallery subjects"):
        score(npz, "grew-submission", tmp_path / "r.json")
