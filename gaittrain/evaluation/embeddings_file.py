"""The embeddings file (``gait embed``, ``gait eval``, galleries): its one writer and its readers.

A file holds ``/embeddings`` [N, parts, dim] in its storage (:data:`STORAGES`), ``/sq_norms``
float32 [N, parts], ``/sequences/{subject, condition, seq, view}`` (the keys) and, as attributes,
everything that made it (``gaittrain.evaluation.embed.provenance``). :func:`write_embeddings_file`
writes one atomically; :func:`read_embeddings` reads a whole (small) file; :func:`open_embeddings`
and :class:`EmbeddingStore` read a large one a few rows at a time.

An evaluation needs one gallery view and one block of probes at a time, never the whole set:
:class:`EmbeddingStore` gives the sequence keys up front and the embeddings of any rows on
request, from a dict (everything already in memory) or from an embeddings file (``gait embed``),
where ``/embeddings`` is [N, parts, dim] in the file's storage (:data:`STORAGES`: float32, the
model's values, by default; float16 where chosen) and ``/sq_norms`` float32 [N, parts] holds every
part's squared length, computed in float64 from the stored values.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from gaitprep.errors import GaitError, first_line
from gaitprep.files import atomic_output

Key = tuple[str, str, str, str]
KEY_COLUMNS = ("subject", "condition", "seq", "view")

#: How ``/embeddings`` may be stored (the file's ``storage`` attribute; files without one are
#: float32). float32 keeps the model's values, so every figure is the model's own. float16 halves
#: the bytes (for very large sets: OU-MVLP, GREW) at the cost of rounding every value: to 11
#: significant bits (a relative rounding of at most 2^-11) for magnitudes of at least 2^-14
#: (about 6.1e-5); below that float16 is subnormal, with a fixed spacing of 2^-24, so the rounding
#: is at most 2^-25 (about 3.0e-8) absolute and its relative size grows as values shrink (a value
#: of at most 2^-25 becomes 0); beyond 65504 nothing is finite. Distances are computed from the
#: stored values.
STORAGES = {"float32": np.float32, "float16": np.float16}
#: The storage of ``gait embed`` and ``gait eval`` unless asked otherwise.
DEFAULT_STORAGE = "float32"


def to_stored(emb: np.ndarray, storage: str = DEFAULT_STORAGE) -> np.ndarray:
    """Embeddings as stored in ``storage`` (:data:`STORAGES`), refused (ValueError) where a value
    is not finite in it."""
    with np.errstate(over="ignore"):  # an overflow is refused below, in one line
        stored = np.asarray(emb).astype(STORAGES[storage])
    if not np.isfinite(stored).all():
        worst = float(np.abs(np.asarray(emb, np.float64)).max())
        limit = f" (largest {np.finfo(stored.dtype).max:.0f})" if storage == "float16" else ""
        raise ValueError(
            f"an embedding entry ({worst:.3g}) is not finite in {storage}{limit}: the "
            "model's outputs are out of range"
        )
    return stored


def squared_norms64(emb: np.ndarray) -> np.ndarray:
    """Every part's squared length [n, parts], summed in float64, stored as float32."""
    return np.einsum("npd,npd->np", emb, emb, dtype=np.float64).astype(np.float32)


class EmbeddingStore:
    """Sequence keys and, on request, the embeddings of some of them.

    Examples
    --------
    >>> store = EmbeddingStore.from_dict({("001", "nm", "01", "000"): np.ones((2, 3))})
    >>> store.keys
    [('001', 'nm', '01', '000')]
    >>> store.rows(np.array([0])).shape
    torch.Size([1, 2, 3])
    """

    def __init__(self, keys: list[Key], read, shape: tuple[int, int], close=None, itemsize=4):
        self.keys = keys
        self._read = read
        self.shape = shape  # (parts, dim)
        self.itemsize = itemsize  # bytes per entry of the rows read (4: float32, 2: float16)
        self._close = close

    def close(self) -> None:
        """Close the file the rows are read from (nothing for a dict)."""
        if self._close is not None:
            self._close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def from_dict(cls, embeddings: dict) -> EmbeddingStore:
        keys = list(embeddings)
        if not keys:
            return cls([], lambda idx: torch.zeros(0, 0, 0), (0, 0))
        first = np.asarray(embeddings[keys[0]])

        def read(idx: np.ndarray) -> torch.Tensor:
            rows = [np.asarray(embeddings[keys[i]], np.float32) for i in idx]
            if not rows:
                return torch.zeros(0, *first.shape)
            return torch.from_numpy(np.stack(rows))

        return cls(keys, read, tuple(first.shape))

    @classmethod
    def from_file(cls, f: h5py.File, keys: list[Key]) -> EmbeddingStore:
        """Rows of an open embeddings file; :meth:`close` closes it. Where the embeddings
        are stored contiguously and uncompressed (as ``gait embed`` writes them), rows are
        read by :func:`read_rows` straight from the file: HDF5's selection of scattered rows
        (one view of a sorted file is every 28th row in OU-MVLP) read 0.7 GB/s here."""
        data = f["embeddings"]
        offset = data.id.get_offset() if data.chunks is None and data.compression is None else None
        if offset is not None and len(data):
            fd = os.open(f.filename, os.O_RDONLY)

            def read_direct(idx: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(read_rows(fd, offset, data.shape, data.dtype, idx))

            def close() -> None:
                os.close(fd)
                f.close()

            return cls(keys, read_direct, tuple(data.shape[1:]), close, data.dtype.itemsize)

        def read(idx: np.ndarray) -> torch.Tensor:
            # h5py selects rows in increasing order, each once
            unique, inverse = np.unique(np.asarray(idx, dtype=np.int64), return_inverse=True)
            if not len(unique):
                return torch.from_numpy(data[:0])
            return torch.from_numpy(data[unique][inverse])

        return cls(keys, read, tuple(data.shape[1:]), f.close, data.dtype.itemsize)

    def rows(self, idx) -> torch.Tensor:
        """The embeddings of rows ``idx`` (in that order), as stored (float16 or float32)."""
        return self._read(np.asarray(idx, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.keys)


def read_rows(fd: int, offset: int, shape: tuple, dtype, idx) -> np.ndarray:
    """Rows ``idx`` (in that order) of a C-ordered array of ``shape`` and ``dtype`` stored at
    byte ``offset`` of the open file ``fd``: one ``pread`` per run of consecutive rows, into a
    fresh array (no memory map, so nothing of the file counts as this process's memory).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryFile() as f:
    ...     _ = f.write(b"head" + np.arange(12, dtype=np.float16).tobytes())
    ...     f.flush()
    ...     read_rows(f.fileno(), 4, (4, 3), np.float16, [2, 0, 1]).tolist()
    [[6.0, 7.0, 8.0], [0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    idx = np.asarray(idx, dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    rows = np.empty((len(idx), *shape[1:]), dtype)  # in increasing row order
    raw = rows.reshape(len(idx), -1).view(np.uint8)
    row_bytes = raw.shape[1]
    at = idx[order]
    starts = np.flatnonzero(np.diff(at, prepend=-2) != 1)  # runs of consecutive rows
    for a, b in zip(starts, [*starts[1:], len(idx)], strict=True):
        if os.preadv(fd, [raw[a:b]], offset + int(at[a]) * row_bytes) != (b - a) * row_bytes:
            raise OSError("the embeddings file ended early")
    if (order[1:] > order[:-1]).all():
        return rows
    out = np.empty_like(rows)
    out[order] = rows
    return out


def open_embeddings(path: Path) -> tuple[h5py.File, list[Key], dict]:
    """An embeddings file open for reading, its keys and its attributes."""
    f = h5py.File(path, "r")
    try:
        cols = [[s.decode() for s in f[f"sequences/{c}"][()]] for c in KEY_COLUMNS]
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        f["embeddings"].shape  # noqa: B018 - present
    except BaseException:
        f.close()
        raise
    return f, list(zip(*cols, strict=True)), attrs


class EmbeddingsError(GaitError):
    """A file that is not a readable embeddings file."""


#: Sequences converted and written at once.
WRITE_ROWS = 4096


def write_embeddings_file(path: Path, keys: list, shape: tuple, blocks, attrs: dict) -> None:
    """Write embeddings [len(keys), *shape] given as consecutive row ``blocks``: in the storage
    ``attrs["storage"]`` names (float32 where it names none; the attribute is written either
    way) with every part's squared length in float32 (:func:`squared_norms64`), the
    keys and ``attrs`` (temporary name, fsync, then rename). EmbeddingsError where a value is not
    finite in the storage."""
    storage = attrs.get("storage", DEFAULT_STORAGE)
    if storage not in STORAGES:
        raise EmbeddingsError(f"storage must be one of {', '.join(STORAGES)}, not {storage!r}")
    attrs = {**attrs, "storage": storage}
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        out = f.create_dataset("embeddings", (len(keys), *shape), STORAGES[storage])
        norms = f.create_dataset("sq_norms", (len(keys), shape[0]), np.float32)
        start = 0
        for block in blocks:
            try:
                stored = to_stored(block, storage)
            except ValueError as e:
                raise EmbeddingsError(f"{path}: {e}") from None
            out[start : start + len(block)] = stored
            norms[start : start + len(block)] = squared_norms64(stored)
            start += len(block)
        if start != len(keys):
            raise ValueError(f"{start} embeddings for {len(keys)} keys")
        text = h5py.string_dtype("utf-8")
        for c, col in enumerate(KEY_COLUMNS):
            f.create_dataset(
                f"sequences/{col}", data=np.array([k[c] for k in keys], object), dtype=text
            )
        f.attrs.update(attrs)


def read_embeddings(path: Path) -> tuple[dict, dict]:
    """``({key: [parts, dim]}, attrs)`` from an embeddings file; EmbeddingsError if it is not
    one."""
    try:
        f, keys, attrs = open_embeddings(path)
        with f:
            emb = f["embeddings"][()].astype(np.float32, copy=False)
        return {key: emb[i] for i, key in enumerate(keys)}, attrs
    except (OSError, KeyError, ValueError, AttributeError) as e:
        raise EmbeddingsError(
            f"{path} is not a readable embeddings file ({first_line(e)}); make it with `gait embed`"
        ) from None
