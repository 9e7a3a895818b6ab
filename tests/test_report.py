"""`gait embed` and `gait eval` end to end, and the HTML report rendered in headless Chromium."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from gaitcli.main import cli
from gaitprep.layout import CASIA_B
from gaitprep.prep import PrepJob, run_prep
from gaittrain.evaluation.embeddings_file import read_embeddings
from tests.cli import chromium, train_tiny

ROOT = Path(__file__).resolve().parents[1]


def gait(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("report")
    pack = base / "sample.h5"
    run_prep(
        PrepJob(raw=ROOT / "sample_data" / "casia-b", out=pack, dataset="casia-b", layout=CASIA_B),
        workers=1,
    )
    run = base / "run <img src=x onerror=alert(1)>"  # data-borne markup must be escaped
    r = train_tiny(pack, run, "--iterations", "4", "--train-subjects", "001-003",
                   "--set", "data.batch.p=3")  # fmt: skip
    assert r.exit_code == 0, r.output
    return run, pack


def test_embed_writes_every_sequence(trained, tmp_path: Path) -> None:
    run, pack = trained
    out = tmp_path / "emb.h5"
    r = gait("embed", run, pack, "--out", out, "--subjects", "004-006", "--max-frames", "5")
    assert r.exit_code == 0, r.output
    emb, attrs = read_embeddings(out)
    assert len(emb) == 3 * 10 * 3 and {k[0] for k in emb} == {"004", "005", "006"}
    assert next(iter(emb.values())).shape == (15, 64)
    assert attrs["checkpoint"].endswith("iter-000004.pt") and attrs["max_frames"] == 5


def test_json_and_csv_reports(trained, tmp_path: Path) -> None:
    run, pack = trained
    js = tmp_path / "r.json"
    r = gait(
        "eval", run, "--pack", pack, "--test-subjects", "004-006", "--report", "json", "--out", js
    )
    assert r.exit_code == 0, r.output
    data = json.loads(js.read_text())
    for group in ("NM", "BG", "CL"):
        c = data["conditions"][group]
        assert 0.0 <= c["rank1"] <= 1.0 and set(c["per_view"]) == {"036", "090", "144"}
        assert c["rank1"] == pytest.approx(np.mean(list(c["per_view"].values())))
        assert f"{group}: rank-1 {100 * c['rank1']:.1f} %" in r.output
    out = tmp_path / "r.csv"
    r = gait(
        "eval", run, "--pack", pack, "--test-subjects", "004-006", "--report", "csv", "--out", out
    )
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    nm_mean = f"{data['conditions']['NM']['rank1']:.6f}"
    assert len(rows) == 3 * 4
    assert rows[3] == {
        "condition": "NM",
        "probe_view": "mean",
        "rank1": nm_mean,
        "storage": "float32",
    }


@pytest.mark.browser
def test_html_report_renders_in_headless_chromium(trained, tmp_path: Path) -> None:
    run, pack = trained
    page = tmp_path / "report.html"
    r = gait(
        "eval", run, "--pack", pack, "--test-subjects", "004-006", "--report", "html", "--out", page
    )
    assert r.exit_code == 0, r.output
    html = page.read_text()
    assert "<img src=x onerror" not in html and "&lt;img src=x onerror" in html
    assert "http://" not in html and "https://" not in html  # self-contained
    assert html.count("data:image/png;base64,") >= 5  # heatmaps, CMC, loss, thumbnails
    dom = chromium(page, "--dump-dom")
    assert (
        dom.returncode == 0
        and 'id="summary"' in dom.stdout
        and "Rank-1 per probe view" in dom.stdout
    )
    shot = tmp_path / "shot.png"
    assert chromium(page, "--window-size=1200,1600", f"--screenshot={shot}").returncode == 0
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (1600, 1200)
    assert (img < 128).mean() > 0.01  # text and figures, not a blank page


@pytest.mark.slow
def test_identify_finds_a_sequence_of_the_gallery(trained, tmp_path: Path) -> None:
    run, pack = trained
    emb = tmp_path / "gallery.h5"
    assert gait("embed", run, pack, "--out", emb, "--subjects", "004-006").exit_code == 0
    raw = ROOT / "sample_data" / "casia-b" / "005" / "bg-02" / "090"
    r = gait("identify", run, emb, raw, "--top-k", "2", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert [m["rank"] for m in result["matches"]] == [1, 2]
    best = result["matches"][0]
    # The folder is preprocessed exactly as the pack was, so it finds itself at distance ~0.
    assert best["subject"] == "005" and best["nearest"] == "005-bg-02-090"
    assert best["distance"] < 1e-4 < result["matches"][1]["distance"]
    text = gait("identify", run, pack, raw, "--top-k", "3")  # a pack works as the gallery too
    assert text.exit_code == 0 and len(text.stdout.strip().splitlines()) == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = gait("identify", run, emb, empty)
    assert bad.exit_code == 1 and "holds no png, jpg or bmp frame" in bad.output


def test_identify_embeds_a_pack_gallery_once(trained, tmp_path: Path) -> None:
    """A pack given as gallery is embedded into RUN/gallery-PACKNAME.h5 once and reused."""
    run, pack = trained
    cache = run / f"gallery-{pack.stem}.h5"
    cache.unlink(missing_ok=True)
    raw = ROOT / "sample_data" / "casia-b" / "005" / "bg-02" / "090"
    first = gait("identify", run, pack, raw, "--json")
    assert first.exit_code == 0, first.output
    assert "embedded the gallery into" in first.output and cache.exists()
    stamp = cache.stat().st_mtime_ns
    second = gait("identify", run, pack, raw, "--json")
    assert second.exit_code == 0, second.output
    assert "embedded the gallery" not in second.output
    assert cache.stat().st_mtime_ns == stamp

    def matches(r):
        return json.loads(r.stdout)["matches"]

    assert matches(first) == matches(second)
