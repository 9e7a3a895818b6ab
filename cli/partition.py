"""``gait import-partition``: OpenGait's partition file of a dataset as a gait protocol file."""

from __future__ import annotations

from pathlib import Path

import click

from gaittrain.data.splits import write_partition_protocol


@click.command("import-partition")
@click.argument("partition", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", help="The protocol's name [default: OUT's name without .yaml].")
@click.option("--dataset", help="The dataset it splits [default: the name].")
def import_partition_cmd(partition, out, name, dataset) -> None:
    """Write OpenGait's partition file PARTITION (datasets/DATASET/DATASET.json, whose TRAIN_SET
    and TEST_SET list the ids) as the protocol file OUT: train and test as selectors that name
    exactly those ids (runs of numbers as ranges), for data.protocol, --protocol and `gait eval`.

    \b
    Example (Gait3D's 3,000 training ids are not a range):
      gait import-partition Gait3D.json gait3d.yaml
      gait train gaitbase-gait3d --pack gait3d.h5 --out runs/gaitbase-gait3d
    """
    protocol = write_partition_protocol(partition, out, name, dataset)
    click.echo(f"wrote {out}: protocol {protocol['name']} of {protocol['dataset']}")
