"""A pinhole camera and the placement of a walk in front of it.

Convention (the one CASIA-B and OU-MVLP use for their view angles): the **view angle** is the
angle between the camera's line of sight and the walking direction, measured so that

* 0° — the subject walks straight towards the camera (frontal view),
* 90° — the subject walks from the image's left to its right (side view, left side hidden),
* 180° — the subject walks straight away from the camera (back view),
* 270° — the subject walks from right to left.

World frame: X to the image's right, Y up, Z away from the camera; the ground is Y = 0 and the
camera sits at X = Z = 0, at height ``height``, pitched down by ``pitch`` degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: image size (pixels), focal length (pixels), height (m), pitch (deg)."""

    width: int
    height_px: int
    focal: float
    height: float = 1.1
    pitch: float = 4.0
    cx_offset: float = 0.0  # principal point offset from the image centre (pixels)
    cy_offset: float = 0.0

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points [..., 3] to pixel coordinates [..., 2] and depths [...]."""
        b = np.deg2rad(self.pitch)
        x = pts[..., 0]
        y_down = self.height - pts[..., 1]
        z = pts[..., 2]
        yc = y_down * np.cos(b) - z * np.sin(b)
        zc = np.maximum(y_down * np.sin(b) + z * np.cos(b), 1e-3)
        u = self.width / 2 + self.cx_offset + self.focal * x / zc
        v = self.height_px / 2 + self.cy_offset + self.focal * yc / zc
        return np.stack([u, v], -1), zc


def walk_axes(view_deg: float) -> np.ndarray:
    """Rows: the walker's forward, up and left directions in the world frame for a view angle."""
    t = np.deg2rad(view_deg)
    return np.array(
        [
            [np.sin(t), 0.0, -np.cos(t)],
            [0.0, 1.0, 0.0],
            [np.cos(t), 0.0, np.sin(t)],
        ]
    )


def to_world(body_pts: np.ndarray, axes: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Map body-frame points [T, ..., 3] to the world, with per-frame origins [T, 3]."""
    shape = (origin.shape[0],) + (1,) * (body_pts.ndim - 2) + (3,)
    return body_pts @ axes + origin.reshape(shape)
