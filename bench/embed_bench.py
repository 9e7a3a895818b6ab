"""Cost of embedding every sequence of a pack (``embed_dataset``, the first step of ``gait eval``),
reading in the main process (``num_workers`` 0) against DataLoader worker processes.

A pack and a checkpoint to try it on (a 2-iteration tiny model is enough; the cost does not
depend on the weights)::

    gait synth casia-b /tmp/ev/raw --subjects 10 --frames 30 --workers 2
    gait prep casia-b /tmp/ev/raw /tmp/ev/p.h5 --workers 2
    gait train configs/tiny.yaml --pack /tmp/ev/p.h5 --out /tmp/ev/run --iterations 2 \\
        --train-subjects first:4 --set data.batch.k=2 --set data.workers=0

    python bench/embed_bench.py --pack /tmp/ev/p.h5 --ckpt /tmp/ev/run [--workers 0 2]
        [--baseline DIR]

Every case runs in a fresh process, ``--repeats`` times (the best is reported; the first pass
also warms the page cache). ``--baseline DIR`` also times the ``embed_dataset`` of another
source tree (a copy of gaitprep/ and gaittrain/, e.g. from before a change) in the same run, in
the main process only where its ``embed_dataset`` has no ``num_workers``. The embeddings of every
case are compared bit for bit. Prints a table and writes bench/results/embed_bench.json.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(args: argparse.Namespace) -> None:
    import torch

    from gaittrain.data.dataset import PackDataset
    from gaittrain.evaluation import embed

    device = torch.device(args.device)
    trained = embed.load_model(args.ckpt, device)
    cfg = trained.cfg
    data = PackDataset([args.pack], None, frames=None, height=cfg.data.height, cut=cfg.data.cut)
    workers = args.child_workers
    supported = "num_workers" in inspect.signature(embed.embed_dataset).parameters
    if workers > 0 and not supported:
        print(json.dumps({"skipped": "embed_dataset has no num_workers"}))
        return
    kwargs = {"num_workers": workers} if supported else {}
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        emb = embed.embed_dataset(trained.model, data, device, args.max_frames, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    lengths = [int(data.packs[pi].length[i]) for pi, i in data.items]
    frames = sum(min(n, args.max_frames) if args.max_frames > 0 else n for n in lengths)
    print(
        json.dumps(
            {
                "seconds": min(times),
                "all_seconds": times,
                "sequences": len(lengths),
                "frames": frames,
                "sha256": hashlib.sha256(emb.tobytes()).hexdigest(),
                "source": str(Path(embed.__file__).resolve()),
                "threads": torch.get_num_threads(),
            }
        )
    )


def run_case(args: argparse.Namespace, tree: Path, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # its gaitprep and gaittrain come first
    cmd = [
        sys.executable,
        __file__,
        "--pack",
        str(args.pack),
        "--ckpt",
        str(args.ckpt),
        "--device",
        args.device,
        "--max-frames",
        str(args.max_frames),
        "--repeats",
        str(args.repeats),
        "--child-workers",
        str(workers),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    if out.returncode != 0:
        sys.exit(f"the case {tree} / {workers} workers failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pack", type=Path, required=True)
    ap.add_argument("--ckpt", type=Path, required=True, help="a checkpoint or a run folder")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--max-frames", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--baseline", type=Path, help="another source tree to time in the same run")
    ap.add_argument("--child-workers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/embed_bench.json")
    args = ap.parse_args()
    args.pack, args.ckpt = args.pack.resolve(), args.ckpt.resolve()
    if args.child_workers is not None:
        child(args)
        return
    trees = [("baseline", args.baseline.resolve())] if args.baseline else []
    trees.append(("this tree", ROOT))
    rows = []
    for label, tree in trees:
        for w in args.workers:
            r = run_case(args, tree, w)
            if "skipped" not in r:
                rows.append({"tree": label, "path": str(tree), "num_workers": w, **r})
    ref = rows[0]
    print(
        f"{ref['sequences']} sequences, {ref['frames']} frames; device {args.device}, "
        f"{ref['threads']} torch threads, best of {args.repeats}"
    )
    print(f"{'tree':10} {'workers':>7} {'seconds':>8} {'seq/s':>7} {'frames/s':>9} {'speed-up':>8}")
    for r in rows:
        r["ratio_to_first"] = ref["seconds"] / r["seconds"]
        r["identical_to_first"] = r["sha256"] == ref["sha256"]
        print(
            f"{r['tree']:10} {r['num_workers']:>7} {r['seconds']:>8.2f} "
            f"{r['sequences'] / r['seconds']:>7.0f} {r['frames'] / r['seconds']:>9.0f} "
            f"{r['ratio_to_first']:>7.2f}x"
        )
    same = all(r["identical_to_first"] for r in rows)
    print("embeddings identical in every case" if same else "EMBEDDINGS DIFFER between cases")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"pack": str(args.pack), "ckpt": str(args.ckpt), "device": args.device, "rows": rows},
            indent=2,
        )
        + "\n"
    )
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
