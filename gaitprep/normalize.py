"""The field's standard silhouette normalization (GaitSet / OpenGait pre-processing), per frame.

Steps, for a single-channel uint8 frame:

1. optionally keep only the largest 8-connected component (``largest_blob``), which removes
   shadows and specks that would stretch the crop;
2. drop the frame if its grey-value sum is at most ``min_sum`` (10000 by default, about 40
   white pixels: too little body to normalize);
3. crop to the rows that contain foreground;
4. resize to height ``size`` keeping the aspect ratio, width ``int(size * (W / h))`` as in
   OpenGait (bicubic; ``interpolation`` chooses another OpenCV interpolation: CCPG's frames are
   resized by area in OpenGait's ``datasets/CCPG/organize_ccpg.py``);
5. find the horizontal centre: the first column where the cumulative column mass exceeds half
   the total (a centre in column 0 is valid; OpenGait rejects it);
6. cut a ``size`` x ``size`` window centred there, zero-padding where it leaves the image;
7. optionally binarize (``binarize``: values > 127 become 255, the rest 0).

Every step is a whole-array OpenCV/numpy operation; the output equals a literal
implementation of these steps pixel for pixel (tests/test_normalize.py holds this).
"""

from __future__ import annotations

import cv2
import numpy as np

#: Reasons a frame is dropped, as written to manifests.
TOO_SMALL = "too little foreground"
TOO_NARROW = "nothing left after resizing"


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
    interpolation: int = cv2.INTER_CUBIC,
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
    interpolation : int
        OpenCV's interpolation of the resize (``cv2.INTER_CUBIC``, the standard, or
        ``cv2.INTER_AREA``).

    Returns
    -------
    (frame, reason)
        ``frame`` is uint8 (S, S), or None when dropped, with ``reason`` saying why.
    """
    if largest_blob:
        img = largest_component(img)
    x, y, w, h = cv2.boundingRect(img)  # the box of non-zero pixels; all mass lies inside
    if w == 0 or int(cv2.sumElems(img[y : y + h, x : x + w])[0]) <= min_sum:
        return None, TOO_SMALL
    strip = img[y : y + h]  # crop to the rows with foreground, full width
    width = int(size * (strip.shape[1] / h))  # OpenGait's rounding of the aspect ratio
    if width < 1:
        return None, TOO_NARROW
    resized = cv2.resize(strip, (width, size), interpolation=interpolation)
    mass = cv2.reduce(resized, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel().cumsum()
    if mass[-1] == 0:
        return None, TOO_NARROW
    centre = int(np.argmax(mass > mass[-1] / 2))
    out = np.zeros((size, size), np.uint8)
    left = centre - size // 2  # window [left, left + size) in resized columns
    lo, hi = max(left, 0), min(left + size, width)
    out[:, lo - left : hi - left] = resized[:, lo:hi]
    if binarize:
        out = np.where(out > 127, 255, 0).astype(np.uint8)
    return out, None
