"""``gait synth``: procedural raw silhouette datasets, a preview montage and a tree summary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import cv2
import numpy as np
from tqdm import tqdm

from gaitcli.options import SEED, workers_option
from gaitprep.files import write_png
from gaitprep.synth import (
    CASIA_B,
    LAYOUTS,
    Artifacts,
    SequenceSpec,
    SynthError,
    SynthJob,
    parse_subjects,
    render_sequence,
    summarize,
    synthesize,
)
from gaitprep.synth.wild import WildJob, synthesize_wild

#: The largest frame side `gait synth` draws (a 4K camera's width): a frame is held in memory
#: several times over while a sequence is rendered.
MAX_SIDE = 4096


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    w, sep, h = text.lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit()) or not all(
        16 <= int(v) <= MAX_SIDE for v in (w, h)
    ):
        raise click.BadParameter(
            f"{text!r} is not WIDTHxHEIGHT with both sides from 16 to {MAX_SIDE} (e.g. 320x240)"
        )
    return int(w), int(h)


def _artifacts(clean: bool, pairs: tuple[str, ...]) -> Artifacts:
    rates: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            rates[name.strip().replace("-", "_")] = float(value)
        except ValueError:
            raise click.BadParameter(f"{pair!r} is not NAME=RATE (e.g. speckle=0.5)") from None
        if not sep:
            raise click.BadParameter(f"{pair!r} is not NAME=RATE (e.g. speckle=0.5)")
    base = Artifacts.none() if clean else Artifacts()
    try:
        return base.with_rates(rates)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _progress(total_frames: int, per_seq: int, plan: str):
    """The progress bar; ``plan`` is printed first, once the output is locked and checked (so a
    refused run prints its reason alone)."""

    def wrap(results: Iterator[dict], n: int) -> Iterator[dict]:
        click.echo(plan, err=True)
        bar = tqdm(total=total_frames, unit="frame", unit_scale=True, desc="synth", smoothing=0.1)
        for r in results:
            bar.update(per_seq)
            yield r
        bar.close()

    return wrap


def _frames_option():
    return click.option(
        "--frames",
        type=click.IntRange(1, 10000),
        default=30,
        show_default=True,
        help="Frames per sequence (25 frames/s).",
    )


def _tree_options() -> list:
    """The options every tree-writing synth command shares: seed, workers, artifacts,
    overwrite."""
    return [
        click.option(
            "--seed",
            type=SEED,
            default=0,
            show_default=True,
            help="Population seed: same arguments + seed = identical bytes.",
        ),
        workers_option("Parallel processes."),
        click.option("--clean", is_flag=True, help="Switch every segmentation artifact off."),
        click.option(
            "--artifact",
            "artifact_rates",
            multiple=True,
            metavar="NAME=RATE",
            help="Set one artifact's rate (repeatable): speckle, ragged, holes, "
            "blob, empty (per frame); shadow, out_of_frame, short "
            "(per sequence). See docs/synth.md.",
        ),
        click.option(
            "--overwrite",
            is_flag=True,
            help="Replace an existing synth tree made with other arguments.",
        ),
    ]


def _apply(options: list):
    """A decorator applying ``options`` so that --help lists them in this order."""

    def decorate(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return decorate


def _options(layout_name: str):
    layout = LAYOUTS[layout_name]
    w, h = layout.size
    recordings = ", ".join(f"{c}-{s:02d}" for c, s in layout.recordings)

    return _apply(
        [
            click.argument("out", type=click.Path(path_type=Path)),
            click.option(
                "--subjects",
                default="10",
                show_default=True,
                help="How many subjects (ids 1..N), or ids and ranges: 1-74,80.",
            ),
            _frames_option(),
            click.option(
                "--views",
                default=None,
                help=f"Comma-separated view angles [default: all of "
                f"{', '.join(f'{v:03d}' for v in layout.views)}].",
            ),
            click.option(
                "--conditions",
                default=None,
                help=f"Comma-separated recordings [default: all of {recordings}]."
                + (
                    " A bare condition (nm) means all its numbers."
                    if layout_name == "casia-b"
                    else ""
                ),
            ),
            click.option(
                "--size",
                default=None,
                metavar="WxH",
                help=f"Frame size in pixels [default: {w}x{h}].",
            ),
            *_tree_options(),
        ]
    )


def _run(
    layout_name: str,
    out,
    subjects,
    frames,
    views,
    conditions,
    size,
    seed,
    workers,
    clean,
    artifact_rates,
    overwrite,
) -> None:
    layout = LAYOUTS[layout_name]
    try:
        job = SynthJob(
            layout=layout,
            subjects=parse_subjects(subjects),
            recordings=layout.parse_recordings(conditions),
            views=layout.parse_views(views),
            frames=frames,
            size=_size(size) or layout.size,
            seed=seed,
            artifacts=_artifacts(clean, artifact_rates),
        )
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    n = len(job.subjects) * len(job.recordings) * len(job.views)
    plan = (
        f"{layout.name}: {len(job.subjects)} subjects x {len(job.recordings)} recordings x "
        f"{len(job.views)} views = {n} sequences of {frames} frames -> {out}"
    )
    # A SynthError, another process writing OUT (OutputBusy) or an OSError: one line from gait's
    # error handler (cli/main.py).
    stats = synthesize(
        out, job, workers=workers, overwrite=overwrite, progress=_progress(n * frames, frames, plan)
    )
    skipped = f", {stats['skipped']} already there" if stats["skipped"] else ""
    click.echo(
        f"wrote {stats['frames']} frames in {stats['seconds']:.1f} s "
        f"({stats['frames_per_second']:.0f} frames/s){skipped}",
        err=True,
    )


@click.group()
def synth() -> None:
    """Make raw silhouette sequences with a procedural walker (no download needed).

    Each subject is a persistent 3D body (proportions, widths, stride, cadence, arm swing,
    posture) walking past a pinhole camera; bags (bg) and coats (cl) change the outline, and
    segmentation artifacts mimic real background subtraction. See docs/synth.md.
    """


@synth.command("casia-b")
@_options("casia-b")
def synth_casia_b(**kwargs) -> None:
    """Write OUT/{sid}/{cond}-{nn}/{view}/{sid}-{cond}-{nn}-{view}-{frame}.png (CASIA-B layout).

    Example: gait synth casia-b build/raw --subjects 24 --frames 30
    """
    _run("casia-b", **kwargs)


@synth.command("ou-mvlp")
@_options("ou-mvlp")
def synth_ou_mvlp(**kwargs) -> None:
    """Write OUT/Silhouette_{view}-{seq}/{sid}/{frame}.png (OU-MVLP layout).

    Example: gait synth ou-mvlp build/oumvlp --subjects 20 --size 640x490
    """
    _run("ou-mvlp", **kwargs)


def _wild_options(dataset: str):
    """The options of ``gait synth gait3d`` and ``gait synth grew``."""
    fixed = [
        click.argument("out", type=click.Path(path_type=Path)),
        click.option(
            "--subjects",
            default="20",
            show_default=True,
            help="How many subjects (ids 1..N), or ids and ranges: 1-74,80.",
        ),
        click.option(
            "--test",
            type=click.IntRange(1),
            default=None,
            help="How many of them (the last) are test subjects [default: a quarter].",
        ),
        click.option(
            "--sequences",
            type=click.IntRange(2, 100),
            default=4,
            show_default=True,
            help="Each training subject walks 2 to this many times"
            + (
                " (a test subject too)."
                if dataset == "gait3d"
                else "; a test subject 4 times, 2 gallery sequences and 2 probes."
            ),
        ),
        click.option(
            "--cameras",
            type=click.IntRange(1, 1000),
            default=12,
            show_default=True,
            help="Cameras in the pool (random heights, distances, pixel scales).",
        ),
    ]
    if dataset == "grew":
        fixed.append(
            click.option(
                "--distractors",
                type=click.IntRange(0),
                default=None,
                help="Sequences of walkers of no subject [default: as many as test subjects].",
            )
        )
    return _apply([*fixed, _frames_option(), *_tree_options()])


def _run_wild(dataset: str, out, subjects, test, sequences, cameras, frames, seed, workers,
              clean, artifact_rates, overwrite, distractors=0) -> None:  # fmt: skip
    try:
        ids = parse_subjects(subjects)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    test = test if test is not None else max(1, len(ids) // 4)
    job = WildJob(
        dataset=dataset,
        subjects=ids,
        test=test,
        sequences=sequences,
        cameras=cameras,
        distractors=test if distractors is None else distractors,
        frames=frames,
        seed=seed,
        artifacts=_artifacts(clean, artifact_rates),
    )
    plan = (
        f"{dataset}: {len(ids) - test} training + {test} test subjects, {cameras} cameras, "
        f"{frames} frames a sequence -> {out}"
    )
    n = len(job.plan()[0])
    stats = synthesize_wild(
        out, job, workers=workers, overwrite=overwrite, progress=_progress(n * frames, frames, plan)
    )
    skipped = f", {stats['skipped']} already there" if stats["skipped"] else ""
    click.echo(
        f"wrote {stats['sequences']} sequences, {stats['frames']} frames in "
        f"{stats['seconds']:.1f} s{skipped}",
        err=True,
    )


@synth.command("gait3d")
@_wild_options("gait3d")
def synth_gait3d(**kwargs) -> None:
    """Write OUT/2D_Silhouettes/{id}/camid{k}_videoid{v}/seq{n}/*.png (Gait3D's layout: each
    frame the walker's box, of its own size) and OUT/Gait3D.json (TRAIN_SET, TEST_SET and one
    probe per test subject in PROBE_SET). The walkers of gait synth casia-b, filmed by many
    cameras, on curved paths, partly occluded, at low resolution. See docs/synth.md.

    Example: gait synth gait3d build/gait3d --subjects 40 && gait prep gait3d
    build/gait3d/2D_Silhouettes build/gait3d.h5
    """
    _run_wild("gait3d", **kwargs)


@synth.command("grew")
@_wild_options("grew")
def synth_grew(**kwargs) -> None:
    """Write OUT/train/{id}/{seq}/, OUT/test/gallery/{id}/{seq}/, OUT/test/probe/{seq}/ and
    OUT/distractor/{seq}/ (GREW's layout, 64x64 frames) and OUT/probe_answers.csv (each probe's
    test subject, to score a submission). The walkers of gait synth casia-b in the wild, as for
    gait synth gait3d. See docs/synth.md.

    Example: gait synth grew build/grew --subjects 40 && gait prep grew build/grew build/grew.h5
    """
    _run_wild("grew", **kwargs)


def _video_conditions(f):
    """The options of :class:`gaitprep.synth.video.Conditions`, one per condition."""
    options = [
        ("--drift", click.FloatRange(-0.4, 0.4), 0.0,
         "Brightness change over the clip, linear: 0.2 ends 20 % brighter."),
        ("--jumps", click.IntRange(0, 5), 0,
         "Sudden exposure steps of 15-30 % (up or down) at seeded frames."),
        ("--colour-drift", click.FloatRange(-0.3, 0.3), 0.0,
         "Colour temperature over the clip: red gains this fraction, blue loses it."),
        ("--noise", click.FloatRange(0, 30), 3.0,
         "Camera noise, standard deviation in grey levels."),
        ("--contrast", click.FloatRange(0, 1), 1.0,
         "The clothes' colour: 1 dark, 0 the scene's mean colour."),
        ("--shadow", click.FloatRange(0, 0.8), 0.0,
         "How much the walker's ground shadow darkens the scene (0: no shadow)."),
        ("--distractors", click.IntRange(0, 3), 1,
         "0 none, 1 a swaying shrub, 2 also a swaying pole, 3 also a rolling ball."),
        ("--lamps", click.IntRange(0, 3), 0,
         "Lamps switched on at seeded frames, each lighting one side of the scene 30-60 % more."),
    ]  # fmt: skip
    for name, kind, default, text in reversed(options):
        f = click.option(name, type=kind, default=default, show_default=True, help=text)(f)
    return f


@synth.command("video")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--subject", type=click.IntRange(1), default=1, show_default=True)
@click.option("--condition", type=click.Choice(["nm", "bg", "cl"]), default="nm", show_default=True)
@click.option("--seq", type=click.IntRange(1), default=1, show_default=True)
@click.option("--view", type=click.IntRange(0, 359), default=90, show_default=True)
@click.option("--frames", type=click.IntRange(1), default=40, show_default=True)
@click.option("--empty", type=click.IntRange(0), default=20, show_default=True,
              help="Frames of the empty scene before the walker enters.")  # fmt: skip
@click.option("--size", default="320x240", show_default=True, metavar="WxH", help="Frame size.")
@_video_conditions
@click.option("--seed", type=SEED, default=0, show_default=True)
def synth_video(out, subject, condition, seq, view, frames, empty, size, seed, **conditions):
    """Write OUT (mp4): a fixed camera filming one synthetic walker (the subject of `gait synth
    casia-b --seed SEED`) in a textured scene with a slow lighting wobble, camera noise and a
    swaying shrub, and its true masks in OUT.masks/ (for `gait segment`'s measurements). The
    condition options add what a real camera meets; the same arguments give the same bytes.

    Example: gait synth video build/walk.mp4 --subject 3 --drift 0.2 --shadow 0.4 && gait segment
    build/walk.mp4 build/sil
    """
    from gaitprep.synth.video import Conditions, render_video, write_video

    video, masks = render_video(
        subject,
        condition,
        seq,
        view,
        frames,
        size=_size(size),
        seed=seed,
        empty=empty,
        conditions=Conditions(**conditions),
    )
    folder = write_video(out, video, masks)
    click.echo(f"{out}: {len(video)} frames ({empty} of the empty scene); true masks in {folder}")


@synth.command("preview")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--subject", type=click.IntRange(1), default=1, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--frame",
    type=click.IntRange(1),
    default=12,
    show_default=True,
    help="Which frame of each sequence to show.",
)
@click.option(
    "--clean/--artifacts",
    default=True,
    show_default=True,
    help="Show clean silhouettes or the default artifacts.",
)
def synth_preview(out: Path, subject: int, seed: int, frame: int, clean: bool) -> None:
    """Write a PNG montage of one subject: 11 CASIA-B views (columns) x nm, bg-01, bg-02, cl."""
    w, h = CASIA_B.size
    rows = []
    for cond, seq in (("nm", 1), ("bg", 1), ("bg", 2), ("cl", 1)):
        row = []
        for view in CASIA_B.views:
            spec = SequenceSpec(
                "casia-b",
                subject,
                cond,
                seq,
                view,
                frame,
                w,
                h,
                seed,
                Artifacts.none() if clean else Artifacts(),
            )
            img = render_sequence(spec)[-1]
            img = cv2.rectangle(img.copy(), (0, 0), (w - 1, h - 1), 90, 1)
            row.append(img)
        rows.append(np.hstack(row))
    montage = cv2.resize(np.vstack(rows), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    write_png(out, montage)
    click.echo(f"wrote {out} ({montage.shape[1]}x{montage.shape[0]})")


@synth.command("summary")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def synth_summary(root: Path, as_json: bool) -> None:
    """Count the sequences, frames and bytes of a raw tree."""
    try:
        info = summarize(root)
    except SynthError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    job = info["job"] or {}
    click.echo(f"tree       {info['root']}")
    if job:
        click.echo(f"dataset    {job['dataset']} (seed {job['seed']})")
        click.echo(f"subjects   {len(job['subjects'])}")
        if "recordings" in job:  # casia-b, ou-mvlp
            click.echo(f"recordings {', '.join(job['recordings'])}")
            click.echo(f"views      {', '.join(f'{v:03d}' for v in job['views'])}")
        else:  # gait3d, grew
            click.echo(f"test       {job['test']} subjects; {job['cameras']} cameras")
    click.echo(f"sequences  {info['sequences']}")
    click.echo(f"frames     {info['frames']} ({info['megabytes']} MB of PNG)")
    if info["complete"] is not None:
        click.echo(f"complete   {'yes' if info['complete'] else 'no (run the same command again)'}")
