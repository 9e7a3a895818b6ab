"""``gait embed`` and ``gait eval``: embeddings of test sequences, protocol numbers, reports."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import click

from gaitcli.score import wild_options
from gaitprep.errors import GaitError, first_line
from gaitprep.files import OutputLock, atomic_write
from gaittrain.data.dataset import pack_subjects
from gaittrain.data.splits import select
from gaittrain.device import resolve_device, setup, teardown
from gaittrain.evaluation.cost import PRECISIONS
from gaittrain.evaluation.embed import embed_pack
from gaittrain.evaluation.embeddings_file import DEFAULT_STORAGE, STORAGES
from gaittrain.evaluation.run_eval import evaluate_run, memory_size, render_report
from gaittrain.evaluation.score import PROTOCOLS as WILD_PROTOCOLS
from gaittrain.evaluation.score import summary as wild_summary
from gaittrain.evaluation.wild_run import evaluate_wild
from gaittrain.inference.identify import gallery_embeddings, identify, valid_threshold
from gaittrain.run_folder import default_embeddings, run_folder
from gaittrain.trained_model import load_model


def _memory(ctx, param, text: str) -> int:
    try:
        return memory_size(text)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _threshold(ctx, param, value: float | None) -> float | None:
    try:
        return valid_threshold(value)
    except GaitError as e:
        raise click.BadParameter(first_line(e)) from None


STORAGE = click.option(
    "--storage",
    type=click.Choice(list(STORAGES)),
    default=DEFAULT_STORAGE,
    show_default=True,
    help="How embeddings are stored, and so what every figure is computed from. float32: the "
    "model's values. float16: half the bytes, for very large sets (OU-MVLP, GREW); every value "
    "rounded, to 11 significant bits (relative 2^-11) from 2^-14 (6.1e-5) up, below that to a "
    "fixed step of 2^-24 (relative precision lost). A file in the other storage is embedded "
    "again.",
)


@click.command("embed")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True))
@click.argument("pack", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Embeddings file [default: RUN/embeddings-PACKNAME.h5, in the run folder].",
)
@click.option("--subjects", metavar="SEL", help="Only these subjects (e.g. 075-124); default all.")
@click.option(
    "--max-frames",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Use at most this many evenly spaced frames per sequence (0: all).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@STORAGE
def embed_cmd(checkpoint, pack, out, subjects, max_frames, device, storage) -> None:
    """Embed every sequence of PACK with CHECKPOINT (a .pt file or a run folder).

    The file records the checkpoint's and the pack's fingerprints, --max-frames, --storage and
    the pack's normalization parameters (which `gait identify` applies to a probe). Started by
    torchrun (torchrun --nproc_per_node N -m gaitcli embed ...), the N processes share the work,
    each on the GPU of its local rank (gloo on CPUs), and rank 0 writes the one file, equal to a
    single-process run's.
    """
    sel = select(pack_subjects([pack]), subjects) if subjects else None
    out = out or default_embeddings(checkpoint, pack)
    runtime = setup(device)
    try:
        reason = embed_pack(checkpoint, pack, out, sel, runtime, max_frames, storage)
    finally:
        teardown()
    if runtime.main:
        click.echo(f"wrote {out}" if reason is not None else f"up to date: {out}")


@click.command("eval")
@click.argument("run", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--pack",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The pack holding the test sequences.",
)
@click.option(
    "--protocol",
    default="casia-b-lt",
    show_default=True,
    help="Protocol name (gaittrain/protocols; casia-b is casia-b-lt) or a YAML file; or an "
    "in-the-wild protocol, gait3d, grew, grew-submission, ccpg or hid, scored as `gait score` "
    "scores it (a pack of that dataset; report json or html).",
)
@click.option("--test-subjects", metavar="SEL", help="Test subjects instead of the protocol's.")
@click.option(
    "--report", "fmt", type=click.Choice(["html", "json", "csv"]), default="json", show_default=True
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Report file [default: RUN/report.FORMAT]; - writes the report to stdout (the summary "
    "lines then go to stderr).",
)
@click.option("--include-identical", is_flag=True, help="Keep identical probe/gallery views.")
@click.option(
    "--metric",
    type=click.Choice(["euclidean", "cosine", "cosine-flat"]),
    default="euclidean",
    show_default=True,
    help="euclidean: Euclidean distance per part, averaged over parts; cosine: cosine distance "
    "per part, averaged over parts (OpenGait's); cosine-flat: one cosine of the flattened "
    "embedding.",
)
@click.option(
    "--max-memory",
    default="256MB",
    show_default=True,
    metavar="SIZE",
    callback=_memory,
    help="Memory cap of the blocked distance computation, from 1MB to 1TB (a number alone "
    "is bytes).",
)
@click.option(
    "--max-frames",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Embed at most this many evenly spaced frames per sequence (0: all).",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto, cpu, cuda or cuda:N, for embedding and distances.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="How distances are computed; every choice gives the same figures. fp32: float32 "
    "products. int8: int8 products with an error bound, every pair the result depends on "
    "re-checked in float64 (on CPUs with AVX-512 VNNI and a C compiler, fused native "
    "kernels). lowrank: float32 products of each part projected onto the gallery's top "
    "principal directions, bounded and re-checked the same way (any CPU or GPU). int8 and "
    "lowrank compute the euclidean metric only. auto: for large galleries (OU-MVLP), the "
    "path predicted fastest by a calibration of this machine, kept in $GAIT_CACHE.",
)
@STORAGE
@wild_options
@click.option(
    "--save-inputs",
    type=click.Path(path_type=Path, dir_okay=False),
    help="In-the-wild protocols: also write the scored embeddings, labels, types and views as "
    "`gait score`'s inputs .npz (OpenGait's layout [n, c, p]).",
)
def eval_cmd(
    run,
    pack,
    protocol,
    test_subjects,
    fmt,
    out,
    include_identical,
    metric,
    max_memory,
    max_frames,
    device,
    precision,
    storage,
    partition,
    rerank,
    submission,
    distractors,
    save_inputs,
) -> None:
    """Evaluate RUN (a run folder or checkpoint) on PACK by a published protocol.

    Embeddings are computed into RUN/embeddings-PACKNAME.h5 and reused only while the checkpoint,
    the pack's content, the test sequences, --max-frames, --storage and the normalization are all
    unchanged (otherwise they are computed again, saying why). Prints the NM/BG/CL summary;
    --report html writes a self-contained page; --out - writes the report to stdout and
    everything else to stderr.

    The in-the-wild protocols (--protocol gait3d, grew, grew-submission, ccpg, hid) embed the
    test sequences of a pack of their dataset the same way and score them as `gait score`
    does, into the same report (json or html) and submission CSV.
    """
    if protocol in WILD_PROTOCOLS:
        out = out or run_folder(run) / f"report.{fmt}"
        report = evaluate_wild(
            run,
            pack,
            protocol,
            out,
            fmt,
            metric,
            partition=partition,
            rerank=rerank,
            submission=submission,
            distractors=distractors,
            inputs=save_inputs,
            test_subjects=test_subjects,
            max_memory=max_memory,
            max_frames=max_frames,
            device=resolve_device(device),
            storage=storage,
            notify=lambda line: click.echo(line, err=True),
            include_identical=include_identical,
            precision=precision,
        )
        for line in wild_summary(report):
            click.echo(line)
        for path in (out, submission, save_inputs):
            if path is not None:
                click.echo(f"wrote {path}")
        return
    if partition or rerank or submission or distractors or save_inputs:
        raise click.UsageError(
            "--partition, --rerank, --submission, --distractors and --save-inputs are for "
            f"the in-the-wild protocols ({', '.join(WILD_PROTOCOLS)}), not {protocol}"
        )
    if precision in ("int8", "lowrank") and metric != "euclidean":
        raise click.BadParameter(
            f"{precision} computes the euclidean metric only", param_hint="--precision"
        )
    to_stdout = out == Path("-")
    out = out or run_folder(run) / f"report.{fmt}"
    # taken first: a second writer is refused before any work
    with nullcontext() if to_stdout else OutputLock(out):
        result = evaluate_run(
            run,
            pack,
            protocol,
            test_subjects,
            include_identical,
            metric,
            max_memory=max_memory,
            max_frames=max_frames,
            device=resolve_device(device),
            notify=lambda line: click.echo(line, err=True),
            precision=precision,
            storage=storage,
        )
        for name, c in result["conditions"].items():
            value = "–" if c["rank1"] is None else f"{100 * c['rank1']:.1f}"
            click.echo(f"{name}: rank-1 {value} %", err=to_stdout)
        text = render_report(result, fmt, run, pack)
        if to_stdout:
            click.echo(text, nl=not text.endswith("\n"))
            return
        atomic_write(out, text)
    click.echo(f"report: {out}")


@click.command("identify")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True))
@click.argument("gallery", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("raw_seq_dir", type=click.Path(path_type=Path, exists=True))
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True)
@click.option(
    "--threshold",
    type=click.FloatRange(0),
    callback=_threshold,
    help="Decide: the nearest person if their distance is at most this (finite), else unknown "
    "(default: the ranked list only).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def identify_cmd(checkpoint, gallery, raw_seq_dir, top_k, threshold, as_json, device) -> None:
    """Who walks in RAW_SEQ_DIR (a folder of silhouette frames, or a fixed camera's video,
    segmented first as `gait segment` does)? Ranks GALLERY subjects (an embeddings file from
    `gait embed`, a `gait gallery`, or a pack) by distance, with the model of CHECKPOINT (a .pt
    file or a run folder). A pack is embedded once, into RUN/gallery-PACKNAME.h5, and reused
    while nothing that made it changed."""
    dev = resolve_device(device)
    trained = load_model(checkpoint, dev)
    emb, params = gallery_embeddings(
        gallery, trained, dev, notify=lambda line: click.echo(line, err=True)
    )
    result = identify(raw_seq_dir, trained.model, trained.cfg, emb, params, dev, top_k, threshold)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['sequence']}: {result['frames_used']} of {result['frames_read']} frames")
    for m in result["matches"]:
        click.echo(f"{m['rank']:>3}  {m['subject']:<12} {m['distance']:.4f}  ({m['nearest']})")
    if threshold is not None:
        who = result["decision"] or "unknown"
        click.echo(f"decision (distance <= {threshold:g}): {who}")
