"""``gait import-checkpoint``: an OpenGait checkpoint as a gait run folder."""

from __future__ import annotations

from pathlib import Path

import click

from gaittrain.opengait import import_checkpoint


@click.command("import-checkpoint")
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--config",
    "config",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The OpenGait YAML the checkpoint was trained with (its model_cfg section is read).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The run folder to write (new or empty).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a key of the run's gait config, e.g. --set data.height=128 (repeatable).",
)
def import_checkpoint_cmd(checkpoint, config, out, overrides) -> None:
    """Convert an OpenGait CHECKPOINT (GaitSet, Baseline: GaitBase, DeepGaitV2, GaitPart,
    GaitGL) into a gait run folder that `gait eval`, `gait embed` and `gait identify` use like
    any run.

    Example: gait import-checkpoint GaitBase_DA-60000.pt --config gaitbase_da_casiab.yaml
    --out runs/gaitbase-opengait
    """
    s = import_checkpoint(checkpoint, config, out, list(overrides))
    click.echo(
        f"imported OpenGait {s['opengait_model']} (iteration {s['iteration']}) as gait model "
        f"{s['model']}, {s['parts']} parts x {s['dim']}: {s['checkpoint']}; its training "
        "subjects are not recorded (see data.json)"
    )
