"""``gait train``: train a set-based model on gait packs."""

from __future__ import annotations

from pathlib import Path

import click

from gaitcli.configs import shipped_argument
from gaittrain.config import load_config
from gaittrain.device import setup, teardown
from gaittrain.trainer import train


@click.command("train")
@click.argument("config", callback=shipped_argument("config"))
@click.option(
    "--pack",
    "packs",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Pack(s) to train on (repeatable); their subjects are split by the protocol.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Run folder: config.yaml, log.jsonl, checkpoints/, tensorboard/.",
)
@click.option("--iterations", type=click.IntRange(1), help="Override train.iterations.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, help="Override the config's seed.")
@click.option(
    "--train-subjects",
    metavar="SEL",
    help="Training subjects instead of the protocol's: 001-074, 1-10,15, odd, first:N, last:N.",
)
@click.option("--checkpoint-every", type=click.IntRange(1), help="Override train.checkpoint_every.")
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any config key, e.g. --set optim.lr=0.001 (repeatable).",
)
def train_cmd(
    config,
    packs,
    out,
    iterations,
    device,
    seed,
    train_subjects,
    checkpoint_every,
    resume,
    overrides,
) -> None:
    """Train on PACKs with CONFIG: a YAML file, or the name of a shipped config (`gait configs
    list`: tiny, casia-b, ...; a file of that name wins). See docs/training.md, docs/losses.md.

    Runs on CPU, one GPU (AMP) or, started by torchrun, on many processes (DDP: NCCL on CUDA,
    gloo on CPU). Example: gait train tiny --pack build/demo/casia-b.h5 --out runs/tiny
    """
    extra = list(overrides)
    if iterations is not None:
        extra.append(f"train.iterations={iterations}")
    if seed is not None:
        extra.append(f"seed={seed}")
    if checkpoint_every is not None:
        extra.append(f"train.checkpoint_every={checkpoint_every}")
    cfg = load_config(config, extra)
    runtime = setup(device)
    try:
        summary = train(cfg, list(packs), out, runtime, resume=resume, train_split=train_subjects)
    finally:
        teardown()
    if runtime.main:
        click.echo(
            f"trained {summary['iterations']} iterations (from {summary['start']}) in "
            f"{summary['seconds']:.1f} s; run: {summary['run']}; "
            f"checkpoint: {summary['checkpoint']}",
            err=True,
        )
