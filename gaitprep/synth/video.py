"""A walker filmed by a fixed camera: the synthetic body composited into a scene, with its masks.

The walk is :func:`gaitprep.synth.sequence.render_sequence` of one subject, condition, sequence
and view, without segmentation artifacts, preceded by ``empty`` frames of the scene alone. The
scene is a textured background (blurred noise over a vertical gradient), lit with a slow wobble
of its brightness (±6 %), filmed with camera noise, and holds a swaying shrub at the side. The
walker's body is textured clothing darker than the scene. The true masks are the rendered
silhouettes (a shadow or a distractor is never part of them).

:class:`Conditions` adds what a real camera meets, one knob each: a brightness drift over the
clip, sudden exposure jumps, a colour-temperature drift, more or less noise, clothes close to the
scene's colour, the walker's shadow on the ground and more distractors (a swaying pole, a ball
rolling across). Everything follows from the seed: the scene and the noise from one stream,
what the conditions draw (jump frames, the shadow's direction, the ball's path) from another, so
that switching one condition on leaves the others' draws as they were, and the default
conditions give the bytes this module gave before it had any.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from gaitprep.files import OutputLock, atomic_folder, encode_png
from gaitprep.segment import write_mp4
from gaitprep.synth.artifacts import Artifacts
from gaitprep.synth.sequence import SequenceSpec, render_sequence

CLEAN = Artifacts(**{k: 0.0 for k in Artifacts.__dataclass_fields__})


@dataclass(frozen=True)
class Conditions:
    """What the scene and the camera do to a video; the defaults are the plain scene.

    Attributes
    ----------
    drift : float
        Brightness change from the first frame to the last, linear: 0.2 ends 20 % brighter,
        -0.2 20 % darker (-0.4 to 0.4).
    jumps : int
        Sudden exposure steps (0 to 5): at seeded frames the gain is multiplied by 1 ± 15-30 %
        and stays so.
    colour_drift : float
        Colour temperature over the clip (-0.3 to 0.3): red gains this fraction by the last
        frame while blue loses it (negative: towards blue).
    noise : float
        Camera noise, the standard deviation in grey levels (0 to 30).
    contrast : float
        The clothes' colour: 1 dark clothes (mean 45 grey levels), 0 the scene's mean colour
        (only the clothes' own texture tells them apart), linear in between (0 to 1).
    shadow : float
        How much the walker's ground shadow darkens the scene (0 none, up to 0.8).
    distractors : int
        Moving things that are not the walker: 0 none, 1 a swaying shrub, 2 also a swaying pole,
        3 also a ball rolling across the ground.
    lamps : int
        Lamps switched on at seeded frames (0 to 3): from then on one side of the scene is lit
        30-60 % more, the light fading out across 60 % of the width (a change no global gain
        undoes).
    """

    drift: float = 0.0
    jumps: int = 0
    colour_drift: float = 0.0
    noise: float = 3.0
    contrast: float = 1.0
    shadow: float = 0.0
    distractors: int = 1
    lamps: int = 0

    #: (low, high) of each field, checked by :meth:`check`.
    RANGES = {
        "drift": (-0.4, 0.4),
        "jumps": (0, 5),
        "colour_drift": (-0.3, 0.3),
        "noise": (0.0, 30.0),
        "contrast": (0.0, 1.0),
        "shadow": (0.0, 0.8),
        "distractors": (0, 3),
        "lamps": (0, 3),
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            lo, hi = self.RANGES[f.name]
            value = getattr(self, f.name)
            if not lo <= value <= hi:
                raise ValueError(f"{f.name} must be from {lo} to {hi}, not {value}")


def _gains(n: int, cond: Conditions, rng: np.random.Generator) -> np.ndarray:
    """Per-frame BGR gains [n, 3]: the slow ±6 % wobble, the drift, the exposure jumps and the
    colour temperature, multiplied together."""
    t = np.arange(n)
    ramp = t / max(n - 1, 1)
    gain = (1.0 + 0.06 * np.sin(2 * np.pi * t / n)) * (1.0 + cond.drift * ramp)
    frames = rng.integers(5, max(n, 6), 5)  # always five draws: jumps=k uses the first k
    sizes = rng.uniform(0.15, 0.30, 5) * rng.choice([-1.0, 1.0], 5)
    for at, size in zip(frames[: cond.jumps], sizes[: cond.jumps], strict=True):
        gain[at:] *= 1.0 + size
    colour = np.stack([1 - cond.colour_drift * ramp, np.ones(n), 1 + cond.colour_drift * ramp], 1)
    return gain[:, None] * colour


def _lamps(n: int, size: tuple[int, int], count: int, rng: np.random.Generator) -> np.ndarray:
    """Per-frame light [n, H, W, 1] of ``count`` lamps: each, from a seeded frame on, adds 30-60 %
    at the left or right edge, fading linearly to nothing across 60 % of the width."""
    width, height = size
    at = rng.integers(5, max(n, 6), 3)  # always three draws: lamps=k uses the first k
    gain = rng.uniform(0.3, 0.6, 3)
    left = rng.integers(0, 2, 3).astype(bool)
    x = np.arange(width) / width
    light = np.ones((n, 1, width, 1))
    for t, g, side in zip(at[:count], gain[:count], left[:count], strict=True):
        fade = np.clip(1 - (x if side else 1 - x) / 0.6, 0, 1)
        light[t:, 0, :, 0] += g * fade
    return np.broadcast_to(light, (n, height, width, 1))


def _shadows(masks: np.ndarray, strength: float, slant: float) -> np.ndarray:
    """How much each pixel is darkened [T, H, W] (float, 0 to ``strength``) by the walker's
    shadow: the silhouette laid on the ground behind the feet (a third of its height, sheared
    sideways by ``slant`` per pixel of height), with a soft edge."""
    out = np.zeros(masks.shape, np.float64)
    if strength == 0:
        return out
    h, w = masks.shape[1:]
    for t, m in enumerate(masks):
        rows = np.flatnonzero(m.any(1))
        if rows.size == 0:
            continue
        feet = float(rows[-1])
        squash = np.array([[1.0, -slant, slant * feet], [0.0, 1 / 3, 2 / 3 * feet]])
        cast = cv2.warpAffine(m, squash, (w, h), flags=cv2.INTER_LINEAR)
        out[t] = strength * cv2.GaussianBlur(cast.astype(np.float64) / 255, (5, 5), 0)
    return out


def _distractors(t: int, size: tuple[int, int], cond: Conditions, ball: tuple) -> list:
    """The distractors' (mask, BGR colour) at frame ``t``, drawn in this order behind the
    walker: the shrub (sways ±4 px), the pole (leans ±3° about its foot), the ball (rolls from
    one side to the other along ``ball``: start x, y, speed in px per frame)."""
    width, height = size
    out = []
    if cond.distractors >= 1:
        sway = 4.0 * np.sin(2 * np.pi * t / 23.0)
        shrub = np.zeros((height, width), np.uint8)
        cx, cy = (np.array([0.1 * width, 0.72 * height]) + [sway, 0]).astype(int)
        axes = (int(0.05 * width), int(0.12 * height))
        cv2.ellipse(shrub, (int(cx), int(cy)), axes, sway * 2, 0, 360, 255, -1)
        out.append((shrub, [40.0, 90.0, 50.0]))
    if cond.distractors >= 2:
        lean = np.deg2rad(3.0 * np.sin(2 * np.pi * t / 31.0))
        foot = np.array([0.88 * width, 0.9 * height])
        top = foot + 0.75 * height * np.array([np.sin(lean), -np.cos(lean)])
        pole = np.zeros((height, width), np.uint8)
        thick = max(2, round(0.015 * width))
        cv2.line(pole, tuple(foot.astype(int)), tuple(top.astype(int)), 255, thick)
        out.append((pole, [70.0, 70.0, 80.0]))
    if cond.distractors >= 3:
        x0, y, speed = ball
        ball_mask = np.zeros((height, width), np.uint8)
        cv2.circle(ball_mask, (int(x0 + speed * t), int(y)), max(3, round(0.08 * height)), 255, -1)
        out.append((ball_mask, [30.0, 60.0, 200.0]))
    return out


def render_video(
    subject: int = 1,
    condition: str = "nm",
    seq: int = 1,
    view: int = 90,
    frames: int = 40,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
    empty: int = 20,
    conditions: Conditions | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed camera's video of one walker and the walker's true masks.

    Parameters
    ----------
    subject, condition, seq, view : int, str, int, int
        Who walks, in what (nm, bg, cl), which recording and at what view angle (as `gait synth
        casia-b`).
    frames : int
        Frames of the walk.
    size : (int, int)
        Width and height in pixels.
    seed : int
        The population's seed (the walker of `gait synth casia-b --seed SEED`) and the scene's.
    empty : int
        Frames of the empty scene before the walker appears.
    conditions : Conditions, optional
        What the scene and the camera add (default: the plain scene).

    Returns
    -------
    video : ndarray
        BGR frames, uint8 [empty + frames, H, W, 3].
    masks : ndarray
        The walker's true masks, uint8 [empty + frames, H, W] (0 / 255; empty for the first
        ``empty`` frames).
    """
    cond = conditions or Conditions()
    width, height = size
    spec = SequenceSpec(
        "casia-b", subject, condition, seq, view, frames, width, height, seed, CLEAN
    )
    walk = render_sequence(spec)
    masks = np.concatenate([np.zeros((empty, height, width), np.uint8), walk])
    n = len(masks)
    rng = np.random.default_rng([seed, subject, view, seq, 7])
    gradient = np.linspace(150, 110, height)[:, None, None]
    texture = cv2.GaussianBlur(rng.normal(0, 25, (height, width, 3)), (9, 9), 0)
    scene = gradient + texture + np.array([0.0, 8.0, -6.0])
    cloth = cv2.GaussianBlur(rng.normal(45, 15, (height, width, 3)), (5, 5), 0)
    if cond.contrast < 1:
        scene_colour = scene.mean((0, 1))
        cloth = cloth + (1 - cond.contrast) * (scene_colour - 45.0)
    draws = np.random.default_rng([seed, subject, view, seq, 8])
    gains = _gains(n, cond, draws)
    shadows = _shadows(masks, cond.shadow, draws.uniform(0.5, 1.0) * draws.choice([-1, 1]))
    start = draws.choice([-0.1, 1.1]) * width
    ball = (start, 0.9 * height, -np.sign(start - width / 2) * width / max(n - 1, 1) * 1.2)
    lamps = _lamps(n, size, cond.lamps, draws)
    out = np.empty((n, height, width, 3), np.uint8)
    for t, m in enumerate(masks):
        img = scene * (1 - shadows[t])[..., None] if cond.shadow else scene.copy()
        for thing, colour in _distractors(t, size, cond, ball):
            img[thing > 0] = colour
        img[m > 0] = cloth[m > 0]
        img *= gains[t]
        if cond.lamps:
            img *= lamps[t]
        img += rng.normal(0, cond.noise, img.shape)
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
