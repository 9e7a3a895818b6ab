"""Outputs that are never half-written and never written by two processes at once.

* :func:`atomic_output` yields a temporary path next to the target; when the block succeeds the
  file is fsynced and renamed into place, when it fails the temporary file is removed and an
  operating-system error becomes an :class:`~gaitprep.errors.OutputError` naming the target.
* :func:`atomic_write` writes bytes or text that way in one call.
* :class:`OutputLock` makes a writer exclusive: a second process that wants the same output is
  refused with a line naming the first (its pid and command). The lock is an ``flock`` on a hidden
  file beside the output (``.NAME.lock``), so it disappears with the process that held it: a
  crashed run never leaves a stale lock.

Examples
--------
>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "report.json"
>>> with OutputLock(out):
...     atomic_write(out, "{}")
>>> out.read_text()
'{}'
"""

from __future__ import annotations

import fcntl
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from gaitprep.errors import GaitError, OutputError, describe_os_error


class OutputBusy(GaitError):
    """Another process is writing the same output."""


def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: Path, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a temporary path; on success fsync it and rename it to ``path``.

    A leftover temporary file of a crashed run is replaced. On failure nothing is left behind and
    ``path`` keeps its old content; OS errors become one-line :class:`OutputError`.
    """
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        with suppress(OSError):
            fsync_path(path.parent)
    except BaseException as e:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(describe_os_error(e, path)) from e
        raise


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; see :func:`atomic_output`."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path, ".tmp") as tmp:
        tmp.write_bytes(raw)


def write_png(path: Path, image) -> None:
    """Encode a uint8 image as PNG and write it atomically (the name must end in .png)."""
    import cv2

    if Path(path).suffix.lower() != ".png":
        raise OutputError(f"cannot write {path}: give a file name ending in .png")
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OutputError(f"cannot write {path}: OpenCV could not encode the image as PNG")
    atomic_write(path, buf.tobytes())


def lock_path(output: Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


class OutputLock:
    """Exclusive right to write ``output`` (a file or a folder) while the ``with`` block runs.

    Raises :class:`OutputBusy`, naming the holder, when another process has it.
    """

    def __init__(self, output: Path):
        self.output = Path(output)
        # absolute, so that `.`, `../here` and `here` are one output with one lock
        self.path = lock_path(Path(os.path.abspath(self.output)))
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(describe_os_error(e, self.output)) from e
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(describe_os_error(e, self.path)) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                raise OutputBusy(
                    f"{self.output} is being written by another gait process "
                    f"({holder or 'unknown'}); wait for it to finish or choose another output"
                ) from None
            except OSError as e:  # no locks on this file system (some network mounts)
                os.close(fd)
                raise OutputError(describe_os_error(e, self.path, action="lock")) from e
            # The holder before us may have removed the file after we opened it: retry then.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        with suppress(OSError):  # the note is informative; a full disk must not stop the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, started {since}: {command}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
