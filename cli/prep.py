"""``gait prep``: raw silhouette frames -> one HDF5 gait pack (+ manifest)."""

from __future__ import annotations

from pathlib import Path

import click

from gaitcli.options import workers_option
from gaitprep.layout import PRESETS
from gaitprep.pack import COMPRESSIONS
from gaitprep.prep import PrepJob, run_prep
from gaitprep.process import Params


def _shard(ctx, param, text: str | None) -> tuple[int, int]:
    if text is None:
        return (1, 1)
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit()) or not 1 <= int(k) <= int(n):
        raise click.BadParameter(f"{text!r} is not K/N with 1 <= K <= N (e.g. 3/8)")
    return int(k), int(n)


def _options(f):
    opts = [
        click.argument("raw", type=click.Path(path_type=Path, file_okay=False)),
        click.argument("packed", type=click.Path(path_type=Path, dir_okay=False)),
        click.option(
            "--size",
            type=click.Choice(["64", "128"]),
            default="64",
            show_default=True,
            help="Output frame size S (S x S).",
        ),
        click.option(
            "--min-sum",
            type=click.IntRange(0),
            default=10000,
            show_default=True,
            help="Drop frames whose grey-value sum is at most this (10000: ~40 white px).",
        ),
        click.option(
            "--min-frames",
            type=click.IntRange(1),
            default=5,
            show_default=True,
            help="Flag sequences with fewer kept frames in the manifest (still written).",
        ),
        click.option("--binarize", is_flag=True, help="Threshold frames at 127 after resizing."),
        click.option(
            "--largest-blob",
            is_flag=True,
            help="Keep only the largest connected component (drops shadows, specks).",
        ),
        click.option(
            "--compression",
            type=click.Choice(COMPRESSIONS),
            default="gzip",
            show_default=True,
            help="Frame compression in the pack (gzip level 1).",
        ),
        workers_option("Parallel reader/normalizer processes."),
        click.option(
            "--shard",
            callback=_shard,
            metavar="K/N",
            help="Write only the K-th of N disjoint shards (K from 1); combine them "
            "with `gait pack merge`.",
        ),
        click.option("--overwrite", is_flag=True, help="Replace an existing pack."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _run(
    dataset: str,
    layout: str,
    raw: Path,
    packed: Path,
    size,
    min_sum,
    min_frames,
    binarize,
    largest_blob,
    compression,
    workers,
    shard,
    overwrite,
) -> None:
    job = PrepJob(
        raw=raw,
        out=packed,
        dataset=dataset,
        layout=layout,
        params=Params(int(size), min_sum, binarize, largest_blob),
        min_frames=min_frames,
        compression=compression,
        shard=shard,
    )
    m = run_prep(job, workers=workers, overwrite=overwrite, progress=True)
    f, s = m["frames"], m["sequences"]
    click.echo(
        f"wrote {packed}: {s['written']} sequences, {f['kept']} frames "
        f"({f['dropped']} dropped, {f['unreadable']} unreadable, {len(s['empty'])} empty "
        f"sequences, {len(s['short'])} short) in {m['seconds']:.1f} s "
        f"({m['frames_per_second'] or 0:.0f} frames/s)" + (" [resumed]" if m["resumed"] else ""),
        err=True,
    )
    click.echo(f"manifest: {packed}.manifest.json", err=True)


@click.group()
def prep() -> None:
    """Normalize raw silhouette frames into one HDF5 pack (docs/prep.md, docs/pack-format.md).

    Each frame is cropped to its rows, resized to height S, centred on its column mass and cut to
    S x S; frames with too little foreground are dropped and listed in PACKED.manifest.json with
    the reason. Interrupted runs (Ctrl-C, kill, a full disk) resume when the same command is run
    again; one run at a time writes a PACKED, a second is refused naming the first.
    """


@prep.command("casia-b")
@_options
def prep_casia_b(**kw) -> None:
    """RAW in the CASIA-B layout ({subject}/{cond}-{nn}/{view}/*.png) -> PACKED.

    Example: gait prep casia-b sample_data/casia-b build/sample.h5
    """
    _run("casia-b", PRESETS["casia-b"], **kw)


@prep.command("ou-mvlp")
@_options
def prep_ou_mvlp(**kw) -> None:
    """RAW in the OU-MVLP layout (Silhouette_{view}-{seq}/{subject}/*.png) -> PACKED.

    Reads the downloaded layout directly: no symlink rearrangement needed.
    """
    _run("ou-mvlp", PRESETS["ou-mvlp"], **kw)


@prep.command("folder")
@click.option(
    "--layout",
    required=True,
    metavar="PATTERN",
    help="Path pattern of a frame relative to RAW, with {subject} and optionally "
    "{condition}, {seq}, {view}; the last part is a file glob. "
    "Example: '{subject}/{condition}-{seq}/{view}/*.png'.",
)
@_options
def prep_folder(layout: str, **kw) -> None:
    """RAW in any layout described by --layout -> PACKED (png, jpg or bmp frames)."""
    _run("folder", layout, **kw)
