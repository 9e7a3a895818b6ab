"""``/frames`` chunks compressed outside HDF5, so that `gait prep`'s workers compress and its
single writer only appends (h5py's direct chunk write, ``Dataset.id.write_direct_chunk``).

A pack's frames lie back to back in chunks of 64 frames, so a chunk usually holds the end of one
sequence and the start of the next, and where a sequence starts is known only once every earlier
sequence has been written. A worker therefore cannot compress the pack's chunks; it compresses
each of its frames on its own (:func:`encode_frames`), and the writer joins the pieces of 64
consecutive frames into one chunk (:func:`chunk_bytes`), which is then what the dataset's filter
pipeline reads:

* ``gzip`` (HDF5's deflate filter, level :data:`GZIP_LEVEL`, no shuffle): each frame is one
  raw-deflate block compressed by zlib at that level, flushed with ``Z_FULL_FLUSH`` (so it ends
  on a byte boundary and refers to no earlier byte); a chunk is the zlib header that
  ``compress2`` writes at that level, its frames' blocks, the empty final block and the Adler-32
  of the chunk's bytes, combined from the frames' own (:func:`adler32_concat`). That is a valid
  zlib stream, which HDF5's deflate filter (``inflate``) reads like any other; only the stored
  bytes differ from those of ``compress2`` on the whole chunk (it may refer across frames).
* ``none`` (no filter): a chunk is its frames' bytes.
* ``lzf`` has no encoder in Python's standard library: its packs are written through h5py's
  filter pipeline, as before (:func:`direct_encoding` returns None).

A chunk that the pack ends in is completed with blank (zero) frames, as HDF5 stores an edge chunk.
Everything here is deterministic: the same frames give the same chunk bytes whatever the number
of workers and whether a run was resumed.

Examples
--------
>>> import numpy as np, zlib
>>> frames = np.zeros((2, 4, 4), np.uint8); frames[1, 1:3, 1:3] = 255
>>> enc = encode_frames(frames, "gzip")
>>> chunk = chunk_bytes("gzip", enc.segments, enc.checks, size=4, frames=3)
>>> zlib.decompress(chunk) == frames.tobytes() + bytes(16)  # a blank third frame
True
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np

#: The deflate level of ``--compression gzip`` (the filter's only parameter, ``compression_opts``).
GZIP_LEVEL = 1
#: h5py's dataset options for each ``--compression``.
FILTERS = {
    "gzip": {"compression": "gzip", "compression_opts": GZIP_LEVEL},
    "lzf": {"compression": "lzf"},
    "none": {},
}
#: The compressions whose chunks gait writes itself.
ENCODINGS = ("gzip", "none")

_ADLER_BASE = 65521
_EMPTY_ZLIB = zlib.compress(b"", GZIP_LEVEL)  # header, empty final block, Adler-32 of nothing
ZLIB_HEADER, FINAL_BLOCK = _EMPTY_ZLIB[:2], _EMPTY_ZLIB[2:-4]


@dataclass(frozen=True)
class EncodedFrames:
    """A sequence's frames, each compressed on its own for a pack's ``/frames``.

    Attributes
    ----------
    encoding : str
        ``gzip`` or ``none`` (:data:`ENCODINGS`).
    size : int
        S: the frames are S x S.
    segments : tuple of bytes
        One per frame: its raw-deflate block (gzip) or its bytes (none).
    checks : tuple of int
        One per frame: the Adler-32 of its bytes.
    """

    encoding: str
    size: int
    segments: tuple[bytes, ...]
    checks: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.segments)


def encode_frames(frames: np.ndarray, encoding: str) -> EncodedFrames:
    """Compress each frame of ``frames`` (uint8 [n, S, S]) on its own, as :func:`chunk_bytes`
    joins them.

    Parameters
    ----------
    frames : numpy.ndarray
        uint8 [n, S, S], n >= 0.
    encoding : str
        ``gzip`` or ``none``.

    Returns
    -------
    EncodedFrames
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    if frames.ndim != 3 or frames.shape[1] != frames.shape[2] or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [n, S, S], not {frames.dtype} {frames.shape}")
    frames = np.ascontiguousarray(frames)
    checks = tuple(zlib.adler32(f) for f in frames)
    if encoding == "none":
        segments = tuple(f.tobytes() for f in frames)
    else:
        # One compressor for the sequence: a full flush ends each frame's block on a byte boundary
        # and resets the compressor, so every block equals a fresh compressor's.
        z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        segments = tuple(z.compress(f) + z.flush(zlib.Z_FULL_FLUSH) for f in frames)
    return EncodedFrames(encoding, frames.shape[1], segments, checks)


def adler32_concat(checks: Sequence[int], length: int) -> int:
    """The Adler-32 of pieces of ``length`` bytes each, laid end to end, from their Adler-32s.

    Parameters
    ----------
    checks : sequence of int
        Each piece's Adler-32 (``zlib.adler32``), in order.
    length : int
        Bytes in each piece.

    Returns
    -------
    int
        What ``zlib.adler32`` of the concatenated pieces returns.
    """
    a, b = 1, 0  # the Adler-32 of nothing: low half a, high half b
    for c in checks:
        b = (b + (c >> 16) + length * (a - 1)) % _ADLER_BASE
        a = (a + (c & 0xFFFF) - 1) % _ADLER_BASE
    return b << 16 | a


def chunk_bytes(
    encoding: str, segments: Sequence[bytes], checks: Sequence[int], size: int, frames: int
) -> bytes:
    """One stored chunk of ``frames`` S x S frames from their segments (:func:`encode_frames`),
    as the pack's filter pipeline reads it.

    Parameters
    ----------
    encoding : str
        ``gzip`` or ``none``.
    segments, checks : sequence
        The chunk's first frames (at most ``frames``): their segments and Adler-32s. Frames
        missing at the end are blank (zero), as HDF5 completes the chunk a dataset ends in.
    size : int
        S.
    frames : int
        Frames in a chunk.

    Returns
    -------
    bytes
        A zlib stream of the chunk's bytes (gzip) or those bytes (none).
    """
    if len(segments) != len(checks) or len(segments) > frames:
        raise ValueError(f"a chunk takes at most {frames} frames and one check per frame")
    if len(segments) < frames:
        blank = _blank_frame(encoding, size)
        pad = frames - len(segments)
        segments = [*segments, *blank.segments * pad]
        checks = [*checks, *blank.checks * pad]
    if encoding == "none":
        return b"".join(segments)
    adler = adler32_concat(checks, size * size).to_bytes(4, "big")
    return b"".join([ZLIB_HEADER, *segments, FINAL_BLOCK, adler])


@functools.lru_cache(maxsize=8)
def _blank_frame(encoding: str, size: int) -> EncodedFrames:
    return encode_frames(np.zeros((1, size, size), np.uint8), encoding)


def direct_encoding(dataset: h5py.Dataset, chunk_frames: int) -> str | None:
    """The encoding whose chunks reproduce ``dataset``'s filters exactly, or None.

    Parameters
    ----------
    dataset : h5py.Dataset
        A pack's ``/frames``.
    chunk_frames : int
        Frames in a chunk.

    Returns
    -------
    str or None
        ``gzip`` for the deflate filter at :data:`GZIP_LEVEL` alone, ``none`` for no filter,
        None for anything else (lzf, shuffle, another level or chunk shape): such a dataset is
        written through h5py's own filter pipeline.
    """
    s = dataset.shape[1]
    if dataset.dtype != np.uint8 or dataset.chunks != (chunk_frames, s, s):
        return None
    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(i)[:3] for i in range(plist.get_nfilters())]
    if not filters:
        return "none"
    if len(filters) == 1 and filters[0][0] == h5py.h5z.FILTER_DEFLATE:
        return "gzip" if tuple(filters[0][2]) == (GZIP_LEVEL,) else None
    return None
