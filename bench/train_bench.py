"""Training costs on this machine: the model step, each loss against batch size, the data loader.

1. Forward + backward + optimizer step, in ms per iteration, for the paper-scale shape
   (configs/casia-b.yaml: P x K 8 x 16, 30 frames of 64 x 44, widths 32/64/128, 31 x 256) and the
   tiny shape (configs/tiny.yaml), with the Center-ranked loss, and GaitSet, GaitBase and tiny
   GaitBase with their own objectives (configs/gaitset.yaml, gaitbase.yaml, tiny-gaitbase.yaml;
   with each model's parameter count; GaitBase at P x K 2 x 4: its 8 x 16 batch holds about 40 GB
   of activations, a GPU's work); then the tiny step by memory
   layout (contiguous, channels_last), precision (float32, bf16 autocast) and torch.compile,
   and `gait train`'s own loop (data loading included) with the old and the new defaults.
2. Each loss alone (forward + backward on random [31, P*K, 256] features), P x K from 8 x 4 to
   32 x 16.
3. The DataLoader's frames/s (pack reading, frame sampling, cropping in worker processes) against
   the frames/s the model consumes at each shape: the loader must not be the bottleneck.

    python bench/train_bench.py [--repeats 3]

Prints tables and writes bench/results/train_bench.json.
Each model's step against OpenGait's own code for it, CPU time: bench/opengait_step.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gaitprep.layout import CASIA_B
from gaitprep.prep import PrepJob, run_prep
from gaittrain.config import load_config
from gaittrain.data.dataset import PackDataset, collate
from gaittrain.data.sampler import PKSampler
from gaittrain.device import setup
from gaittrain.losses import CenterRankedLoss, PartCrossEntropyLoss, RankedListLoss, TripletLoss
from gaittrain.models import build_model
from gaittrain.objective import Objective
from gaittrain.run_folder import read_log
from gaittrain.trainer import train, with_classes

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def model_step(
    config: str,
    repeats: int,
    layout: torch.memory_format = torch.contiguous_format,
    dtype: torch.dtype | None = None,
    compile: bool = False,
    batch: tuple[int, int] | None = None,
) -> dict:
    """ms per forward + backward + Adam step of ``config``'s model and loss on random frames,
    with the model in ``layout``, under CPU autocast to ``dtype`` (None: float32), compiled or
    not; ``batch`` (P, K) instead of the config's."""
    cfg = load_config(ROOT / "configs" / f"{config}.yaml")
    torch.manual_seed(0)
    p, k = batch or (cfg.data.batch.p, cfg.data.batch.k)
    model = build_model(with_classes(cfg, p).model).to(memory_format=layout)
    net = torch.compile(model) if compile else model
    objective = Objective(cfg, num_classes=p, parts=model.parts)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    h = cfg.data.height
    w = h - 2 * round(10 * h / 64)
    x = torch.rand(p * k, cfg.data.frames, h, w)
    y = torch.arange(p).repeat_interleave(k)

    def step() -> None:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(x)
        if isinstance(out, tuple):  # a BNNeck model (gaitbase): its logits go to the objective
            objective(out[0], y, out[1]).backward()
        else:
            objective(out, y).backward()
        opt.step()

    if compile:
        step()  # the compilation itself is not a step
    ms = median_ms(step, repeats)
    frames = p * k * cfg.data.frames
    return {
        "config": config,
        "batch": f"{p}x{k}",
        "frames": frames,
        "input": f"{h}x{w}",
        "layout": "channels_last" if layout == torch.channels_last else "contiguous",
        "dtype": "bf16" if dtype == torch.bfloat16 else "fp32",
        "compile": compile,
        "params": sum(q.numel() for q in model.parameters()),
        "ms": round(ms, 1),
        "frames_per_s": round(frames / ms * 1000, 1),
    }


#: (layout, autocast dtype, torch.compile) of each variant; the first is the old default.
VARIANTS = [
    (torch.contiguous_format, None, False),
    (torch.channels_last, None, False),
    (torch.contiguous_format, torch.bfloat16, False),
    (torch.channels_last, torch.bfloat16, False),
    (torch.channels_last, None, True),
]


def variant_steps(config: str, repeats: int) -> list[dict]:
    rows = [model_step(config, repeats, *v) for v in VARIANTS]
    for r in rows:
        r["speedup"] = round(rows[0]["ms"] / r["ms"], 2)
    return rows


def loop_rate(pack: Path, config: str, iterations: int, sets: list[str]) -> dict:
    """ms per iteration of ``gait train``'s own loop (data loading included) on ``pack``,
    excluding the first 20 iterations (worker start-up, compilation)."""
    overrides = [f"train.iterations={iterations}", "train.log_every=10", *sets]
    cfg = load_config(ROOT / "configs" / f"{config}.yaml", overrides)
    out = Path(tempfile.mkdtemp(prefix="train-bench-run-"))
    train(cfg, [pack], out / "run", setup("cpu"), train_split="first:6", progress=False)
    log = read_log(out / "run" / "log.jsonl")
    (a, b) = (next(r for r in log if r["iteration"] >= 19), log[-1])
    ms = 1000 * (b["seconds"] - a["seconds"]) / (b["iteration"] - a["iteration"])
    return {"config": config, "set": sets, "ms": round(ms, 1)}


LOSSES = {
    "center_ranked": lambda n: CenterRankedLoss(),
    "center_ranked(sample)": lambda n: CenterRankedLoss(anchor="sample"),
    "ranked_list": lambda n: RankedListLoss(),
    "triplet": lambda n: TripletLoss(),
    "cross_entropy": lambda n: PartCrossEntropyLoss(n, 256, 31),
}


def loss_times(repeats: int) -> list[dict]:
    rows = []
    for p, k in ((8, 4), (8, 8), (16, 8), (8, 16), (32, 16)):
        y = torch.arange(p).repeat_interleave(k)
        torch.manual_seed(0)
        f = torch.randn(31, p * k, 256, requires_grad=True)
        row = {"batch": f"{p}x{k}"}
        for name, make in LOSSES.items():
            loss = make(p)
            step = lambda loss=loss, f=f, y=y: loss(f, y).backward()  # noqa: E731
            row[name] = round(median_ms(step, repeats), 2)
        rows.append(row)
    return rows


def loader_rate(pack: Path, config: str, workers: int, batches: int = 30) -> float:
    cfg = load_config(ROOT / "configs" / f"{config}.yaml")
    data = PackDataset([pack], frames=cfg.data.frames, height=cfg.data.height)
    p = min(cfg.data.batch.p, len(data.subjects))
    sampler = PKSampler(data.labels, p, cfg.data.batch.k, seed=0, iterations=batches)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=workers, collate_fn=collate)
    it = iter(loader)
    first = next(it)  # exclude worker start-up
    t0 = time.perf_counter()
    n = 0
    for frames, _ in it:
        n += frames.shape[0] * frames.shape[1]
    del first
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop-iterations", type=int, default=120)
    ap.add_argument("--json", type=Path, default=Path("bench/results/train_bench.json"))
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    models = {"tiny": None, "casia-b": None, "gaitset": None, "tiny-gaitbase": None}
    models["gaitbase"] = (2, 4)  # 8 x 16 would need about 40 GB of activations on the CPU
    steps = [model_step(c, args.repeats, batch=b) for c, b in models.items()]
    print(f"model step (forward + backward + Adam), CPU, {torch.get_num_threads()} threads")
    print(
        f"{'config':13} {'P x K':>7} {'input':>7} {'frames':>7} {'params':>10} {'ms/it':>9} "
        f"{'frames/s':>9}"
    )
    for s in steps:
        print(
            f"{s['config']:13} {s['batch']:>7} {s['input']:>7} {s['frames']:>7} "
            f"{s['params']:>10} {s['ms']:>9.1f} {s['frames_per_s']:>9.0f}"
        )

    # The paper-scale step takes tens of seconds on a CPU: the variants are timed on tiny only.
    variants = variant_steps("tiny", args.repeats)
    print("\nmodel step by layout, precision and compilation (speed-up vs the first row)")
    print(f"{'config':9} {'layout':>14} {'dtype':>6} {'compile':>8} {'ms/it':>9} {'speed-up':>9}")
    for r in variants:
        print(
            f"{r['config']:9} {r['layout']:>14} {r['dtype']:>6} {str(r['compile']):>8} "
            f"{r['ms']:>9.1f} {r['speedup']:>8.2f}x"
        )

    rows = loss_times(args.repeats)
    print("\nloss forward + backward, ms, features [31, P*K, 256]")
    print(f"{'P x K':>7} " + " ".join(f"{n:>22}" for n in LOSSES))
    for r in rows:
        print(f"{r['batch']:>7} " + " ".join(f"{r[n]:>22.2f}" for n in LOSSES))

    pack = Path(tempfile.mkdtemp(prefix="train-bench-")) / "sample.h5"
    run_prep(
        PrepJob(raw=ROOT / "sample_data" / "casia-b", out=pack, dataset="casia-b", layout=CASIA_B),
        workers=1,
    )
    loops = [
        loop_rate(pack, "tiny", args.loop_iterations, sets)
        for sets in (
            # before (2026-11-24): PyTorch's default layout, one loader process
            ["train.memory_format=contiguous", "data.workers=1"],
            ["data.workers=1"],  # channels_last alone
            [],  # the defaults now: channels_last on the CPU, no loader process
            ["train.compile=true"],
            ["train.amp=bf16"],
        )
    ]
    print(f"\ngait train's loop, tiny config on the sample_data pack, {args.loop_iterations} its")
    for r in loops:
        r["speedup"] = round(loops[0]["ms"] / r["ms"], 2)
        print(f"{' '.join(r['set']) or 'defaults':50} {r['ms']:>7.1f} ms/it {r['speedup']:>6.2f}x")

    loaders = []
    print("\ndata loader (sample_data pack) against what the model consumes")
    print(
        f"{'config':9} {'workers':>7} {'loader frames/s':>16} {'model frames/s':>15} {'ratio':>6}"
    )
    for s in steps:
        for workers in (1, 2):
            rate = loader_rate(pack, s["config"], workers)
            ratio = rate / s["frames_per_s"]
            loaders.append(
                {
                    "config": s["config"],
                    "workers": workers,
                    "loader_frames_per_s": round(rate, 1),
                    "ratio": round(ratio, 2),
                }
            )
            print(
                f"{s['config']:9} {workers:>7} {rate:>16.0f} {s['frames_per_s']:>15.0f} "
                f"{ratio:>6.1f}"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "model_step": steps,
                "variants": variants,
                "train_loop": loops,
                "losses_ms": rows,
                "loader": loaders,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
