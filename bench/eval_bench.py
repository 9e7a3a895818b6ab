"""Cost of protocol evaluation, against this machine's matmul rate, in each --precision.

* CASIA-B at real test scale: 50 subjects x 110 sequences = 5,500 embeddings of 62 x 256, the
  full casia-b-lt protocol (3 groups x 11 probe views x 10 gallery views).
* OU-MVLP scale: 5,154 test subjects; one probe-view x gallery-view cell at full size (5,154
  probes against 5,154 gallery sequences, 62 x 256; --ou-subjects N: N x N, a smaller run),
  and the whole protocol (14 x 13 cells, 144,312 embeddings) with --full, else extrapolated
  from the cell (scaled by pairs).

The CASIA-B case uses independent Gaussian embeddings (float32's cost does not depend on them;
int8's and lowrank's do: they are their worst case, every block computed whole in float64).
The OU-MVLP cases use embeddings with a trained model's spectrum (:class:`OuLike`), since the
certified paths' work depends on their geometry: per part, an offset, a subject part and a
within-subject part in the same 64 directions, and a floor of independent noise, giving a
rank-1 near 0.89 on a view pair. Measured on a trained model (the tiny setnet of the
readings-tuned study, 1,500 iterations, its 24 test subjects, 2,640 sequences of 15 parts x
64): participation ratio 13.7 per part (median), 13.6 / 6.1 / 2.4 / 0.14 % of the energy
outside the top 16 / 24 / 32 / 48 directions; these embeddings: 13.9, and 13.0 / 5.8 / 2.7 /
0.64 % (``--spectrum FILE`` prints the same of any embeddings file). The OU-MVLP cases take
them in --storage (as `gait eval --storage` stores them: float32, the default, or float16,
half the bytes). With --full they are written once to build/bench/ou-embeddings-STORAGE.h5
(float16: 4.6 GB; float32: 9.2 GB) and evaluated from there through the streamed store, as
`gait eval` does; the rank-1 tables of the precisions are compared.

Each case runs in a fresh process so that its peak resident memory is its own; the distance
blocks are capped by --max-memory. The low-rank path's fused step and the re-check are
compiled before the clock starts (once per process, seconds; the int8 kernels are built before
too), and ``auto``'s
calibration (once per machine, kept in $GAIT_CACHE) runs before the OU-MVLP view pair's. The
fraction of the compute bound is the distance FLOPs per second over the float32 matmul rate
measured in the same run (on --device). ``--baseline DIR``
also runs every case against another source tree (a copy of gaitprep/ and gaittrain/, e.g. from
before a change) in the same run, alternating with this one, and prints the speed-up.

    python bench/eval_bench.py [--max-memory BYTES] [--device cuda] [--baseline DIR]
        [--precision fp32 int8 lowrank auto] [--storage float32|float16] [--full]
        [--ou-subjects N] [--cases casia ou]
    python bench/eval_bench.py --spectrum EMBEDDINGS.h5

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


def warm_up(precision: str) -> None:
    """Compile the low-rank path's fused step and the fused re-check before timing (seconds,
    once per process; kept on disk by PyTorch), as the int8 kernels are built before."""
    from gaittrain.evaluation import certified

    if precision == "lowrank":
        from gaittrain.evaluation import lowrank

        lowrank._compiled_fold()
    pairs = getattr(certified, "_compiled_pairs", None)  # absent from a --baseline before it
    if precision != "fp32" and pairs is not None:
        for dtype in (torch.float32, torch.float16):
            pairs(dtype)


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
    warm_up(precision)
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
    """OU-MVLP-sized embeddings with a trained model's spectrum (the module's docstring);
    deterministic. Per part: an offset (:data:`OFFSET` of the energy), a subject part and a
    within-subject part in the same :data:`LATENT` directions of the part, with geometric
    spectra of participation ratios :data:`SUBJECT_PR` and :data:`SEQUENCE_PR` (half of the
    rest each), and independent noise (:data:`NOISE`); the subject and sequence latents are
    shared by the parts, turned differently in each."""

    LATENT, OFFSET, NOISE = 64, 0.076, 0.002
    SUBJECT_PR, SEQUENCE_PR, SUBJECT_SHARE = 9.0, 22.0, 0.5

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        directions = [
            torch.linalg.qr(torch.randn(DIM, self.LATENT, generator=g))[0] for _ in range(PARTS)
        ]
        offset = torch.randn(PARTS, DIM, generator=g)
        self.offset = (offset / offset.norm(dim=1, keepdim=True) * self.OFFSET**0.5).flatten()
        spread = 1 - self.OFFSET - self.NOISE  # of each part's energy, about 1
        share = self.SUBJECT_SHARE
        self.subject_map = self._map(g, directions, spread * share, self.SUBJECT_PR)
        self.sequence_map = self._map(g, directions, spread * (1 - share), self.SEQUENCE_PR)
        self.subjects = torch.randn(OU_SUBJECTS, self.LATENT, generator=g)

    def _map(self, g, directions, energy: float, ratio: float) -> torch.Tensor:
        """[LATENT, PARTS * DIM]: each part's latent turned at random, spread over its
        directions with a geometric spectrum of participation ratio ``ratio`` (a spectrum
        q^i has (1 + q) / (1 - q)) and ``energy`` in all."""
        q = (ratio - 1) / (ratio + 1)
        spectrum = q ** torch.arange(self.LATENT, dtype=torch.float64)
        scale = (energy * spectrum / spectrum.sum()).sqrt().float()
        turns = [
            torch.linalg.qr(torch.randn(self.LATENT, self.LATENT, generator=g))[0]
            for _ in directions
        ]
        return torch.cat([((d * scale) @ t).T for d, t in zip(directions, turns, strict=True)], 1)

    def rows(self, subjects: np.ndarray, seed: int, storage: str = "float16") -> torch.Tensor:
        """Embeddings [len(subjects), 62, 256] of one sequence each of ``subjects``, as stored in
        ``storage`` (float16: the generator's float32 values rounded)."""
        g = torch.Generator().manual_seed(seed)
        z = self.subjects[torch.from_numpy(subjects)]
        u = torch.randn(len(subjects), self.LATENT, generator=g)
        x = self.offset + z @ self.subject_map + u @ self.sequence_map
        x += (self.NOISE / DIM) ** 0.5 * torch.randn(x.shape, generator=g)
        x = x.view(-1, PARTS, DIM)
        return x.half() if storage == "float16" else x


def spectrum(embeddings: torch.Tensor, ranks=(8, 16, 24, 32, 48)) -> dict:
    """Per part of ``embeddings`` [n, parts, dim]: the participation ratio of the centred
    covariance's spectrum (median over parts) and, for each rank r, the fraction of the
    energy outside its top r directions (mean over parts)."""
    x = embeddings.double()
    x = (x - x.mean(0)).transpose(0, 1)
    energy = torch.linalg.eigvalsh(x.mT @ x).flip(-1).clamp_min(0)  # [parts, dim]
    ratio = energy.sum(1) ** 2 / (energy**2).sum(1)
    left = 1 - energy.cumsum(1) / energy.sum(1, keepdim=True)
    out = {"participation_ratio": float(ratio.median())}
    out.update({f"outside_top_{r}": float(left[:, r - 1].mean()) for r in ranks if r <= x.shape[2]})
    return out


def ou_keys() -> list[tuple]:
    """The ou-mvlp protocol's test keys (subjects 00002, 00004, ...) in sorted order."""
    views = [f"{v:03d}" for v in OU_VIEWS]
    return [
        (f"{2 * s:05d}", "nm", q, v)
        for s in range(1, OU_SUBJECTS + 1)
        for q in ("00", "01")
        for v in views
    ]


def ou_cell_case(
    max_memory: int, device: str, precision: str, storage: str, subjects: int = OU_SUBJECTS
) -> dict:
    """One view pair; ``gallery_seconds`` of its ``seconds`` prepare the gallery (int8: its
    levels; lowrank: its directions and projection), which the protocol does once per gallery
    view, for 13 probe views."""
    from gaittrain.evaluation import certified, lowrank
    from gaittrain.evaluation.cost import resolve_precision
    from gaittrain.evaluation.metrics import retrieve

    data = OuLike()
    ids = np.arange(subjects)
    gallery = data.rows(ids, 1, storage).to(device)
    probe = data.rows(ids, 2, storage).to(device)
    basis = lowrank.fit(gallery)  # what auto weighs (not timed)
    rank = basis.rank if basis.residual <= lowrank.RESIDUAL else None
    path = resolve_precision(precision, "euclidean", device, subjects, subjects, (PARTS, DIM), rank)
    if path == "fp32":
        gallery, probe = gallery.float(), probe.float()
    warm_up(path)
    sync(device)
    t0 = time.perf_counter()
    prepared = None
    if path == "int8":
        prepared = certified.quantize(gallery, probe_side=False)
    elif path == "lowrank":
        prepared = lowrank.project(gallery, lowrank.fit(gallery), probe_side=False)
    sync(device)
    t1 = time.perf_counter()
    r = retrieve(probe, ids, gallery, ids, max_memory=max_memory, precision=path, prepared=prepared)
    seconds = time.perf_counter() - t0
    size = f"{subjects:,} x {subjects:,}"
    return {
        "case": f"OU-MVLP, one view pair ({size})",
        "seconds": seconds,
        "gallery_seconds": t1 - t0,
        "flops": subjects**2 * PARTS * DIM * 2,
        "rank1": float(r.cmc(1)[0]),
        "path": path,
        "rank": basis.rank,
        "outside": basis.residual,
        "subjects": subjects,
    }


def make_ou_file(storage: str) -> None:
    """build/bench/ou-embeddings-STORAGE.h5, unless made already by this generator."""
    from gaittrain.evaluation.embeddings_file import WRITE_ROWS, write_embeddings_file

    version, path = "ou-like-2", ou_file(storage)
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
    warm_up(precision)
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


def child(args: argparse.Namespace) -> None:
    case, precision = args.child, args.precision[0]
    if case == "ou-file":
        make_ou_file(args.storage)
        print(json.dumps({}))
        return
    if case == "ou":
        result = ou_cell_case(
            args.max_memory, args.device, precision, args.storage, args.ou_subjects
        )
    else:
        cases = {"casia": casia_case, "ou-full": ou_full_case}
        result = cases[case](args.max_memory, args.device, precision, args.storage)
    result["precision"] = precision
    result["storage"] = "float32 (in memory)" if case == "casia" else args.storage
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.device(args.device).type == "cuda":
        result["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def cpu_flags() -> str:
    """The CPU model and its AVX-512 flags (what the int8 kernels need)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line), "?"
    )
    flags = sorted({f for f in text.split() if f.startswith("avx512")})
    return f"{model}; {' '.join(flags) or 'no AVX-512'}"


def run_case(
    case: str, args: argparse.Namespace, tree: Path | None, precision: str = "fp32"
) -> dict:
    """One case in a fresh process, importing gaittrain from ``tree`` (None: as installed)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, __file__, "--child", case, "--max-memory", str(args.max_memory)]
    cmd += ["--device", args.device, "--precision", precision, "--storage", args.storage]
    cmd += ["--ou-subjects", str(args.ou_subjects)]
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
        default=["fp32", "int8", "lowrank"],
        choices=["fp32", "int8", "lowrank", "auto"],
        help="the precisions to time (each case in each)",
    )
    ap.add_argument(
        "--ou-subjects",
        type=int,
        default=OU_SUBJECTS,
        help="subjects of the OU-MVLP view pair (a smaller N x N pair: a quicker run)",
    )
    ap.add_argument("--cases", nargs="+", default=["casia", "ou"], choices=["casia", "ou"])
    ap.add_argument("--spectrum", type=Path, help="print the spectrum of an embeddings file")
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
    if args.spectrum:
        from gaittrain.evaluation.embeddings_file import read_embeddings

        found, _ = read_embeddings(args.spectrum)
        x = torch.from_numpy(np.stack([found[k] for k in sorted(found)]))
        print(json.dumps({"sequences": len(x), "shape": list(x.shape[1:]), **spectrum(x)}))
        return
    if args.child:
        child(args)
        return
    gflops = matmul_gflops(args.device)
    here = Path(__file__).resolve().parent.parent
    trees = [("this tree", here)]
    if args.baseline:
        trees.insert(0, ("baseline", args.baseline.resolve()))
    rows = []
    if args.full:
        run_case("ou-file", args, None)
    for case in [*args.cases, "ou-full"] if args.full else args.cases:
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
        f"OU-MVLP embeddings stored in {args.storage}; torch threads {torch.get_num_threads()}"
    )
    print(f"CPU: {cpu_flags()}")
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
        for precision in [p for p in found if p != "fp32" and "fp32" in found]:
            a, b = found["fp32"], found[precision]
            same = a.get("cells", a.get("rank1")) == b.get("cells", b.get("rank1"))
            how = f" (ran {b['path']}, rank {b['rank']})" if "path" in b else ""
            print(
                f"{case}: {precision}{how} {a['seconds'] / b['seconds']:.2f}x the speed of fp32; "
                f"rank-1 {'identical' if same else 'DIFFERENT'}"
                + (" in every cell" if "cells" in a else "")
            )
    ou = [r for r in mine if r["case"].startswith("OU-MVLP, one")]
    full = {
        r["precision"]: r["seconds"] / 60 for r in mine if r["case"].startswith("OU-MVLP, full")
    }
    if ou:
        text = ", ".join(f"{r['precision']} {r['gallery_seconds']:.2f} s" for r in ou)
        print(f"of which preparing the gallery (once per gallery view in the protocol): {text}")
    if not args.full and ou:
        grow = OU_SUBJECTS / args.ou_subjects  # gallery sequences; pairs grow by its square
        full = {
            r["precision"]: (
                14 * 13 * (r["seconds"] - r["gallery_seconds"]) * grow**2
                + 14 * r["gallery_seconds"] * grow
            )
            / 60
            for r in ou
        }
        text = ", ".join(f"{p} {m:.0f} min" for p, m in full.items())
        print(
            f"OU-MVLP full protocol (14 x 13 view pairs, 14 galleries), extrapolated from one "
            f"pair{' scaled by pairs' if args.ou_subjects != OU_SUBJECTS else ''}: {text} "
            "(measure it with --full)"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "device": args.device,
                "cpu": cpu_flags(),
                "threads": torch.get_num_threads(),
                "storage": args.storage,
                "ou_subjects": args.ou_subjects,
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
