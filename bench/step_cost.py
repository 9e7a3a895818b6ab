"""CPU time and peak memory of one training step of shipped configs, as `gait train` takes it.

The config's model (placed as the trainer places it: channels_last on the CPU), its objective and
optimizer, one P x K batch of random frames of its size, and the trainer's own ``train_step``
(forward, loss, backward, optimizer step). Prints, per config, the median CPU time (this
process's, the measure a busy machine disturbs least) and wall time per step over ``--steps``
steps (after one warm-up step), the parameter count and the process's peak resident
memory after those steps, and how much the steps raised it (both from ``ru_maxrss``: run one
config per process for a clean peak); writes the rows to bench/results/step_cost.json.

    OMP_NUM_THREADS=1 python bench/step_cost.py tiny-deepgaitv2 [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from gaittrain.config import load_config
from gaittrain.device import place_model
from gaittrain.models import build_model
from gaittrain.objective import Objective
from gaittrain.shipped import resolve
from gaittrain.trainer import build_optimizer, train_step, with_classes


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def step_cost(config: str, steps: int) -> dict:
    cfg = load_config(resolve(config, "config"))
    p, k = cfg.data.batch.p, cfg.data.batch.k
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    model = place_model(build_model(with_classes(cfg, p).model), cfg, cpu)
    objective = Objective(cfg, num_classes=p, parts=model.parts)
    optimizer = build_optimizer(cfg, list(model.parameters()) + list(objective.parameters()))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    h = cfg.data.height
    w = h - 2 * round(10 * h / 64) if cfg.data.cut else h
    frames = torch.rand(p * k, cfg.data.frames, h, w)
    labels = torch.arange(p).repeat_interleave(k)
    before = peak_mib()
    wall, cpu = [], []
    for _ in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(model, objective, optimizer, scaler, frames, labels)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "config": config,
        "batch": f"{p}x{k}x{cfg.data.frames} frames of {h}x{w}",
        "params": sum(q.numel() for q in model.parameters()),
        "cpu_ms_per_step": round(1000 * statistics.median(cpu[1:]), 1),
        "wall_ms_per_step": round(1000 * statistics.median(wall[1:]), 1),
        "peak_mib": round(peak_mib()),
        "steps_raised_peak_mib": round(peak_mib() - before),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", help="shipped config names or YAML files")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    rows = []
    print("config               params  CPU ms  wall ms  peak MiB  raised by  threads  batch")
    for config in args.configs:
        r = step_cost(config, args.steps)
        rows.append(r)
        print(
            f"{r['config']:<18} {r['params']:>8} {r['cpu_ms_per_step']:>7} "
            f"{r['wall_ms_per_step']:>8} {r['peak_mib']:>9} "
            f"{r['steps_raised_peak_mib']:>10} {r['threads']:>8}  {r['batch']}"
        )
    out = Path(__file__).resolve().parent / "results" / "step_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
