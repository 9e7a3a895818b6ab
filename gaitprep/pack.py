"""Gait packs: normalized silhouette sequences in one HDF5 file (format v2 and v3,
docs/pack-format.md).

Layout of a pack::

    /frames            uint8 [N, S, S]   every kept frame, sequences back to back (chunked, gzip)
    /frame_source      int32 [N]         each frame's index in its raw sequence
    /sequences/subject, condition, seq, view, source   UTF-8 strings, one row per sequence
    /sequences/start, length           int64: sequence i is /frames[start[i] : start[i] + length[i]]
    /sequences/crc32                   uint32: CRC-32 of the bytes of sequence i's frames
    /sequences/labelled                uint8, version 3 only: 0 where nobody knows whose walk
                                       sequence i is (GREW's test probes and distractors)
    attributes         format="gait-pack", version=2 (3 with /sequences/labelled), dataset,
                       size, the normalization parameters, gait_version, created

:class:`PackWriter` appends sequences (their frames as arrays, or already compressed by
:func:`gaitprep.chunks.encode_frames` in `gait prep`'s workers, whose chunks it writes directly);
:class:`Pack` reads them back by index or key, checks each sequence it reads against its CRC-32
and refuses files of another format or version. This module is the contract between ``gaitprep``
and ``gaittrain``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import h5py
import numpy as np

from gaitprep.chunks import FILTERS, EncodedFrames, chunk_bytes, direct_encoding, encode_frames
from gaitprep.errors import GaitError, OutputError, describe_os_error, first_line

FORMAT = "gait-pack"
#: The version of a pack whose every sequence has a known subject.
VERSION = 2
#: The version of a pack with sequences of no known subject (``/sequences/labelled``): a reader
#: of version 2 would take their placeholder subject (``probe``) for a person, so it must refuse.
UNLABELLED_VERSION = 3
#: The versions this gait reads.
READABLE = (VERSION, UNLABELLED_VERSION)
STRING_COLUMNS = ("subject", "condition", "seq", "view", "source")
CHUNK_FRAMES = 64
BLOCK_FRAMES = 16 * CHUNK_FRAMES
COMPRESSIONS = tuple(FILTERS)

Key = tuple[str, str, str, str]


class PackError(GaitError):
    """A file that is not a readable gait pack of a supported version, or a bad key."""


class DamagedSequence(PackError):
    """A sequence that cannot be read or does not match its checksum (``key`` and ``reason`` say
    which and why)."""

    def __init__(self, message: str, key: str = "", reason: str = ""):
        super().__init__(message)
        self.key, self.reason = key, reason

    @classmethod
    def of(cls, path: Path, key: Sequence[str], reason: str) -> DamagedSequence:
        k = key_string(key)
        return cls(
            f"{path}: sequence {k} is damaged ({reason}); run `gait inspect --verify {path}` "
            "and re-make it with `gait prep`",
            k,
            reason,
        )

    def __reduce__(self):  # keeps key and reason when pickled (DataLoader workers)
        return (type(self), (str(self), self.key, self.reason))


def frames_crc(frames: np.ndarray) -> int:
    """CRC-32 of a sequence's frames (their bytes in C order), as stored in ``/sequences/crc32``."""
    return zlib.crc32(np.ascontiguousarray(frames)) & 0xFFFFFFFF


def created_timestamp() -> str:
    """Now in UTC (ISO 8601), or ``SOURCE_DATE_EPOCH`` when set, for reproducible files."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = time.gmtime(int(epoch)) if epoch else time.gmtime()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", t)


def key_string(key: Sequence[str]) -> str:
    """``subject-condition-seq-view``, the printable form of a key."""
    return "-".join(key)


class _GuardedFile:
    """The file under a :class:`PackWriter`, handed to h5py's ``fileobj`` driver.

    HDF5 must never see a failed write: after one its state is inconsistent, and closing the
    file, or merely the interpreter exiting, can then crash the process (a full disk ended
    `gait prep` with a segfault). So the first OSError of a write is recorded in ``error``, HDF5 is
    told that every write succeeded, and every later write is dropped; the writer raises the
    recorded error once the HDF5 call returns. The file keeps what was written before the failure,
    as after a ``kill -9``, which a resumed `gait prep` checks and continues.
    """

    def __init__(self, path: Path, create: bool):
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        self.fd = os.open(path, flags, 0o644)
        self.pos = 0
        self.size = os.fstat(self.fd).st_size  # as HDF5 believes it to be
        self.error: OSError | None = None
        self.discard = False  # drop every write (set after a failure, or to abandon the file)

    def _failed(self, e: OSError) -> None:
        self.error = self.error or e
        self.discard = True

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = base + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        done = 0
        while done < len(view):
            k = os.preadv(self.fd, [view[done:]], self.pos + done)
            if k == 0:  # end of file: HDF5 fills the rest with zeros
                break
            done += k
        self.pos += done
        return done

    def read(self, n: int = -1) -> bytes:
        data = os.pread(self.fd, max(self.size - self.pos, 0) if n < 0 else n, self.pos)
        self.pos += len(data)
        return data

    def write(self, buf) -> int:
        view = memoryview(buf).cast("B")
        n = len(view)
        if not self.discard:
            try:
                done = 0
                while done < n:
                    k = os.pwrite(self.fd, view[done:], self.pos + done)
                    if k == 0:
                        raise OSError(errno.EIO, "the write made no progress")
                    done += k
            except OSError as e:
                self._failed(e)
        self.pos += n
        self.size = max(self.size, self.pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if not self.discard:
            try:
                os.ftruncate(self.fd, size)
            except OSError as e:
                self._failed(e)
        self.size = size
        return size

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        if not self.discard:
            try:
                os.fsync(self.fd)
            except OSError as e:
                self._failed(e)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PackWriter:
    """Append sequences to a pack file, then write its table and attributes on :meth:`close`.

    ``reopen=True`` continues a file this class wrote earlier (for resumable runs): the frame
    datasets are truncated to ``frames`` and ``rows`` become the table's first rows.

    With ``direct=True`` (the default) and a compression that :mod:`gaitprep.chunks` reproduces
    exactly (``gzip``, ``none``: :attr:`encoding`), ``/frames`` is written chunk by chunk with
    h5py's direct chunk write from frames compressed one by one, by `gait prep`'s workers
    (:meth:`append` takes :class:`~gaitprep.chunks.EncodedFrames`) or here; so the writer only
    joins and appends bytes. Otherwise (``lzf``, or ``direct=False``) frames go through h5py's
    filter pipeline. Both give the same frames, read back the same way.

    A failed write (full disk, file size limit) raises :class:`~gaitprep.errors.OutputError`
    naming the file; the file is then closed without writing anything more, so it keeps what was
    on disk at that moment (see :class:`_GuardedFile`). :meth:`abort` does the same on purpose.
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
        direct: bool = True,
    ):
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
        self.path = Path(path)
        self.size = size
        self.rows: list[dict] = list(rows or [])
        self.attrs = dict(attrs or {})
        # Frames not written yet: arrays from frame `written` on (filter pipeline), or segments
        # and Adler-32s from frame `_base` on, the first frame of a chunk (direct chunk writes).
        self._frames: list[np.ndarray] = []
        self._segments: list[bytes] = []
        self._checks: list[int] = []
        self._base = 0
        self._sources: list[np.ndarray] = []  # frame_source from frame `written` on
        self.encoding: str | None = None
        self.file: h5py.File | None = None
        try:
            self._io = _GuardedFile(self.path, create=not reopen)
        except OSError as e:
            raise OutputError(describe_os_error(e, self.path)) from e
        try:
            with self._guarded():
                if reopen:
                    self._reopen(frames, direct)
                else:
                    self._create(compression, direct)
        except BaseException:
            self.abort()
            raise

    def _create(self, compression: str, direct: bool) -> None:
        self.file = h5py.File(self._io, "w")
        s = self.size
        opts = FILTERS[compression]
        frames_ds = self.file.create_dataset(
            "frames",
            shape=(0, s, s),
            maxshape=(None, s, s),
            dtype=np.uint8,
            chunks=(CHUNK_FRAMES, s, s),
            **opts,
        )
        source_ds = self.file.create_dataset(
            "frame_source", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(4096,), **opts
        )
        self._data = {"frames": frames_ds, "frame_source": source_ds}
        self.count = self.written = 0
        self.encoding = direct_encoding(frames_ds, CHUNK_FRAMES) if direct else None

    def _reopen(self, frames: int, direct: bool) -> None:
        """Open the file, truncate it to ``frames`` frames and, for direct chunk writes, take
        back the frames of its last, partly filled chunk (its chunk is rewritten whole)."""
        self.file = h5py.File(self._io, "r+")
        self._data = {n: self.file[n] for n in ("frames", "frame_source")}
        for d in self._data.values():
            d.resize(frames, axis=0)
        if "sequences" in self.file:  # left by a close that failed half-way
            del self.file["sequences"]
        self.count = self.written = frames
        self.encoding = direct_encoding(self._data["frames"], CHUNK_FRAMES) if direct else None
        if self.encoding is not None:
            self._base = frames - frames % CHUNK_FRAMES
            carry = encode_frames(self._data["frames"][self._base : frames], self.encoding)
            self._segments, self._checks = list(carry.segments), list(carry.checks)

    @property
    def closed(self) -> bool:
        return self.file is None

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        """Run HDF5 calls; a write that failed underneath them becomes an OutputError."""
        try:
            yield
        except BaseException:
            self._raise_failed_write()
            raise
        self._raise_failed_write()

    def _raise_failed_write(self) -> None:
        e = self._io.error
        if e is not None:
            self.abort()
            raise OutputError(describe_os_error(e, self.path)) from e

    def append(
        self,
        meta: dict,
        frames: np.ndarray | EncodedFrames,
        frame_source: np.ndarray,
        crc: int | None = None,
    ) -> dict:
        """Add one sequence; ``meta`` holds the string columns (and ``labelled``, False for a
        sequence of no known subject; True when absent), ``crc`` the frames' CRC-32 when the
        caller has it already (see :func:`frames_crc`; required with encoded frames). Returns its
        table row.

        ``frames`` is uint8 [n, S, S], or those frames already compressed for this pack
        (:func:`~gaitprep.chunks.encode_frames` with :attr:`encoding`). Frames are buffered and
        written in blocks of whole chunks, so that each chunk is compressed once.
        """
        if isinstance(frames, EncodedFrames):
            if self.encoding is None:
                raise ValueError("this writer compresses through h5py: give it frames, not chunks")
            if frames.encoding != self.encoding or frames.size != self.size:
                raise ValueError(
                    f"frames encoded as {frames.encoding} {frames.size}x{frames.size}; "
                    f"this pack takes {self.encoding} {self.size}x{self.size}"
                )
            if crc is None:
                raise ValueError("encoded frames need their CRC-32 (crc=...)")
        elif frames.shape[1:] != (self.size, self.size) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [n, {self.size}, {self.size}]")
        n = len(frames)
        row = {c: str(meta[c]) for c in STRING_COLUMNS} | {
            "start": self.count,
            "length": n,
            "crc32": frames_crc(frames) if crc is None else int(crc),
            "labelled": bool(meta.get("labelled", True)),
        }
        if self.encoding is None:
            self._frames.append(frames)
        else:
            if not isinstance(frames, EncodedFrames):
                frames = encode_frames(frames, self.encoding)
            self._segments.extend(frames.segments)
            self._checks.extend(frames.checks)
        self._sources.append(np.asarray(frame_source, np.int32))
        self.rows.append(row)
        self.count += n
        if self.count - self.written >= BLOCK_FRAMES:
            self._write_pending(everything=False)
        return row

    def _write_pending(self, everything: bool = True) -> None:
        """Write buffered frames: all of them, or only up to the last whole chunk (so that no
        chunk is compressed twice)."""
        end = self.count if everything else self.count - self.count % CHUNK_FRAMES
        if end <= self.written:
            return
        with self._guarded():
            if self.encoding is None:
                self._frames = self._write_rows("frames", self._frames, end)
            else:
                self._write_chunks(end)
            self._sources = self._write_rows("frame_source", self._sources, end)
        self.written = end

    def _write_rows(self, name: str, pending: list[np.ndarray], end: int) -> list[np.ndarray]:
        """Write rows ``written:end`` of ``/name`` from ``pending`` (which starts at row
        ``written``) through h5py; returns what is left of ``pending``."""
        data = np.concatenate(pending)
        n = end - self.written
        self._data[name].resize(end, axis=0)
        self._data[name][self.written : end] = data[:n]
        return [data[n:]] if n < len(data) else []

    def _write_chunks(self, end: int) -> None:
        """Write the chunks of ``/frames`` from ``_base`` up to frame ``end`` directly (the last
        one completed with blank frames when ``end`` is not at a chunk's end); the whole chunks
        leave the buffer, a partly filled one stays, to be rewritten whole."""
        ds = self._data["frames"]
        ds.resize(end, axis=0)
        for lo in range(self._base, end, CHUNK_FRAMES):
            k, n = lo - self._base, min(CHUNK_FRAMES, end - lo)
            data = chunk_bytes(
                self.encoding,
                self._segments[k : k + n],
                self._checks[k : k + n],
                self.size,
                CHUNK_FRAMES,
            )
            ds.id.write_direct_chunk((lo, 0, 0), data)
        whole = (end - self._base) // CHUNK_FRAMES * CHUNK_FRAMES
        del self._segments[:whole], self._checks[:whole]
        self._base += whole

    def flush(self, whole_chunks: bool = False) -> None:
        """Write buffered frames (with ``whole_chunks``, only those that fill whole chunks, so
        that a chunk on the disk is never rewritten), flush the file and fsync it."""
        self._write_pending(everything=not whole_chunks)
        with self._guarded():
            self.file.flush()
            self._io.sync()

    def close(self) -> None:
        """Write the sequence table and the attributes, fsync and close the file.

        ``/sequences/labelled`` is written, and the version is 3, only when a sequence has no
        known subject; any other pack is version 2, as before that column existed."""
        self._write_pending()
        labelled = [r.get("labelled", True) for r in self.rows]  # (rows of older journals)
        version = VERSION if all(labelled) else UNLABELLED_VERSION
        with self._guarded():
            table = self.file.require_group("sequences")
            text = h5py.string_dtype("utf-8")
            for c in STRING_COLUMNS:
                table.create_dataset(
                    c, data=np.array([r[c] for r in self.rows], dtype=object), dtype=text
                )
            for c in ("start", "length"):
                table.create_dataset(c, data=np.array([r[c] for r in self.rows], dtype=np.int64))
            table.create_dataset("crc32", data=np.array([r["crc32"] for r in self.rows], np.uint32))
            if version == UNLABELLED_VERSION:
                table.create_dataset("labelled", data=np.array(labelled, np.uint8))
            self.file.attrs.update({"format": FORMAT, "version": version, "size": self.size})
            self.file.attrs.update({k: v for k, v in self.attrs.items() if v is not None})
        self._close_file()

    def close_partial(self) -> None:
        """Write buffered frames and close the file without a table (a run to be resumed)."""
        self._write_pending()
        self._close_file()

    def _close_file(self) -> None:
        """Close the HDF5 file, fsync what it wrote and release the descriptor."""
        with self._guarded():
            self._data = {}
            self.file.close()
            self._io.sync()
        self.file = None
        self._io.close()

    def abort(self) -> None:
        """Close the file without writing anything more to it; never raises."""
        self._io.discard = True
        self._data = {}
        if self.file is not None:
            with suppress(Exception):
                self.file.close()
            self.file = None
        self._io.close()


class Pack:
    """Read access to a gait pack: ``len(pack)``, ``pack[i]`` or ``pack[key]`` -> uint8 frames.

    Every sequence read is checked against its CRC-32: a read error or a mismatch raises
    :class:`DamagedSequence`, naming the pack and the sequence. The HDF5 handle is opened lazily
    and re-opened in a new process, so a Pack can be handed to DataLoader workers.

    ``labelled`` (bool [M]) is False for a sequence whose subject nobody knows (GREW's test
    probes and distractors, whose ``subject`` is a placeholder: never train on them as a person);
    every sequence of a version-2 pack is labelled.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._pid: int | None = None
        self._file: h5py.File | None = None
        self._fingerprint: str | None = None
        f = self.file
        try:
            self.attrs = {k: _plain(v) for k, v in f.attrs.items()}
            table = f["sequences"]
            self.columns = {
                c: np.array([s.decode() for s in table[c][()]], dtype=object)
                for c in STRING_COLUMNS
            }
            self.start = table["start"][()]
            self.length = table["length"][()]
            self.crc32 = table["crc32"][()]
            if self.attrs.get("version") == UNLABELLED_VERSION:
                self.labelled = table["labelled"][()].astype(bool)
            else:
                self.labelled = np.ones(len(self.start), bool)
            rows = {len(self.start), len(self.length), len(self.crc32), len(self.labelled)}
            rows |= {len(v) for v in self.columns.values()}
            if len(rows) != 1:
                raise ValueError("its columns differ in length")
        except (OSError, KeyError, ValueError, UnicodeDecodeError) as e:
            self.close()
            raise PackError(
                f"{self.path}: the sequence table is damaged ({first_line(e)}); "
                "re-make the pack with `gait prep`"
            ) from None
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
            "crc32": int(self.crc32[i]),
            "labelled": bool(self.labelled[i]),
        }

    def _key(self, i: int) -> Key:
        c = self.columns
        return (c["subject"][i], c["condition"][i], c["seq"][i], c["view"][i])

    def _read(self, name: str, i: int) -> np.ndarray:
        """Rows ``start[i] : start[i] + length[i]`` of ``/name``; a read error or a short read
        raises DamagedSequence."""
        s, n = int(self.start[i]), int(self.length[i])
        try:
            data = self.file[name][s : s + n]
        except (OSError, RuntimeError, ValueError) as e:
            raise DamagedSequence.of(
                self.path, self._key(i), f"cannot read /{name}: {first_line(e)}"
            ) from None
        if len(data) != n:
            raise DamagedSequence.of(
                self.path, self._key(i), f"/{name} holds {len(data)} of its {n} frames"
            )
        return data

    def __getitem__(self, item: int | Key | str) -> np.ndarray:
        i = item if isinstance(item, (int, np.integer)) else self.index(item)
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
        frames = self._read("frames", i)
        if frames_crc(frames) != int(self.crc32[i]):
            raise DamagedSequence.of(
                self.path, self._key(i), "its frames do not match their CRC-32 checksum"
            )
        return frames

    def frame_source(self, i: int) -> np.ndarray:
        """Each frame's index in its raw sequence (not covered by the checksum)."""
        return self._read("frame_source", i)

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
    except PermissionError as e:
        raise PackError(describe_os_error(e, path, "read")) from None
    except OSError as e:
        try:
            with open(path, "rb") as fh:
                hdf5 = fh.read(8) == b"\x89HDF\r\n\x1a\n"
        except OSError:
            hdf5 = False
        if hdf5:  # truncated, or its superblock is damaged
            raise PackError(
                f"{path} is a damaged HDF5 file ({first_line(e)}); "
                "re-make the pack with `gait prep`"
            ) from None
        raise PackError(f"{path} is not an HDF5 file; make packs with `gait prep`") from None
    fmt, version = _plain(f.attrs.get("format")), _plain(f.attrs.get("version"))
    if fmt != FORMAT:
        f.close()
        raise PackError(f"{path} is not a gait pack (format {fmt!r}); make packs with `gait prep`")
    if version not in READABLE:
        f.close()
        raise PackError(
            f"{path} is gait pack version {version}; this gait reads versions "
            f"{' and '.join(map(str, READABLE))}: re-run `gait prep` or use a matching gait"
        )
    return f
