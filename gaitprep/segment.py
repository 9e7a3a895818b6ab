"""Silhouettes from a fixed camera: a background model, clean-up, the walker's blob, checks.

For a video (any format OpenCV reads) or a folder of frames:

1. a background model learns the empty scene from the first ``learn_frames`` frames (or from a
   given background image) and keeps following it. The default, ``adaptive``
   (:class:`Adaptive`), is a per-pixel Gaussian (mean colour, variance) that

   * first fits the frame's light to the model: per channel an offset and a gain that may vary
     smoothly across the image, fitted robustly on the pixels away from the walker
     (:func:`fit_photometry`), so that a brightness or colour-temperature drift, an exposure
     jump or a lamp at one side is undone before subtracting;
   * calls a pixel foreground when its colour is far from the mean for its variance and from
     every other colour the scene showed there in a few frames it keeps from the last second
     or so (a swaying pole shows the scene in turns with itself: both are the scene, and
     neither widens the other's tolerance), and shadow-coloured when it is a darker copy of the
     background (:func:`foreground`);
   * learns from every frame where a pixel looks like its mean, except around where the walker
     was last seen or a rejected blob is (selective update, :func:`update_background`), so
     that it follows the scene but neither the walker nor what passes in front of the scene; a
     pixel left out so for ``STILL`` frames is learned again (what stays is not a walker);
   * takes the frame as the new scene when most of it changed at once (lights switched, a
     change the fit cannot undo, :func:`relearn`) instead of calling it a walker; that frame
     is rejected.

   ``mog2`` and ``knn`` are OpenCV's subtractors (:class:`OpenCV`), whose shadow pixels are
   dropped here;
2. the foreground, the adaptive model's shadow-coloured pixels included, is cleaned: a 3 x 3
   opening removes specks, a closing joins the body's parts, holes are filled
   (:func:`clean_mask`);
3. each blob loses its cast shadow: shadow-coloured parts low in it that do not touch its
   body (:func:`drop_shadows`); the walker is one of these blobs, of at least ``min_area``
   pixels: the largest where it first appears, then, among those at least a third of the
   largest, the one nearest to its previous position (a swaying object or a passer-by does not
   take over) that looks like a person (:func:`pick_walker`); the adaptive model then drops its
   edge pixels that look more like the scene than like the walker beside them
   (:func:`trim_edge`: the camera's blur and the video's compression mix the two there);
4. a blob that covers most of the frame, is not shaped like a standing person, or whose area
   jumps against the tracked walker's recent areas is rejected and counted by reason
   (:func:`person_problem`); frames without a blob are skipped and counted. :func:`doubts`
   says when the result is not to be trusted.

The silhouettes are written as binary PNG frames (0 / 255), named by frame index, which `gait
prep` and `gait identify` take. The settings below were measured with bench/segment_bench.py
(docs/evaluation.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from gaitprep.errors import GaitError, OutputError
from gaitprep.files import (
    OutputLock,
    atomic_folder,
    atomic_output,
    atomic_write,
    encode_png,
    output_target,
)
from gaitprep.layout import IMAGE_EXTENSIONS

METHODS = ("adaptive", "mog2", "knn")


class SegmentError(GaitError):
    """A video or frame folder that gives no silhouettes."""


@dataclass
class Segmented:
    """What :func:`segment` found: ``masks`` (frame index, binary uint8 mask) of the frames with
    a walker, how many frames were read, used for learning, and skipped for want of a walker,
    and the frames rejected, by reason (:func:`person_problem`, a change of the whole scene)."""

    masks: list[tuple[int, np.ndarray]] = field(default_factory=list)
    read: int = 0
    learned: int = 0
    skipped: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        """Count one frame rejected for ``reason``."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


def read_frames(source: Path) -> Iterator[np.ndarray]:
    """The BGR (or grey) frames of a video file or of a folder of images in name order;
    SegmentError, naming the source, when it cannot be read."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise SegmentError(f"{source} holds no png, jpg or bmp frame")
        for p in files:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise SegmentError(f"{p} cannot be decoded as an image")
            yield img
        return
    capture = cv2.VideoCapture(str(source))
    ok, img = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        raise SegmentError(f"{source} is not a video OpenCV can read (or holds no frame)")
    try:
        while ok:
            yield img
            ok, img = capture.read()
    finally:
        capture.release()


def write_mp4(path: Path, frames, fps: int = 25) -> int:
    """Write BGR frames (any iterable of [H, W, 3] uint8) as an mp4 (mp4v) at ``path``; returns
    how many.

    The video is written under a temporary name and read back before it replaces ``path``:
    OpenCV's writer reports no failed write (a full disk leaves a file without a readable
    frame), so a video whose frames do not all read back is an :class:`OutputError` and nothing
    is left under ``path``. A link is written through, a device refused
    (:func:`~gaitprep.files.output_target`)."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise SegmentError(f"cannot write {path}: a video is written as .mp4")
    with atomic_output(path, f".{os.getpid()}.partial.mp4") as tmp:
        writer, n = None, 0
        try:
            for frame in frames:
                if writer is None:
                    h, w = frame.shape[:2]
                    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                    writer = cv2.VideoWriter(str(tmp), fourcc, fps, (w, h))
                    if not writer.isOpened():
                        raise SegmentError(f"cannot write a video at {path}")
                writer.write(frame)
                n += 1
        finally:
            if writer is not None:
                writer.release()
        if n == 0:
            raise SegmentError(f"cannot write {path}: no frame to write")
        readable = count_frames(tmp)
        if readable != n:
            raise OutputError(
                f"cannot write {path}: {readable} of its {n} frames read back (is the disk "
                "full?); free some space and run the same command again"
            )
    return n


def count_frames(video: Path) -> int:
    """How many frames of ``video`` OpenCV decodes (0 for a file it cannot open)."""
    capture = cv2.VideoCapture(str(video))
    n = 0
    try:
        while capture.isOpened() and capture.grab():
            n += 1
    finally:
        capture.release()
    return n


#: The adaptive model. A pixel is foreground when its squared colour distance to the mean,
#: summed over the three channels, exceeds THRESHOLD times its variance (noise alone: a
#: chi-square with 3 degrees of freedom, beyond 36 once in 13 million pixels).
THRESHOLD = 36.0
#: A foreground pixel is shadow-coloured when it is the background darkened by a ratio in this
#: range and its colour, once that ratio is undone, is within SHADOW_CHROMA variances of it
#: (noise alone: a chi-square with about 2 degrees of freedom, beyond 6 once in 20).
SHADOW_RATIO = (0.5, 0.95)
SHADOW_CHROMA = 6.0
#: The share of the mean and variance learned from each frame.
RATE = 0.05
#: The smallest standard deviation a pixel keeps (grey levels), and the one a model learned from
#: a single image starts with.
MIN_SIGMA, IMAGE_SIGMA = 2.0, 4.0
#: The median of a chi-square with 3 degrees of freedom, divided by 3: the median, in
#: variances, of noise's squared deviation averaged over the three channels (twice that for the
#: difference of two frames).
CHI2_MEDIAN = 0.7887
#: The frames kept besides the mean: every STRIDE-th frame learned replaces the oldest of
#: SAMPLES, so that they span the last SAMPLES * STRIDE frames (a second or more at 25 frames a
#: second). A pixel unlike the mean but like one of them, where it is unlike the mean too, shows
#: another state of the scene (a swaying pole now in front of it, now not).
SAMPLES, STRIDE = 8, 4
#: About how many pixels, on a regular grid, the photometric fit uses; pixels this bright in any
#: channel are clipped and say nothing about the gain.
FIT_PIXELS, SATURATED = 5000, 250
#: A frame where more than this share of the pixels away from the walker is foreground, after
#: the photometric fit, is a change of the whole scene: it is rejected for CHANGED and the model
#: takes it as the new scene, less sure by UNSURE times of what the walker hides.
SCENE_CHANGE = 0.35
CHANGED = "the whole scene changed (re-learned)"
UNSURE = 16.0
#: After this many frames left out of the learning (around the walker, or unlike its mean), a
#: pixel is learned again: what stays that long is the scene (a ghost, a change of the light
#: taken for the walker), not a walker; the inside of a walker coming straight at the camera,
#: learned so, is filled back as a hole.
STILL = 50

#: Clean-up: the closing that joins a body's parts, as a share of the frame's height; the share
#: of a blob's height above which a shadow-coloured part is the walker's own, not its shadow on
#: the ground (:func:`drop_shadows`).
CLOSING = 1 / 35
GROUND = 0.6

#: The walker checks (:func:`person_problem`): the largest share of the frame a walker may
#: cover, the range of its height / width, and how far its area may jump against the median
#: of its last SIZE_MEMORY accepted areas (a factor either way); frames without the walker
#: after which it is forgotten (its place, size and blob).
MAX_SHARE = 0.5
ASPECT = (1.1, 6.0)
SIZE_JUMP = 2.5
SIZE_MEMORY = 5
FORGET = 10


@dataclass
class Background:
    """The adaptive model's state, in the photometry of the frames it was first learned from.

    Attributes
    ----------
    mean : ndarray
        Per-pixel mean colour, float32 [H, W, 3].
    var : ndarray
        Per-pixel variance of one channel (grey levels squared), float32 [H, W].
    samples : ndarray
        ``SAMPLES`` recent frames of the scene, uint8 [SAMPLES, H, W, 3].
    """

    mean: np.ndarray
    var: np.ndarray
    samples: np.ndarray


def learn_background(frames: np.ndarray) -> Background:
    """The model of the empty scene shown by ``frames``.

    Parameters
    ----------
    frames : ndarray
        BGR frames [N, H, W, 3].

    Returns
    -------
    Background
        The per-pixel median (a passer-by in a few frames does not count); the variance from
        the median squared difference between consecutive frames (a pole swaying over the pixel
        changes it in a few of them only, so that it does not widen it), the median over 5 x 5
        pixels, at least ``MIN_SIGMA**2``; from one frame, ``IMAGE_SIGMA**2`` everywhere (the
        model then learns the noise). The samples are ``SAMPLES`` of the frames, evenly spaced.
    """
    stack = np.asarray(frames, np.float32)
    mean = np.median(stack, axis=0)
    pick = np.linspace(0, len(stack) - 1, SAMPLES).round().astype(int)
    samples = np.asarray(frames, np.uint8)[pick]
    if len(stack) == 1:
        return Background(mean, np.full(mean.shape[:2], IMAGE_SIGMA**2, np.float32), samples)
    spread = np.median((np.diff(stack, axis=0) ** 2).mean(axis=3), axis=0) / (2 * CHI2_MEDIAN)
    var = np.maximum(cv2.medianBlur(spread.astype(np.float32), 5), MIN_SIGMA**2)
    return Background(mean, var.astype(np.float32), samples)


def fit_photometry(
    frame: np.ndarray, mean: np.ndarray, reference: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The light that takes the model's ``mean`` to ``frame``: per channel, an offset and a gain
    that may vary smoothly across the image (a lamp at one side, the sun through a window).

    ``frame ≈ gain(u, v) * mean + offset``, with ``gain`` a quadratic in the pixel's column
    ``u`` and row ``v`` (both scaled to -1 .. 1; six coefficients), is fitted by least squares
    on the ``reference`` pixels near the median ratio ``frame / mean``, then twice more on
    those whose residual is within 2.5 robust standard deviations (1.4826 times the median
    absolute residual), so that the walker, its shadow or a moving distractor does not pull
    the fit. Where the reference's colours hardly vary (a flat wall: standard deviation under 2
    grey levels), gain and offset cannot be told apart and the offset is 0.

    Parameters
    ----------
    frame, mean : ndarray
        [H, W, 3]: the frame and the model's mean.
    reference : ndarray
        bool [H, W]: the pixels to fit on (away from the walker, not clipped).

    Returns
    -------
    gain : ndarray
        float32 [H, W, 3], the gain at each pixel.
    offset : ndarray
        float32 [3].
    """

    def robust(residual: np.ndarray) -> np.ndarray:  # within 2.5 robust standard deviations
        centred = np.abs(residual - np.median(residual))
        return centred <= 2.5 * 1.4826 * np.median(centred) + 1e-6

    h, w = reference.shape
    v, u = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    terms = np.stack([np.ones_like(u), u, v, u * u, v * v, u * v], -1)  # [H, W, 6]
    gain = np.empty((h, w, 3), np.float32)
    offset = np.zeros(3, np.float32)
    for c in range(3):
        m = mean[..., c][reference].astype(np.float64)
        x = frame[..., c][reference].astype(np.float64)
        flat = m.std() < 2.0
        design = terms[reference] * m[:, None]
        if not flat:
            design = np.column_stack([design, np.ones_like(m)])
        keep = robust(x / np.maximum(m, 1.0))
        for _ in range(3):
            coef = np.linalg.lstsq(design[keep], x[keep], rcond=None)[0]
            keep = robust(x - design @ coef)
        gain[..., c] = terms @ coef[:6]
        offset[c] = 0.0 if flat else coef[6]
    return gain, offset


def foreground(model: Background, frame: np.ndarray) -> np.ndarray:
    """What differs from the model in a frame already in its photometry.

    Parameters
    ----------
    model : Background
        The scene's model.
    frame : ndarray
        float [H, W, 3], after :func:`fit_photometry`'s gain and offset are undone.

    Returns
    -------
    ndarray
        uint8 [H, W]: 255 foreground (squared distance over the variance above ``THRESHOLD``
        from the mean and from each sample that is itself that far from the mean), 127 shadow
        (a foreground pixel that is the background darkened by a ratio within
        ``SHADOW_RATIO``, its colour otherwise the background's), 0 background.
    """

    def dot(a, b):  # the per-pixel dot product of two [H, W, 3] arrays
        return np.einsum("ijc,ijc->ij", a, b)

    moved = unlike(model.mean, model.var, frame)
    y, x = np.nonzero(moved)  # only these are compared with the samples
    kept = model.samples[:, y, x].astype(np.float32)  # [SAMPLES, n, 3]
    tolerance = THRESHOLD * model.var[y, x]
    to_frame, to_mean = kept - frame[y, x], kept - model.mean[y, x]
    other = np.einsum("knc,knc->kn", to_mean, to_mean) > tolerance  # another state
    seen = other & (np.einsum("knc,knc->kn", to_frame, to_frame) <= tolerance)
    moved[y, x] = ~seen.any(0)
    ratio = dot(frame, model.mean) / np.maximum(dot(model.mean, model.mean), 1.0)
    off = frame - ratio[..., None] * model.mean
    chroma = dot(off, off)
    lo, hi = SHADOW_RATIO
    shadow = moved & (ratio >= lo) & (ratio < hi) & (chroma < SHADOW_CHROMA * model.var)
    return np.where(shadow, 127, np.where(moved, 255, 0)).astype(np.uint8)


def unlike(mean: np.ndarray, var: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """bool [H, W]: where ``frame`` is more than ``THRESHOLD`` variances (``var``, [H, W]) from
    ``mean`` (both [H, W, 3])."""
    diff = frame - mean
    return np.einsum("ijc,ijc->ij", diff, diff) > THRESHOLD * var


def update_background(
    model: Background,
    frame: np.ndarray,
    learn: np.ndarray,
    store: np.ndarray | None = None,
    slot: int = 0,
    rate: float = RATE,
) -> Background:
    """The model after learning ``rate`` of ``frame`` (in its photometry) where ``learn``, and
    keeping it as sample ``slot`` where ``store``.

    The mean moves towards the frame; the variance towards the squared difference (at most 9
    times the variance per frame, so that one passing object does not blow it up, and at least
    ``MIN_SIGMA**2``).

    Parameters
    ----------
    model : Background
        The model before.
    frame : ndarray
        float [H, W, 3] in the model's photometry.
    learn : ndarray
        bool [H, W]: where to learn (where the frame looks like the mean, away from the walker).
    store : ndarray, optional
        bool [H, W]: where the frame replaces sample ``slot`` (away from the walker); None keeps
        the samples.
    slot : int
        Which sample.
    rate : float
        The share learned from this frame.

    Returns
    -------
    Background
        A new model; ``model`` is left as it was.
    """
    a = (rate * learn).astype(np.float32)
    diff = frame - model.mean
    mean = model.mean + a[..., None] * diff
    spread = np.minimum(np.einsum("ijc,ijc->ij", diff, diff) / 3, 9 * model.var)
    var = np.maximum(model.var + a * (spread - model.var), MIN_SIGMA**2)
    samples = model.samples
    if store is not None:
        samples = samples.copy()
        kept = np.clip(frame.round(), 0, 255).astype(np.uint8)
        samples[slot] = np.where(store[..., None], kept, samples[slot])
    return Background(mean.astype(np.float32), var.astype(np.float32), samples)


def relearn(model: Background, frame: np.ndarray, hidden: np.ndarray) -> Background:
    """The model after a change of the whole scene: ``frame`` is the new scene, except where
    ``hidden`` (bool [H, W], around the walker last seen), which it does not show.

    There the old mean is kept, times the change of the light around it: the ratio of the new
    scene to the old mean where it is seen, smoothed over a tenth of the frame's height and
    carried under the walker by normalized convolution (a lamp switched on at one side
    brightens the hidden part as much as its surroundings). That guess's variance is
    ``UNSURE`` times the old one, so that it is not taken for the walker while the model learns
    the scene there (:func:`update_background`) once the walker has moved on. Every sample is
    the new mean.

    Parameters
    ----------
    model : Background
        The model before the change.
    frame : ndarray
        float [H, W, 3]: the changed frame, as it is (its light is the model's from now on).
    hidden : ndarray
        bool [H, W]: where the frame does not show the scene.

    Returns
    -------
    Background
    """
    seen = (~hidden).astype(np.float32)
    ratio = frame / np.maximum(model.mean, 1.0) * seen[..., None]
    sigma = frame.shape[0] / 10
    light = cv2.GaussianBlur(ratio, (0, 0), sigma)
    light /= np.maximum(cv2.GaussianBlur(seen, (0, 0), sigma), 1e-3)[..., None]
    mean = np.where(hidden[..., None], model.mean * light, frame).astype(np.float32)
    var = np.where(hidden, model.var * UNSURE, model.var).astype(np.float32)
    samples = np.repeat(np.clip(mean.round(), 0, 255).astype(np.uint8)[None], SAMPLES, 0)
    return Background(mean, var, samples)


def _dilated(blob: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: ``blob`` grown by a twentieth of the frame's height (all False for None)."""
    if blob is None:
        return np.zeros(shape, bool)
    k = max(5, shape[0] // 20) | 1
    return cv2.dilate(blob, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0


class Adaptive:
    """The ``adaptive`` method: :func:`learn_background` from the taught frames, then for each
    frame :meth:`foreground` and :meth:`learn` (told where the walker was). Its shadow-coloured
    pixels stay in the blobs, for :func:`drop_shadows` to sort out (a grey walker on a grey
    scene looks like a shadow of it)."""

    keeps_shadows = True

    def __init__(self) -> None:
        self.taught: list[np.ndarray] = []
        self.model: Background | None = None
        self.img: np.ndarray | None = None  # the last frame
        self.frame: np.ndarray | None = None  # the last frame, in the model's photometry
        self.away: np.ndarray | None = None  # the last walker, dilated
        self.left_out: np.ndarray | None = None  # frames each pixel has not been learned
        self.guessed: np.ndarray | None = None  # the scene guessed at a change, not seen since
        self.learned = 0  # frames learned, for the samples' turns
        self.before: Background | None = None  # the model before a change, for one frame

    def teach(self, img: np.ndarray) -> None:
        """A frame of the empty scene."""
        self.taught.append(img)

    def teach_image(self, img: np.ndarray) -> None:
        """An image of the empty scene, the only one."""
        self.taught = [img]

    def foreground(self, img: np.ndarray) -> tuple[np.ndarray, bool]:
        """The frame's foreground (255, shadows 127) and whether the whole scene changed. A
        change that undoes the last one (a flash, one frame long) brings back the model from
        before it."""
        if self.model is None:
            self.model = learn_background(np.stack(self.taught or [img]))
            self.taught = []
            self.away = np.zeros(img.shape[:2], bool)
            self.left_out = np.zeros(img.shape[:2], np.int32)
            self.guessed = np.zeros(img.shape[:2], bool)
        self.img = img
        fg, changed = self._subtract(img, self.model)
        if changed and self.before is not None:
            frame, (fg_before, unlike_before) = self.frame, self._subtract(img, self.before)
            if unlike_before:
                self.frame = frame
            else:
                self.model, fg, changed = self.before, fg_before, False
                self.guessed[:] = False
        self.before = None
        return fg, changed

    def _subtract(self, img: np.ndarray, model: Background) -> tuple[np.ndarray, bool]:
        """:func:`foreground` of ``img`` against ``model`` after :func:`fit_photometry` (the
        frame in the model's photometry kept as ``self.frame``), and whether more than
        ``SCENE_CHANGE`` of the pixels away from the walker are foreground."""
        reference = ~self.away & (img < SATURATED).all(-1)
        step = max(1, round((img.shape[0] * img.shape[1] / FIT_PIXELS) ** 0.5))
        sparse = np.zeros_like(reference)
        sparse[::step, ::step] = reference[::step, ::step]  # a grid of about FIT_PIXELS
        gain, offset = fit_photometry(img, model.mean, sparse)
        self.frame = (img - offset) / np.maximum(gain, 0.05)
        fg = foreground(model, self.frame)
        return fg, bool((fg[~self.away] == 255).mean() > SCENE_CHANGE)

    def learn(self, walker: np.ndarray | None, changed: bool) -> None:
        """Learn the last frame where it looks like the model's mean, except around ``walker``
        (where the walker was last seen and a blob was rejected, or None), and keep every
        ``STRIDE``-th frame as a sample except around ``walker``; a pixel left out for
        ``STILL`` frames is learned and kept, the scene guessed behind the walker at a change
        is learned until it looks like the mean. Where ``changed``, take the frame as the new
        scene (:func:`relearn`), keeping the model from before for the next frame."""
        self.away = _dilated(walker, self.frame.shape[:2])
        if changed:  # the light fitted to the old scene means nothing: the frame as it is
            self.before = self.model
            self.model = relearn(self.model, self.img.astype(np.float32), self.away)
            self.guessed = self.away.copy()
            return
        far = unlike(self.model.mean, self.model.var, self.frame)
        self.guessed &= far
        skip = self.away | (far & ~self.guessed)
        self.left_out = np.where(skip, self.left_out + 1, 0)
        still = self.left_out > STILL  # a "walker" that stays is the scene
        self.learned += 1
        turn, slot = divmod(self.learned, STRIDE)
        store = ~self.away | still if slot == 0 else None
        self.model = update_background(self.model, self.frame, ~skip | still, store, turn % SAMPLES)

    def trim(self, blob: np.ndarray) -> np.ndarray:
        """``blob`` less its edge pixels that look more like the scene (:func:`trim_edge`)."""
        return trim_edge(blob, self.frame, self.model.mean)


class OpenCV:
    """``mog2`` or ``knn``: OpenCV's subtractor (shadows detected). It learns the taught frames
    at its own rate, then every frame at ``rate``: 0.001 (the default) so that the walker never
    becomes background, -1 for OpenCV's own rate (1 / (2 n) after n frames, at least
    1 / ``history``), which keeps following the scene but also learns a slow walker. Its
    shadow pixels are dropped before the blobs are found, as `gait segment` always did (a scene
    darkened as a whole is all shadow to it)."""

    keeps_shadows = False

    def __init__(self, method: str, history: int, rate: float = 0.001) -> None:
        if method == "mog2":
            self.sub = cv2.createBackgroundSubtractorMOG2(history=history, detectShadows=True)
        elif method == "knn":
            self.sub = cv2.createBackgroundSubtractorKNN(history=history, detectShadows=True)
        else:
            raise ValueError(f"method must be one of {', '.join(METHODS)}")
        self.rate = rate

    def teach(self, img: np.ndarray) -> None:
        """A frame of the empty scene."""
        self.sub.apply(img)

    def teach_image(self, img: np.ndarray) -> None:
        """An image of the empty scene, the only one: learned as ten frames."""
        for i in range(10):
            self.sub.apply(img, learningRate=1.0 if i == 0 else 0.5)

    def foreground(self, img: np.ndarray) -> tuple[np.ndarray, bool]:
        """The frame's foreground (255, shadows 127); the subtractor learns from it as well."""
        return self.sub.apply(img, learningRate=self.rate), False

    def learn(self, walker: np.ndarray | None, changed: bool) -> None:
        """Nothing: OpenCV's subtractors learned in :meth:`foreground`."""

    def trim(self, blob: np.ndarray) -> np.ndarray:
        """``blob`` as it is."""
        return blob


def clean_mask(foreground: np.ndarray, shadows: bool = False) -> np.ndarray:
    """A subtractor's output (255 foreground, 127 shadow) as a cleaned binary mask: shadows
    dropped (kept as foreground with ``shadows``), specks opened away (3 x 3), parts closed
    together (a square of about ``CLOSING`` of the frame's height, 7 x 7 at 240 pixels), holes
    filled: what the mask encloses, not what it encloses with the frame's edge (the background
    between the arm and the leg of a walker cut by the edge goes on beyond the frame)."""
    mask = np.where(foreground >= (127 if shadows else 255), 255, 0).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    k = max(3, round(CLOSING * mask.shape[0]) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    filled = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    h, w = filled.shape  # flood the background from around the frame; what it misses are holes
    cv2.floodFill(filled, np.zeros((h + 2, w + 2), np.uint8), (0, 0), 255)
    return mask | cv2.bitwise_not(filled[1:-1, 1:-1])


def trim_edge(blob: np.ndarray, frame: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``blob`` without its edge pixels that look more like the scene than like the walker
    beside them.

    An edge pixel (in the blob, next to a pixel outside it) mixes the walker and the scene: the
    camera's blur and the video's compression (colour kept at half the resolution) spread each
    over the other, so that a pixel of the scene just outside the walker is foreground too. It
    is dropped when its colour is nearer to the scene's (``mean``) than to the walker's there:
    the mean colour of the blob's inner pixels (those not on its edge) within 5 x 5 pixels.

    Parameters
    ----------
    blob : ndarray
        uint8 [H, W], 0 / 255: the walker's blob.
    frame, mean : ndarray
        float [H, W, 3]: the frame and the scene's colour, in the same photometry.

    Returns
    -------
    ndarray
        uint8 [H, W], 0 / 255.
    """
    x, y, w, h = cv2.boundingRect(blob)
    box = np.s_[max(y - 2, 0) : y + h + 2, max(x - 2, 0) : x + w + 2]  # the blob and 2 px more
    part, colour, scene = blob[box], frame[box].astype(np.float32), mean[box]
    inner = cv2.erode(part, np.ones((3, 3), np.uint8)) > 0
    weight = inner.astype(np.float32)
    count = cv2.boxFilter(weight, -1, (5, 5), normalize=False)
    total = cv2.boxFilter(colour * weight[..., None], -1, (5, 5), normalize=False)
    walker = total / np.maximum(count, 1.0)[..., None]
    to_walker = ((colour - walker) ** 2).sum(-1)
    to_scene = ((colour - scene) ** 2).sum(-1)
    out = blob.copy()
    out[box][(part > 0) & ~inner & (count > 0) & (to_scene < to_walker)] = 0
    return out


def _largest(mask: np.ndarray) -> np.ndarray | None:
    """The largest 8-connected blob of ``mask`` (uint8 0 / 255), or None when it is empty."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    return np.where(labels == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA]), 255, 0).astype(np.uint8)


def drop_shadows(blob: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """``blob`` without the walker's shadow on the ground.

    A cast shadow lies on the ground, so it is seen low in the blob: the shadow-coloured parts
    of the blob that do not touch its body (its foreground pixels, cleaned, the largest part)
    and lie wholly within the lowest ``1 - GROUND`` of its height are dropped. Shadow-coloured
    parts higher up are the walker's own clothes (a grey coat on a grey scene looks like a
    shadow of it) and stay; so does a blob without foreground pixels, and a blob mostly
    shadow-coloured above that lowest part (where its cast shadow cannot be): a walker dressed
    like the scene's shadow.

    Parameters
    ----------
    blob : ndarray
        uint8 [H, W], 0 / 255: one blob of foreground and shadow together.
    foreground : ndarray
        uint8 [H, W]: the subtractor's output, 255 foreground, 127 shadow.

    Returns
    -------
    ndarray
        uint8 [H, W], 0 / 255: the largest part of what is left.
    """
    strong = np.where(blob > 0, foreground, 0)
    _, top, _, height = cv2.boundingRect(blob)
    upper = slice(0, top + int(GROUND * height))  # above the ground: the walker alone
    if cv2.countNonZero(strong[upper] == 255) < 0.5 * cv2.countNonZero(blob[upper]):
        return blob  # mostly shadow-coloured: a walker dressed like the scene's shadow
    body = _largest(clean_mask(strong))
    if body is None:
        return blob
    shadowy = np.where((blob > 0) & (foreground < 255), 255, 0).astype(np.uint8)
    shadowy &= ~cv2.dilate(body, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(shadowy, connectivity=8)
    ground = np.flatnonzero(stats[1:, cv2.CC_STAT_TOP] >= top + GROUND * height) + 1
    return _largest(np.where(np.isin(labels, ground), 0, blob).astype(np.uint8))


def person_problem(blob: np.ndarray, recent: list[int]) -> str | None:
    """Why ``blob`` (uint8 [H, W], 0 / 255) cannot be the walker, or None.

    Parameters
    ----------
    blob : ndarray
        A candidate's blob.
    recent : list of int
        The areas of the walker's last accepted blobs (empty before the first).

    Returns
    -------
    str or None
        ``"covers most of the frame"`` (over ``MAX_SHARE`` of it), ``"not shaped like a
        person"`` (height / width outside ``ASPECT``, or as tall as the frame: a whole person
        does not touch both its top and its bottom), ``"size jump"`` (area over ``SIZE_JUMP``
        times the median of ``recent``, or under its inverse), else None. A blob cut by the
        frame's left or right edge (a walker entering or leaving) is judged by its share of
        the frame only: its shape and size are those of the part still in view.
    """
    area = cv2.countNonZero(blob)
    x, _, w, h = cv2.boundingRect(blob)
    if area > MAX_SHARE * blob.size:
        return "covers most of the frame"
    if x == 0 or x + w == blob.shape[1]:
        return None
    if not ASPECT[0] <= h / w <= ASPECT[1] or h == blob.shape[0]:
        return "not shaped like a person"
    if recent and not 1 / SIZE_JUMP <= area / float(np.median(recent)) <= SIZE_JUMP:
        return "size jump"
    return None


def pick_walker(
    mask: np.ndarray,
    min_area: int,
    previous: tuple | None,
    recent: list[int] | None = None,
    foreground: np.ndarray | None = None,
) -> tuple[np.ndarray | None, tuple | None, str | None]:
    """The walker's blob in a cleaned mask, its centroid, and why it is rejected.

    The candidates are the 8-connected blobs of at least ``min_area`` pixels and a third of the
    largest, each without its shadow (:func:`drop_shadows`, where ``foreground`` is given). The
    walker is the candidate nearest to ``previous`` (the largest when None) among those that
    :func:`person_problem` accepts; when none is accepted, the one it would have been, with the
    reason.

    Parameters
    ----------
    mask : ndarray
        uint8 [H, W], 0 / 255 (:func:`clean_mask`).
    min_area : int
        The fewest pixels a walker has.
    previous : tuple or None
        The walker's last centroid (x, y).
    recent : list of int, optional
        The walker's last accepted areas (:func:`person_problem`).
    foreground : ndarray, optional
        The subtractor's output the mask was cleaned from (255 foreground, 127 shadow).

    Returns
    -------
    blob, centre, problem
        uint8 [H, W] 0 / 255 (None when no blob is large enough), its centroid, and None or the
        reason it cannot be the walker.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if n <= 1 or areas.max() < min_area:
        return None, None, None
    candidates = []
    for i in np.flatnonzero(areas >= max(min_area, areas.max() / 3)) + 1:
        blob = np.where(labels == i, 255, 0).astype(np.uint8)
        if foreground is not None:
            blob = drop_shadows(blob, foreground)
        m = cv2.moments(blob, binaryImage=True)
        if m["m00"] >= min_area:
            centre = (m["m10"] / m["m00"], m["m01"] / m["m00"])
            candidates.append((blob, centre, person_problem(blob, recent or [])))
    if not candidates:
        return None, None, None
    if previous is None:
        order = sorted(candidates, key=lambda c: -cv2.countNonZero(c[0]))
    else:
        order = sorted(candidates, key=lambda c: float(np.hypot(*np.subtract(c[1], previous))))
    return next((c for c in order if c[2] is None), order[0])


def segment(
    source: Path,
    method: str = "adaptive",
    learn_frames: int = 20,
    background: Path | None = None,
    min_area: int = 400,
    history: int = 500,
    learning_rate: float = 0.001,
) -> Segmented:
    """Silhouettes of the walker in ``source`` (a video or a folder of frames); see the module's
    docstring. With ``background`` (an image of the empty scene) nothing is learned from the
    frames first; otherwise the first ``learn_frames`` frames (which should show the empty
    scene) only teach the background. ``history`` and ``learning_rate`` are those of OpenCV's
    subtractors (:class:`OpenCV`). The tracked walker (its place, size and blob, which the
    model does not learn) is forgotten after ``FORGET`` frames without it, and three size jumps
    in a row are taken as its new size (the earlier blobs were the wrong ones)."""
    model = Adaptive() if method == "adaptive" else OpenCV(method, history, learning_rate)
    found = Segmented()
    if background is not None:
        img = cv2.imread(str(background), cv2.IMREAD_COLOR)
        if img is None:
            raise SegmentError(f"{background} cannot be decoded as an image")
        model.teach_image(img)
        learn_frames = 0
    previous, last, recent, jumps, unseen = None, None, [], 0, 0
    for index, img in enumerate(read_frames(source)):
        found.read += 1
        if index < learn_frames:
            model.teach(img)
            found.learned += 1
            continue
        fg, changed = model.foreground(img)
        walker, problem = None, CHANGED
        if not changed:
            mask = clean_mask(fg, shadows=model.keeps_shadows)
            shadows = fg if model.keeps_shadows else None
            walker, centre, problem = pick_walker(mask, min_area, previous, recent, shadows)
        unseen += 1
        if walker is not None and problem is None:
            walker = model.trim(walker)
            found.masks.append((index, walker))
            recent = (recent + [cv2.countNonZero(walker)])[-SIZE_MEMORY:]
            previous, last, jumps, unseen = centre, walker, 0, 0
        elif problem is None:
            found.skipped += 1
        else:
            found.reject(problem)
            jumps = jumps + 1 if problem == "size jump" else 0
        # The model learns the frame except where the walker was last seen and where a blob was
        # rejected (it may be the walker, not shaped like one while it passes something); a
        # frame that changed whole, or whose "walker" covers most of it, is taken as the scene
        # anew.
        anew = problem in (CHANGED, "covers most of the frame")
        spared = last
        if walker is not None and problem is not None and not anew:
            spared = walker if last is None else cv2.max(walker, last)
        model.learn(spared, changed=anew)
        if unseen >= FORGET:
            previous, last, recent = None, None, []
        if jumps == 3:
            recent, jumps = [], 0
    if not found.masks:
        what = "no frame after the learned ones" if found.read <= learn_frames else "no walker"
        raise SegmentError(
            f"{source}: {what} found in {found.read} frames (learned from {found.learned}); "
            "a fixed camera with the empty scene first, or --background, is needed"
        )
    return found


#: When to doubt a segmentation (:func:`doubts`): the kept silhouettes' area changes by more than
#: SIZE_STEP times from one kept frame to the next in more than JUMPY of the steps.
SIZE_STEP, JUMPY = 1.5, 0.1


def doubts(found: Segmented) -> list[str]:
    """Why the silhouettes of :func:`segment` may not be the walker's, one line each (none when
    nothing looks wrong): more frames rejected than kept, or their sizes jumping from frame to
    frame (more than ``JUMPY`` of the steps change the area by over ``SIZE_STEP`` times).

    Parameters
    ----------
    found : Segmented
        What :func:`segment` found.

    Returns
    -------
    list of str
    """
    lines = []
    rejected = sum(found.rejected.values())
    if rejected > len(found.masks):
        why = ", ".join(f"{reason}: {n}" for reason, n in sorted(found.rejected.items()))
        lines.append(
            f"{rejected} frames were rejected and only {len(found.masks)} kept ({why}): the "
            "background model may not fit this video"
        )
    areas = np.array([cv2.countNonZero(m) for _, m in found.masks], float)
    if len(areas) > 2:
        steps = np.maximum(areas[1:], 1) / np.maximum(areas[:-1], 1)
        jumps = int(((steps > SIZE_STEP) | (steps < 1 / SIZE_STEP)).sum())
        if jumps > JUMPY * len(steps):
            lines.append(
                f"the silhouettes' sizes jump by over {SIZE_STEP:g} times in {jumps} of "
                f"{len(steps)} steps between kept frames: they may not all be the walker"
            )
    return lines


PREVIEW_FORMATS = (".png", ".jpg", ".jpeg", ".mp4")


def check_preview(out: Path) -> None:
    """Refuse, before any work, a preview that :func:`write_preview` could not write."""
    if Path(out).suffix.lower() not in PREVIEW_FORMATS:
        raise SegmentError(
            f"cannot write the preview {out}: give an image (.png, .jpg) or a video (.mp4)"
        )
    output_target(out)


def _write_masks(found: Segmented, folder: Path) -> None:
    """The masks as ``FOLDER/NNNNNN.png``, named by frame index."""
    for index, mask in found.masks:
        (folder / f"{index:06d}.png").write_bytes(encode_png(mask))


def write_preview(source: Path, found: Segmented, out: Path, tiles: int = 8) -> None:
    """The masks over the frames they came from, in red: ``out`` ending in .mp4, every frame
    (frames without a walker as they are); otherwise an image (.png, .jpg) of ``tiles`` evenly
    spaced frames with a walker side by side. Written atomically, checked."""
    check_preview(out)
    masks = dict(found.masks)
    out = Path(out)
    video = out.suffix.lower() == ".mp4"
    wanted = set(np.linspace(0, len(found.masks) - 1, min(tiles, len(found.masks))).astype(int))
    keep = {found.masks[i][0] for i in wanted}

    def overlaid():
        for index, img in enumerate(read_frames(source)):
            if not video and index not in keep:
                continue
            if index in masks:
                img = img.copy()
                body = masks[index] > 0
                img[body] = (0.4 * img[body] + [0, 0, 153]).astype(np.uint8)
            yield img

    if video:
        write_mp4(out, overlaid())
        return
    ok, buf = cv2.imencode(out.suffix.lower(), np.hstack(list(overlaid())))
    if not ok:
        raise SegmentError(f"cannot write {out}: OpenCV could not encode the image")
    atomic_write(out, buf.tobytes())


def segment_to_folder(
    source: Path, out: Path, preview: Path | None = None, **options
) -> tuple[Segmented, int]:
    """``gait segment``: :func:`segment` ``source`` (``options`` are its keywords) and write the
    silhouettes into ``out`` (and the preview), holding both outputs' locks throughout, so a
    second run into the same folder is refused instead of mixing its frames in. Both outputs are
    checked before the video is read, and written all or nothing: when the preview cannot be
    written, no silhouette folder is left either. Returns what was found and how many masks were
    written."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SegmentError(f"{out} exists and is not an empty folder; give a new one")
    if preview is not None:
        check_preview(preview)
    with OutputLock(out), OutputLock(preview) if preview is not None else nullcontext():
        found = segment(source, **options)
        with atomic_folder(out) as tmp:
            _write_masks(found, tmp)
            if preview is not None:
                write_preview(source, found, preview)
    return found, len(found.masks)
