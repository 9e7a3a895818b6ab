"""``gait prep``: raw silhouette frames -> one HDF5 gait pack (+ manifest)."""

from __future__ import annotations

from pathlib import Path

import click

from gaitcli.options import workers_option
from gaitprep.layout import PRESETS
from gaitprep.opengait import LAYOUTS as OPENGAIT_LAYOUTS
from gaitprep.opengait import MIN_SUM, opengait_params
from gaitprep.pack import COMPRESSIONS
from gaitprep.prep import PrepJob, run_prep
from gaitprep.process import Params
from gaitprep.wild import DATASETS as WILD_DATASETS
from gaitprep.wild import layout as wild_layout
from gaitprep.wild_frames import MIN_SUM as WILD_MIN_SUM


def _shard(ctx, param, text: str | None) -> tuple[int, int]:
    if text is None:
        return (1, 1)
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit()) or not 1 <= int(k) <= int(n):
        raise click.BadParameter(f"{text!r} is not K/N with 1 <= K <= N (e.g. 3/8)")
    return int(k), int(n)


def _option_table() -> dict:
    """Every argument and option of the image commands, by name, in their order."""
    return {
        "raw": click.argument("raw", type=click.Path(path_type=Path, file_okay=False)),
        "packed": click.argument("packed", type=click.Path(path_type=Path, dir_okay=False)),
        "size": click.option(
            "--size",
            type=click.Choice(["64", "128"]),
            default="64",
            show_default=True,
            help="Output frame size S (S x S).",
        ),
        "min_sum": click.option(
            "--min-sum",
            type=click.IntRange(0),
            default=10000,
            show_default=True,
            help="Drop frames whose grey-value sum is at most this (10000: ~40 white px).",
        ),
        "min_frames": click.option(
            "--min-frames",
            type=click.IntRange(1),
            default=5,
            show_default=True,
            help="Flag sequences with fewer kept frames in the manifest (still written).",
        ),
        "binarize": click.option(
            "--binarize", is_flag=True, help="Threshold frames at 127 after resizing."
        ),
        "largest_blob": click.option(
            "--largest-blob",
            is_flag=True,
            help="Keep only the largest connected component (drops shadows, specks).",
        ),
        "compression": click.option(
            "--compression",
            type=click.Choice(COMPRESSIONS),
            default="gzip",
            show_default=True,
            help="Frame compression in the pack (gzip level 1).",
        ),
        "workers": workers_option("Parallel reader/normalizer processes."),
        "shard": click.option(
            "--shard",
            callback=_shard,
            metavar="K/N",
            help="Write only the K-th of N disjoint shards (K from 1); combine them "
            "with `gait pack merge`.",
        ),
        "overwrite": click.option("--overwrite", is_flag=True, help="Replace an existing pack."),
    }


def _apply(f, opts):
    for opt in reversed(opts):
        f = opt(f)
    return f


def _options(f):
    return _apply(f, list(_option_table().values()))


def _ccpg_options(f):
    """The image commands' options, --min-sum 0 by default (OpenGait's CCPG script drops no frame
    for too little foreground)."""
    t = _option_table()
    t["min_sum"] = click.option(
        "--min-sum",
        type=click.IntRange(0),
        default=WILD_MIN_SUM["ccpg"],
        show_default=True,
        help="Drop frames whose grey-value sum is at most this (0: only empty frames).",
    )
    return _apply(f, list(t.values()))


def _frames_size_option(help_text: str):
    return click.option(
        "--size",
        type=click.Choice(["64", "128"]),
        default="64",
        show_default=True,
        help=help_text,
    )


def _grew_options(f):
    """The image commands' options less the normalization ones: GREW's frames are stored as they
    are."""
    t = _option_table()
    for name in ("min_sum", "binarize", "largest_blob"):
        del t[name]
    t["size"] = _frames_size_option(
        "Frame size S of GREW's frames (64 as GREW distributes them); a frame of another size "
        "is listed in the manifest and not written."
    )
    return _apply(f, list(t.values()))


def _opengait_options(f):
    """The image commands' options less the normalization ones, with --layout and --size as
    OpenGait's pickles need them."""
    t = _option_table()
    for name in ("min_sum", "binarize", "largest_blob"):
        del t[name]
    t["raw"] = click.argument(
        "raw", metavar="PKL_ROOT", type=click.Path(path_type=Path, file_okay=False)
    )
    t["size"] = _frames_size_option(
        "Frame size S of the pickles (OpenGait's pretreatment.py --img_size); a pickle of "
        "another size is listed in the manifest and not written."
    )
    layout = click.option(
        "--layout",
        default=None,
        metavar="PRESET|PATTERN",
        help="casia-b (the default): {subject}/{condition}-{seq}/{view}/*.pkl; ou-mvlp: "
        "{subject}/{seq}/{view}/*.pkl (OpenGait's rearranged OU-MVLP); or a pattern as for "
        "`gait prep folder` whose file glob picks one .pkl per sequence folder.",
    )
    dataset = click.option(
        "--dataset",
        type=click.Choice(WILD_DATASETS),
        default=None,
        help="The pickles are OpenGait's of Gait3D, GREW or CCPG: their layout and keys "
        "(docs/prep.md); not with --layout.",
    )
    opts = list(t.values())
    return _apply(f, [*opts[:2], layout, dataset, *opts[2:]])


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
    reader: str = "images",
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
        reader=reader,
    )
    _execute(job, workers, overwrite)


def _execute(job: PrepJob, workers: int, overwrite: bool) -> dict:
    """Run ``job`` with a progress bar and print its summary; returns the manifest."""
    packed = job.out
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
    return m


@click.group()
def prep() -> None:
    """Normalize raw silhouette frames into one HDF5 pack (docs/prep.md, docs/pack-format.md).

    Each frame is cropped to its rows, resized to height S, centred on its column mass and cut to
    S x S; frames with too little foreground are dropped and listed in PACKED.manifest.json with
    the reason. Interrupted runs (Ctrl-C, kill, a full disk) resume when the same command is run
    again; one run at a time writes a PACKED, a second is refused naming the first.
    `gait prep opengait` imports OpenGait's pickles, already normalized, as they are; `gait prep
    gait3d`, `grew` and `ccpg` make those datasets' frames as OpenGait's pretreatment of each does.
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


@prep.command("gait3d")
@_options
def prep_gait3d(**kw) -> None:
    """RAW in the Gait3D layout ({id}/{camid}_{videoid}/{seq}/*.png) -> PACKED.

    RAW is Gait3D's 2D_Silhouettes folder. Frames are normalized as for CASIA-B (OpenGait's
    pretreatment.py). Keys: subject = id, condition = videoid, seq = seq, view = camid
    (docs/prep.md).

    Example: gait prep gait3d Gait3D/2D_Silhouettes build/gait3d.h5
    """
    _run("gait3d", wild_layout("gait3d"), **kw)


@prep.command("grew")
@_grew_options
def prep_grew(**kw) -> None:
    """RAW in the GREW layout (train/, test/gallery/, test/probe/, distractor/) -> PACKED.

    RAW is the folder GREW's archives unpack to. GREW's frames are already 64 x 64 and are
    stored as they are, as OpenGait's pretreatment.py --dataset GREW keeps them. Test probes and
    distractors have no known subject: the pack marks them (/sequences/labelled, pack version
    3). Keys and OpenGait's labels: docs/prep.md.

    Example: gait prep grew GREW build/grew.h5
    """
    frames = {"min_sum": WILD_MIN_SUM["grew"], "binarize": False, "largest_blob": False}
    _run("grew", wild_layout("grew"), reader="as-they-are", **frames, **kw)


@prep.command("ccpg")
@_ccpg_options
def prep_ccpg(**kw) -> None:
    """RAW in the CCPG layout ({id}/{type}/{camera}_{n}/*.png) -> PACKED.

    Frames are normalized as OpenGait's datasets/CCPG/organize_ccpg.py does: the standard steps,
    resized by area, no frame dropped for too little foreground (--min-sum 0). Keys: subject =
    id, condition = type (U0_D0_BG), seq = n, view = camera (docs/prep.md).

    Example: gait prep ccpg CCPG/silhouettes build/ccpg.h5
    """
    _run("ccpg", wild_layout("ccpg"), reader="area", **kw)


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


#: How many refused pickles `gait prep opengait` names on the terminal (the manifest has all).
SHOW_REFUSED = 5


@prep.command("opengait")
@_opengait_options
def prep_opengait(
    layout, dataset, raw, packed, size, min_frames, compression, workers, shard, overwrite
) -> None:
    """OpenGait's pickles under PKL_ROOT -> PACKED, frames stored as they are.

    PKL_ROOT is the output of OpenGait's datasets/pretreatment.py: one pickle per sequence,
    {subject}/{type}-{seq}/{view}/{view}.pkl, each a uint8 array [frames, S, S] of silhouettes
    OpenGait has already normalized. Sequence keys are those `gait prep casia-b` (or, with
    --layout ou-mvlp, `gait prep ou-mvlp`) gives, so protocols work unchanged. With --dataset
    gait3d, grew or ccpg, the pickles are OpenGait's of that dataset, keyed as `gait prep
    gait3d` (grew, ccpg) keys them (docs/prep.md).

    Pickles are read by a restricted unpickler that builds numpy arrays and nothing else: a pickle
    that asks for anything else (a function, a class) is refused before any of it runs. Refused,
    damaged, empty, non-uint8 or non-3-D pickles are listed in PACKED.manifest.json with their
    reason, and the run goes on (docs/opengait.md).

    Example: gait prep opengait CASIA-B-pkl build/casia-b.h5
    """
    if dataset is not None and layout is not None:
        raise click.UsageError("--dataset sets the layout; give --dataset or --layout, not both")
    if dataset is None:
        layout = OPENGAIT_LAYOUTS.get(layout or "casia-b", layout)
    else:
        layout = wild_layout(dataset, pickles=True)
    job = PrepJob(
        raw=raw,
        out=packed,
        dataset=dataset or "opengait",
        layout=layout,
        params=opengait_params(int(size), WILD_MIN_SUM[dataset] if dataset else MIN_SUM),
        min_frames=min_frames,
        compression=compression,
        shard=shard,
        reader="opengait",
    )
    refused = _execute(job, workers, overwrite)["unreadable"]
    for u in refused[:SHOW_REFUSED]:
        click.echo(f"not written: {u['file']}: {u['reason']}", err=True)
    if len(refused) > SHOW_REFUSED:
        click.echo(f"... and {len(refused) - SHOW_REFUSED} more in the manifest", err=True)
