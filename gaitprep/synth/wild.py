"""``gait synth gait3d`` and ``gait synth grew``: the synthetic walkers filmed in the wild.

The walkers are those of ``gait synth casia-b`` (:mod:`body`, :mod:`clothing`, :mod:`geometry`,
:mod:`raster`, :mod:`artifacts`); what changes is how they are filmed, sequence by sequence:

* **cameras**: a pool of cameras per tree, each at its own height (2–5 m, looking down at the
  walkway) and distance (4–14 m), with its own pixel scale (a 1.70 m person at that distance is
  45–150 px tall), so silhouettes differ in size and in the angle they are seen from;
* **paths**: any heading (the view angle is uniform over 360°), curved (radius 6 m or more, either
  way), at a speed that drifts within the sequence (±15 % around the walker's own, which itself
  varies by ±10 % from one sequence to the next); the walker's size changes with its distance;
* **occlusion**: with :attr:`Scene.person` probability another person crosses between the camera
  and the walker, with :attr:`Scene.thing` probability a scene object stands in the way (a low
  counter, bench or car hiding the legs, or a pillar hiding a vertical strip); what they hide is
  cut out of the silhouette (the segmenter separates people, as Gait3D's and GREW's do);
* **segmentation**: the mask is made at 40–100 % of the camera's resolution and scaled back
  (blobby outlines), then the :mod:`artifacts` of the sequence (speckle, ragged edges, holes,
  blobs, empty frames, a ground shadow, a short sequence) act on the walker's box.

Each sequence is a pure function of its :class:`WildSpec`; the tree's plan (who walks where, the
split, the probes, GREW's sequence names) is a pure function of the :class:`WildJob`, so the same
job gives the same bytes whatever the number of workers. The trees are written as
:mod:`writer` writes CASIA-B's: one hidden temporary folder per sequence renamed into place,
the job recorded in ``.gait-synth.json``, resumable, locked while written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from joblib import Parallel, delayed

from gaitprep.files import OutputLock, atomic_write, encode_png
from gaitprep.normalize import normalize_frame
from gaitprep.synth import artifacts as art
from gaitprep.synth.body import sample_subject
from gaitprep.synth.camera import Camera, to_world, walk_axes
from gaitprep.synth.clothing import outfit_for
from gaitprep.synth.geometry import pose
from gaitprep.synth.raster import rasterize
from gaitprep.synth.sequence import FPS, GENERATOR, draw_shadow
from gaitprep.synth.writer import PNG_PARAMS, SynthError, prepare_root, write_marker

WILD_DATASETS = ("gait3d", "grew")
#: Gait3D's silhouettes folder and partition file under ``OUT``; GREW's answers for its probes.
GAIT3D_FRAMES, GAIT3D_PARTITION = "2D_Silhouettes", "Gait3D.json"
GREW_ANSWERS = "probe_answers.csv"
GREW_SIZE = 64  # GREW ships 64 x 64 frames, cropped and centred
#: Population ids of the people who cross in front of a walker (never a subject of a tree).
PASSER_BASE = 1_000_000
#: What a walker wears in one sequence: (condition, chance); bags and coats are the subject's own.
WARDROBE = (("nm", 0.7), ("bg", 0.2), ("cl", 0.1))


@dataclass(frozen=True)
class Scene:
    """Chances that a sequence is occluded: by a passing person, by a scene object."""

    person: float = 0.3
    thing: float = 0.35

    def as_dict(self) -> dict[str, float]:
        return {"person": self.person, "thing": self.thing}


@dataclass(frozen=True)
class WildSpec:
    """Everything that determines one in-the-wild sequence's frames."""

    dataset: str  # "gait3d" or "grew"
    walker: int  # population id: sample_subject(seed, walker)
    index: int  # the sequence's number in the tree's plan: its own random streams
    camera: int  # the camera of the tree's pool that films it
    condition: str  # "nm", "bg" or "cl"
    outfit_seq: int  # which bag or coat (1 or 2)
    frames: int
    seed: int = 0
    artifacts: art.Artifacts = field(default_factory=art.Artifacts)
    scene: Scene = field(default_factory=Scene)

    def seed_sequence(self, stream: int) -> np.random.SeedSequence:
        """Independent streams: 0 the path and the occluders, 1 the artifacts."""
        return np.random.SeedSequence(
            [self.seed, 7, stream, zlib.crc32(self.dataset.encode()), self.index]
        )


@dataclass(frozen=True)
class WildCamera:
    """One camera of a tree's pool: height (m), distance to its walkway (m), pixels per metre
    at that distance (``focal / distance``)."""

    height: float
    distance: float
    focal: float

    @property
    def pitch(self) -> float:
        """Degrees down, so that the optical axis meets the walkway at 1 m above the ground."""
        return float(np.degrees(np.arctan2(self.height - 1.0, self.distance)))


def camera_for(seed: int, dataset: str, k: int) -> WildCamera:
    """Camera ``k`` of the pool of ``dataset``'s trees made with ``seed``."""
    rng = np.random.default_rng([seed, 8, zlib.crc32(dataset.encode()), k])
    height = rng.uniform(2.0, 5.0)
    distance = rng.uniform(4.0, 14.0)
    person_px = float(np.exp(rng.uniform(np.log(45), np.log(150))))
    return WildCamera(height, distance, focal=person_px * distance / 1.70)


# --- one sequence --------------------------------------------------------------------------------


def _path(spec: WildSpec, subject, rng, depth: float):
    """Gait phase [T], per-frame walk axes [T, 3, 3] and pelvis positions [T, 3] of a curved walk
    at a drifting speed, its middle at ``depth`` metres in front of the camera."""
    t = np.arange(spec.frames) / FPS
    speed = np.exp(rng.normal(0.0, 0.1)) * (
        1 + rng.uniform(0, 0.15) * np.sin(2 * np.pi * t / rng.uniform(1.5, 4) + rng.uniform(0, 6.3))
    )
    rate = 0.5 * subject.cadence * speed / FPS  # cycles per frame
    phase = rng.uniform(0.0, 1.0) + np.concatenate([[0.0], np.cumsum(rate[:-1])])
    walked = 2.0 * subject.step_length * (phase - phase[0])
    walked -= walked[len(walked) // 2]
    curvature = rng.uniform(-1 / 6, 1 / 6)  # 1/m: radius 6 m or more
    view = rng.uniform(0.0, 360.0) + np.degrees(curvature * walked)
    axes = np.stack([walk_axes(v) for v in view])
    step = np.diff(walked, prepend=walked[0])[:, None] * axes[:, 0]
    track = np.cumsum(step, 0)
    track -= track[len(track) // 2]
    centre = np.array([rng.normal(0.0, 0.1 * depth), 0.0, depth])
    return phase, axes, centre + track


def _passer(spec: WildSpec, rng, origin: np.ndarray):
    """Another person who crosses the line of sight to the walker at a random frame, at 40–80 %
    of its distance: (figure, axes, origins)."""
    other = sample_subject(spec.seed, PASSER_BASE + spec.index)
    tc = int(rng.integers(spec.frames))
    meet = origin[tc] * rng.uniform(0.4, 0.8)
    meet[1] = 0.0
    view = rng.choice([90.0, 270.0]) + rng.normal(0.0, 25.0)
    axes = walk_axes(view)
    phase = rng.uniform(0, 1) + 0.5 * other.cadence * np.arange(spec.frames) / FPS
    walked = 2.0 * other.step_length * (phase - phase[tc])
    fig = pose(other, outfit_for(spec.seed, other, "nm", 1), phase)
    return fig, np.broadcast_to(axes, (spec.frames, 3, 3)), meet + walked[:, None] * axes[0]


def _thing(rng, origin: np.ndarray, tc: int) -> np.ndarray:
    """The front face of a scene object on the line of sight to the walker at frame ``tc``:
    world corners [4, 3]. A counter, bench or car (low, wide) or a pillar (tall, narrow)."""
    at = origin[tc] * rng.uniform(0.5, 0.85)
    if rng.random() < 0.6:
        width, top = rng.uniform(0.8, 3.0), rng.uniform(0.45, 1.1)
    else:
        width, top = rng.uniform(0.1, 0.3), 3.0
    x, z = at[0] + rng.uniform(-0.3, 0.3) * width, at[2]
    return np.array([[x - width / 2, 0, z], [x + width / 2, 0, z], [x + width / 2, top, z],
                     [x - width / 2, top, z]])  # fmt: skip


def _frame_camera(cam: WildCamera, figs) -> Camera:
    """A camera whose image just holds every figure ``(fig, axes, origin)`` over the whole
    sequence, with a margin: the walkers are never cut by the frame's edge."""
    probe = Camera(0, 0, cam.focal, cam.height, cam.pitch)
    boxes = []
    for fig, axes, origin in figs:
        pts = np.concatenate([fig.capsules.a, fig.capsules.b], 1)
        uv, _ = probe.project(to_world(pts, axes, origin))
        boxes.append(np.concatenate([uv.reshape(-1, 2).min(0), uv.reshape(-1, 2).max(0)]))
    box = np.stack(boxes)
    lo, hi = box[:, :2].min(0), box[:, 2:].max(0)
    pad = 0.4 * cam.focal / cam.distance  # 0.4 m at the walkway: wider than any limb
    w, h = (np.ceil(hi - lo + 2 * pad)).astype(int)
    return Camera(
        int(w), int(h), cam.focal, cam.height, cam.pitch,
        cx_offset=pad - lo[0] - w / 2, cy_offset=pad - lo[1] - h / 2,
    )  # fmt: skip


def _coarse(masks: np.ndarray, q: float) -> None:
    """A segmenter working at ``q`` of the resolution: each mask scaled down and back, in place."""
    h, w = masks.shape[1:]
    small = (max(1, round(w * q)), max(1, round(h * q)))
    for img in masks:
        low = cv2.resize(img, small, interpolation=cv2.INTER_AREA)
        img[:] = np.where(cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR) > 127, 255, 0)


def _hidden(clean: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per frame, the share of the clean silhouette's pixels that ``masks`` lacks."""
    body = clean.reshape(len(clean), -1) > 0
    lost = body & (masks.reshape(len(masks), -1) == 0)
    return lost.sum(1) / np.maximum(body.sum(1), 1)


@dataclass
class WildFrames:
    """One rendered sequence: the walker's box crops (uint8, 0 / 255, each its own size) and,
    per frame, the share of the walker's clean silhouette that an occluder hid."""

    crops: list[np.ndarray]
    occluded: np.ndarray  # float [T]


def render_wild(spec: WildSpec) -> WildFrames:
    """The frames of ``spec``: the walker's detector box in each frame, as Gait3D ships them."""
    subject = sample_subject(spec.seed, spec.walker)
    outfit = outfit_for(spec.seed, subject, spec.condition, spec.outfit_seq)
    cam = camera_for(spec.seed, spec.dataset, spec.camera)
    rng = np.random.default_rng(spec.seed_sequence(0))
    hits = art.draw_hits(spec.artifacts, spec.seed_sequence(1), spec.frames)

    depth = cam.distance * rng.uniform(0.8, 1.2)
    phase, axes, origin = _path(spec, subject, rng, depth)
    origin[:, 2] = np.maximum(origin[:, 2], 2.0)  # never behind or right under the camera
    fig = pose(subject, outfit, phase)
    figs = [(fig, axes, origin)]
    passer = _passer(spec, rng, origin) if rng.random() < spec.scene.person else None
    thing = None
    if rng.random() < spec.scene.thing:
        thing = _thing(rng, origin, int(rng.integers(spec.frames)))
    view = _frame_camera(cam, figs + ([passer] if passer else []))

    clean = rasterize(fig, view, axes, origin)
    masks = clean.copy()
    if hits.sequence["shadow"]:
        draw_shadow(masks, view, fig, axes, origin, hits.params["shadow"])
    if passer is not None:
        other, other_axes, other_origin = passer
        masks[rasterize(other, view, other_axes, other_origin) > 0] = 0
    if thing is not None:
        uv, _ = view.project(thing)
        hide = np.zeros(masks.shape[1:], np.uint8)
        cv2.fillConvexPoly(hide, np.round(uv * 16).astype(np.int32), 255, cv2.LINE_8, 4)
        # A walker the object hides by more than half in most frames would not have been
        # tracked (Gait3D and GREW keep people a tracker followed): such an object is left out.
        if np.median(_hidden(clean, clean & ~hide)) <= 0.5:
            masks[:, hide > 0] = 0
    occluded = _hidden(clean, masks)
    _coarse(masks, float(rng.uniform(0.4, 1.0)))

    crops = []
    for t in range(spec.frames):
        x, y, w, h = cv2.boundingRect(clean[t])
        m = max(2, round(0.04 * h))  # the detector's margin
        x0, y0 = max(x - m, 0), max(y - m, 0)
        img = masks[t, y0 : y + h + m, x0 : x + w + m].copy()
        scale = img.shape[0] / 160.0
        art.apply_frame(img, hits, t, scale)
        crops.append(img)
    if hits.sequence["short"]:
        keep = art.short_keep(hits.params["short"], spec.frames)
        for t in set(range(spec.frames)) - set(range(spec.frames)[keep]):
            crops[t][:] = 0
    return WildFrames(crops, occluded)


def grew_frame(crop: np.ndarray) -> np.ndarray:
    """A crop as GREW ships its frames: cropped to its rows, scaled to 64 high, centred on its
    mass, 64 x 64 (an empty crop: an empty frame, which GREW keeps)."""
    out, _ = normalize_frame(crop, GREW_SIZE, min_sum=0, binarize=True)
    return np.zeros((GREW_SIZE, GREW_SIZE), np.uint8) if out is None else out


# --- the tree ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WildJob:
    """Everything that defines an in-the-wild tree.

    ``subjects`` are population ids; the last ``test`` of them are the test subjects. Each
    training subject (and each Gait3D test subject) walks 2 to ``sequences`` times; a GREW test
    subject walks four times, two gallery sequences and two probes; GREW's ``distractors`` are
    one sequence each of walkers of no subject. ``cameras`` is the size of the camera pool.
    """

    dataset: str
    subjects: tuple[int, ...]
    test: int
    sequences: int
    cameras: int
    distractors: int
    frames: int
    seed: int
    artifacts: art.Artifacts = field(default_factory=art.Artifacts)
    scene: Scene = field(default_factory=Scene)

    def check(self) -> None:
        """Raise ValueError for a job that cannot make a tree with both splits."""
        if self.dataset not in WILD_DATASETS:
            raise ValueError(f"unknown in-the-wild dataset {self.dataset!r}")
        if not 1 <= self.test < len(self.subjects):
            raise ValueError(
                f"--test {self.test} must leave both a training and a test subject among the "
                f"{len(self.subjects)} subjects"
            )
        if self.dataset == "gait3d" and max(self.subjects) > 9999:
            raise ValueError("Gait3D's subject ids have 4 digits: use ids up to 9999")

    def describe(self) -> dict:
        """The arguments as JSON-able data (what the marker file records)."""
        return {
            "generator": GENERATOR,
            "dataset": self.dataset,
            "subjects": list(self.subjects),
            "test": self.test,
            "sequences": self.sequences,
            "cameras": self.cameras,
            "distractors": self.distractors,
            "frames": self.frames,
            "seed": self.seed,
            "artifacts": self.artifacts.as_dict(),
            "scene": self.scene.as_dict(),
        }

    def _spec(self, rng, walker: int, index: int) -> WildSpec:
        u = rng.random()
        condition = "nm" if u < WARDROBE[0][1] else "bg" if u < 1 - WARDROBE[2][1] else "cl"
        return WildSpec(
            self.dataset, walker, index, int(rng.integers(self.cameras)), condition,
            int(rng.integers(1, 3)), self.frames, self.seed, self.artifacts, self.scene,
        )  # fmt: skip

    def plan(self) -> tuple[list[tuple[str, WildSpec]], dict[str, str]]:
        """``(sequences, extras)``: every sequence's folder (relative to the root) and spec, and
        the extra files by name (Gait3D's partition file; GREW's probe answers)."""
        rng = np.random.default_rng([self.seed, 9, zlib.crc32(self.dataset.encode())])
        train, test = self.subjects[: -self.test], self.subjects[-self.test :]
        if self.dataset == "gait3d":
            return self._gait3d(rng, train, test)
        return self._grew(rng, train, test)

    def _gait3d(self, rng, train, test):
        out, probes = [], []
        for sid in self.subjects:
            seen: dict[str, int] = {}
            mine = []
            for _ in range(int(rng.integers(2, max(2, self.sequences) + 1))):
                spec = self._spec(rng, sid, len(out))
                video = f"camid{spec.camera}_videoid{int(rng.integers(5))}"
                n = seen[video] = seen.get(video, -1) + 1
                mine.append(f"{sid:04d}-{video}-seq{n}")
                out.append((f"{GAIT3D_FRAMES}/{sid:04d}/{video}/seq{n}", spec))
            if sid in test:
                probes.append(mine[int(rng.integers(len(mine)))])
        partition = {
            "TRAIN_SET": [f"{s:04d}" for s in train],
            "TEST_SET": [f"{s:04d}" for s in test],
            "PROBE_SET": probes,
        }
        return out, {GAIT3D_PARTITION: json.dumps(partition, indent=2) + "\n"}

    def _grew(self, rng, train, test):
        names: set[str] = set()

        def name() -> str:  # GREW's sequence names: 8 letters and digits
            while True:
                s = "".join(rng.choice(list(ALPHABET), 8))
                if s not in names:
                    names.add(s)
                    return s

        out, answers = [], []
        for i, sid in enumerate(train, start=1):
            for _ in range(int(rng.integers(2, max(2, self.sequences) + 1))):
                out.append((f"train/{i:05d}/{name()}", self._spec(rng, sid, len(out))))
        for i, sid in enumerate(test, start=1):
            for _ in range(2):
                out.append((f"test/gallery/{i:05d}/{name()}", self._spec(rng, sid, len(out))))
            for _ in range(2):
                video = name()
                answers.append((video, f"{i:05d}"))
                out.append((f"test/probe/{video}", self._spec(rng, sid, len(out))))
        for k in range(self.distractors):
            walker = max(self.subjects) + 1 + k
            out.append((f"distractor/{name()}", self._spec(rng, walker, len(out))))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["videoId", "subject"])
        writer.writerows(sorted(answers))
        return out, {GREW_ANSWERS: text.getvalue()}


ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def write_wild_sequence(root: Path, folder: str, spec: WildSpec) -> dict:
    """Render ``spec`` and write its frames to ``root/folder`` (via a hidden temporary folder)."""
    final = root / folder
    if final.is_dir():
        return {"frames": 0, "skipped": 1}
    crops = render_wild(spec).crops
    frames = [grew_frame(c) for c in crops] if spec.dataset == "grew" else crops
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for i, img in enumerate(frames, start=1):
        (tmp / f"{i:05d}.png").write_bytes(encode_png(img, PNG_PARAMS))
    os.replace(tmp, final)
    return {"frames": len(frames), "skipped": 0}


def synthesize_wild(root: Path, job: WildJob, workers: int = 1, overwrite: bool = False,
                    progress=None) -> dict:  # fmt: skip
    """Write the tree of ``job`` under ``root``; returns this run's statistics (not written).

    As :func:`gaitprep.synth.writer.synthesize`: locked, resumable, refused on a non-synth folder
    or one made with other arguments (unless ``overwrite``), byte-identical for any ``workers``.
    ``progress`` wraps the stream of per-sequence results.
    """
    try:
        job.check()
    except ValueError as e:
        raise SynthError(str(e)) from None
    root = Path(root)
    sequences, extras = job.plan()
    with OutputLock(root):
        prepare_root(root, job, overwrite)
        start = time.perf_counter()
        if workers <= 1:
            results = (write_wild_sequence(root, f, s) for f, s in sequences)
        else:
            results = Parallel(n_jobs=workers, return_as="generator_unordered")(
                delayed(write_wild_sequence)(root, f, s) for f, s in sequences
            )
        if progress is not None:
            results = progress(results, len(sequences))
        totals = {"sequences": len(sequences), "frames": 0, "skipped": 0}
        for r in results:
            totals["frames"] += r["frames"]
            totals["skipped"] += r["skipped"]
        for name, text in extras.items():
            atomic_write(root / name, text)
        wall = time.perf_counter() - start
        write_marker(root, job, complete=True)
    totals["seconds"] = round(wall, 3)
    totals["frames_per_second"] = round(totals["frames"] / wall, 1) if wall > 0 else 0.0
    return totals
