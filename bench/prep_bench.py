"""Throughput of `gait prep casia-b` against the PNG decode-only bound, and pack size.

On a `gait synth` tree (default: 8 subjects x 110 sequences x 30 frames = 26,400 frames, made
once into build/bench/raw), with the page cache warmed first:

* decode-only bound: every frame read with `cv2.imread(path, cv2.IMREAD_GRAYSCALE)` and nothing
  else, one process, one OpenCV thread;
* `run_prep` with 1 worker (everything in this process: read, normalize, compress, write) and
  with 2 workers (two reader/normalizer processes + this process as the single writer);
* a naive baseline in the style of OpenGait's pretreatment: the literal steps
  (tests/reference.py) and one pickle per sequence, one process;
* pack size against the raw uint8 size of its frames (N x S x S bytes);
* the writer's ingest ceiling: one worker's rate (read, normalize and compress every sequence in
  this process, as a `gait prep` worker does), then the writer on its own, handed those results
  already made (pickled, as the workers send them) over and over until it has --writer-frames
  frames: it unpickles each, appends it (direct chunk writes), writes its journal line, commits
  every two seconds and closes the pack, as `run_prep` does. Their ratio is how many workers the
  one writer can feed. The same for the writer before the workers compressed (handed frames,
  compressing them through h5py) against a worker that reads and normalizes only.

Each configuration runs --repeats times, interleaved, and the medians are reported.

    python bench/prep_bench.py [--subjects 8] [--frames 30] [--writer-frames 200000]

Prints a table and writes bench/results/prep_bench.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from gaitprep import prep
from gaitprep.chunks import encode_frames
from gaitprep.layout import CASIA_B, discover
from gaitprep.pack import CHUNK_FRAMES, Pack, PackWriter
from gaitprep.prep import PrepJob, journal_entry, run_prep, sequence_meta
from gaitprep.process import Params, process_sequence

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


def worker_rates(seqs, raw: Path) -> tuple[float, float, list[bytes], list[bytes]]:
    """One worker in this process: frames read per second when it reads and normalizes every
    sequence, and when it also compresses them for direct chunk writes (gzip); and both sets of
    results pickled, as a worker sends them to the writer."""
    params = Params()
    t0 = time.perf_counter()
    plain = [process_sequence(raw, s, params) for s in seqs]
    t1 = time.perf_counter()
    encoded = [replace(r, frames=encode_frames(r.frames, "gzip")) for r in plain]
    t2 = time.perf_counter()
    read = sum(r.read for r in plain)
    pickled = [[pickle.dumps(r, pickle.HIGHEST_PROTOCOL) for r in rs] for rs in (plain, encoded)]
    return read / (t1 - t0), read / (t2 - t0), *pickled


def writer_rate(seqs, pickled: list[bytes], out: Path, frames: int, direct: bool) -> float:
    """The writer alone: ``pickled`` results, over and over until ``frames`` frames, unpickled,
    appended to a gzip pack, journalled, committed every COMMIT_SECONDS and closed, as
    `run_prep` does (its workers' side already done); frames written per second."""
    writer = PackWriter(out, Params().size, "gzip", direct=direct)
    log = out.with_name(out.name + ".jsonl").open("w", encoding="utf-8")
    t0 = last = time.perf_counter()
    i = 0
    while writer.count < frames:
        for seq, blob in zip(seqs, pickled, strict=True):
            res = pickle.loads(blob)
            row = (
                writer.append(sequence_meta(seq), res.frames, res.frame_source, crc=res.crc)
                if len(res.frames)
                else None
            )
            log.write(json.dumps(journal_entry(i, seq, res, row), ensure_ascii=False) + "\n")
            i += 1
            if time.perf_counter() - last > prep.COMMIT_SECONDS:
                writer.flush(whole_chunks=True)
                log.flush()
                os.fsync(log.fileno())
                last = time.perf_counter()
    log.close()
    writer.close()
    rate = writer.count / (time.perf_counter() - t0)
    out.unlink()
    Path(log.name).unlink()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--raw", type=Path, default=Path("build/bench/raw"))
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration (median)")
    ap.add_argument(
        "--writer-frames", type=int, default=200_000, help="frames per writer-ceiling run"
    )
    ap.add_argument("--json", type=Path, default=Path("bench/results/prep_bench.json"))
    args = ap.parse_args()

    make_tree(args.raw, args.subjects, args.frames)
    seqs = discover(args.raw, CASIA_B)
    paths = [str(args.raw / s.folder / f) for s in seqs for f in s.files]
    for p in paths:  # warm the page cache so that every row reads from memory
        Path(p).read_bytes()
    out = Path(tempfile.mkdtemp(prefix="prep-bench-")) / "bench.h5"

    # The machine is noisy: interleave the configurations and report medians of --repeats runs.
    names = ("bound", "naive", "one", "two", "worker_plain", "worker", "writer_h5py", "writer")
    runs: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(args.repeats):
        runs["bound"].append(decode_only(paths))
        runs["naive"].append(naive_rate(seqs, args.raw, out.parent / "naive"))
        fps, manifest = prep_rate(args.raw, out, 1)
        runs["one"].append(fps)
        runs["two"].append(prep_rate(args.raw, out, 2)[0])
        plain_fps, worker_fps, plain, encoded = worker_rates(seqs, args.raw)
        runs["worker_plain"].append(plain_fps)
        runs["worker"].append(worker_fps)
        writer_out = out.parent / "writer.h5"
        runs["writer_h5py"].append(writer_rate(seqs, plain, writer_out, args.writer_frames, False))
        runs["writer"].append(writer_rate(seqs, encoded, writer_out, args.writer_frames, True))
        del plain, encoded
    med = {k: statistics.median(v) for k, v in runs.items()}
    bound, naive, one, two = (med[k] for k in ("bound", "naive", "one", "two"))
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
    kept = manifest["frames"]["kept"]
    writer_frames = math.ceil(args.writer_frames / kept) * kept
    fed, fed_before = med["writer"] / med["worker"], med["writer_h5py"] / med["worker_plain"]
    print(
        f"\nwriter ingest ceiling: the writer alone, {writer_frames} frames "
        f"({math.ceil(writer_frames / CHUNK_FRAMES)} chunks) a run, gzip"
    )
    print(f"{'':50} {'frames/s':>9} {'chunks/s':>9}")
    ceiling_rows = [
        ("writer, handed compressed frames (direct chunks)", med["writer"]),
        ("writer, handed frames, compressing (h5py; before)", med["writer_h5py"]),
        ("one worker: read + normalize + compress", med["worker"]),
        ("one worker: read + normalize (before)", med["worker_plain"]),
    ]
    for name, fps in ceiling_rows:
        chunks = f"{fps / CHUNK_FRAMES:>9.0f}" if name.startswith("writer") else ""
        print(f"{name:50} {fps:>9.0f} {chunks}")
    print(
        f"the writer can feed {fed:.0f} workers (target: 32) at today's per-worker rate "
        f"({med['worker']:.0f} frames/s); before, when it compressed: {fed_before:.1f}"
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
        "worker_fps": round(med["worker"], 1),
        "worker_fps_no_compression": round(med["worker_plain"], 1),
        "writer_fps_direct": round(med["writer"], 1),
        "writer_chunks_per_s_direct": round(med["writer"] / CHUNK_FRAMES, 1),
        "writer_fps_h5py": round(med["writer_h5py"], 1),
        "writer_frames_per_run": writer_frames,
        "workers_fed": round(fed, 1),
        "workers_fed_before": round(fed_before, 2),
        "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
