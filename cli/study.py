"""``gait study``: a grid of training runs from a YAML file, evaluated and summarized."""

from __future__ import annotations

from pathlib import Path

import click

from gaitcli.configs import shipped_argument
from gaittrain.study.runner import commands, run_study
from gaittrain.study.spec import load_study
from gaittrain.study.summary import summary_lines, write_summary


@click.command("study")
@click.argument("study_file", metavar="STUDY", callback=shipped_argument("study"))
@click.option(
    "--pack",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The pack the runs train, validate and test on.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Study folder: runs/NAME (run folders), evals/NAME.json, tune/VARIANT/trial-NN "
    "(trials), study.json, study.html.",
)
@click.option(
    "--list",
    "as_list",
    is_flag=True,
    help="Print one `gait study ... --trial VARIANT:I` a trial, then one `... --run I` a run.",
)
@click.option(
    "--run", "only", type=click.IntRange(0), metavar="I", help="Train and evaluate run I only."
)
@click.option(
    "--trial",
    metavar="VARIANT:I",
    help="Train trial I of VARIANT's tuning only (and score it on the validation subjects).",
)
@click.option(
    "--summarize",
    is_flag=True,
    help="Only write study.json, study.html and study.md (+ figures/) from the results there are.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Train again, from scratch, the runs whose config the study file changed.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def study_cmd(study_file, pack, out, as_list, only, trial, summarize, overwrite, device) -> None:
    """Train, evaluate and compare a grid of runs declared in STUDY (docs/study.md): a YAML
    file, or a shipped study's name (`gait configs list`: loss-demo or studies/loss-demo, ...; a
    file of that name wins).

    Every run is an ordinary run folder (OUT/runs/NAME) trained on the training subjects less
    the validation split, evaluated on the validation subjects at every eval_every-th
    iteration and at the end on the test subjects (rank-1 of each probe group, as `gait eval`
    computes it). The grid is the product of the axes; the seed axis holds the replicates.
    Running the same command again skips what is done and resumes a run that stopped; a study
    file changed so that an existing run's config differs is refused (--overwrite retrains
    those runs). Without --run, every run that is not done is trained, then OUT/study.json and
    OUT/study.html are written: the mean and 95 % t interval across seeds per checkpoint and at
    the end, paired differences with the reference variant (t-test p, bootstrap interval) and
    the iterations to reach the target.

    With a tune: section every variant first gets the same number of trials of a seeded random
    search (OUT/tune/VARIANT/trial-NN, scored on the validation subjects only, never on the test
    subjects); its runs then use the values of its best trial (a tune axis with values default
    and tuned gives both). Without --run, the trials come first.

    \b
    On a cluster: gait study S.yaml --pack P.h5 --out D --list   (one command per trial, then
    one per run, for Slurm: the trials first), then gait study S.yaml --pack P.h5 --out D
    --summarize once they are done.

    \b
    Example study file (configs/studies/loss-demo.yaml):
      base: ../tiny.yaml            # a config path (relative to this file) or a mapping
      overrides: {train.log_every: 50}  # dotted config keys, for every run
      train: first:20               # training subjects (a selector, as --train-subjects)
      validation: last:4            # taken out of them; the runs train on the rest
      test: 021-040                 # test subjects
      protocol: casia-b-lt          # probe groups and gallery (default casia-b-lt)
      eval_every: 250               # evaluate every 250 iterations (sets checkpoint_every)
      target: 85                    # validation NM rank-1 (%) for "iterations to reach"
      reference: center_ranked-4x4  # compare the others with it (default: the first)
      axes:
        - key: loss
          values: [center_ranked, triplet, ranked_list]
        - key: data.batch
          values: [{p: 4, k: 4}, {p: 8, k: 8}]
          labels: [4x4, 8x8]
        - key: seed
          values: [0, 1, 2, 3, 4]
    """
    modes = [name for name, on in (("--list", as_list), ("--summarize", summarize)) if on]
    if only is not None:
        modes.append("--run")
    if trial is not None:
        modes.append("--trial")
    if len(modes) > 1:
        raise click.UsageError(f"{' and '.join(modes)} exclude each other")
    study = load_study(study_file)
    if as_list:
        for line in commands(study_file, pack, out, study, device):
            click.echo(line)
        return

    def note(line: str) -> None:
        click.echo(line, err=True)

    if not summarize:
        run_study(
            study,
            pack,
            out,
            only=only,
            trial=trial,
            device=device,
            overwrite=overwrite,
            notify=note,
        )
        if only is not None or trial is not None:
            return
    summary = write_summary(study, pack, out, notify=note)
    for line in summary_lines(summary):
        click.echo(line)
    click.echo(f"study: {out / 'study.json'}, {out / 'study.html'}, {out / 'study.md'}")
