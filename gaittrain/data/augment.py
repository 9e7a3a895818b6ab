"""Training augmentation of silhouette sequences: pure functions over uint8 arrays [T, H, W].

Each transform draws its randomness from the ``numpy.random.Generator`` it is given and changes
the whole sequence the same way (one angle, one rectangle, one decision per sequence), as
OpenGait's silhouette transforms do; none modifies its input. The dataset hands them the
generator it sampled the frames with (seeded per item by the sampler), so an augmented batch is
the same whatever the worker that made it.

:func:`augment_sequence` applies the configured ones in OpenGait's order: perspective (on the
frames before the width cut, whose columns its corners move within), the cut, then flip,
rotation and erasing.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np


def _fires(rng: np.random.Generator, prob: float) -> bool:
    """One draw, only when the transform can fire (prob 0 draws nothing)."""
    return prob > 0 and rng.random() < prob


def _each_frame(frames: np.ndarray, warp) -> np.ndarray:
    return np.stack([warp(f) for f in frames]) if len(frames) else frames.copy()


def flip(frames: np.ndarray) -> np.ndarray:
    """The sequence mirrored left to right."""
    return np.ascontiguousarray(frames[:, :, ::-1])


def rotate(frames: np.ndarray, degrees: float) -> np.ndarray:
    """Every frame rotated by ``degrees`` (counter-clockwise) about the frame's centre, bilinear,
    the uncovered corners black."""
    h, w = frames.shape[1:]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), float(degrees), 1.0)
    return _each_frame(frames, lambda f: cv2.warpAffine(f, m, (w, h)))


def erase(frames: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """The rectangle [top, top + height) x [left, left + width) set to 0 in every frame."""
    out = frames.copy()
    out[:, top : top + height, left : left + width] = 0
    return out


def perspective(frames: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Every frame warped so that the quadrilateral ``corners`` (x, y of top-left, top-right,
    bottom-right, bottom-left) fills the frame, bilinear, the rest black."""
    h, w = frames.shape[1:]
    canvas = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    m = cv2.getPerspectiveTransform(np.float32(corners), canvas)
    return _each_frame(frames, lambda f: cv2.warpPerspective(f, m, (w, h)))


def random_rotate(frames: np.ndarray, rng: np.random.Generator, prob: float, degrees: float):
    """With probability ``prob``, :func:`rotate` by an angle uniform in [-degrees, degrees]."""
    if not _fires(rng, prob):
        return frames
    return rotate(frames, rng.uniform(-degrees, degrees))


def random_flip(frames: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
    """With probability ``prob``, :func:`flip`."""
    return flip(frames) if _fires(rng, prob) else frames


def random_erase(
    frames: np.ndarray,
    rng: np.random.Generator,
    prob: float,
    area: tuple[float, float] = (0.05, 0.2),
    aspect_min: float = 0.3,
) -> np.ndarray:
    """With probability ``prob``, :func:`erase` one rectangle: an area uniform in ``area`` (as a
    fraction of the frame) and an aspect ratio (height / width) uniform in [aspect_min,
    1 / aspect_min], at a uniform position; up to 100 draws for one that fits inside the frame
    (none fitting: the sequence unchanged), as OpenGait's RandomErasing."""
    if not _fires(rng, prob):
        return frames
    h, w = frames.shape[1:]
    for _ in range(100):
        target = rng.uniform(*area) * h * w
        ratio = rng.uniform(aspect_min, 1 / aspect_min)
        eh, ew = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if eh < h and ew < w:
            top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            return erase(frames, top, left, eh, ew)
    return frames


def random_perspective(
    frames: np.ndarray, rng: np.random.Generator, prob: float, shift: float = 0.15625
) -> np.ndarray:
    """With probability ``prob``, :func:`perspective` from corners drawn independently: each
    left corner's x among the first ``m`` columns, each right corner's among the last ``m``,
    where m = max(1, round(shift * width)) (OpenGait's RandomPerspective: 10 of 64 columns)."""
    if not _fires(rng, prob):
        return frames
    h, w = frames.shape[1:]
    m = max(1, round(shift * w))
    left = rng.integers(0, m, size=2)  # top, bottom
    right = w - m + rng.integers(0, m, size=2)
    corners = [[left[0], 0], [right[0], 0], [right[1], h], [left[1], h]]
    return perspective(frames, np.array(corners, np.float32))


def augment_sequence(
    frames: np.ndarray, rng: np.random.Generator, cfg: Any, cut: int
) -> np.ndarray:
    """The configured augmentations (``cfg``: a :class:`~gaittrain.config.AugmentConfig`) of
    frames [T, H, W] before the width cut, with the cut of ``cut`` columns a side between
    perspective and the others."""
    frames = random_perspective(frames, rng, cfg.perspective.prob, cfg.perspective.shift)
    if cut:
        frames = frames[:, :, cut : frames.shape[2] - cut]
    frames = random_flip(frames, rng, cfg.flip.prob)
    frames = random_rotate(frames, rng, cfg.rotate.prob, cfg.rotate.degrees)
    e = cfg.erase
    return random_erase(frames, rng, e.prob, (e.area_min, e.area_max), e.aspect_min)
