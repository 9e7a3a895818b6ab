"""How wide are `gait synth` walkers? Ten-band width profile and fill against a real walker.

For each condition (NM, BG, CL) at one view (090 by default), over every frame of every subject
of a pack:

* the frame is a normalized 64 x 64 silhouette (as `gait prep` writes it); a pixel is foreground
  when its value is above 127;
* the rows from the first to the last foreground row are the body; its height is their count;
* the body rows are split into ten equal bands, head (1) to feet (10); a row's width is its
  number of foreground pixels; a band's figure is the mean width of its rows / the body height;
* fill is the foreground share of the whole 64 x 64 frame;

then averaged over frames. The reference is one real CASIA-B walker at view 090 (OpenGait's demo
GIFs through `gait prep`), as measured in issue 10; one person is a thin reference, but the
direction of a difference is clear. The ratio row is synthetic / real.

    python bench/synth_realism.py                      # synth 40 subjects at 090, pack, measure
    python bench/synth_realism.py --pack build/demo/casia-b.h5

Prints a table and writes bench/results/synth_realism.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from gaitprep.pack import Pack

ROOT = Path(__file__).resolve().parents[1]
BANDS = 10
CONDITIONS = {"NM": "nm", "BG": "bg", "CL": "cl"}
#: One real CASIA-B walker, view 090 (issue 10): ten bands head -> feet, then fill.
REAL = {
    "NM": [0.105, 0.105, 0.132, 0.168, 0.204, 0.200, 0.184, 0.186, 0.161, 0.177, 0.163],
    "BG": [0.111, 0.120, 0.238, 0.298, 0.269, 0.217, 0.194, 0.195, 0.179, 0.192, 0.203],
    "CL": [0.107, 0.163, 0.163, 0.223, 0.278, 0.202, 0.187, 0.188, 0.161, 0.182, 0.186],
}


def frame_profile(frame: np.ndarray, bands: int = BANDS) -> np.ndarray | None:
    """``bands`` band widths / body height, then fill, of one frame; None when it is empty.

    Examples
    --------
    >>> f = np.zeros((64, 64), np.uint8); f[10:50, 20:30] = 255
    >>> frame_profile(f, bands=2).round(3).tolist()
    [0.25, 0.25, 0.098]
    """
    fg = frame > 127
    rows = np.flatnonzero(fg.any(axis=1))
    if rows.size == 0:
        return None
    body = fg[rows[0] : rows[-1] + 1]
    height = body.shape[0]
    widths = body.sum(axis=1)
    edges = np.linspace(0, height, bands + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = widths[int(np.floor(lo)) : max(int(np.floor(hi)), int(np.floor(lo)) + 1)]
        out.append(band.mean() / height)
    out.append(fg.mean())
    return np.array(out)


def profiles(pack: Path, view: str) -> dict[str, np.ndarray]:
    """Mean profile per condition group over every frame of that view."""
    sums = {name: np.zeros(BANDS + 1) for name in CONDITIONS}
    counts = dict.fromkeys(CONDITIONS, 0)
    with Pack(pack) as p:
        for i, (_, condition, _, v) in enumerate(p.keys()):
            name = next((n for n, c in CONDITIONS.items() if condition == c), None)
            if name is None or v != view:
                continue
            for frame in p[i]:
                prof = frame_profile(frame)
                if prof is not None:
                    sums[name] += prof
                    counts[name] += 1
    return {n: sums[n] / counts[n] for n in CONDITIONS if counts[n]}


def synth_pack(out: Path, subjects: int, frames: int, seed: int, view: str) -> Path:
    raw, pack = out / "raw", out / "realism.h5"
    shutil.rmtree(raw, ignore_errors=True)  # always this gait's walkers, never an older tree
    gait = [sys.executable, "-m", "gaitcli"]
    common = ["--subjects", str(subjects), "--frames", str(frames), "--seed", str(seed)]
    subprocess.run(
        [*gait, "synth", "casia-b", str(raw), *common, "--views", view, "--overwrite"], check=True
    )
    subprocess.run([*gait, "prep", "casia-b", str(raw), str(pack), "--overwrite"], check=True)
    return pack


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pack", type=Path, help="measure this pack instead of synthesizing one")
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--view", default="090")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "realism")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "synth_realism.json")
    args = ap.parse_args()
    pack = args.pack or synth_pack(args.work, args.subjects, args.frames, args.seed, args.view)
    measured = profiles(pack, args.view)
    head = " ".join(f"{b:>6}" for b in range(1, BANDS + 1))
    print(f"view {args.view}, {pack}: band width / body height (head 1 -> feet 10) and fill")
    print(f"{'':14} {head} {'fill':>6}")
    rows = {}
    for name, prof in measured.items():
        real = np.array(REAL[name])
        ratio = prof / real
        rows[name] = {"synth": prof.round(4).tolist(), "real": REAL[name]}
        rows[name]["ratio"] = ratio.round(3).tolist()
        for label, values in (("real", real), ("gait synth", prof), ("ratio", ratio)):
            cells = " ".join(f"{v:>6.3f}" for v in values)
            print(f"{name + ' ' + label:14} {cells}")
    nm = rows.get("NM")
    if nm:
        bands_ok = all(abs(r - 1) <= 0.20 for r in nm["ratio"][:BANDS])
        fill_ok = abs(nm["ratio"][BANDS] - 1) <= 0.15
        order = [measured[n][BANDS] for n in ("NM", "BG", "CL") if n in measured]
        print(
            f"NM bands within 20 %: {'yes' if bands_ok else 'no'}; NM fill within 15 %: "
            f"{'yes' if fill_ok else 'no'}; BG and CL fill above NM: "
            f"{'yes' if len(order) == 3 and order[1] > order[0] and order[2] > order[0] else 'no'}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"pack": str(pack), "view": args.view, **rows}, indent=1))


if __name__ == "__main__":
    main()
