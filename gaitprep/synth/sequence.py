"""Render one raw silhouette sequence: a subject walking past the camera at one view angle.

A sequence is a pure function of its :class:`SequenceSpec`: the population seed, the subject,
the condition and sequence number, the view, the number of frames, the image size and the
artifact rates. Per-sequence nuisance (start phase, speed, distance, camera height, pitch and
offsets) is drawn from the sequence's own stream, so the same person looks different from one
recording to the next in the ways real recordings differ.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np

from gaitprep.synth import artifacts as art
from gaitprep.synth.body import Subject, sample_subject
from gaitprep.synth.camera import Camera, to_world, walk_axes
from gaitprep.synth.clothing import outfit_for
from gaitprep.synth.geometry import pose
from gaitprep.synth.raster import rasterize

#: The walker model's version, recorded in every synth tree: bump it whenever
#: :func:`render_sequence` gives other frames for the same :class:`SequenceSpec`, so that a tree
#: made by an older generator is never resumed as if it were complete.
GENERATOR = 2
FPS = 25.0
#: Fraction of the image height a 1.70 m walker fills at the reference distance.
FILL = 0.62
REF_DISTANCE = 5.75
MARGIN = 4  # pixels kept free around a walk that must stay in frame


@dataclass(frozen=True)
class SequenceSpec:
    """Everything that determines one sequence's frames."""

    dataset: str  # "casia-b" or "ou-mvlp"
    subject: int
    condition: str  # "nm", "bg", "cl"
    seq: int
    view: int  # degrees
    frames: int
    width: int
    height: int
    seed: int = 0
    artifacts: art.Artifacts = field(default_factory=art.Artifacts)

    def seed_sequence(self, stream: int) -> np.random.SeedSequence:
        """An independent seed sequence for this sequence's ``stream`` (0 nuisance, 1 artifacts)."""
        key = [zlib.crc32(self.dataset.encode()), self.subject, zlib.crc32(self.condition.encode())]
        return np.random.SeedSequence([self.seed, 3, stream, *key, self.seq, self.view])


def _walk(s: Subject, spec: SequenceSpec, rng: np.random.Generator):
    """Gait phase [T] and pelvis progression [T] (metres along the walk, centred on 0)."""
    speed = float(np.exp(rng.normal(0.0, 0.04)))
    t = np.arange(spec.frames) / FPS
    phase = rng.uniform(0.0, 1.0) + 0.5 * s.cadence * speed * t
    # Walking speed wobbles a little within a stride; progression follows the phase.
    phase = phase + 0.01 * np.sin(2 * np.pi * 2 * phase)
    step = s.step_length * float(np.exp(rng.normal(0.0, 0.03)))
    dist = 2.0 * step * (phase - phase.mean())
    return phase, dist


def _bbox(pts: np.ndarray) -> np.ndarray:
    """Per-frame [x0, y0, x1, y1] of projected points [T, N, 2]."""
    return np.concatenate([pts.min(1), pts.max(1)], -1)


def _camera(spec: SequenceSpec, rng, fig, axes, origin, hits) -> Camera:
    """A camera that frames the walk, or pushes one end out of frame for ``out_of_frame``."""
    cam = Camera(
        width=spec.width,
        height_px=spec.height,
        focal=FILL * spec.height * REF_DISTANCE / 1.70,
        height=float(rng.normal(1.1, 0.08)),
        pitch=float(rng.normal(4.0, 1.5)),
        cx_offset=float(rng.normal(0.0, 0.02 * spec.width)),
        cy_offset=float(rng.normal(0.0, 0.02 * spec.height)),
    )
    pts = np.concatenate([fig.capsules.a, fig.capsules.b], 1)
    radius = max(fig.capsules.ra.max(), 0.2)
    uv, _ = cam.project(to_world(pts, axes, origin))
    box = _bbox(uv)
    centre = np.array([spec.width / 2 + cam.cx_offset, spec.height / 2 + cam.cy_offset])
    # Shrink the focal length until the whole walk (plus a body radius) fits in the frame.
    pad = cam.focal * radius / REF_DISTANCE + MARGIN
    reach = np.maximum(np.abs(box[:, :2] - centre), np.abs(box[:, 2:] - centre)).max(0) + pad
    zoom = min(1.0, *(0.5 * np.array([spec.width, spec.height]) / reach))
    box = (box - np.tile(centre, 2)) * zoom + np.tile(centre, 2)
    lo = box[:, :2].min(0) - pad * zoom
    hi = box[:, 2:].max(0) + pad * zoom
    size = np.array([spec.width, spec.height])
    shift = np.clip(0.0, -lo, size - hi)  # move the walk back inside the frame
    if hits.sequence["out_of_frame"]:
        shift = _overflow(box, size, hits.params["out_of_frame"])
    return Camera(
        width=cam.width,
        height_px=cam.height_px,
        focal=cam.focal * zoom,
        height=cam.height,
        pitch=cam.pitch,
        cx_offset=cam.cx_offset + shift[0],
        cy_offset=cam.cy_offset + shift[1],
    )


def _overflow(box: np.ndarray, size: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Image shift that pushes the first or last frame partly over the frame's edge."""
    last = bool(rng.integers(2))
    end = box[-1] if last else box[0]
    motion = (box[-1, :2] + box[-1, 2:] - box[0, :2] - box[0, 2:]) / 2
    q = rng.uniform(0.25, 0.6)
    width, height = end[2] - end[0], end[3] - end[1]
    if abs(motion[0]) > 0.5 * width:  # a walk across the image leaves sideways
        leaves_right = (motion[0] > 0) == last
        dx = size[0] - end[2] + q * width if leaves_right else -end[0] - q * width
        return np.array([dx, 0.0])
    return np.array([0.0, size[1] - end[3] + q * height])  # feet cut at the bottom


def draw_shadow(frames, cam: Camera, fig, axes, origin, rng: np.random.Generator) -> None:
    """A ground shadow from the feet along a fixed light direction, attached or detached."""
    light = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(light), 0.0, np.sin(light)])
    side = np.array([-direction[2], 0.0, direction[0]])
    length, width, gap = rng.uniform(0.5, 1.3), rng.uniform(0.12, 0.3), rng.uniform(0.0, 0.3)
    feet = to_world(fig.capsules.b[:, [3, 7]], axes, origin).mean(1)  # toe ends of both feet
    feet[:, 1] = 0.0
    near = feet + gap * direction
    far = near + length * direction
    quad = np.stack(
        [
            near - width * side,
            far - 0.6 * width * side,
            far + 0.6 * width * side,
            near + width * side,
        ],
        1,
    )
    uv, _ = cam.project(quad)
    for t, poly in enumerate(np.round(uv * 16).astype(np.int32)):
        cv2.fillConvexPoly(frames[t], poly, 255, cv2.LINE_8, 4)


def render_sequence(spec: SequenceSpec) -> np.ndarray:
    """The raw frames of ``spec`` as uint8 [T, H, W] with values 0 and 255."""
    subject = sample_subject(spec.seed, spec.subject)
    outfit = outfit_for(spec.seed, subject, spec.condition, spec.seq)
    rng = np.random.default_rng(spec.seed_sequence(0))
    hits = art.draw_hits(spec.artifacts, spec.seed_sequence(1), spec.frames)

    phase, dist = _walk(subject, spec, rng)
    fig = pose(subject, outfit, phase)
    axes = walk_axes(spec.view)
    lateral = float(rng.normal(0.0, 0.15))
    depth = float(rng.uniform(5.0, 6.5))
    centre = np.array([lateral, 0.0, depth])
    origin = centre + dist[:, None] * axes[0]
    cam = _camera(spec, rng, fig, axes, origin, hits)
    frames = rasterize(fig, cam, axes, origin)

    scale = spec.height / 240.0
    if hits.sequence["shadow"]:
        draw_shadow(frames, cam, fig, axes, origin, hits.params["shadow"])
    for t in range(spec.frames):
        art.apply_frame(frames[t], hits, t, scale)
    if hits.sequence["short"]:
        keep = art.short_keep(hits.params["short"], spec.frames)
        mask = np.ones(spec.frames, bool)
        mask[keep] = False
        frames[mask] = 0
    return frames
