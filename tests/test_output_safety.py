"""Outputs that never clobber what is not an output, and successes that are real (issue 21).

Every writer goes through gaitprep.files: a device, FIFO or socket given as an output is refused
in one line and left as it was; a symbolic link is written through; a lock file is never a link
or another file's name; a full disk (here: a file-size limit, which fails writes the same way
without needing a small file system) is one line and a non-zero exit with nothing left under the
final name; `gait segment` and `gait synth video` lock their outputs.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gaitprep.errors import OutputError
from gaitprep.files import OutputLock, atomic_folder, atomic_write, output_target
from tests.cli import ROOT, assert_one_line_error, gait, make_pack, subprocess_env


def _char_device(path: Path) -> Path:
    """A character device like /dev/null (1, 3) made in a temporary folder; skips where mknod is
    not permitted (not root, or a container without the capability)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError) as e:
        pytest.skip(f"mknod is not permitted here: {e}")
    return path


def _node(kind: str, path: Path) -> Path:
    if kind == "device":
        return _char_device(path)
    if kind == "fifo":
        os.mkfifo(path)
        return path
    sock = socket.socket(socket.AF_UNIX)  # kept open by the test's lifetime is not needed
    sock.bind(str(path))
    sock.close()
    return path


KIND_OF = {"device": stat.S_ISCHR, "fifo": stat.S_ISFIFO, "socket": stat.S_ISSOCK}


@pytest.mark.parametrize("kind", ["device", "fifo", "socket"])
def test_special_files_are_refused_and_left_as_they_were(tmp_path: Path, kind: str) -> None:
    node = _node(kind, tmp_path / "out")
    with pytest.raises(OutputError, match="refusing to write .*not a file"):
        atomic_write(node, "{}")
    assert KIND_OF[kind](os.lstat(node).st_mode)
    link = tmp_path / "link"
    link.symlink_to(node)
    with pytest.raises(OutputError, match="the target of the link"):
        atomic_write(link, "{}")
    assert KIND_OF[kind](os.lstat(node).st_mode) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "out"]  # no lock, no partial


def test_eval_refuses_a_device_before_any_work(tmp_path: Path) -> None:
    node = _char_device(tmp_path / "mynull")
    run, pack = tmp_path / "run", tmp_path / "p.h5"
    run.mkdir()
    pack.write_bytes(b"not even a pack: the output is checked first")
    r = gait("eval", run, "--pack", pack, "--out", node)
    assert_one_line_error(r, "refusing to write", "character device")
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_export_refuses_a_fifo_before_loading_anything(tmp_path: Path) -> None:
    fifo = _node("fifo", tmp_path / "model.onnx")
    run, pack = tmp_path / "run", tmp_path / "p.h5"
    run.mkdir()
    pack.write_bytes(b"x")
    r = gait("export", run, fifo, "--pack", pack)
    assert_one_line_error(r, "refusing to write", "FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_linked_output_is_written_through(tmp_path: Path) -> None:
    target = tmp_path / "real" / "montage.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "montage.png"
    link.symlink_to(target)
    r = gait("synth", "preview", link)
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert output_target(link) == target


def test_the_lock_never_follows_a_link_nor_writes_into_another_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "lockme.json"
    lock = tmp_path / ".lockme.json.lock"
    lock.symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        OutputLock(out).acquire()
    run, pack = tmp_path / "run", tmp_path / "p.h5"
    run.mkdir()
    pack.write_bytes(b"x")
    r = gait("eval", run, "--pack", pack, "--out", out)
    assert_one_line_error(r, "lock file", "symbolic link")
    assert victim.read_text() == "precious\n"
    lock.unlink()
    os.link(victim, lock)  # a hard link: the same file under the lock's name
    with pytest.raises(OutputError, match="another name"):
        OutputLock(out).acquire()
    assert victim.read_text() == "precious\n"
    lock.unlink()
    os.mkfifo(lock)
    with pytest.raises(OutputError, match="FIFO"):
        OutputLock(out).acquire()
    lock.unlink()
    with OutputLock(out):  # a lock of its own works as before, and goes with its holder
        assert lock.is_file() and not lock.is_symlink()
    assert not lock.exists() and victim.read_text() == "precious\n"


def test_atomic_folder_is_all_or_nothing_and_replaces_whole(tmp_path: Path) -> None:
    out = tmp_path / "frames"
    with atomic_folder(out) as tmp:
        for i in range(5):
            (tmp / f"{i}.png").write_bytes(b"x")
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.png" for i in range(5)]
    with pytest.raises(OutputError, match="not an empty folder"), atomic_folder(out):
        pass
    with pytest.raises(RuntimeError), atomic_folder(out, replace=True) as tmp:
        (tmp / "new.png").write_bytes(b"y")
        raise RuntimeError("interrupted")
    assert len(list(out.iterdir())) == 5  # the old content, untouched
    with atomic_folder(out, replace=True) as tmp:
        (tmp / "0.png").write_bytes(b"z")
    assert [p.name for p in out.iterdir()] == ["0.png"]  # nothing of the old one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


# `gait ARGS` in a child process whose writes fail past LIMIT bytes per file (RLIMIT_FSIZE: the
# same EFBIG a full disk's ENOSPC gives, and a video writer fails silently the same way).
LIMITED = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
    from gaitcli.main import cli
    cli(sys.argv[2:], prog_name="gait")
    """
)


def _gait_limited(limit: int, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=subprocess_env(),
        timeout=300,
    )


def _one_line_failure(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 1, p.stdout + p.stderr
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), p.stdout + p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.slow
def test_synth_video_on_a_full_disk_fails_and_leaves_nothing(tmp_path: Path) -> None:
    # 20 kB: every mask PNG fits, the mp4 (about 90 kB) does not
    p = _gait_limited(20_000, "synth", "video", "walk.mp4", "--frames", "20", cwd=tmp_path)
    _one_line_failure(p, "walk.mp4", "read back")
    assert sorted(x.name for x in tmp_path.iterdir()) == []
    p = _gait_limited(300, "synth", "video", "walk.mp4", "--frames", "20", cwd=tmp_path)
    _one_line_failure(p, "walk.mp4.masks", "file size limit")
    assert sorted(x.name for x in tmp_path.iterdir()) == []


def _video(folder: Path, frames: int = 24, empty: int = 12) -> Path:
    r = gait("synth", "video", folder / "walk.mp4", "--frames", frames, "--empty", empty)
    assert r.exit_code == 0, r.output
    return folder / "walk.mp4"


def test_synth_video_again_replaces_the_old_masks(tmp_path: Path) -> None:
    video = _video(tmp_path, 24, 12)
    assert len(list(Path(f"{video}.masks").iterdir())) == 36
    _video(tmp_path, 5, 3)
    assert len(list(Path(f"{video}.masks").iterdir())) == 8  # no stale mask of the longer one


@pytest.mark.slow
def test_segment_on_a_full_disk_fails_and_leaves_nothing(tmp_path: Path) -> None:
    video = _video(tmp_path)
    before = sorted(x.name for x in tmp_path.iterdir())
    # silhouettes (~1 kB each) fit; the preview video does not: neither is left
    p = _gait_limited(
        20_000, "segment", video, "sil", "--learn-frames", "12", "--preview", "p.mp4", cwd=tmp_path
    )
    _one_line_failure(p, "p.mp4", "read back")
    p = _gait_limited(100, "segment", video, "sil", "--learn-frames", "12", cwd=tmp_path)
    _one_line_failure(p, "sil", "file size limit")
    assert sorted(x.name for x in tmp_path.iterdir()) == before


def test_segment_refuses_a_bad_preview_before_writing_anything(tmp_path: Path) -> None:
    video = _video(tmp_path)
    r = gait("segment", video, tmp_path / "sil", "--preview", tmp_path / "p.txt")
    assert_one_line_error(r, "p.txt", ".mp4")
    assert not (tmp_path / "sil").exists()
    fifo = _node("fifo", tmp_path / "p.png")
    r = gait("segment", video, tmp_path / "sil", "--preview", fifo)
    assert_one_line_error(r, "refusing to write", "FIFO")
    assert not (tmp_path / "sil").exists() and stat.S_ISFIFO(os.lstat(fifo).st_mode)


HOLDER = textwrap.dedent(
    """
    import sys
    from gaitprep.files import OutputLock
    with OutputLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


def test_two_segment_runs_into_one_folder_never_mix(tmp_path: Path) -> None:
    video = _video(tmp_path)
    out = tmp_path / "sil"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = gait("segment", video, out, "--learn-frames", "12")
    finally:
        holder.stdin.close()
        holder.wait()
    assert_one_line_error(r, "being written by another gait process", f"pid {holder.pid}")
    assert not out.exists()
    first = gait("segment", video, out, "--learn-frames", "12")
    assert first.exit_code == 0, first.output
    names = sorted(p.name for p in out.iterdir())
    assert_one_line_error(gait("segment", video, out), "not an empty folder")
    assert sorted(p.name for p in out.iterdir()) == names


@pytest.mark.slow
def test_segment_of_a_broken_video_prints_gaits_line_only(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 1000)
    p = subprocess.run(
        [sys.executable, "-m", "gaitcli", "segment", str(bad), str(tmp_path / "sil")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=subprocess_env(),
        timeout=120,
    )
    # FFmpeg's own "moov atom not found" came first before
    _one_line_failure(p, "bad.mp4", "not a video")


def test_synth_refuses_an_absurd_frame_size(tmp_path: Path) -> None:
    r = gait("synth", "casia-b", tmp_path / "raw", "--size", "100000x100000")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "from 16 to 4096" in r.output
    assert not (tmp_path / "raw").exists()


STUDY = """\
base: {base}
train: first:2
validation: last:1
test: 900-901
eval_every: 2
axes:
  - key: seed
    values: [0, 1]
"""


@pytest.mark.slow
def test_study_list_refuses_what_run_would_refuse(tmp_path: Path) -> None:
    pack = make_pack(tmp_path / "p.h5")
    study = tmp_path / "s.yaml"
    study.write_text(STUDY.format(base=ROOT / "configs" / "tiny.yaml"))
    listed = gait("study", study, "--pack", pack, "--out", tmp_path / "out", "--list")
    ran = gait("study", study, "--pack", pack, "--out", tmp_path / "out", "--run", "0")
    line = assert_one_line_error(ran, "900")
    assert_one_line_error(listed, line[len("Error: ") :])


@pytest.mark.slow
def test_pytorchs_advice_to_developers_is_not_printed(tmp_path: Path, sample_pack) -> None:
    # more DataLoader workers than cores: PyTorch's UserWarning about it is noise to a user of
    # the command (printed before gait's own lines before); `gait --debug` still shows it
    args = [sys.executable, "-m", "gaitcli", "train", "tiny", "--pack", str(sample_pack)]
    args += ["--iterations", "1", "--set", "data.workers=4", "--set", "data.batch.k=2"]
    quiet = subprocess.run(
        [*args, "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "Warning" not in quiet.stdout + quiet.stderr, quiet.stderr
    debug = [args[0], "-m", "gaitcli", "--debug", *args[3:], "--out", str(tmp_path / "b")]
    loud = subprocess.run(debug, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert loud.returncode == 0, loud.stderr
    assert "UserWarning" in loud.stderr, loud.stderr


def test_a_linked_gallery_is_written_through(tmp_path: Path, quick_run) -> None:
    real = tmp_path / "store" / "people.h5"
    real.parent.mkdir()
    link = tmp_path / "people.h5"
    link.symlink_to(real)
    sequence = ROOT / "sample_data" / "casia-b" / "001" / "nm-01" / "090"
    for name in ("ann", "bob"):
        r = gait("gallery", "add", link, quick_run, name, sequence)
        assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    listed = gait("gallery", "list", real)
    assert listed.exit_code == 0 and "ann" in listed.output and "bob" in listed.output
