"""Frames as OpenGait's pretreatment makes them for GREW and CCPG, where it departs from the
standard normalization of :mod:`gaitprep.process` (which Gait3D's frames go through unchanged).

* **GREW** distributes its silhouettes already cropped, centred and resized to 64 x 64, and
  OpenGait's ``datasets/pretreatment.py --dataset GREW`` keeps every frame as it is, empty ones
  included. :func:`read_as_they_are` does the same; a frame that is not S x S cannot be stored as
  it is and is dropped, with its reason.
* **CCPG**: OpenGait's ``datasets/CCPG/organize_ccpg.py`` takes the standard steps but resizes by
  area (``cv2.INTER_AREA``) and drops no frame for too little foreground. :func:`read_by_area`
  normalizes with that resize and ``params`` (``min_sum`` 0 for CCPG; a frame with no foreground
  at all is dropped, where OpenGait's script stores ``None`` in its array).

Both read and report frames as :func:`~gaitprep.process.process_sequence` does: nothing raises
for a bad frame, every unreadable or dropped one is listed with its reason.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from gaitprep.layout import RawSequence
from gaitprep.normalize import normalize_frame
from gaitprep.process import Params, Processed, process_sequence

#: OpenGait's threshold on a frame's grey-value sum for each in-the-wild dataset: Gait3D's frames
#: go through the standard steps; GREW's and CCPG's pretreatment drops no frame for it.
MIN_SUM = {"gait3d": 10000, "grew": 0, "ccpg": 0}
#: The ``imported_from`` pack attribute of a pack of GREW's frames, stored as they are.
GREW_FRAMES = "grew-png"
#: The ``interpolation`` pack attribute of a pack of frames resized by area (CCPG's).
AREA = "area"


def read_as_they_are(root: Path, seq: RawSequence, params: Params) -> Processed:
    """Every frame of ``seq`` as it is (grey), when it is ``params.size`` squared."""
    s = params.size

    def keep(img: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        if img.shape != (s, s):
            h, w = img.shape
            return None, f"frame is {h} x {w}, not {s} x {s} (GREW's frames are stored as they are)"
        return img, None

    return process_sequence(root, seq, params, keep)


def read_by_area(root: Path, seq: RawSequence, params: Params) -> Processed:
    """Every frame of ``seq`` normalized with ``params``, resized by area."""

    def normalize(img: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        return normalize_frame(
            img,
            params.size,
            params.min_sum,
            params.binarize,
            params.largest_blob,
            interpolation=cv2.INTER_AREA,
        )

    return process_sequence(root, seq, params, normalize)
