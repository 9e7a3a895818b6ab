"""``gait gallery``: enrol named people for `gait identify`, list them, remove them."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gaitprep.pack import Pack
from gaittrain.device import resolve_device
from gaittrain.inference import gallery as galleries
from gaittrain.trained_model import load_model, pack_normalization, params_from

GALLERY = click.argument("gallery", type=click.Path(path_type=Path, dir_okay=False))


@click.group("gallery")
def gallery_group() -> None:
    """A gallery of named people (an HDF5 file) that `gait identify RUN GALLERY.h5 DIR` ranks.

    It records the model that embedded it and refuses another."""


@gallery_group.command("add")
@GALLERY
@click.argument("run", type=click.Path(path_type=Path, exists=True))
@click.argument("name")
@click.argument("seq_dir", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--pack",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="For a new gallery: normalize frames as this pack was (default: gait prep's defaults).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def add_cmd(gallery, run, name, seq_dir, pack, device) -> None:
    """Enrol the raw silhouette frames in SEQ_DIR (or the walker of a fixed camera's video,
    segmented first as `gait segment` does) as NAME, embedded by RUN's model."""
    dev = resolve_device(device)
    params = None
    if pack is not None:
        with Pack(pack) as p:
            params = params_from(pack_normalization(p))
    found = galleries.add(gallery, load_model(run, dev), name, seq_dir, dev, params)
    total = sum(found["sequences"].values())
    click.echo(
        f"{gallery}: added {name} ({found['frames_used']} of {found['frames_read']} frames); "
        f"{len(found['sequences'])} people, {total} sequences"
    )


@gallery_group.command("list")
@GALLERY
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def list_cmd(gallery, as_json) -> None:
    """The people enrolled in GALLERY and how many sequences each has."""
    found = galleries.listing(gallery)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(f"{gallery}: embedded by {found['checkpoint']}")
    for name, n in found["names"].items():
        click.echo(f"  {name:<20} {n} sequence{'s' if n != 1 else ''}")


@gallery_group.command("remove")
@GALLERY
@click.argument("name")
def remove_cmd(gallery, name) -> None:
    """Remove every sequence of NAME from GALLERY."""
    n = galleries.remove(gallery, name)
    click.echo(f"{gallery}: removed {name} ({n} sequence{'s' if n != 1 else ''})")
