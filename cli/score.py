"""``gait score``: the in-the-wild protocols (Gait3D, GREW, CCPG, HID) on saved embeddings."""

from __future__ import annotations

from pathlib import Path

import click

from gaitcli.options import max_memory_option
from gaittrain.evaluation.score import FORMATS, PROTOCOLS, score, summary
from gaittrain.evaluation.wild import METRICS, RERANK_PRECISIONS

PROTOCOL_HELP = (
    "gait3d: Rank-1/5/10, mAP, mINP. grew: GREW's labelled split (type 01 gallery, 02 probes), "
    "Rank-1/5/10/20. grew-submission: GREW's test split (01 + 02 gallery, 03 probes), the 20 "
    "nearest subjects per probe video. ccpg: CL, UP, DN, BG, re-identification and per view "
    "pair. hid: the nearest gallery subject per probe video (probes labelled 'probe')."
)
#: The options of the in-the-wild protocols, shared by `gait score` and `gait eval`.
PARTITION = click.option(
    "--partition",
    type=click.Path(path_type=Path, dir_okay=False),
    help="gait3d only, required: Gait3D's partition file (Gait3D.json), whose PROBE_SET names "
    "the probes as subject-type-view.",
)
RERANK = click.option(
    "--rerank",
    is_flag=True,
    help="k-reciprocal re-ranking (k1 6, k2 6, lambda 0.3, as OpenGait's HID) of the distances "
    "between all probes and gallery sequences before anything is ranked, any protocol; it holds "
    "their n x n distances and is refused in one line past --max-memory.",
)
SUBMISSION = click.option(
    "--submission",
    type=click.Path(path_type=Path),
    help="grew-submission and hid: also write the submission CSV, as OpenGait writes it.",
)
DISTRACTORS = click.option(
    "--distractors",
    is_flag=True,
    help="grew and grew-submission: GREW's distractors (type 'distractor', as gait prep grew "
    "packs them) join the gallery, ranked a block at a time in bounded memory.",
)


def wild_options(command):
    """--partition, --rerank, --submission and --distractors."""
    for option in (DISTRACTORS, SUBMISSION, RERANK, PARTITION):
        command = option(command)
    return command


@click.command("score")
@click.argument("inputs", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--protocol",
    required=True,
    type=click.Choice(PROTOCOLS),
    help=PROTOCOL_HELP,
)
@PARTITION
@click.option(
    "--metric",
    type=click.Choice(METRICS),
    default="euclidean",
    show_default=True,
    help="Per part Euclidean distance or 1 - cosine, averaged over the parts (OpenGait's "
    "euc, cos).",
)
@RERANK
@click.option(
    "--rerank-precision",
    type=click.Choice(RERANK_PRECISIONS),
    default=None,
    help="With --rerank: its arithmetic. opengait (the default): OpenGait's own, float32 "
    "distances and float16 encodings step by step, so the submission is OpenGait's line for "
    "line. float64: the same method without float16's rounding, whose nearest gallery sequence "
    "differs from OpenGait's for a few probes in a thousand.",
)
@click.option(
    "--report",
    "fmt",
    type=click.Choice(FORMATS),
    default="json",
    show_default=True,
    help="json: every figure (and submission row); html: a self-contained page of them.",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="The report file to write."
)
@SUBMISSION
@DISTRACTORS
@max_memory_option("Memory cap of a block of ranking work, and of re-ranking.")
def score_cmd(
    inputs,
    protocol,
    partition,
    metric,
    rerank,
    rerank_precision,
    fmt,
    out,
    submission,
    distractors,
    max_memory,
) -> None:
    """Score INPUTS.npz by an in-the-wild protocol, with the figures of OpenGait's evaluator.

    INPUTS.npz holds what OpenGait's evaluator receives: embeddings (float, [n, c, p]: channels,
    then parts) and, per sequence, labels, types and views (strings); `gait eval RUN --pack PACK
    --protocol P --save-inputs INPUTS.npz` writes those of a gait run. Figures are in percent,
    unrounded; the report names the protocol, the metric and the inputs' sha256.

    \b
    Example:
      gait score gait3d.npz --protocol gait3d --partition Gait3D.json \\
          --metric cosine --report html --out gait3d.html
      gait score hid.npz --protocol hid --rerank --out hid.json --submission hid.csv
    """
    report = score(
        inputs,
        protocol,
        out,
        fmt,
        metric,
        partition,
        rerank,
        submission,
        rerank_precision,
        distractors,
        max_memory,
    )
    for line in summary(report):
        click.echo(line)
    click.echo(f"report: {out}")
    if submission is not None:
        click.echo(f"submission: {submission}")
