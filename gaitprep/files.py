"""Outputs that are never half-written, never written by two processes at once, and never
written over anything that is not an output.

* :func:`output_target` is where writing an output lands: the path itself, or a symbolic link's
  target (a link is written through, never replaced by a file). A device, a FIFO or a socket is
  refused in one line: replacing ``/dev/null`` by a report would break the machine.
* :func:`atomic_output` yields a temporary path next to the target; when the block succeeds the
  file is fsynced and renamed into place, when it fails the temporary file is removed and an
  operating-system error becomes an :class:`~gaitprep.errors.OutputError` naming the target.
* :func:`atomic_write` writes bytes or text that way in one call.
* :func:`atomic_folder` does the same for a folder of files (each file fsynced, the folder renamed
  into place when complete).
* :class:`OutputLock` makes a writer exclusive: a second process that wants the same output is
  refused with a line naming the first (its pid and command). The lock is an ``flock`` on a hidden
  file beside the output (``.NAME.lock``), so it disappears with the process that held it: a
  crashed run never leaves a stale lock. The lock file is opened without following links and
  must be a plain file of its own (not a link, device, FIFO or hard link): the lock never writes
  into another file.

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

import errno
import fcntl
import os
import shlex
import shutil
import stat
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


_KINDS = {
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFDIR: "folder",
    stat.S_IFREG: "file",
}


def output_target(path: Path, kind: str = "file") -> Path:
    """The path that writing the output ``path`` (a ``"file"`` or a ``"folder"``) replaces.

    That is ``path`` itself, or, when ``path`` is a symbolic link, the file or folder it points to:
    a link is written through, so the link stays and its target gets the new content. An output
    that exists as anything else than ``kind`` (a device, a FIFO, a socket; a folder where a file
    is meant) is refused with a one-line :class:`OutputError`.

    Examples
    --------
    >>> try:
    ...     output_target(Path("/dev/null"))
    ... except OutputError as e:
    ...     print(e)
    refusing to write /dev/null: it is a character device, not a file; give a file's path
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as e:
        raise OutputError(describe_os_error(e, path)) from e
    found = _KINDS.get(stat.S_IFMT(mode), "special file")
    if found == kind:
        return target
    via = f" (the target of the link {path})" if target != path else ""
    raise OutputError(
        f"refusing to write {target}{via}: it is a {found}, not a {kind}; give a {kind}'s path"
    )


@contextmanager
def atomic_output(path: Path, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a temporary path; on success fsync it and rename it to ``path``.

    ``path`` is checked first (:func:`output_target`): a symbolic link is written through, a device,
    FIFO or socket refused. A leftover temporary file of a crashed run is replaced. On failure
    nothing is left behind and ``path`` keeps its old content; OS errors become one-line
    :class:`OutputError`.
    """
    path = output_target(path)
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


@contextmanager
def atomic_folder(path: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a new, empty temporary folder beside ``path``; when the block succeeds, fsync every
    file in it and rename it to ``path``.

    ``path`` must not exist, be an empty folder, or (with ``replace``) a folder whose old content
    is then replaced whole: no file of an earlier write survives beside the new ones. A symbolic
    link is written through (:func:`output_target`). On failure the temporary folder is removed
    and ``path`` is left as it was; OS errors become one-line :class:`OutputError`.
    """
    path = output_target(path, "folder")
    if path.is_dir() and not replace and any(path.iterdir()):
        raise OutputError(f"{path} exists and is not an empty folder; give a new one")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        for p in tmp.iterdir():
            fsync_path(p)
        fsync_path(tmp)
        if path.is_dir():
            os.replace(path, old)  # a folder cannot be renamed over a non-empty one
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        with suppress(OSError):
            fsync_path(path.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir() and not path.exists():
            os.replace(old, path)
        if isinstance(e, OSError):
            raise OutputError(describe_os_error(e, path)) from e
        raise


def encode_png(image, params: tuple[int, ...] = ()) -> bytes:
    """A uint8 image encoded as PNG bytes, with OpenCV's ``params`` (e.g. the compression
    level); :class:`OutputError` when OpenCV cannot encode it."""
    import cv2

    ok, buf = cv2.imencode(".png", image, list(params))
    if not ok:
        raise OutputError("OpenCV could not encode an image as PNG")
    return buf.tobytes()


def write_png(path: Path, image) -> None:
    """Encode a uint8 image as PNG and write it atomically (the name must end in .png)."""
    if Path(path).suffix.lower() != ".png":
        raise OutputError(f"cannot write {path}: give a file name ending in .png")
    atomic_write(path, encode_png(image))


def lock_path(output: Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


class OutputLock:
    """Exclusive right to write ``output`` (a file or a folder) while the ``with`` block runs.

    Raises :class:`OutputBusy`, naming the holder, when another process has it.
    """

    def __init__(self, output: Path):
        self.output = Path(output)
        # resolved, so that `.`, `../here`, `here` and a link to it are one output with one lock
        self.path = lock_path(Path(os.path.realpath(self.output)))
        self._fd: int | None = None

    def _open(self) -> int:
        """The lock file, created or opened without following a link; refused unless it is a
        plain file that no other name shares (writing the note must not reach another file)."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        while True:
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                pass
            try:
                fd = os.open(self.path, flags)
                break
            except FileNotFoundError:  # its holder removed it meanwhile: create it again
                continue
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise OutputError(self._foreign("a symbolic link")) from None
                raise OutputError(describe_os_error(e, self.path)) from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = _KINDS.get(stat.S_IFMT(st.st_mode), "special file")
            raise OutputError(
                self._foreign(
                    f"a {what} with another name" if stat.S_ISREG(st.st_mode) else f"a {what}"
                )
            )
        return fd

    def _foreign(self, what: str) -> str:
        return (
            f"cannot lock {self.output}: its lock file {self.path} is {what}, not a lock of gait's "
            "(a lock never writes into another file); remove it and run the same command again"
        )

    def acquire(self) -> OutputLock:
        output_target(self.output, "folder" if Path(self.output).is_dir() else "file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(describe_os_error(e, self.output)) from e
        while True:
            fd = self._open()
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
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
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
