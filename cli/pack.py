"""``gait inspect`` and ``gait pack merge``: look into packs and combine shards."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gaitcli.options import SEED
from gaitprep.files import write_png
from gaitprep.inspect import montage, summarize, verify
from gaitprep.merge import merge_packs
from gaitprep.pack import Pack, PackError


@click.command("inspect")
@click.argument("pack", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--verify",
    "check",
    is_flag=True,
    help="Read every sequence and check it against its CRC-32; exit 1 naming the damaged ones.",
)
@click.option(
    "--montage",
    "montage_png",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write a PNG of sample sequences (rows) and frames (columns).",
)
@click.option(
    "--sequences", type=click.IntRange(1), default=8, show_default=True, help="Rows of the montage."
)
@click.option(
    "--seed", type=SEED, default=0, show_default=True, help="Which sequences the montage shows."
)
def inspect_cmd(
    pack: Path, as_json: bool, check: bool, montage_png: Path | None, sequences: int, seed: int
) -> None:
    """Summarize a pack: subjects, conditions, views, sequences, frames, lengths.

    --verify reads the whole pack and checks each sequence against the checksum stored with it
    (docs/pack-format.md); a damaged pack exits with status 1 and no montage is written.
    """
    damaged = None
    with Pack(pack) as p:
        info = summarize(p)
        if check:
            damaged = verify(p, progress=True)
            info["verify"] = {
                "sequences": len(p),
                "damaged": [{"sequence": k, "reason": r} for k, r in damaged],
            }
        if montage_png is not None and not damaged:
            img = montage(p, sequences=sequences, seed=seed)
            write_png(montage_png, img)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        _print_summary(info, montage_png if not damaged else None)
        for key, reason in damaged or []:
            click.echo(f"damaged    {key}: {reason}")
        if damaged == []:
            click.echo(f"verified   {info['sequences']} sequences: every checksum matches")
    if damaged:
        keys = [k for k, _ in damaged]
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        raise PackError(
            f"{pack}: {len(keys)} of {info['sequences']} sequences are damaged ({shown}); "
            "re-make the pack with `gait prep`"
        )


def _print_summary(info: dict, montage_png: Path | None) -> None:
    click.echo(
        f"pack       {info['path']} ({info['format']} v{info['version']}, "
        f"{info['dataset']}, {info['size']}x{info['size']})"
    )
    click.echo(f"subjects   {info['subjects']}")
    click.echo("conditions " + ", ".join(f"{k}: {v}" for k, v in info["conditions"].items()))
    click.echo("views      " + ", ".join(f"{k}: {v}" for k, v in info["views"].items()))
    click.echo(f"sequences  {info['sequences']}")
    click.echo(
        f"frames     {info['frames']} (per sequence: min {info['length']['min']}, "
        f"mean {info['length']['mean']}, max {info['length']['max']})"
    )
    click.echo("lengths    " + "  ".join(f"{k}: {v}" for k, v in info["length_histogram"].items()))
    if montage_png is not None:
        click.echo(f"montage    {montage_png}")


@click.group("pack")
def pack_group() -> None:
    """Operations on gait packs."""


@pack_group.command("merge")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.argument(
    "shards", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True)
)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
def merge_cmd(out: Path, shards: tuple[Path, ...], overwrite: bool) -> None:
    """Combine the shards written by `gait prep ... --shard K/N` into OUT (sorted by key).

    All N shards of one job must be given; manifests are combined too when present.
    """
    info = merge_packs(out, list(shards), overwrite=overwrite)
    click.echo(f"wrote {info['pack']}: {info['sequences']} sequences from {info['shards']} shards")
