"""The field's standard silhouette normalization (GaitSet / OpenGait pre-processing), per frame.

Steps, for a single-channel uint8 frame:

1. drop the frame if its grey-value sum is at most ``min_sum`` (10000 by default, about 40
   white pixels: too little body to normalize);
2. optionally keep only the largest connected component (``largest_blob``);
3. crop to the rows that contain foreground;
4. resize to height ``size`` keeping the aspect ratio (bicubic);
5. find the horizontal centre: the first column where the cumulative column mass exceeds half
   the total (a centre in column 0 is valid, unlike OpenGait's check);
6. cut a ``size`` x ``size`` window centred there, zero-padding where it leaves the image;
7. optionally binarize (``binarize``: values > 127 become 255, the rest 0).

Every step is a pure numpy/OpenCV operation on the whole frame.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Reasons a frame is dropped, as written to manifests.
TOO_SMALL = "too little foreground"


def largest_component(img: np.ndarray) -> np.ndarray:
    """``img`` with every foreground pixel outside its largest 8-connected component zeroed."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((img > 0).astype(np.uint8), 8)
    if n <= 2:
        return img
    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.where(labels == keep, img, 0).astype(img.dtype)


def normalize_frame(
    img: np.ndarray,
    size: int = 64,
    min_sum: int = 10000,
    binarize: bool = False,
    largest_blob: bool = False,
) -> tuple[np.ndarray | None, str | None]:
    """Normalize one silhouette frame.

    Parameters
    ----------
    img : ndarray of uint8, shape (H, W)
        A raw silhouette (0 background, larger values foreground).
    size : int
        Output height and width S.
    min_sum : int
        Frames whose grey-value sum is at most this are dropped.
    binarize : bool
        Threshold the resized frame at 127 to {0, 255}.
    largest_blob : bool
        Keep only the largest connected component before cropping.

    Returns
    -------
    (frame, reason)
        ``frame`` is uint8 (S, S), or None when dropped, with ``reason`` saying why.
    """
    if int(img.sum(dtype=np.int64)) <= min_sum:
        return None, TOO_SMALL
    if largest_blob:
        img = largest_component(img)
        if int(img.sum(dtype=np.int64)) <= min_sum:
            return None, TOO_SMALL
    rows = np.flatnonzero(img.any(axis=1))
    img = img[rows[0] : rows[-1] + 1]
    width = max(1, int(size * img.shape[1] / img.shape[0]))
    img = cv2.resize(img, (width, size), interpolation=cv2.INTER_CUBIC)
    mass = img.sum(axis=0, dtype=np.int64).cumsum()
    centre = int(np.argmax(mass > mass[-1] / 2))
    half = size // 2
    padded = np.zeros((size, width + 2 * half), np.uint8)
    padded[:, half : half + width] = img
    out = padded[:, centre : centre + size]
    if binarize:
        out = np.where(out > 127, 255, 0).astype(np.uint8)
    return np.ascontiguousarray(out), None
