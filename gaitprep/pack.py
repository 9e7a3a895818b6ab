"""Gait packs: normalized silhouette sequences in one HDF5 file (format v1, docs/pack-format.md).

Layout of a pack::

    /frames            uint8 [N, S, S]   every kept frame, sequences back to back (chunked, gzip)
    /frame_source      int32 [N]         each frame's index in its raw sequence
    /sequences/subject, condition, seq, view, source   UTF-8 strings, one row per sequence
    /sequences/start, length           int64: sequence i is /frames[start[i] : start[i] + length[i]]
    attributes         format="gait-pack", version=1, dataset, size, the normalization
                       parameters, gait_version, created

:class:`PackWriter` appends sequences; :class:`Pack` reads them back by index or key and refuses
files of another format or version. This module is the contract between ``gaitprep`` and
``gaittrain``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from gaitprep.errors import GaitError

FORMAT = "gait-pack"
VERSION = 1
STRING_COLUMNS = ("subject", "condition", "seq", "view", "source")
CHUNK_FRAMES = 64
BLOCK_FRAMES = 16 * CHUNK_FRAMES
COMPRESSIONS = ("gzip", "lzf", "none")

Key = tuple[str, str, str, str]


class PackError(GaitError):
    """A file that is not a readable gait pack of a supported version, or a bad key."""


def created_timestamp() -> str:
    """Now in UTC (ISO 8601), or ``SOURCE_DATE_EPOCH`` when set, for reproducible files."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = time.gmtime(int(epoch)) if epoch else time.gmtime()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", t)


def key_string(key: Sequence[str]) -> str:
    """``subject-condition-seq-view``, the printable form of a key."""
    return "-".join(key)


class PackWriter:
    """Append sequences to a pack file, then write its table and attributes on :meth:`close`.

    ``reopen=True`` continues a file this class wrote earlier (for resumable runs): the frame
    datasets are truncated to ``frames`` and ``rows`` become the table's first rows.
    """

    def __init__(
        self,
        path: Path,
        size: int,
        compression: str = "gzip",
        attrs: dict | None = None,
        reopen: bool = False,
        frames: int = 0,
        rows: list[dict] | None = None,
    ):
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
        self.path = Path(path)
        self.size = size
        self.rows: list[dict] = list(rows or [])
        self.attrs = dict(attrs or {})
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        if reopen:
            self.file = h5py.File(self.path, "r+")
            self.file["frames"].resize(frames, axis=0)
            self.file["frame_source"].resize(frames, axis=0)
            self.count = self.written = frames
            return
        self.file = h5py.File(self.path, "w")
        opts = {
            "gzip": {"compression": "gzip", "compression_opts": 1},
            "lzf": {"compression": "lzf"},
            "none": {},
        }[compression]
        self.file.create_dataset(
            "frames",
            shape=(0, size, size),
            maxshape=(None, size, size),
            dtype=np.uint8,
            chunks=(CHUNK_FRAMES, size, size),
            **opts,
        )
        self.file.create_dataset(
            "frame_source", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(4096,), **opts
        )
        self.count = self.written = 0

    def append(self, meta: dict, frames: np.ndarray, frame_source: np.ndarray) -> dict:
        """Add one sequence; ``meta`` holds the string columns. Returns its table row.

        Frames are buffered and written in blocks of whole chunks, so that each chunk is
        compressed once.
        """
        n = len(frames)
        if frames.shape[1:] != (self.size, self.size) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [n, {self.size}, {self.size}]")
        self._pending.append((frames, np.asarray(frame_source, np.int32)))
        row = {c: str(meta[c]) for c in STRING_COLUMNS} | {"start": self.count, "length": n}
        self.rows.append(row)
        self.count += n
        if self.count - self.written >= BLOCK_FRAMES:
            self._write_pending(everything=False)
        return row

    def _write_pending(self, everything: bool = True) -> None:
        """Write buffered frames: all of them, or only up to the last whole chunk (so that no
        chunk is compressed twice)."""
        if not self._pending:
            return
        frames = np.concatenate([f for f, _ in self._pending])
        source = np.concatenate([s for _, s in self._pending])
        end = self.count if everything else self.count - self.count % CHUNK_FRAMES
        n = end - self.written
        if n <= 0:
            return
        for name, data in (("frames", frames), ("frame_source", source)):
            self.file[name].resize(end, axis=0)
            self.file[name][self.written : end] = data[:n]
        self._pending = [(frames[n:], source[n:])] if end < self.count else []
        self.written = end

    def flush(self) -> None:
        """Write buffered frames and flush the file to the operating system."""
        self._write_pending()
        self.file.flush()

    def close(self) -> None:
        """Write the sequence table and the attributes, and close the file."""
        self._write_pending()
        table = self.file.require_group("sequences")
        text = h5py.string_dtype("utf-8")
        for c in STRING_COLUMNS:
            table.create_dataset(
                c, data=np.array([r[c] for r in self.rows], dtype=object), dtype=text
            )
        for c in ("start", "length"):
            table.create_dataset(c, data=np.array([r[c] for r in self.rows], dtype=np.int64))
        self.file.attrs.update({"format": FORMAT, "version": VERSION, "size": self.size})
        self.file.attrs.update({k: v for k, v in self.attrs.items() if v is not None})
        self.file.close()


class Pack:
    """Read access to a gait pack: ``len(pack)``, ``pack[i]`` or ``pack[key]`` -> uint8 frames.

    The HDF5 handle is opened lazily and re-opened in a new process, so a Pack can be handed to
    DataLoader workers.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._pid: int | None = None
        self._file: h5py.File | None = None
        self._fingerprint: str | None = None
        f = self.file
        self.attrs = {k: _plain(v) for k, v in f.attrs.items()}
        table = f["sequences"]
        self.columns = {
            c: np.array([s.decode() for s in table[c][()]], dtype=object) for c in STRING_COLUMNS
        }
        self.start = table["start"][()]
        self.length = table["length"][()]
        self._index = {k: i for i, k in enumerate(self.keys())}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_file", "_pid")} | {
            "_file": None,
            "_pid": None,
        }

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = _open_checked(self.path)
            self._pid = os.getpid()
        return self._file

    @property
    def size(self) -> int:
        return int(self.attrs["size"])

    @property
    def fingerprint(self) -> str:
        """A content hash: the attributes (less ``created`` and ``gait_version``) and every
        column of the sequence table, which includes each sequence's checksum. Two packs with
        the same fingerprint hold the same sequences, normalized the same way."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            attrs = {k: v for k, v in self.attrs.items() if k not in ("created", "gait_version")}
            h.update(json.dumps(attrs, sort_keys=True, default=str).encode())
            table = self.file["sequences"]
            for name in sorted(table):
                values = table[name][()]
                if values.dtype == object:  # strings: hash their text, not object pointers
                    data = json.dumps([v.decode() for v in values]).encode()
                else:
                    data = np.ascontiguousarray(values, values.dtype.newbyteorder("<")).tobytes()
                h.update(f"{name}:{len(data)}:".encode())
                h.update(data)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __len__(self) -> int:
        return len(self.start)

    def keys(self) -> list[Key]:
        c = self.columns
        return list(zip(c["subject"], c["condition"], c["seq"], c["view"], strict=True))

    def index(self, key: Key | str) -> int:
        """The row of ``key``, given as a tuple or as ``subject-condition-seq-view``."""
        if isinstance(key, str):
            matches = [i for k, i in self._index.items() if key_string(k) == key]
            if len(matches) == 1:
                return matches[0]
        elif tuple(key) in self._index:
            return self._index[tuple(key)]
        raise PackError(f"no sequence {key!r} in {self.path}")

    def meta(self, i: int) -> dict:
        return {c: self.columns[c][i] for c in STRING_COLUMNS} | {
            "start": int(self.start[i]),
            "length": int(self.length[i]),
        }

    def __getitem__(self, item: int | Key | str) -> np.ndarray:
        i = item if isinstance(item, (int, np.integer)) else self.index(item)
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
        s, n = int(self.start[i]), int(self.length[i])
        return self.file["frames"][s : s + n]

    def frame_source(self, i: int) -> np.ndarray:
        s, n = int(self.start[i]), int(self.length[i])
        return self.file["frame_source"][s : s + n]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Pack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _open_checked(path: Path) -> h5py.File:
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise PackError(f"{path} does not exist") from None
    except OSError:
        raise PackError(f"{path} is not an HDF5 file; make packs with `gait prep`") from None
    fmt, version = _plain(f.attrs.get("format")), _plain(f.attrs.get("version"))
    if fmt != FORMAT:
        f.close()
        raise PackError(f"{path} is not a gait pack (format {fmt!r}); make packs with `gait prep`")
    if version != VERSION:
        f.close()
        raise PackError(
            f"{path} is gait pack version {version}; this gait reads version "
            f"{VERSION}: re-run `gait prep` or use a matching gait"
        )
    return f
