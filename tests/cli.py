"""Helpers shared by the end-to-end tests: run `gait`, check a one-line error, make a pack."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from gaitcli.main import cli
from gaitprep.layout import CASIA_B
from gaitprep.prep import PrepJob, run_prep
from gaitprep.process import Params

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "casia-b"
TINY = ROOT / "configs" / "tiny.yaml"
#: A few-second tiny run: P x K = 4 x 2, 6 frames, no DataLoader workers, a log line per step,
#: a constant learning rate (so that --resume may extend a run; tiny's cosine refuses that).
FAST = [
    *("--set", "data.batch.p=4", "--set", "data.batch.k=2", "--set", "data.workers=0"),
    *("--set", "train.log_every=1", "--set", "data.frames=6", "--set", "schedule.name=constant"),
]


def subprocess_env(**extra: str) -> dict:
    """The environment for `python -m gaitcli` in a subprocess: this checkout first on the path
    (before any PYTHONPATH already set)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def gait(*args) -> object:
    """`gait ARGS...` in-process; the result's output holds stdout and stderr."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(r, *needles: str) -> str:
    """Exit 1 through the CLI's one error path (no exception escaped, no traceback printed),
    ending in an ``Error:`` line that holds every needle; returns that line."""
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in line, line
    return line


def make_pack(out: Path, raw: Path = SAMPLE, **params) -> Path:
    """A pack of ``raw`` (the sample data) made by `gait prep` with normalization ``params``."""
    job = PrepJob(raw=raw, out=out, dataset="casia-b", layout=CASIA_B, params=Params(**params))
    run_prep(job, workers=1)
    return out


def train_tiny(pack: Path, out: Path, *extra) -> object:
    """`gait train configs/tiny.yaml` on ``pack`` into ``out`` with the FAST settings, then
    ``extra`` (later ``--set`` values win)."""
    return gait("train", TINY, "--pack", pack, "--out", out, *FAST, *extra)


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a run folder (its config, data record, log and checkpoints) at ``to``."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("tensorboard", "embeddings-*"))
    return to


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``page`` with ``args`` (e.g. ``--dump-dom``), in a fresh profile,
    offline; skips the test where no Chromium is installed (.ci/run installs Debian's)."""
    if CHROMIUM is None:
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp()}",
    ]
    return subprocess.run(
        [CHROMIUM, *flags, *args, page.as_uri()], capture_output=True, text=True, timeout=120
    )
