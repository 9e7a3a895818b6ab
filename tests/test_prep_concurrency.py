"""`gait prep` and `gait pack merge` against a concurrent writer and a full disk (issue 8, items
11 and 12).

* One writer per output: a run that finds the output's lock held is refused in one line naming the
  holder's pid, before it deletes or creates anything.
* A full disk (a small tmpfs) or a file size limit (RLIMIT_FSIZE, writes fail with EFBIG) ends a
  run with one line naming the pack and the cause, exit status 1 (no traceback, no segfault); the
  partial pack and its journal stay, and the same command resumes once there is room, giving the
  pack an uninterrupted run gives.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gaitprep.layout import CASIA_B
from gaitprep.pack import Pack
from gaitprep.prep import PrepJob, run_prep
from tests.cli import gait, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "casia-b"
ENV = subprocess_env()
# `gait` with prep's commit interval set (0: commit after every sequence), so that a run that
# fails early has committed sequences to resume from.
WITH_COMMIT = (
    "import sys; from gaitprep import prep; prep.COMMIT_SECONDS = float(sys.argv[1]); "
    "from gaitcli.main import cli; cli(sys.argv[2:], prog_name='gait')"
)


def contents(path: Path) -> list[tuple]:
    with Pack(path) as p:
        return [
            (k, p[i].tobytes(), p.frame_source(i).tobytes(), p.meta(i)["source"])
            for i, k in enumerate(p.keys())
        ]


def leftovers(out: Path) -> list[str]:
    """Files beside ``out`` that a run in progress or a crashed run leaves."""
    return sorted(
        f.name for f in out.parent.iterdir() if f.name.startswith((f"{out.name}.", f".{out.name}"))
    )


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Two subjects of the sample data: 60 sequences, 720 frames (2.9 MB uncompressed)."""
    root = tmp_path_factory.mktemp("raw") / "casia-b"
    for subject in ("001", "002"):
        shutil.copytree(SAMPLE / subject, root / subject)
    return root


@pytest.fixture(scope="module")
def reference(raw: Path, tmp_path_factory) -> list[tuple]:
    """What an uninterrupted run writes."""
    out = tmp_path_factory.mktemp("reference") / "ref.h5"
    run_prep(PrepJob(raw=raw, out=out, dataset="casia-b", layout=CASIA_B), workers=1)
    return contents(out)


# --- item 11: one writer per output ------------------------------------------------------------


def test_prep_and_merge_refuse_an_output_another_process_writes(raw, tmp_path: Path) -> None:
    from gaitprep.files import OutputLock

    out = tmp_path / "p.h5"
    assert gait("prep", "casia-b", raw, out, "--workers", "1").exit_code == 0
    before = out.read_bytes()
    with OutputLock(out):
        for args in (
            ["prep", "casia-b", raw, out, "--workers", "1", "--overwrite"],
            ["pack", "merge", out, out, "--overwrite"],
        ):
            r = gait(*args)
            assert r.exit_code == 1, r.output
            lines = r.output.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in r.output
            assert f"{out} is being written by another gait process (pid {os.getpid()}" in lines[0]
            assert out.read_bytes() == before
            assert leftovers(out) == [".p.h5.lock", "p.h5.manifest.json"]
    fresh = tmp_path / "fresh.h5"
    with OutputLock(fresh):
        r = gait("prep", "casia-b", raw, fresh, "--workers", "1")
        assert r.exit_code == 1 and f"(pid {os.getpid()}" in r.output
        assert leftovers(fresh) == [".fresh.h5.lock"]  # no .partial, no journal
    assert leftovers(fresh) == []


# The second run is started first and waits, imports done, for a line on stdin: it then runs as
# soon as the first one holds its lock (a fresh `python -m gaitcli` would take longer to start than
# the first run takes to finish).
SECOND = (
    "import sys; from gaitcli.main import cli; print('ready', flush=True); "
    "sys.stdin.readline(); cli(sys.argv[1:], prog_name='gait')"
)


def held(lock: Path) -> bool:
    try:
        return lock.stat().st_size > 0
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_two_prep_runs_on_one_output(raw, reference, tmp_path: Path) -> None:
    out = tmp_path / "p.h5"
    args = ["prep", "casia-b", str(raw), str(out), "--workers", "1"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": ENV}
    second = subprocess.Popen([sys.executable, "-c", SECOND, *args], stdin=subprocess.PIPE, **pipes)
    first = None
    try:
        assert second.stdout.readline().strip() == "ready"
        first = subprocess.Popen([sys.executable, "-m", "gaitcli", *args], **pipes)
        lock = tmp_path / ".p.h5.lock"
        deadline = time.time() + 60
        # The holder's note is written once it has the lock.
        while not held(lock) and first.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        locked = held(lock)
        second.stdin.write("\n")
        second.stdin.flush()
        err1, err2 = first.communicate(timeout=60)[1], second.communicate(timeout=60)[1]
    finally:
        for p in (second, first):
            if p is not None and p.poll() is None:
                p.kill()
    assert locked, "the first run never held a lock on its output"
    assert first.returncode == 0, err1
    assert second.returncode == 1, err2
    assert "Traceback" not in err1 + err2
    errors = [ln for ln in err2.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1
    busy = f"is being written by another gait process (pid {first.pid}"
    # If the first run was already done, the second finds its pack.
    assert busy in errors[0] or f"{out} exists; pass --overwrite" in errors[0], errors[0]
    assert contents(out) == reference
    assert leftovers(out) == ["p.h5.manifest.json"]


# --- item 12: a full disk ----------------------------------------------------------------------


def gait_process(*args, fsize: int | None = None, commit: float | None = None):
    """`python -m gaitcli ARGS` (or with prep's commit interval set), optionally under a file
    size limit: writes past ``fsize`` bytes fail with EFBIG (SIGXFSZ is ignored)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    cmd = [sys.executable, "-m", "gaitcli"] if commit is None else [
        sys.executable, "-c", WITH_COMMIT, str(commit)
    ]  # fmt: skip
    return subprocess.run(
        [*cmd, *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        preexec_fn=None if fsize is None else limit,
    )


def assert_one_line(proc, out: Path, cause: str) -> None:
    assert proc.returncode == 1, f"exit status {proc.returncode}\n{proc.stderr[-3000:]}"
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]
    errors = [ln for ln in text.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, text[-3000:]
    assert f"cannot write {out}" in errors[0] and cause in errors[0], errors[0]
    assert "free" in errors[0]  # the way out


@pytest.mark.slow
@pytest.mark.parametrize(("compression", "room"), [("none", "1m"), ("gzip", "128k")])
def test_a_full_disk_ends_prep_in_one_line_and_the_same_command_resumes(
    raw, reference, tmp_path: Path, compression: str, room: str
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = disk / "p.h5"
        args = ["prep", "casia-b", raw, out, "--compression", compression, "--workers", "1"]
        proc = gait_process(*args, commit=0)
        assert_one_line(proc, out, "no space left on device")
        assert not out.exists()
        assert {"p.h5.partial", "p.h5.partial.json"} <= set(leftovers(out))
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        r = gait(*args)
        assert r.exit_code == 0, r.output
        assert "[resumed]" in r.output
        assert contents(out) == reference
        assert leftovers(out) == ["p.h5.manifest.json"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_size_limit_ends_prep_in_one_line_and_the_same_command_resumes(
    raw, reference, tmp_path: Path, workers: int
) -> None:
    out = tmp_path / "p.h5"
    args = ["prep", "casia-b", raw, out, "--compression", "none", "--workers", workers]
    # 1 worker: commit after every sequence, so the rerun must resume; 2 workers: plain `gait`
    # (a commit every 2 s), which here fails before its first commit or just after it.
    proc = gait_process(*args, fsize=1_000_000, commit=0 if workers == 1 else None)
    assert_one_line(proc, Path(f"{out}.partial"), "file too large")
    assert not out.exists() and (tmp_path / "p.h5.partial").exists()
    journal = (tmp_path / "p.h5.partial.json").exists()
    assert journal or workers == 2
    r = gait(*args)
    assert r.exit_code == 0, r.output
    assert ("[resumed]" in r.output) == journal
    assert contents(out) == reference
    assert leftovers(out) == ["p.h5.manifest.json"]
