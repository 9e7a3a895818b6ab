"""``gait segment``: silhouettes of a walker from a fixed camera's video or frames."""

from __future__ import annotations

from pathlib import Path

import click

from gaitprep.segment import METHODS, doubts, segment_to_folder


@click.command("segment")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(METHODS), default="adaptive", show_default=True,
              help="The background model: adaptive (follows the scene's lighting, never the "
              "walker), or OpenCV's mog2 or knn.")  # fmt: skip
@click.option(
    "--learn-frames",
    type=click.IntRange(0),
    default=20,
    show_default=True,
    help="The first frames, showing the empty scene, that only teach the background.",
)
@click.option(
    "--background",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="An image of the empty scene to learn from instead.",
)
@click.option("--min-area", type=click.IntRange(1), default=400, show_default=True,
              help="Pixels a blob needs to be the walker.")  # fmt: skip
@click.option(
    "--preview",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also show the masks over the video: FILE.mp4 (every frame) or FILE.png / .jpg (8 "
    "frames).",
)
def segment_cmd(source, out, method, learn_frames, background, min_area, preview) -> None:
    """Write binary silhouettes (OUT/NNNNNN.png) of the walker in SOURCE, a video (any format
    OpenCV reads) or a folder of frames from a fixed camera, for `gait identify` or `gait prep`.

    Example: gait segment walk.mp4 walk-silhouettes && gait identify RUN people.h5 walk-silhouettes
    """
    found, n = segment_to_folder(
        source,
        out,
        preview,
        method=method,
        learn_frames=learn_frames,
        background=background,
        min_area=min_area,
    )
    rejected = sum(found.rejected.values())
    why = ", ".join(f"{v} {k}" for k, v in sorted(found.rejected.items()))
    click.echo(
        f"{out}: {n} silhouettes of {found.read} frames ({found.learned} learned from, "
        f"{found.skipped} without a walker skipped, {rejected} rejected{': ' if why else ''}{why})"
    )
    for line in doubts(found):
        click.echo(f"warning: {line}", err=True)
