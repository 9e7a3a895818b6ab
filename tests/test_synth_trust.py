"""`gait synth` trees hold data only, and one process writes a tree at a time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from gaitcli.main import cli

SMALL = ["--subjects", "2", "--frames", "2", "--views", "90", "--conditions", "nm-01,cl-01"]
MARKER = ".gait-synth.json"


def synth(out: Path, *extra: str) -> object:
    return CliRunner().invoke(cli, ["synth", "casia-b", str(out), *SMALL, *extra])


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file of the tree (hidden ones included) and its bytes."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def test_identical_runs_give_identical_trees_marker_included(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    first, second = synth(a, "--workers", "1"), synth(b, "--workers", "1")
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "frames/s" in first.output  # the timing is printed, not stored
    trees = tree_bytes(a), tree_bytes(b)
    assert MARKER in trees[0] and len(trees[0]) == 1 + 2 * 2 * 2  # marker + 8 frames
    assert trees[0] == trees[1]
    marker = json.loads(trees[0][MARKER])
    assert set(marker) == {"job", "complete"} and marker["complete"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no lock left behind


def test_a_resumed_run_writes_the_marker_of_a_fresh_one(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    assert synth(out, "--workers", "1").exit_code == 0
    fresh = tree_bytes(out)
    shutil.rmtree(out / "002" / "cl-01")
    resumed = synth(out, "--workers", "1")
    assert resumed.exit_code == 0, resumed.output
    assert "3 already there" in resumed.output  # counted for the user, not in the marker
    assert tree_bytes(out) == fresh


# Holds the output lock of a tree the way another `gait synth` would (gaitprep.files.OutputLock:
# an flock on the hidden `.NAME.lock` beside the output, holding the holder's description) until
# its stdin closes.
HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"pid {os.getpid()}, started now: gait synth casia-b raw\\n".encode())
    print("locked", flush=True)
    sys.stdin.read()
    """
)


def test_a_tree_being_written_by_another_process_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / ".raw.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = synth(root, "--workers", "1")
        overwrite = synth(root, "--workers", "1", "--seed", "3", "--overwrite")
    finally:
        holder.stdin.close()
        holder.wait()
    for r in (result, overwrite):
        assert r.exit_code == 1, r.output
        assert isinstance(r.exception, SystemExit), repr(r.exception)
        assert len(r.output.strip().splitlines()) == 1, r.output
        assert f"pid {holder.pid}" in r.output and "Traceback" not in r.output
    assert not root.exists()  # nothing written into the tree
    assert synth(root, "--workers", "1").exit_code == 0  # free again once the holder is gone
