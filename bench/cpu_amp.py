"""float32 or bf16 autocast on this CPU? Speed, loss curves and final rank-1 side by side.

Trains `configs/tiny.yaml` twice on the same pack, subjects and seed, once in float32
(`train.amp: none`) and once under bf16 autocast (`train.amp: bf16`), evaluates both on the test
subjects by the CASIA-B protocol, and writes the two loss curves to one PNG. Whether bf16 pays
depends on the CPU: oneDNN runs bf16 natively only where the CPU has AVX-512 BF16 or AMX (the
`avx512_bf16` / `amx_bf16` flags of /proc/cpuinfo, printed below); elsewhere it is emulated.

    make demo   # the pack
    python bench/cpu_amp.py --pack build/demo/casia-b.h5 --train first:20 --test 021-040

Prints a table and writes bench/results/cpu_amp.json and bench/results/cpu_amp.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gaittrain.config import load_config  # noqa: E402
from gaittrain.device import setup  # noqa: E402
from gaittrain.evaluation.run_eval import evaluate_run  # noqa: E402
from gaittrain.run_folder import read_log  # noqa
from gaittrain.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {"float32": "none", "bf16": "bf16"}


def cpu_flags() -> list[str]:
    """The CPU's bf16-related feature flags (Linux only; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "").split()
    return sorted({f for f in flags if "bf16" in f or f.startswith("amx")})


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pack", type=Path, required=True)
    ap.add_argument("--train", default="first:20", help="training subjects")
    ap.add_argument("--test", default="021-040", help="test subjects")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "cpu_amp")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu_amp")
    args = ap.parse_args()

    rows = {}
    for name, amp in PRECISIONS.items():
        cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"train.amp={amp}", f"seed={args.seed}"])
        run = args.work / name
        t0 = time.perf_counter()
        train(cfg, [args.pack], run, setup("cpu"), train_split=args.train, progress=False)
        seconds = time.perf_counter() - t0
        result = evaluate_run(run, args.pack, test_subjects=args.test, device="cpu", notify=print)
        log = read_log(run / "log.jsonl")
        rows[name] = {
            "seconds": round(seconds, 1),
            "ms_per_iteration": round(1000 * seconds / cfg.train.iterations, 1),
            "rank1": {g: round(100 * v["rank1"], 1) for g, v in result["conditions"].items()},
            "iterations": [r["iteration"] + 1 for r in log],
            "loss": [r["loss"] for r in log],
        }

    flags = cpu_flags()
    print(f"CPU bf16 flags: {', '.join(flags) or 'none'}; tiny config, seed {args.seed}")
    print(f"{'precision':10} {'ms/it':>7} {'vs fp32':>8} {'NM':>6} {'BG':>6} {'CL':>6}")
    base = rows["float32"]["ms_per_iteration"]
    for name, r in rows.items():
        g = r["rank1"]
        print(
            f"{name:10} {r['ms_per_iteration']:>7.1f} {base / r['ms_per_iteration']:>7.2f}x "
            f"{g.get('NM', 0):>6.1f} {g.get('BG', 0):>6.1f} {g.get('CL', 0):>6.1f}"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    for name, r in rows.items():
        ax.plot(r["iterations"], r["loss"], label=name, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (center-ranked)")
    ax.set_title(f"tiny config on {args.pack.name}: float32 vs bf16 autocast (seed {args.seed})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"))
    summary = {"cpu_flags": flags, "pack": str(args.pack), "seed": args.seed, "runs": rows}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
