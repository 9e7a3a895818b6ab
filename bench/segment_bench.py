"""Does `gait segment` find the walker when the camera misbehaves? One condition at a time.

For every condition below, ``--videos`` videos are rendered by `gait synth video` (subjects 1,
2, 3, ... in nm, bg, cl at views 90, 54, 126 in turn; ``--empty`` frames of the empty scene,
then ``--frames`` of the walk; the condition's options, the others at their defaults: a
swaying shrub, noise σ 3, the lighting wobbling ±6 %), written as mp4 and segmented by each
method with ``--learn-frames``:

* ``adaptive``: `gait segment`'s default (gaitprep/segment.py);
* ``mog2``, ``knn``: `gait segment --method mog2 / knn`, OpenCV's subtractors learning at 0.001
  after the learned frames, as `gait segment` did before the adaptive model (the walker stage,
  its shadow and person checks included, is the same for every method);
* ``mog2-own``, ``knn-own``: the same subtractors learning every frame at their own rate (a
  plain MOG2 or KNN that keeps learning).

Then, against the true masks:

* **mean IoU**: over every frame that shows the walker, the intersection over union of the mask
  written for it and the true mask (0 where no mask was written);
* **IoU < 0.5**: the share of those frames whose IoU is below 0.5 (a frame lost or badly cut);
* **false walkers**: the empty frames after the learned ones that were given a mask, of how many;
* **rejected**: the frames the method refused (a change of the whole scene, a "walker" that
  covers most of the frame or does not look like a person), of every frame read.

The last row, ``held-out``, is a scene made here, apart from `gait synth video`: a walk of
`gait synth` composited onto a scene of random stripes and blotches, with camera noise σ 4, a
swaying pole, the walker's shadow and the brightness rising 20 % over the clip.

    OMP_NUM_THREADS=1 python bench/segment_bench.py [--videos 3] [--size 160x120]
        [--methods adaptive mog2 ...] [--conditions plain held-out ...]

Prints a table and writes bench/results/segment_bench.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import cv2
import numpy as np

from gaitprep.segment import SegmentError, segment, write_mp4
from gaitprep.synth.artifacts import Artifacts
from gaitprep.synth.sequence import SequenceSpec, render_sequence
from gaitprep.synth.video import Conditions, render_video

ROOT = Path(__file__).resolve().parents[1]
#: Each condition's options of `gait synth video` (the others at their defaults).
CONDITIONS = {
    "plain": {},
    "drift +20 %": {"drift": 0.2},
    "drift +40 %": {"drift": 0.4},
    "drift -30 %": {"drift": -0.3},
    "1 exposure jump": {"jumps": 1},
    "3 exposure jumps": {"jumps": 3},
    "colour drift 0.2": {"colour_drift": 0.2},
    "noise 8": {"noise": 8.0},
    "noise 15": {"noise": 15.0},
    "contrast 0.4": {"contrast": 0.4},
    "contrast 0.25": {"contrast": 0.25},
    "shadow 0.3": {"shadow": 0.3},
    "shadow 0.5": {"shadow": 0.5},
    "distractors 3": {"distractors": 3},
    "1 lamp": {"lamps": 1},
    "3 lamps": {"lamps": 3},
    "all of it": {"drift": 0.2, "jumps": 1, "noise": 6.0, "shadow": 0.4, "distractors": 3},
}
RECORDINGS = [("nm", 90), ("bg", 54), ("cl", 126)]
#: The methods compared (see the module's docstring), as segment()'s keywords.
METHODS = {
    "adaptive": {"method": "adaptive"},
    "mog2": {"method": "mog2"},
    "knn": {"method": "knn"},
    "mog2-own": {"method": "mog2", "learning_rate": -1},
    "knn-own": {"method": "knn", "learning_rate": -1},
}


def held_out_video(walk: np.ndarray, empty: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A scene made apart from `gait synth video`: ``walk`` (true masks [T, H, W]) after
    ``empty`` empty frames, as BGR video and masks; see the module's docstring."""
    rng = np.random.default_rng([seed, 99])
    masks = np.concatenate([np.zeros((empty, *walk.shape[1:]), np.uint8), walk])
    n, h, w = masks.shape
    y, x = np.mgrid[0:h, 0:w]
    scene = np.full((h, w, 3), 120.0)
    for _ in range(6):  # stripes at random angles and frequencies
        angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.02, 0.15), rng.uniform(0, 6)
        wave = np.sin(freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
        scene += rng.uniform(4, 12) * wave[..., None] * rng.uniform(0.5, 1.0, 3)
    blotches = cv2.GaussianBlur(rng.normal(0, 60, (h, w, 3)), (0, 0), 3)
    scene += blotches
    body = rng.uniform(50, 90, 3) + cv2.GaussianBlur(rng.normal(0, 20, (h, w, 3)), (0, 0), 1.5)
    out = np.empty((n, h, w, 3), np.uint8)
    for t, m in enumerate(masks):
        img = scene.copy()
        lean = 0.04 * np.sin(2 * np.pi * t / 17)
        top = (int(0.2 * w + lean * h), int(0.1 * h))
        cv2.line(img, (int(0.2 * w), h - 1), top, (60, 60, 60), max(2, w // 60))
        rows = np.flatnonzero(m.any(1))
        if rows.size:  # the silhouette laid on the ground from the feet, to the left
            f = rows[-1]
            shadow = cv2.warpAffine(
                m, np.float32([[1, 0.7, -0.7 * f], [0, 0.25, 0.75 * f]]), (w, h)
            )
            img[shadow > 0] *= 0.6
        img[m > 0] = body[m > 0]
        img = img * (1 + 0.2 * t / (n - 1)) + rng.normal(0, 4, img.shape)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out, masks


def score(found, masks: np.ndarray, learned: int) -> dict:
    """Per-frame IoU on the frames with a walker and the false walkers among the empty frames
    after the ``learned`` ones."""
    got = dict(found.masks) if found is not None else {}
    ious, false, empty = [], 0, 0
    for t, m in enumerate(masks):
        if t < learned:
            continue
        mask = got.get(t)
        if not m.any():
            empty += 1
            false += mask is not None
            continue
        true = m > 0
        mine = mask > 0 if mask is not None else np.zeros_like(true)
        ious.append((true & mine).sum() / (true | mine).sum())
    return {"ious": ious, "false": false, "empty": empty}


def run(args) -> dict:
    size = tuple(int(v) for v in args.size.lower().split("x"))
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    videos = {}
    for name, options in CONDITIONS.items():
        if args.conditions and name not in args.conditions:
            continue
        for i in range(args.videos):
            condition, view = RECORDINGS[i % len(RECORDINGS)]
            video, masks = render_video(
                i + 1, condition, 1, view, args.frames, size, args.seed, args.empty,
                Conditions(**options),
            )  # fmt: skip
            videos.setdefault(name, []).append((video, masks))
    for i in range(args.videos if not args.conditions or "held-out" in args.conditions else 0):
        condition, view = RECORDINGS[i % len(RECORDINGS)]
        spec = SequenceSpec(
            "casia-b", i + 11, condition, 1, view, args.frames, *size, args.seed, Artifacts.none()
        )
        videos.setdefault("held-out", []).append(
            held_out_video(render_sequence(spec), args.empty, args.seed + i)
        )
    rows = []
    for name, clips in videos.items():
        for method in args.methods:
            ious, false, empty, rejected, read, seconds = [], 0, 0, 0, 0, 0.0
            for k, (video, masks) in enumerate(clips):
                path = work / f"{k}.mp4"
                write_mp4(path, video)
                t0 = time.perf_counter()
                try:
                    found = segment(path, learn_frames=args.learn, **METHODS[method])
                except SegmentError:
                    found = None
                seconds += time.perf_counter() - t0
                s = score(found, masks, args.learn)
                ious += s["ious"]
                false += s["false"]
                empty += s["empty"]
                read += len(masks)
                rejected += sum(getattr(found, "rejected", {}).values()) if found else 0
            ious = np.array(ious)
            rows.append(
                {
                    "condition": name,
                    "method": method,
                    "mean_iou": round(float(ious.mean()), 3),
                    "below_half": round(float((ious < 0.5).mean()), 3),
                    "false_walkers": false,
                    "empty_frames": empty,
                    "rejected": rejected,
                    "frames": read,
                    "ms_per_frame": round(1000 * seconds / read, 2),
                }
            )
            r = rows[-1]
            print(
                f"{name:18} {method:9} {r['mean_iou']:>8.3f} {r['below_half']:>9.3f} "
                f"{false:>5} / {empty:<4} {rejected:>5} / {read:<5} {r['ms_per_frame']:>7.2f}",
                flush=True,
            )
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--videos", type=int, default=3, help="videos per condition")
    ap.add_argument("--size", default="160x120")
    ap.add_argument("--frames", type=int, default=40, help="frames of the walk")
    ap.add_argument("--empty", type=int, default=30, help="frames of the empty scene first")
    ap.add_argument("--learn", type=int, default=10, help="gait segment --learn-frames")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument(
        "--conditions", nargs="+", choices=[*CONDITIONS, "held-out"], help="default: all"
    )
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "segment")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "segment_bench.json")
    args = ap.parse_args()
    print(
        f"{args.videos} videos per condition, {args.size}, {args.empty} empty + {args.frames} "
        f"walk frames, --learn-frames {args.learn}"
    )
    print(
        f"{'condition':18} {'method':9} {'mean IoU':>8} {'IoU < 0.5':>9} {'false walkers':>12} "
        f"{'rejected':>13} {'ms/frame':>7}"
    )
    result = run(args)
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("work", "json")}
    result = {"settings": settings, "machine": platform.processor() or platform.machine(), **result}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
