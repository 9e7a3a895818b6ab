"""Classical baseline on `gait synth` data: Gait Energy Image + PCA + nearest neighbour.

CASIA-B protocol: the first half of the subjects fit the PCA, the second half are tested; gallery
nm-01..04 at one view, probes nm-05/06 (NM), bg-01/02 (BG), cl-01/02 (CL) at another view,
identical views excluded; rank-1 averaged over gallery views per probe view, then over probe
views. It says how hard the synthetic data is: real CASIA-B GEI baselines score roughly
NM 40-75 %, BG lower, CL lowest under this protocol.

    python bench/gei_baseline.py --subjects 50 --frames 30 --seed 0

Prints the per-view table and writes JSON to bench/results/gei_baseline.json.

With ``--pack`` it embeds a Gait3D pack instead (``gait prep gait3d``, e.g. of ``gait synth
gait3d``): the GEI of each sequence of the partition file's TRAIN_SET fits the PCA, and those of
its TEST_SET are written as ``gait score``'s inputs (OpenGait's evaluator's arrays, one part), so
that ``gait score INPUTS --protocol gait3d --partition FILE`` scores them as it scores a model's
(``make wild-demo`` sets the two side by side):

    python bench/gei_baseline.py --pack g3.h5 --partition Gait3D.json --inputs gei-inputs.npz
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from gaitprep.normalize import normalize_frame
from gaitprep.pack import Pack
from gaitprep.synth import CASIA_B, Artifacts, SequenceSpec, render_sequence
from gaitprep.wild import opengait_keys
from gaittrain.evaluation.score import load_partition, save_inputs

GALLERY = [("nm", i) for i in (1, 2, 3, 4)]
PROBES = {"NM": [("nm", 5), ("nm", 6)], "BG": [("bg", 1), ("bg", 2)], "CL": [("cl", 1), ("cl", 2)]}


def gei(spec: SequenceSpec) -> np.ndarray | None:
    """A sequence's Gait Energy Image (its mean normalized frame); None if no frame is valid."""
    frames = [normalize_frame(f)[0] for f in render_sequence(spec)]
    frames = [f for f in frames if f is not None]
    return energy_image(frames) if frames else None


def energy_image(frames) -> np.ndarray:
    """The mean of normalized uint8 frames [n, H, W] (or a list of them), in [0, 1]."""
    return np.mean(frames, axis=0, dtype=np.float32) / 255.0


def compute_geis(subjects, frames, seed, clean, workers) -> dict:
    w, h = CASIA_B.size
    arts = Artifacts.none() if clean else Artifacts()
    specs = [
        SequenceSpec("casia-b", s, c, n, v, frames, w, h, seed, arts)
        for s in subjects
        for c, n in CASIA_B.recordings
        for v in CASIA_B.views
    ]
    out = Parallel(n_jobs=workers, batch_size=8)(delayed(gei)(s) for s in specs)
    return {(s.subject, s.condition, s.seq, s.view): g for s, g in zip(specs, out, strict=True)}


def pca_fit(x: np.ndarray, energy: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the principal axes keeping ``energy`` of the variance."""
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / (s**2).sum()
    k = int(np.searchsorted(np.cumsum(var), energy) + 1)
    return mean, vt[:k]


def rank1(geis, test, mean, axes, probes, probe_view, gallery_view) -> float | None:
    def embed(keys):
        keys = [k for k in keys if geis.get(k) is not None]
        if not keys:
            return [], np.zeros((0, axes.shape[0]))
        x = np.stack([geis[k].ravel() for k in keys])
        return [k[0] for k in keys], (x - mean) @ axes.T

    g_ids, g = embed([(s, c, n, gallery_view) for s in test for c, n in GALLERY])
    p_ids, p = embed([(s, c, n, probe_view) for s in test for c, n in probes])
    if not g_ids or not p_ids:
        return None
    d = ((p[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    pred = np.asarray(g_ids)[d.argmin(1)]
    return float((pred == np.asarray(p_ids)).mean())


def evaluate(geis, subjects, energy) -> dict:
    half = len(subjects) // 2
    train, test = subjects[:half], subjects[half:]
    x = np.stack([g.ravel() for k, g in geis.items() if k[0] in train and g is not None])
    mean, axes = pca_fit(x, energy)
    views = CASIA_B.views
    result = {"pca_components": int(axes.shape[0]), "conditions": {}}
    for name, probes in PROBES.items():
        per_view = {}
        for pv in views:
            accs = [rank1(geis, test, mean, axes, probes, pv, gv) for gv in views if gv != pv]
            accs = [a for a in accs if a is not None]
            per_view[f"{pv:03d}"] = float(np.mean(accs)) if accs else None
        vals = [v for v in per_view.values() if v is not None]
        result["conditions"][name] = {"rank1": float(np.mean(vals)), "per_view": per_view}
    return result


def pack_inputs(pack: Path, partition: Path, inputs: Path, energy: float) -> dict:
    """GEI + PCA embeddings of a Gait3D ``pack``'s test sequences, written to ``inputs`` as
    ``gait score`` reads them; the PCA is fitted on the training subjects' sequences."""
    train = set(load_partition(partition, "TRAIN_SET"))
    test = set(load_partition(partition, "TEST_SET"))
    with Pack(pack) as p:
        dataset = str(p.file.attrs["dataset"])
        every = p.keys()
        keys = [k for k in every if k[0] in train | test]
        geis = {k: energy_image(p[k]).ravel() for k in keys}
    fit = np.stack([g for k, g in geis.items() if k[0] in train])
    mean, axes = pca_fit(fit, energy)
    tested = [k for k in keys if k[0] in test]
    emb = (np.stack([geis[k] for k in tested]) - mean) @ axes.T
    labels, types, views = np.array([opengait_keys(dataset, k) for k in tested]).T
    save_inputs(inputs, emb[:, :, None].astype(np.float32), labels, types, views)
    return {"pca_components": int(axes.shape[0]), "fitted": len(fit), "tested": len(tested)}


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    ap.add_argument("--subjects", type=int, default=50)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--energy", type=float, default=0.95, help="PCA variance kept")
    ap.add_argument("--clean", action="store_true", help="no segmentation artifacts")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--json", type=Path, default=Path("bench/results/gei_baseline.json"))
    ap.add_argument("--compare", type=Path, help="a `gait eval --report json` file to set beside")
    ap.add_argument("--pack", type=Path, help="a Gait3D pack to embed instead of rendering")
    ap.add_argument("--partition", type=Path, help="with --pack: its Gait3D partition file")
    ap.add_argument("--inputs", type=Path, help="with --pack: the `gait score` inputs to write")
    args = ap.parse_args()
    if args.pack:
        if not (args.partition and args.inputs):
            ap.error("--pack needs --partition and --inputs")
        done = pack_inputs(args.pack, args.partition, args.inputs, args.energy)
        print(
            f"GEI + PCA ({done['pca_components']} components, fitted on {done['fitted']} "
            f"training sequences): {done['tested']} test sequences written to {args.inputs}"
        )
        return

    subjects = list(range(1, args.subjects + 1))
    t0 = time.perf_counter()
    geis = compute_geis(subjects, args.frames, args.seed, args.clean, args.workers)
    result = evaluate(geis, subjects, args.energy)
    result.update(
        subjects=args.subjects,
        frames=args.frames,
        seed=args.seed,
        clean=args.clean,
        energy=args.energy,
        seconds=round(time.perf_counter() - t0, 1),
        command="python bench/gei_baseline.py "
        + " ".join(
            f"--{k} {v}"
            for k, v in (("subjects", args.subjects), ("frames", args.frames), ("seed", args.seed))
        )
        + (" --clean" if args.clean else ""),
    )
    views = [f"{v:03d}" for v in CASIA_B.views]
    print(
        f"GEI + PCA ({result['pca_components']} components) + 1-NN, rank-1 %, "
        f"{args.subjects - args.subjects // 2} test subjects, identical views excluded"
    )
    print("probe view " + " ".join(f"{v:>5}" for v in views) + "   mean")
    for name, c in result["conditions"].items():
        cells = " ".join(f"{100 * c['per_view'][v]:5.1f}" for v in views)
        print(f"{name:<10} {cells}  {100 * c['rank1']:5.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"({result['seconds']} s; JSON in {args.json})")
    if args.compare:
        model = json.loads(args.compare.read_text())["conditions"]
        print("\nrank-1 %        model   GEI+PCA   difference")
        for name, c in result["conditions"].items():
            m = model[name]["rank1"]
            print(
                f"{name:<14} {100 * m:6.1f}   {100 * c['rank1']:7.1f}   "
                f"{100 * (m - c['rank1']):+9.1f}"
            )


if __name__ == "__main__":
    main()
