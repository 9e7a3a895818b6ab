"""Silhouettes from a fixed camera: background subtraction, clean-up, the walker's blob.

For a video (any format OpenCV reads) or a folder of frames:

1. a background model (OpenCV's MOG2 or KNN, shadows detected) learns the scene from the first
   ``learn_frames`` frames, or from a given background image;
2. every frame's foreground (shadow pixels, marked 127 by the subtractor, are dropped) is
   cleaned: a 3 x 3 opening removes specks, a closing joins the body's parts, holes are filled;
3. the walker is one 8-connected blob of at least ``min_area`` pixels: the largest in the first
   frame it appears in, then, among the blobs at least a third of the largest, the one nearest to
   its previous position (a swaying object or a passer-by does not take over);
4. frames without such a blob are skipped and counted.

The silhouettes are written as binary PNG frames (0 / 255), named by frame index, which `gait
prep` and `gait identify` take.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from gaitprep.errors import GaitError, OutputError
from gaitprep.files import (
    OutputLock,
    atomic_folder,
    atomic_output,
    atomic_write,
    encode_png,
    output_target,
)
from gaitprep.layout import IMAGE_EXTENSIONS

METHODS = ("mog2", "knn")


class SegmentError(GaitError):
    """A video or frame folder that gives no silhouettes."""


@dataclass
class Segmented:
    """What :func:`segment` found: ``masks`` (frame index, binary uint8 mask) of the frames with
    a walker, how many frames were read, used for learning, and skipped for want of a walker."""

    masks: list[tuple[int, np.ndarray]] = field(default_factory=list)
    read: int = 0
    learned: int = 0
    skipped: int = 0


def read_frames(source: Path) -> Iterator[np.ndarray]:
    """The BGR (or grey) frames of a video file or of a folder of images in name order;
    SegmentError, naming the source, when it cannot be read."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise SegmentError(f"{source} holds no png, jpg or bmp frame")
        for p in files:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise SegmentError(f"{p} cannot be decoded as an image")
            yield img
        return
    capture = cv2.VideoCapture(str(source))
    ok, img = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        raise SegmentError(f"{source} is not a video OpenCV can read (or holds no frame)")
    try:
        while ok:
            yield img
            ok, img = capture.read()
    finally:
        capture.release()


def write_mp4(path: Path, frames, fps: int = 25) -> int:
    """Write BGR frames (any iterable of [H, W, 3] uint8) as an mp4 (mp4v) at ``path``; returns
    how many.

    The video is written under a temporary name and read back before it replaces ``path``:
    OpenCV's writer reports no failed write (a full disk leaves a file without a readable
    frame), so a video whose frames do not all read back is an :class:`OutputError` and nothing
    is left under ``path``. A link is written through, a device refused
    (:func:`~gaitprep.files.output_target`)."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise SegmentError(f"cannot write {path}: a video is written as .mp4")
    with atomic_output(path, f".{os.getpid()}.partial.mp4") as tmp:
        writer, n = None, 0
        try:
            for frame in frames:
                if writer is None:
                    h, w = frame.shape[:2]
                    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                    writer = cv2.VideoWriter(str(tmp), fourcc, fps, (w, h))
                    if not writer.isOpened():
                        raise SegmentError(f"cannot write a video at {path}")
                writer.write(frame)
                n += 1
        finally:
            if writer is not None:
                writer.release()
        if n == 0:
            raise SegmentError(f"cannot write {path}: no frame to write")
        readable = count_frames(tmp)
        if readable != n:
            raise OutputError(
                f"cannot write {path}: {readable} of its {n} frames read back (is the disk "
                "full?); free some space and run the same command again"
            )
    return n


def count_frames(video: Path) -> int:
    """How many frames of ``video`` OpenCV decodes (0 for a file it cannot open)."""
    capture = cv2.VideoCapture(str(video))
    n = 0
    try:
        while capture.isOpened() and capture.grab():
            n += 1
    finally:
        capture.release()
    return n


def _subtractor(method: str, history: int):
    if method == "mog2":
        return cv2.createBackgroundSubtractorMOG2(history=history, detectShadows=True)
    if method == "knn":
        return cv2.createBackgroundSubtractorKNN(history=history, detectShadows=True)
    raise ValueError(f"method must be one of {', '.join(METHODS)}")


def clean_mask(foreground: np.ndarray) -> np.ndarray:
    """A subtractor's output (255 foreground, 127 shadow) as a cleaned binary mask: shadows
    dropped, specks opened away, parts closed together, holes filled."""
    mask = np.where(foreground == 255, 255, 0).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    filled = mask.copy()  # flood the background from a border; what it misses are holes
    h, w = mask.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)
    cv2.floodFill(filled, flood, (0, 0), 255)
    return mask | cv2.bitwise_not(filled) if mask[0, 0] == 0 else mask


def pick_walker(mask: np.ndarray, min_area: int, previous) -> tuple[np.ndarray | None, tuple]:
    """The walker's blob in a cleaned mask (see the module's docstring) and its centroid; None
    when no blob has ``min_area`` pixels."""
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if n <= 1 or areas.max() < min_area:
        return None, previous
    candidates = [i for i in range(1, n) if areas[i - 1] >= max(min_area, areas.max() / 3)]
    if previous is None:
        best = max(candidates, key=lambda i: areas[i - 1])
    else:
        best = min(candidates, key=lambda i: float(np.hypot(*(centroids[i] - previous))))
    return np.where(labels == best, 255, 0).astype(np.uint8), tuple(centroids[best])


def segment(
    source: Path,
    method: str = "mog2",
    learn_frames: int = 20,
    background: Path | None = None,
    min_area: int = 400,
    history: int = 500,
) -> Segmented:
    """Silhouettes of the walker in ``source`` (a video or a folder of frames); see the module's
    docstring. With ``background`` (an image of the empty scene) nothing is learned from the
    frames first; otherwise the first ``learn_frames`` frames (which should show the empty
    scene) only teach the background."""
    sub = _subtractor(method, history)
    found = Segmented()
    if background is not None:
        img = cv2.imread(str(background), cv2.IMREAD_COLOR)
        if img is None:
            raise SegmentError(f"{background} cannot be decoded as an image")
        for _ in range(10):
            sub.apply(img, learningRate=1.0 if _ == 0 else 0.5)
        learn_frames = 0
    previous = None
    for index, img in enumerate(read_frames(source)):
        found.read += 1
        if index < learn_frames:
            sub.apply(img)
            found.learned += 1
            continue
        fg = sub.apply(img, learningRate=0.001)  # the walker must not become background
        walker, previous = pick_walker(clean_mask(fg), min_area, previous)
        if walker is None:
            found.skipped += 1
        else:
            found.masks.append((index, walker))
    if not found.masks:
        what = "no frame after the learned ones" if found.read <= learn_frames else "no walker"
        raise SegmentError(
            f"{source}: {what} found in {found.read} frames (learned from {found.learned}); "
            "a fixed camera with the empty scene first, or --background, is needed"
        )
    return found


PREVIEW_FORMATS = (".png", ".jpg", ".jpeg", ".mp4")


def check_preview(out: Path) -> None:
    """Refuse, before any work, a preview that :func:`write_preview` could not write."""
    if Path(out).suffix.lower() not in PREVIEW_FORMATS:
        raise SegmentError(
            f"cannot write the preview {out}: give an image (.png, .jpg) or a video (.mp4)"
        )
    output_target(out)


def _write_masks(found: Segmented, folder: Path) -> None:
    """The masks as ``FOLDER/NNNNNN.png``, named by frame index."""
    for index, mask in found.masks:
        (folder / f"{index:06d}.png").write_bytes(encode_png(mask))


def write_preview(source: Path, found: Segmented, out: Path, tiles: int = 8) -> None:
    """The masks over the frames they came from, in red: ``out`` ending in .mp4, every frame
    (frames without a walker as they are); otherwise an image (.png, .jpg) of ``tiles`` evenly
    spaced frames with a walker side by side. Written atomically, checked."""
    check_preview(out)
    masks = dict(found.masks)
    out = Path(out)
    video = out.suffix.lower() == ".mp4"
    wanted = set(np.linspace(0, len(found.masks) - 1, min(tiles, len(found.masks))).astype(int))
    keep = {found.masks[i][0] for i in wanted}

    def overlaid():
        for index, img in enumerate(read_frames(source)):
            if not video and index not in keep:
                continue
            if index in masks:
                img = img.copy()
                body = masks[index] > 0
                img[body] = (0.4 * img[body] + [0, 0, 153]).astype(np.uint8)
            yield img

    if video:
        write_mp4(out, overlaid())
        return
    ok, buf = cv2.imencode(out.suffix.lower(), np.hstack(list(overlaid())))
    if not ok:
        raise SegmentError(f"cannot write {out}: OpenCV could not encode the image")
    atomic_write(out, buf.tobytes())


def segment_to_folder(
    source: Path, out: Path, preview: Path | None = None, **options
) -> tuple[Segmented, int]:
    """``gait segment``: :func:`segment` ``source`` (``options`` are its keywords) and write the
    silhouettes into ``out`` (and the preview), holding both outputs' locks throughout, so a
    second run into the same folder is refused instead of mixing its frames in. Both outputs are
    checked before the video is read, and written all or nothing: when the preview cannot be
    written, no silhouette folder is left either. Returns what was found and how many masks were
    written."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SegmentError(f"{out} exists and is not an empty folder; give a new one")
    if preview is not None:
        check_preview(preview)
    with OutputLock(out), OutputLock(preview) if preview is not None else nullcontext():
        found = segment(source, **options)
        with atomic_folder(out) as tmp:
            _write_masks(found, tmp)
            if preview is not None:
                write_preview(source, found, preview)
    return found, len(found.masks)
