"""Segmentation artifacts like those of real background-subtracted gait silhouettes.

Each artifact has a rate: the probability that it hits one frame (per-frame artifacts) or one
sequence (per-sequence artifacts). Whether an artifact hits is decided by uniform draws made in a
fixed order from the sequence's artifact stream, independent of the body's geometry, so a
sequence rendered with and without an artifact differs only where that artifact acts, and raising
a rate only adds hits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import cv2
import numpy as np

#: Artifacts decided once per sequence; the rest are decided per frame.
PER_SEQUENCE = ("shadow", "out_of_frame", "short")
PER_FRAME = ("speckle", "ragged", "holes", "blob", "empty")


@dataclass(frozen=True)
class Artifacts:
    """Rates of each artifact (0 = never, 1 = always).

    speckle
        Per frame: a few isolated foreground specks anywhere in the image (sensor noise).
    ragged
        Per frame: pixels along the body's outline flipped at random (unstable thresholding).
    holes
        Per frame: one to three small holes punched in the body (background-coloured clothing).
    blob
        Per frame: a small detached blob elsewhere in the image (a moving object, reflections).
    empty
        Per frame: the whole frame is background (a segmentation failure).
    shadow
        Per sequence: a cast shadow on the ground at the feet, attached or slightly detached.
    out_of_frame
        Per sequence: the walker is partly out of the frame at one end of the walk.
    short
        Per sequence: all but one to four frames are empty (fewer than 5 usable frames).
    """

    speckle: float = 0.25
    ragged: float = 0.3
    holes: float = 0.08
    blob: float = 0.05
    empty: float = 0.02
    shadow: float = 0.1
    out_of_frame: float = 0.05
    short: float = 0.01

    @classmethod
    def none(cls) -> Artifacts:
        """No artifact at all (``--clean``)."""
        return cls(**{f.name: 0.0 for f in fields(cls)})

    def with_rates(self, rates: dict[str, float]) -> Artifacts:
        """A copy with some rates changed; an unknown name or a rate outside [0, 1] is an error."""
        known = {f.name for f in fields(self)}
        for name, rate in rates.items():
            if name not in known:
                raise ValueError(f"unknown artifact {name!r}; known: {', '.join(sorted(known))}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"artifact rate {name}={rate} is outside [0, 1]")
        return replace(self, **rates)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Hits:
    """Which artifacts hit a sequence of ``T`` frames, and the streams for their parameters."""

    sequence: dict[str, bool]
    frames: dict[str, np.ndarray]  # name -> bool [T]
    params: dict[str, np.random.Generator]


def draw_hits(rates: Artifacts, seed_seq: np.random.SeedSequence, n_frames: int) -> Hits:
    """Decide which artifacts hit a sequence, from its own artifact seed sequence."""
    children = seed_seq.spawn(1 + len(PER_SEQUENCE) + len(PER_FRAME))
    decide = np.random.default_rng(children[0])
    u_seq = decide.random(len(PER_SEQUENCE))
    u_frame = decide.random((n_frames, len(PER_FRAME)))
    r = rates.as_dict()
    names = PER_SEQUENCE + PER_FRAME
    return Hits(
        sequence={n: bool(u_seq[i] < r[n]) for i, n in enumerate(PER_SEQUENCE)},
        frames={n: u_frame[:, i] < r[n] for i, n in enumerate(PER_FRAME)},
        params={n: np.random.default_rng(c) for n, c in zip(names, children[1:], strict=True)},
    )


def punch_holes(img: np.ndarray, rng: np.random.Generator, scale: float) -> None:
    """Cut one to three small elliptical holes centred on foreground pixels, in place."""
    fg = np.flatnonzero(img)
    if fg.size == 0:
        return
    for _ in range(int(rng.integers(1, 4))):
        y, x = divmod(int(fg[rng.integers(fg.size)]), img.shape[1])
        axes = (max(1, int(rng.uniform(1.5, 5) * scale)), max(1, int(rng.uniform(1.5, 5) * scale)))
        cv2.ellipse(img, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 0, -1)


def roughen_edges(img: np.ndarray, rng: np.random.Generator, flip: float = 0.35) -> None:
    """Flip a random share of the pixels on the inner and outer outline, in place."""
    kernel = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(img, kernel) != cv2.erode(img, kernel)
    h, w = img.shape
    coarse = rng.random(((h + 3) // 4, (w + 3) // 4)).astype(np.float32)
    noise = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_NEAREST) < flip
    fine = rng.random((h, w), dtype=np.float32) < 0.5
    mask = edge & noise & fine
    img[mask] = 255 - img[mask]


def add_speckle(img: np.ndarray, rng: np.random.Generator, scale: float) -> None:
    """Scatter 3 to 25 small foreground specks (1–2 px) over the frame, in place."""
    h, w = img.shape
    n = int(rng.integers(3, 26))
    ys = rng.integers(0, h, n)
    xs = rng.integers(0, w, n)
    size = np.maximum(1, np.round(rng.uniform(1, 2.5, n) * scale)).astype(int)
    for y, x, s in zip(ys.tolist(), xs.tolist(), size.tolist(), strict=True):
        img[y : y + s, x : x + s] = 255


def add_blob(img: np.ndarray, rng: np.random.Generator, scale: float) -> None:
    """Draw one small blob away from the body's bounding box (when there is room), in place."""
    h, w = img.shape
    cols = np.flatnonzero(img.any(0))
    lo, hi = (cols[0], cols[-1]) if cols.size else (w, -1)
    x = int(rng.integers(0, w))
    for _ in range(10):
        if not lo - 8 * scale <= x <= hi + 8 * scale:
            break
        x = int(rng.integers(0, w))
    y = int(rng.integers(h // 4, h))
    axes = (max(1, int(rng.uniform(2, 8) * scale)), max(1, int(rng.uniform(2, 10) * scale)))
    cv2.ellipse(img, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)


def apply_frame(img: np.ndarray, hits: Hits, t: int, scale: float) -> None:
    """The artifacts ``hits`` draws on frame ``t`` (holes, ragged edges, speckle, a blob, or an
    empty frame), in that order, on ``img`` in place; ``scale`` sizes holes, speckle and blobs."""
    if hits.frames["holes"][t]:
        punch_holes(img, hits.params["holes"], scale)
    if hits.frames["ragged"][t]:
        roughen_edges(img, hits.params["ragged"])
    if hits.frames["speckle"][t]:
        add_speckle(img, hits.params["speckle"], scale)
    if hits.frames["blob"][t]:
        add_blob(img, hits.params["blob"], scale)
    if hits.frames["empty"][t]:
        img[:] = 0


def short_keep(rng: np.random.Generator, n_frames: int) -> slice:
    """The frames a ``short`` sequence keeps: a run of one to four frames."""
    k = int(rng.integers(1, 5))
    start = int(rng.integers(0, max(1, n_frames - k + 1)))
    return slice(start, start + k)
