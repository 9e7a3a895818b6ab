"""A literal, slow implementation of the standard normalization steps (docs/prep.md).

Written as the steps read, close to OpenGait's pretreatment, with its column-0 check fixed; the
fast implementation in gaitprep.normalize must match it pixel for pixel.
"""

from __future__ import annotations

import cv2
import numpy as np


def reference_normalize(img: np.ndarray, size: int = 64, min_sum: int = 10000) -> np.ndarray | None:
    if img.sum() <= min_sum:
        return None
    y_sum = img.sum(axis=1)
    top = (y_sum != 0).argmax()
    bottom = (y_sum != 0).cumsum().argmax()
    img = img[top : bottom + 1]
    ratio = img.shape[1] / img.shape[0]
    width = int(size * ratio)
    img = cv2.resize(img, (width, size), interpolation=cv2.INTER_CUBIC)
    total = img.sum()
    columns = img.sum(axis=0).cumsum()
    centre = -1
    for i in range(columns.size):
        if columns[i] > total / 2:
            centre = i
            break
    if centre < 0:
        return None
    half = size // 2
    padded = np.zeros((size, width + 2 * half), np.uint8)
    padded[:, half : half + width] = img
    return padded[:, centre : centre + size]
