"""Read and normalize one raw sequence, recording every frame that is dropped and why."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from gaitprep.layout import RawSequence
from gaitprep.normalize import normalize_frame
from gaitprep.pack import frames_crc

cv2.setNumThreads(1)  # frames are small: OpenCV's own threads only add overhead per call
if hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # we report bad files

EMPTY_FILE = "empty file (0 bytes)"
UNREADABLE = "unreadable image (corrupt, truncated or not an image)"


@dataclass(frozen=True)
class Params:
    """Normalization parameters (see gaitprep.normalize.normalize_frame)."""

    size: int = 64
    min_sum: int = 10000
    binarize: bool = False
    largest_blob: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def read_frame(path: str) -> tuple[np.ndarray | None, str | None]:
    """A frame as single-channel uint8 (colour is converted to grey), or None and the reason."""
    try:
        if os.path.getsize(path) == 0:
            return None, EMPTY_FILE
    except OSError as e:
        return None, f"cannot read file: {e.strerror}"
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None:
        return None, UNREADABLE
    return img, None


@dataclass
class Processed:
    """A normalized sequence and what happened to each of its raw frames."""

    frames: np.ndarray  # uint8 [n, S, S] (an EncodedFrames once a prep worker compressed them)
    frame_source: np.ndarray  # int32 [n]
    read: int
    dropped: list[tuple[str, str]]  # (file, reason) for frames that decoded but were dropped
    unreadable: list[tuple[str, str]]
    crc: int  # CRC-32 of the frames as /sequences/crc32 stores it (computed in the worker)


def process_sequence(
    root: Path, seq: RawSequence, params: Params, make: Callable | None = None
) -> Processed:
    """Read and normalize every frame of ``seq`` (or keep what ``make(img) -> (frame, reason)``
    makes of it, a frame of ``params.size`` squared or None and why); nothing raises for a bad
    frame."""
    if make is None:

        def make(img: np.ndarray) -> tuple[np.ndarray | None, str | None]:
            return normalize_frame(
                img, params.size, params.min_sum, params.binarize, params.largest_blob
            )

    kept, source = [], []
    dropped, unreadable = [], []
    folder = os.path.join(root, seq.folder)
    for i, name in enumerate(seq.files):
        rel = f"{seq.folder}/{name}"
        img, problem = read_frame(os.path.join(folder, name))
        if img is None:
            unreadable.append((rel, problem))
            continue
        out, reason = make(img)
        if out is None:
            dropped.append((rel, reason))
            continue
        kept.append(out)
        source.append(i)
    s = params.size
    frames = np.stack(kept) if kept else np.zeros((0, s, s), np.uint8)
    source = np.asarray(source, np.int32)
    return Processed(frames, source, len(seq.files), dropped, unreadable, frames_crc(frames))
