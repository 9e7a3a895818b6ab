"""Cost of protocol evaluation on random embeddings, against this machine's matmul rate.

* CASIA-B at real test scale: 50 subjects x 110 sequences = 5,500 embeddings of 62 x 256, the
  full casia-b-lt protocol (3 groups x 11 probe views x 10 gallery views).
* OU-MVLP scale: 5,154 test subjects; one probe-view x gallery-view cell at full size (5,154
  probes against 5,154 gallery sequences, 62 x 256), and the whole protocol (14 x 13 cells,
  144,312 embeddings) with --full, else extrapolated from the cell.

Each case runs in a fresh process so that its peak resident memory is its own; the distance
blocks are capped by --max-memory. The fraction of the compute bound is the distance FLOPs per
second over the float32 matmul rate measured in the same run (on --device). ``--baseline DIR``
also runs every case against another source tree (a copy of gaitprep/ and gaittrain/, e.g. from
before a change) in the same run, alternating with this one, and prints the speed-up.

    python bench/eval_bench.py [--max-memory BYTES] [--device cuda] [--baseline DIR]

Prints a table and writes bench/results/eval_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

PARTS, DIM = 62, 256


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def casia_case(max_memory: int, device: str) -> dict:
    from gaittrain.evaluation.protocol import evaluate, load_eval_protocol

    rng = np.random.default_rng(0)
    views = [f"{v:03d}" for v in range(0, 181, 18)]
    recordings = [("nm", f"{i:02d}") for i in range(1, 7)] + [
        ("bg", "01"),
        ("bg", "02"),
        ("cl", "01"),
        ("cl", "02"),
    ]
    keys = [(f"{s:03d}", c, q, v) for s in range(75, 125) for c, q in recordings for v in views]
    emb = {k: rng.standard_normal((PARTS, DIM), dtype=np.float32) for k in keys}
    t0 = time.perf_counter()
    evaluate(emb, load_eval_protocol("casia-b-lt"), max_memory=max_memory, device=device)
    seconds = time.perf_counter() - t0
    # per group: 11 probe views x 10 gallery views; 100 probes x 200 gallery sequences a cell
    flops = 3 * 11 * 10 * 100 * 200 * PARTS * DIM * 2
    return {"case": "CASIA-B (5,500 seq)", "seconds": seconds, "flops": flops}


def ou_cell_case(max_memory: int, device: str) -> dict:
    from gaittrain.evaluation.metrics import retrieve

    n = 5154
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(n, PARTS, DIM, generator=g).to(device)
    gallery = torch.randn(n, PARTS, DIM, generator=g).to(device)
    ids = np.arange(n)
    sync(device)
    t0 = time.perf_counter()
    retrieve(probe, ids, gallery, ids, max_memory=max_memory)
    seconds = time.perf_counter() - t0
    return {
        "case": "OU-MVLP, one view pair (5,154 x 5,154)",
        "seconds": seconds,
        "flops": n * n * PARTS * DIM * 2,
    }


def ou_full_case(max_memory: int, device: str) -> dict:
    """The whole ou-mvlp protocol on 5,154 test subjects x 14 views x 2 sequences."""
    from gaittrain.evaluation.protocol import evaluate, load_eval_protocol

    rng = np.random.default_rng(0)
    views = [f"{v:03d}" for v in (*range(0, 91, 15), *range(180, 271, 15))]
    keys = [
        (f"{2 * s:05d}", "nm", q, v) for s in range(1, 5155) for q in ("00", "01") for v in views
    ]
    emb = {k: rng.standard_normal((PARTS, DIM), dtype=np.float32) for k in keys}
    t0 = time.perf_counter()
    evaluate(emb, load_eval_protocol("ou-mvlp"), max_memory=max_memory, device=device)
    seconds = time.perf_counter() - t0
    return {
        "case": "OU-MVLP, full protocol (144,312 seq)",
        "seconds": seconds,
        "flops": 14 * 13 * 5154 * 5154 * PARTS * DIM * 2,
    }


def child(case: str, max_memory: int, device: str) -> None:
    cases = {"casia": casia_case, "ou": ou_cell_case, "ou-full": ou_full_case}
    result = cases[case](max_memory, device)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.device(device).type == "cuda":
        result["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def run_case(case: str, args: argparse.Namespace, tree: Path | None) -> dict:
    """One case in a fresh process, importing gaittrain from ``tree`` (None: as installed)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, __file__, "--child", case, "--max-memory", str(args.max_memory)]
    out = subprocess.run(
        [*cmd, "--device", args.device], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--max-memory", default=256 << 20, type=int, help="bytes per distance block")
    ap.add_argument("--device", default="cpu", help="where distances are computed (cpu, cuda)")
    ap.add_argument(
        "--full",
        action="store_true",
        help="also run the whole OU-MVLP protocol (about 30 min, 11 GB)",
    )
    ap.add_argument("--baseline", type=Path, help="another source tree to time in the same run")
    ap.add_argument("--child", choices=["casia", "ou", "ou-full"], help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=Path("bench/results/eval_bench.json"))
    args = ap.parse_args()
    if args.child:
        child(args.child, args.max_memory, args.device)
        return
    gflops = matmul_gflops(args.device)
    here = Path(__file__).resolve().parent.parent
    trees = [("this tree", here)]
    if args.baseline:
        trees.insert(0, ("baseline", args.baseline.resolve()))
    rows = []
    for case in ("casia", "ou", "ou-full") if args.full else ("casia", "ou"):
        for label, tree in trees:  # alternating, so that both see the same machine
            rows.append({"tree": label, **run_case(case, args, tree)})
    baseline = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, torch, numpy; print("
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    base_mb = float(baseline.stdout)
    print(
        f"float32 matmul rate on {args.device}: {gflops:.1f} GFLOP/s; memory cap per block "
        f"{args.max_memory / 2**20:.0f} MB; a bare python+torch process: {base_mb:.0f} MB"
    )
    print(
        f"{'case':40} {'tree':9} {'seconds':>8} {'peak MB':>8} {'GFLOP/s':>8} {'of bound':>9}"
        + (f" {'speed-up':>8}" if args.baseline else "")
    )
    before = {}
    for r in rows:
        rate = r["flops"] / r["seconds"] / 1e9
        r.update(gflops=rate, fraction=rate / gflops)
        line = (
            f"{r['case']:40} {r['tree']:9} {r['seconds']:>8.1f} {r['peak_mb']:>8.0f} "
            f"{rate:>8.1f} {r['fraction']:>9.1%}"
        )
        if r["tree"] == "baseline":
            before[r["case"]] = r["seconds"]
        elif args.baseline:
            r["speedup"] = before[r["case"]] / r["seconds"]
            line += f" {r['speedup']:>7.2f}x"
        print(line)
    mine = [r for r in rows if r["tree"] == "this tree"]
    ou = mine[1]
    full = mine[2]["seconds"] if args.full else ou["seconds"] * 14 * 13
    if not args.full:
        print(
            f"OU-MVLP full protocol (14 x 13 view pairs), extrapolated from one pair: "
            f"{full / 60:.0f} min (measure it with --full)"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "device": args.device,
                "matmul_gflops": gflops,
                "baseline": str(args.baseline) if args.baseline else None,
                "rows": rows,
                "ou_full_minutes": full / 60,
                "ou_full_measured": args.full,
                "bare_process_mb": base_mb,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
