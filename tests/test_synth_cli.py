"""`gait synth` end to end through the CLI: layouts, file names, frames, determinism, errors."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from gaitcli.main import cli

CASIA_RECORDINGS = [f"nm-{i:02d}" for i in range(1, 7)] + ["bg-01", "bg-02", "cl-01", "cl-02"]


def run(*args: str) -> object:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def tree_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.png")}


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


def png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


def test_casia_b_layout_is_exact(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    result = run(
        "synth",
        "casia-b",
        out,
        "--subjects",
        "2",
        "--frames",
        "3",
        "--views",
        "0,90,180",
        "--workers",
        "1",
    )
    assert result.exit_code == 0, result.output
    expected = {
        f"{s:03d}/{r}/{v:03d}/{s:03d}-{r}-{v:03d}-{f:03d}.png"
        for s in (1, 2)
        for r in CASIA_RECORDINGS
        for v in (0, 90, 180)
        for f in (1, 2, 3)
    }
    assert tree_files(out) == expected
    first = out / "001/nm-01/090/001-nm-01-090-001.png"
    assert png_header(first) == (320, 240, 8, 0)  # 8-bit greyscale
    img = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
    assert img.shape == (240, 320) and img.dtype == np.uint8
    assert set(np.unique(img)) <= {0, 255}
    assert (img == 255).sum() > 500  # a walker, not an empty frame


def test_casia_b_all_views_and_recordings_by_default(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    assert (
        run(
            "synth", "casia-b", out, "--subjects", "1", "--frames", "1", "--clean", "--workers", "1"
        ).exit_code
        == 0
    )
    views = sorted({p.parent.name for p in out.rglob("*.png")})
    assert views == [f"{v:03d}" for v in range(0, 181, 18)]
    recordings = sorted({p.parent.parent.name for p in out.rglob("*.png")})
    assert recordings == sorted(CASIA_RECORDINGS)


def test_ou_mvlp_layout_is_exact(tmp_path: Path) -> None:
    out = tmp_path / "oumvlp"
    result = run(
        "synth",
        "ou-mvlp",
        out,
        "--subjects",
        "3",
        "--frames",
        "2",
        "--views",
        "0,15,90,180,270",
        "--size",
        "160x122",
        "--workers",
        "1",
    )
    assert result.exit_code == 0, result.output
    expected = {
        f"Silhouette_{v:03d}-{q:02d}/{s:05d}/{f:04d}.png"
        for v in (0, 15, 90, 180, 270)
        for q in (0, 1)
        for s in (1, 2, 3)
        for f in (1, 2)
    }
    assert tree_files(out) == expected
    assert png_header(out / "Silhouette_090-00/00001/0001.png") == (160, 122, 8, 0)


def test_ou_mvlp_default_views() -> None:
    from gaitprep.synth import OU_MVLP

    assert OU_MVLP.views == (0, 15, 30, 45, 60, 75, 90, 180, 195, 210, 225, 240, 255, 270)


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    args = ["--subjects", "2", "--frames", "4", "--views", "18,90", "--conditions", "nm-01,bg-02"]
    assert run("synth", "casia-b", tmp_path / "a", *args, "--workers", "1").exit_code == 0
    assert run("synth", "casia-b", tmp_path / "b", *args, "--workers", "2").exit_code == 0
    assert run("synth", "casia-b", tmp_path / "c", *args, "--seed", "1").exit_code == 0
    a, b, c = (tree_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)  # a new seed is a new population and new recordings


def test_resume_rewrites_only_missing_sequences(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    args = [
        "synth",
        "casia-b",
        out,
        "--subjects",
        "1",
        "--frames",
        "3",
        "--views",
        "90",
        "--workers",
        "1",
    ]
    assert run(*args).exit_code == 0
    before = tree_digest(out)
    victim = out / "001/bg-01/090"
    for f in victim.iterdir():
        f.unlink()
    victim.rmdir()
    (out / "001/cl-01/.tmp-090-999").mkdir()  # debris of a killed worker is ignored
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "9 already there" in result.output
    assert tree_digest(out) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subjects", "zero"], "is not a subject id or range"),
        (["--views", "45"], "is not a view of casia-b"),
        (["--conditions", "xx-01"], "is not a recording of casia-b"),
        (["--size", "320"], "is not WIDTHxHEIGHT"),
        (["--artifact", "glitter=0.5"], "unknown artifact 'glitter'"),
        (["--artifact", "speckle=2"], "outside [0, 1]"),
    ],
)
def test_bad_arguments_give_one_clear_line(tmp_path: Path, args, message) -> None:
    result = run("synth", "casia-b", tmp_path / "raw", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "raw").exists()


def test_refuses_foreign_folder_and_changed_arguments(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    result = run("synth", "casia-b", foreign, "--subjects", "1", "--frames", "1")
    assert result.exit_code == 1 and "is not a gait synth tree" in result.output
    assert (foreign / "notes.txt").read_text() == "precious"

    out = tmp_path / "raw"
    base = [
        "synth",
        "casia-b",
        out,
        "--subjects",
        "1",
        "--frames",
        "1",
        "--views",
        "0",
        "--workers",
        "1",
    ]
    assert run(*base).exit_code == 0
    result = run(*base[:-2], "--seed", "5", "--workers", "1")
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert "other arguments (seed)" in result.output
    assert run(*base[:-2], "--seed", "5", "--workers", "1", "--overwrite").exit_code == 0


def test_a_tree_from_an_older_generator_is_not_resumed(tmp_path: Path) -> None:
    """Same arguments, other walker model: the frames on disk are not what this gait makes."""
    out = tmp_path / "raw"
    args = ["synth", "casia-b", out, "--subjects", "1", "--frames", "2", "--views", "0"]
    assert run(*args, "--workers", "1").exit_code == 0
    marker = out / ".gait-synth.json"
    record = json.loads(marker.read_text())
    del record["job"]["generator"]  # as trees written before the generator was recorded
    marker.write_text(json.dumps(record))
    result = run(*args, "--workers", "1")
    assert result.exit_code == 1 and "generator (version 1" in result.output
    assert "--overwrite" in result.output
    assert run(*args, "--workers", "1", "--overwrite").exit_code == 0
    assert json.loads(marker.read_text())["job"]["generator"] >= 2


def test_help_texts() -> None:
    top = run("--help")
    assert top.exit_code == 0 and "synth" in top.output
    synth = run("synth", "--help")
    assert synth.exit_code == 0
    for sub in ("casia-b", "ou-mvlp", "preview", "summary"):
        assert sub in synth.output
    casia = run("synth", "casia-b", "--help")
    for opt in (
        "--subjects",
        "--frames",
        "--views",
        "--conditions",
        "--size",
        "--seed",
        "--workers",
        "--clean",
        "--artifact",
    ):
        assert opt in casia.output


def test_summary_and_preview(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    assert (
        run(
            "synth",
            "casia-b",
            out,
            "--subjects",
            "2",
            "--frames",
            "2",
            "--views",
            "90",
            "--conditions",
            "nm",
            "--workers",
            "1",
        ).exit_code
        == 0
    )
    summary = run("synth", "summary", out)
    assert summary.exit_code == 0
    assert "sequences  12" in summary.output and "frames     24" in summary.output
    png = tmp_path / "montage.png"
    preview = run("synth", "preview", png, "--frame", "3")
    assert preview.exit_code == 0, preview.output
    img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    assert img.shape == (4 * 120, 11 * 160)
