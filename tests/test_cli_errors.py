"""The one error path of the `gait` command: a line, never a traceback (unless --debug)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import ROOT, gait


@pytest.mark.parametrize(
    "args",
    [
        ("synth", "casia-b", "{tmp}/raw", "--subjects", "2", "--frames", "3", "--seed", "-1"),
        ("synth", "preview", "{tmp}/p.png", "--seed", "-1"),
        ("inspect", "{tmp}/missing.h5", "--montage", "{tmp}/m.png", "--seed", "-1"),
        (
            "train",
            ROOT / "configs" / "tiny.yaml",
            "--pack",
            "{tmp}/x.h5",
            "--out",
            "{tmp}/r",
            "--seed",
            "-1",
        ),
    ],  # fmt: skip
    ids=["synth", "preview", "inspect", "train"],
)
def test_a_negative_seed_is_refused_without_a_traceback(tmp_path: Path, args) -> None:
    (tmp_path / "x.h5").write_bytes(b"")
    r = gait(*[str(a).replace("{tmp}", str(tmp_path)) for a in args])
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    last = r.output.strip().splitlines()[-1]
    if args[0] == "train":  # the config's check: seed is a config key
        assert r.exit_code == 1 and last.startswith("Error: seed must be at least 0"), last
    else:  # click's own check of the option
        assert r.exit_code == 2 and "Invalid value for '--seed': -1 is not in the range" in last
    assert not (tmp_path / "raw").exists() and not (tmp_path / "p.png").exists()


def test_debug_shows_the_traceback_the_line_hides(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-pack.h5"
    bad.write_text("hello")
    r = gait("inspect", bad)
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith("Error: ")
    r = gait("--debug", "inspect", bad)
    assert r.exit_code == 1 and not isinstance(r.exception, SystemExit)
    assert type(r.exception).__name__ == "PackError"
