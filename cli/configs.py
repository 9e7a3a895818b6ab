"""``gait configs``: the configs and studies shipped with gait, by name (gaittrain.shipped)."""

from __future__ import annotations

from pathlib import Path

import click

from gaittrain import shipped


def shipped_argument(kind: str):
    """A click callback for a CONFIG or STUDY argument: a file that exists, else the shipped
    ``kind`` of that name (:func:`gaittrain.shipped.resolve`), as a :class:`~pathlib.Path`."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
        if value is None:
            return None
        try:
            return shipped.resolve(value, kind)
        except shipped.ShippedError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None

    return callback


@click.group("configs")
def configs_group() -> None:
    """The configs and studies shipped with gait, usable by name wherever gait is installed.

    \b
    gait train tiny --pack P.h5 --out RUN       a shipped config by its name
    gait study loss-demo --pack P.h5 --out DIR  a shipped study (or studies/loss-demo)
    gait configs show tiny > my.yaml            a copy to edit; gait train my.yaml ...

    A file that exists wins over a name: gait train configs/tiny.yaml in a checkout, or any
    YAML file of your own.
    """


@configs_group.command("list")
def list_cmd() -> None:
    """The shipped configs and studies: name and the first sentence of its comment."""
    entries = shipped.shipped()
    width = max((len(s.name) for s in entries), default=0)
    for kind in shipped.KINDS:
        click.echo(f"{shipped.PLURAL[kind]} ({shipped.USE[kind]} NAME):")
        for s in (s for s in entries if s.kind == kind):
            click.echo(f"  {s.name:<{width}}  {s.describe()}".rstrip())


@configs_group.command("show")
@click.argument("name")
@click.option("--path", "as_path", is_flag=True, help="Print the file's path instead of its text.")
def show_cmd(name: str, as_path: bool) -> None:
    """Print the YAML of the shipped config or study NAME (see `gait configs list`)."""
    found = shipped.find(name)
    if as_path:
        click.echo(str(found.path))
    else:
        click.echo(found.path.read_text(encoding="utf-8"), nl=False)
