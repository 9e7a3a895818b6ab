"""The one error family of gait, and one-line descriptions of operating-system errors.

Every problem a user can cause or fix (a bad argument, a damaged file, a full disk, another
process writing the same output) is raised as a :class:`GaitError` whose message is one line
naming the file and the fix. The ``gait`` command catches the family once and prints the line;
``gait --debug`` shows the traceback instead.

Examples
--------
>>> import errno
>>> describe_os_error(OSError(errno.EACCES, "Permission denied"), "run/log.jsonl")
'cannot write run/log.jsonl: permission denied (check the permissions or choose another location)'
"""

from __future__ import annotations

import errno
import re


class GaitError(Exception):
    """A problem explained in one line; the base of every error gait raises on purpose."""


class OutputError(GaitError):
    """An output that cannot be written (full disk, no permission, a read-only file system)."""


_NO_SPACE = re.compile(r"no space left|errno = 28|file too large|errno = 27|quota", re.I)
_ADVICE = {
    errno.ENOSPC: "free some space and run the same command again",
    errno.EFBIG: "the file size limit was reached; raise it (ulimit -f) or free space",
    errno.EDQUOT: "the disk quota is exhausted; free some space and run the same command again",
    errno.EACCES: "check the permissions or choose another location",
    errno.EPERM: "check the permissions or choose another location",
    errno.EROFS: "the file system is read-only; choose another location",
}


def is_disk_full(e: BaseException) -> bool:
    """True for ENOSPC, EFBIG and EDQUOT. A library that reports the C library's errno only in
    its text (h5py, torch) is read from its message, less any file name in it."""
    code = getattr(e, "errno", None)
    if code is not None:
        return code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    text = str(e)
    name = getattr(e, "filename", None)
    if name:
        text = text.replace(str(name), "")
    text = re.sub(r"filename = '[^']*'", "", text)
    return bool(_NO_SPACE.search(text))


def describe_os_error(e: BaseException, path=None, action: str = "write") -> str:
    """``cannot ACTION PATH: CAUSE (ADVICE)`` in one line, for an OSError (or a library error
    that wraps one, such as h5py's)."""
    where = path if path is not None else getattr(e, "filename", None)
    code = getattr(e, "errno", None)
    if is_disk_full(e):
        code = code if code in (errno.EFBIG, errno.EDQUOT) else errno.ENOSPC
        cause = "file too large" if code == errno.EFBIG else "no space left on device"
    else:
        cause = getattr(e, "strerror", None) or first_line(e)
        cause = cause[0].lower() + cause[1:] if cause else cause
    advice = _ADVICE.get(code)
    text = f"cannot {action} {where}: {cause}" if where is not None else cause
    return f"{text} ({advice})" if advice else text


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (a library's cause, quoted inside ours), cut to
    ``limit`` characters; the exception's type name when it has no message."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line.

    An error raised in a DataLoader worker comes back with the worker's traceback in its message;
    its last line is the original message.
    """
    text = str(e).strip()
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split()) or type(e).__name__
