"""Throughput of `gait synth casia-b`: frames/s with 1 and 2 workers, end to end.

Each row runs the real command (`gait synth casia-b OUT --subjects N --frames F --workers W`) in
a subprocess into a fresh temporary folder and times it from start to exit, so process start-up,
rendering, PNG encoding and file writes all count. The in-process render rate (no encoding, no
disk, one process) is measured in the same run as a reference.

    python bench/synth_bench.py [--subjects 24] [--frames 30]

Prints a table and writes bench/results/synth_bench.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gaitprep.synth import Artifacts, SequenceSpec, render_sequence


def cli_rate(subjects: int, frames: int, workers: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="synth-bench-")) / "raw"
    gait = [sys.executable, "-m", "gaitcli", "synth", "casia-b", str(out)]
    args = ["--subjects", str(subjects), "--frames", str(frames), "--workers", str(workers)]
    t0 = time.perf_counter()
    subprocess.run(gait + args, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    n = sum(1 for _ in out.rglob("*.png"))
    shutil.rmtree(out.parent)
    return {"workers": workers, "frames": n, "seconds": round(wall, 2), "fps": round(n / wall, 1)}


def render_rate(frames: int, sequences: int = 40) -> float:
    t0 = time.perf_counter()
    for i in range(sequences):
        render_sequence(
            SequenceSpec("casia-b", 1 + i, "nm", 1, 18 * (i % 11), frames, 320, 240, 0, Artifacts())
        )
    return sequences * frames / (time.perf_counter() - t0)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    ap.add_argument("--subjects", type=int, default=24)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--json", type=Path, default=Path("bench/results/synth_bench.json"))
    args = ap.parse_args()

    render = render_rate(args.frames)
    rows = [cli_rate(args.subjects, args.frames, w) for w in (1, 2)]
    speedup = rows[1]["fps"] / rows[0]["fps"]
    print(f"gait synth casia-b --subjects {args.subjects} --frames {args.frames} (end to end)")
    print(f"{'workers':>7} {'frames':>8} {'seconds':>8} {'frames/s':>9} {'vs render-only':>15}")
    for r in rows:
        print(
            f"{r['workers']:>7} {r['frames']:>8} {r['seconds']:>8.2f} {r['fps']:>9.0f} "
            f"{r['fps'] / render:>15.2f}"
        )
    print(
        f"render only (1 process, no PNG, no disk): {render:.0f} frames/s; "
        f"2 workers vs 1: {speedup:.2f}x"
    )
    result = {
        "subjects": args.subjects,
        "frames_per_sequence": args.frames,
        "rows": rows,
        "render_only_fps": round(render, 1),
        "speedup_2_vs_1": round(speedup, 3),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
