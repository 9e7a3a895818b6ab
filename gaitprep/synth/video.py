"""A walker filmed by a fixed camera: the synthetic body composited into a scene, with its masks.

The walk is :func:`gaitprep.synth.sequence.render_sequence` of one subject, condition, sequence
and view, without segmentation artifacts, preceded by ``empty`` frames of the scene alone. The
scene is a textured background (blurred noise over a vertical gradient), lit with a slow drift of
its brightness (±6 %), filmed with camera noise (σ = 3 grey levels), and holds a distractor: a
swaying shrub at the side. The walker's body is textured clothing darker than the scene. The true
masks are the rendered silhouettes. Everything follows from the seed.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from gaitprep.files import OutputLock, atomic_folder, encode_png
from gaitprep.segment import write_mp4
from gaitprep.synth.artifacts import Artifacts
from gaitprep.synth.sequence import SequenceSpec, render_sequence

CLEAN = Artifacts(**{k: 0.0 for k in Artifacts.__dataclass_fields__})


def render_video(
    subject: int = 1,
    condition: str = "nm",
    seq: int = 1,
    view: int = 90,
    frames: int = 40,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
    empty: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """``(video, masks)``: BGR frames uint8 [empty + frames, H, W, 3] and the walker's true masks
    uint8 [empty + frames, H, W] (0 / 255; empty for the first ``empty`` frames)."""
    width, height = size
    spec = SequenceSpec(
        "casia-b", subject, condition, seq, view, frames, width, height, seed, CLEAN
    )
    walk = render_sequence(spec)
    masks = np.concatenate([np.zeros((empty, height, width), np.uint8), walk])
    rng = np.random.default_rng([seed, subject, view, seq, 7])
    gradient = np.linspace(150, 110, height)[:, None, None]
    texture = cv2.GaussianBlur(rng.normal(0, 25, (height, width, 3)), (9, 9), 0)
    scene = gradient + texture + np.array([0.0, 8.0, -6.0])
    cloth = cv2.GaussianBlur(rng.normal(45, 15, (height, width, 3)), (5, 5), 0)
    shrub_centre = np.array([0.1 * width, 0.72 * height])
    axes = (int(0.05 * width), int(0.12 * height))
    out = np.empty((len(masks), height, width, 3), np.uint8)
    for t, m in enumerate(masks):
        img = scene.copy()
        sway = 4.0 * np.sin(2 * np.pi * t / 23.0)
        shrub = np.zeros((height, width), np.uint8)
        cx, cy = (shrub_centre + [sway, 0]).astype(int)
        cv2.ellipse(shrub, (int(cx), int(cy)), axes, sway * 2, 0, 360, 255, -1)
        img[shrub > 0] = [40.0, 90.0, 50.0]
        img[m > 0] = cloth[m > 0]
        img *= 1.0 + 0.06 * np.sin(2 * np.pi * t / len(masks))
        img += rng.normal(0, 3, img.shape)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out, masks


def write_video(path: Path, video: np.ndarray, masks: np.ndarray, fps: int = 25) -> Path:
    """Write ``video`` as an mp4 (mp4v) at ``path`` and the true masks as PNG frames (named by
    frame index) in ``PATH.masks/``; returns that folder.

    Both are written under temporary names and checked before they replace what was there (the
    video's frames read back, :func:`~gaitprep.segment.write_mp4`); the masks of an earlier,
    longer video are replaced whole, never left beside the new ones. The lock on ``path`` makes
    a second writer wait its turn with a one-line refusal."""
    path = Path(path)
    folder = path.with_name(path.name + ".masks")
    with OutputLock(path), atomic_folder(folder, replace=True) as tmp:
        for t, m in enumerate(masks):
            (tmp / f"{t:06d}.png").write_bytes(encode_png(m))
        write_mp4(path, video, fps)
    return folder
