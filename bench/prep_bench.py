"""Throughput of `gait prep casia-b` against the PNG decode-only bound, and pack size.

On a `gait synth` tree (default: 8 subjects x 110 sequences x 30 frames = 26,400 frames, made
once into build/bench/raw), with the page cache warmed first:

* decode-only bound: every frame read with `cv2.imread(path, cv2.IMREAD_GRAYSCALE)` and nothing
  else, one process, one OpenCV thread;
* `run_prep` with 1 worker (everything in this process: read, normalize, compress, write) and
  with 2 workers (two reader/normalizer processes + this process as the single writer);
* a naive baseline in the style of OpenGait's pretreatment: the literal steps
  (tests/reference.py) and one pickle per sequence, one process;
* pack size against the raw uint8 size of its frames (N x S x S bytes).

Each configuration runs --repeats times, interleaved, and the medians are reported.

    python bench/prep_bench.py [--subjects 8] [--frames 30]

Prints a table and writes bench/results/prep_bench.json.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from gaitprep.layout import CASIA_B, discover
from gaitprep.pack import Pack
from gaitprep.prep import PrepJob, run_prep

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests/reference.py
from tests.reference import reference_normalize  # noqa: E402


def make_tree(root: Path, subjects: int, frames: int) -> None:
    cmd = [
        sys.executable,
        "-m",
        "gaitcli",
        "synth",
        "casia-b",
        str(root),
        "--subjects",
        str(subjects),
        "--frames",
        str(frames),
        "--seed",
        "0",
        "--overwrite",
    ]
    subprocess.run(cmd, check=True, capture_output=True)


def decode_only(paths: list[str]) -> float:
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    for p in paths:
        cv2.imread(p, cv2.IMREAD_GRAYSCALE)
    return len(paths) / (time.perf_counter() - t0)


def naive_rate(seqs, raw: Path, out: Path) -> float:
    """OpenGait-style: literal numpy steps per frame, one pickle file per sequence."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n = 0
    for i, s in enumerate(seqs):
        frames = []
        for f in s.files:
            img = cv2.imread(str(raw / s.folder / f), cv2.IMREAD_GRAYSCALE)
            norm = reference_normalize(img)
            if norm is not None:
                frames.append(norm)
            n += 1
        if frames:
            with open(out / f"{i}.pkl", "wb") as fh:
                pickle.dump(np.stack(frames), fh)
    return n / (time.perf_counter() - t0)


def prep_rate(raw: Path, out: Path, workers: int) -> tuple[float, dict]:
    job = PrepJob(raw=raw, out=out, dataset="casia-b", layout=CASIA_B)
    t0 = time.perf_counter()
    manifest = run_prep(job, workers=workers, overwrite=True)
    return manifest["frames"]["read"] / (time.perf_counter() - t0), manifest


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--raw", type=Path, default=Path("build/bench/raw"))
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration (median)")
    ap.add_argument("--json", type=Path, default=Path("bench/results/prep_bench.json"))
    args = ap.parse_args()

    make_tree(args.raw, args.subjects, args.frames)
    seqs = discover(args.raw, CASIA_B)
    paths = [str(args.raw / s.folder / f) for s in seqs for f in s.files]
    for p in paths:  # warm the page cache so that every row reads from memory
        Path(p).read_bytes()
    out = Path(tempfile.mkdtemp(prefix="prep-bench-")) / "bench.h5"

    # The machine is noisy: interleave the configurations and report medians of --repeats runs.
    runs: dict[str, list[float]] = {"bound": [], "naive": [], "one": [], "two": []}
    for _ in range(args.repeats):
        runs["bound"].append(decode_only(paths))
        runs["naive"].append(naive_rate(seqs, args.raw, out.parent / "naive"))
        fps, manifest = prep_rate(args.raw, out, 1)
        runs["one"].append(fps)
        runs["two"].append(prep_rate(args.raw, out, 2)[0])
    bound, naive, one, two = (statistics.median(runs[k]) for k in ("bound", "naive", "one", "two"))
    with Pack(out) as pack:
        raw_bytes = int(pack.length.sum()) * pack.size**2
    ratio_size = out.stat().st_size / raw_bytes

    rows = [
        ("decode-only bound (cv2.imread)", bound, 1.0),
        ("naive, OpenGait-style (1 process)", naive, naive / bound),
        ("gait prep, 1 worker", one, one / bound),
        ("gait prep, 2 workers", two, two / bound),
    ]
    print(
        f"{len(paths)} frames, {len(seqs)} sequences ({args.raw}); "
        f"medians of {args.repeats} interleaved runs"
    )
    print(f"{'':34} {'frames/s':>9} {'vs bound':>9}")
    for name, fps, r in rows:
        print(f"{name:34} {fps:>9.0f} {r:>9.2f}")
    print(
        f"per worker: {one / bound:.1%} of the decode-only rate with 1 worker, "
        f"{two / 2 / bound:.1%} with 2; 2 workers vs 1: {two / one:.2f}x; "
        f"1 worker vs naive: {one / naive:.2f}x"
    )
    print(
        f"pack: {out.stat().st_size / 1e6:.2f} MB = {ratio_size:.1%} of the raw uint8 frames "
        f"({raw_bytes / 1e6:.1f} MB; {manifest['frames']['kept']} frames kept)"
    )
    result = {
        "frames": len(paths),
        "sequences": len(seqs),
        "decode_fps": round(bound, 1),
        "naive_fps": round(naive, 1),
        "prep_fps_1": round(one, 1),
        "prep_fps_2": round(two, 1),
        "per_worker_vs_decode": round(one / bound, 4),
        "speedup_2_vs_1": round(two / one, 4),
        "pack_bytes": out.stat().st_size,
        "raw_uint8_bytes": raw_bytes,
        "pack_vs_raw": round(ratio_size, 4),
        "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
