"""Cost of protocol evaluation, against this machine's matmul rate, in each --precision.

* CASIA-B at real test scale: 50 subjects x 110 sequences = 5,500 embeddings of 62 x 256, the
  full casia-b-lt protocol (3 groups x 11 probe views x 10 gallery views).
* OU-MVLP scale: 5,154 test subjects; one probe-view x gallery-view cell at full size (5,154
  probes against 5,154 gallery sequences, 62 x 256), and the whole protocol (14 x 13 cells,
  144,312 embeddings) with --full, else extrapolated from the cell.

The CASIA-B case uses independent Gaussian embeddings (float32's cost does not depend on them;
int8's does: they are its worst case, every block computed whole in float64). The OU-MVLP cases
use embeddings shaped like a trained model's, since the int8 path's work depends on their
geometry: a shared offset, a subject part of rank 64 and a within-subject part of rank
64 (the demo model's test embeddings have participation ratios of 4 and 9: they are low-rank),
plus small independent noise, giving a rank-1 near 0.95 on a view pair. The OU-MVLP cases take
them in --storage (as `gait eval --storage` stores them: float32, the default, or float16, half
the bytes). With --full they are written once to build/bench/ou-embeddings-STORAGE.h5 (float16:
4.6 GB; float32: 9.2 GB) and evaluated from there through the streamed store, as `gait eval`
does; the rank-1 tables of the precisions are compared.

Each case runs in a fresh process so that its peak resident memory is its own; the distance
blocks are capped by --max-memory. The fraction of the compute bound is the distance FLOPs per
second over the float32 matmul rate measured in the same run (on --device). ``--baseline DIR``
also runs every case against another source tree (a copy of gaitprep/ and gaittrain/, e.g. from
before a change) in the same run, alternating with this one, and prints the speed-up.

    python bench/eval_bench.py [--max-memory BYTES] [--device cuda] [--baseline DIR]
        [--precision fp32 int8] [--storage float32|float16] [--full]

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


def casia_case(max_memory: int, device: str, precision: str, storage: str) -> dict:
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
    protocol = load_eval_protocol("casia-b-lt")
    evaluate(emb, protocol, max_memory=max_memory, device=device, precision=precision)
    seconds = time.perf_counter() - t0
    # per group: 11 probe views x 10 gallery views; 100 probes x 200 gallery sequences a cell
    flops = 3 * 11 * 10 * 100 * 200 * PARTS * DIM * 2
    return {"case": "CASIA-B (5,500 seq)", "seconds": seconds, "flops": flops}


OU_SUBJECTS, OU_VIEWS = 5154, (*range(0, 91, 15), *range(180, 271, 15))


def ou_file(storage: str) -> Path:
    """Where the OU-MVLP-like embeddings are kept in ``storage``."""
    return Path(f"build/bench/ou-embeddings-{storage}.h5")


class OuLike:
    """OU-MVLP-sized embeddings shaped like a trained model's (see the module's docstring):
    offset + subject latent (rank 64) + sequence latent (rank 64) + noise; deterministic."""

    RANK, NOISE = 64, 0.05

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        width = PARTS * DIM
        self.offset = 0.35 * torch.randn(width, generator=g)
        self.subject_map = 0.3 * torch.randn(self.RANK, width, generator=g) / self.RANK**0.5
        self.sequence_map = 0.3 * torch.randn(self.RANK, width, generator=g) / self.RANK**0.5
        self.subjects = torch.randn(OU_SUBJECTS, self.RANK, generator=g)

    def rows(self, subjects: np.ndarray, seed: int, storage: str = "float16") -> torch.Tensor:
        """Embeddings [len(subjects), 62, 256] of one sequence each of ``subjects``, as stored in
        ``storage`` (float16: the generator's float32 values rounded)."""
        g = torch.Generator().manual_seed(seed)
        z = self.subjects[torch.from_numpy(subjects)]
        u = torch.randn(len(subjects), self.RANK, generator=g)
        x = self.offset + z @ self.subject_map + u @ self.sequence_map
        x += self.NOISE * torch.randn(x.shape, generator=g)
        x = x.view(-1, PARTS, DIM)
        return x.half() if storage == "float16" else x


def ou_keys() -> list[tuple]:
    """The ou-mvlp protocol's test keys (subjects 00002, 00004, ...) in sorted order."""
    views = [f"{v:03d}" for v in OU_VIEWS]
    return [
        (f"{2 * s:05d}", "nm", q, v)
        for s in range(1, OU_SUBJECTS + 1)
        for q in ("00", "01")
        for v in views
    ]


def ou_cell_case(max_memory: int, device: str, precision: str, storage: str) -> dict:
    from gaittrain.evaluation.metrics import retrieve

    data = OuLike()
    ids = np.arange(OU_SUBJECTS)
    gallery = data.rows(ids, 1, storage).to(device)
    probe = data.rows(ids, 2, storage).to(device)
    if precision == "fp32":
        gallery, probe = gallery.float(), probe.float()
    sync(device)
    t0 = time.perf_counter()
    r = retrieve(probe, ids, gallery, ids, max_memory=max_memory, precision=precision)
    seconds = time.perf_counter() - t0
    return {
        "case": "OU-MVLP, one view pair (5,154 x 5,154)",
        "seconds": seconds,
        "flops": OU_SUBJECTS**2 * PARTS * DIM * 2,
        "rank1": float(r.cmc(1)[0]),
    }


def make_ou_file(storage: str) -> None:
    """build/bench/ou-embeddings-STORAGE.h5, unless made already by this generator."""
    from gaittrain.evaluation.embeddings_file import WRITE_ROWS, write_embeddings_file

    version, path = "ou-like-1", ou_file(storage)
    if path.exists():
        import h5py

        with h5py.File(path, "r") as f:
            if f.attrs.get("generator") == version and f.attrs.get("storage") == storage:
                return
    data, keys = OuLike(), ou_keys()
    subjects = np.array([int(k[0]) // 2 - 1 for k in keys])

    def blocks():
        for s in range(0, len(keys), WRITE_ROWS):
            yield data.rows(subjects[s : s + WRITE_ROWS], 1000 + s, storage).numpy()

    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = {"generator": version, "storage": storage}
    write_embeddings_file(path, keys, (PARTS, DIM), blocks(), attrs)


def ou_full_case(max_memory: int, device: str, precision: str, storage: str) -> dict:
    """The whole ou-mvlp protocol on 5,154 test subjects x 14 views x 2 sequences, read from
    the embeddings file a gallery view and a block of probes at a time."""
    from gaittrain.evaluation.embeddings_file import EmbeddingStore, open_embeddings
    from gaittrain.evaluation.protocol import evaluate, load_eval_protocol

    f, keys, _ = open_embeddings(ou_file(storage))
    t0 = time.perf_counter()
    with EmbeddingStore.from_file(f, keys) as store:
        result = evaluate(
            store,
            load_eval_protocol("ou-mvlp"),
            max_memory=max_memory,
            device=device,
            precision=precision,
        )
    seconds = time.perf_counter() - t0
    group = next(iter(result["conditions"].values()))
    return {
        "case": "OU-MVLP, full protocol (144,312 seq)",
        "seconds": seconds,
        "flops": 14 * 13 * OU_SUBJECTS**2 * PARTS * DIM * 2,
        "rank1": group["rank1"],
        "cells": group["cells"],
    }


def child(case: str, max_memory: int, device: str, precision: str, storage: str) -> None:
    if case == "ou-file":
        make_ou_file(storage)
        print(json.dumps({}))
        return
    cases = {"casia": casia_case, "ou": ou_cell_case, "ou-full": ou_full_case}
    result = cases[case](max_memory, device, precision, storage)
    result["precision"] = precision
    result["storage"] = "float32 (in memory)" if case == "casia" else storage
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.device(device).type == "cuda":
        result["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def run_case(
    case: str, args: argparse.Namespace, tree: Path | None, precision: str = "fp32"
) -> dict:
    """One case in a fresh process, importing gaittrain from ``tree`` (None: as installed)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, __file__, "--child", case, "--max-memory", str(args.max_memory)]
    cmd += ["--device", args.device, "--precision", precision, "--storage", args.storage]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"{case} ({precision}) failed:\n{out.stderr[-3000:]}")
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
        help="also run the whole OU-MVLP protocol from an embeddings file of 4.6 GB in float16 "
        "storage, 9.2 GB in float32 (on 2 cores, float16: about 14 min in fp32, 5 in int8)",
    )
    ap.add_argument("--baseline", type=Path, help="another source tree to time in the same run")
    ap.add_argument(
        "--precision",
        nargs="+",
        default=["fp32", "int8"],
        choices=["fp32", "int8", "auto"],
        help="the precisions to time (each case in each)",
    )
    ap.add_argument(
        "--storage",
        default="float32",
        choices=["float32", "float16"],
        help="how the OU-MVLP cases' embeddings are stored, as `gait eval --storage` stores "
        "them (the CASIA-B case is evaluated from float32 arrays in memory)",
    )
    ap.add_argument(
        "--child", choices=["casia", "ou", "ou-full", "ou-file"], help=argparse.SUPPRESS
    )
    ap.add_argument("--json", type=Path, default=Path("bench/results/eval_bench.json"))
    args = ap.parse_args()
    if args.child:
        child(args.child, args.max_memory, args.device, args.precision[0], args.storage)
        return
    gflops = matmul_gflops(args.device)
    here = Path(__file__).resolve().parent.parent
    trees = [("this tree", here)]
    if args.baseline:
        trees.insert(0, ("baseline", args.baseline.resolve()))
    rows = []
    if args.full:
        run_case("ou-file", args, None)
    for case in ("casia", "ou", "ou-full") if args.full else ("casia", "ou"):
        for precision in args.precision:
            for label, tree in trees:  # alternating, so that both see the same machine
                rows.append({"tree": label, **run_case(case, args, tree, precision)})
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
        f"{args.max_memory / 2**20:.0f} MB; a bare python+torch process: {base_mb:.0f} MB; "
        f"OU-MVLP embeddings stored in {args.storage}"
    )
    print(
        f"{'case':40} {'precision':9} {'tree':9} {'seconds':>8} {'peak MB':>8} {'GFLOP/s':>8} "
        f"{'of fp32':>8} {'rank-1':>7}" + (f" {'speed-up':>8}" if args.baseline else "")
    )
    before = {}
    for r in rows:
        rate = r["flops"] / r["seconds"] / 1e9
        r.update(gflops=rate, fraction=rate / gflops)
        rank1 = f"{r['rank1']:.4f}" if "rank1" in r else "-"
        line = (
            f"{r['case']:40} {r['precision']:9} {r['tree']:9} {r['seconds']:>8.1f} "
            f"{r['peak_mb']:>8.0f} {rate:>8.1f} {r['fraction']:>8.1%} {rank1:>7}"
        )
        if r["tree"] == "baseline":
            before[r["case"], r["precision"]] = r["seconds"]
        elif args.baseline:
            r["speedup"] = before[r["case"], r["precision"]] / r["seconds"]
            line += f" {r['speedup']:>7.2f}x"
        print(line)
    mine = [r for r in rows if r["tree"] == "this tree"]
    for case in sorted({r["case"] for r in mine}):
        found = {r["precision"]: r for r in mine if r["case"] == case}
        if "fp32" in found and "int8" in found:
            a, b = found["fp32"], found["int8"]
            same = a.get("cells", a.get("rank1")) == b.get("cells", b.get("rank1"))
            print(
                f"{case}: int8 {a['seconds'] / b['seconds']:.2f}x the speed of fp32; "
                f"rank-1 {'identical' if same else 'DIFFERENT'}"
                + (" in every cell" if "cells" in a else "")
            )
    ou = [r for r in mine if r["case"].startswith("OU-MVLP, one")]
    full = {
        r["precision"]: r["seconds"] / 60 for r in mine if r["case"].startswith("OU-MVLP, full")
    }
    if not args.full:
        full = {r["precision"]: r["seconds"] * 14 * 13 / 60 for r in ou}
        text = ", ".join(f"{p} {m:.0f} min" for p, m in full.items())
        print(
            f"OU-MVLP full protocol (14 x 13 view pairs), extrapolated from one pair: {text} "
            "(measure it with --full)"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "device": args.device,
                "storage": args.storage,
                "matmul_gflops": gflops,
                "baseline": str(args.baseline) if args.baseline else None,
                "rows": rows,
                "ou_full_minutes": full,
                "ou_full_measured": args.full,
                "bare_process_mb": base_mb,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
