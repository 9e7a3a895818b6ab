"""Run a study: train every run (resuming one that stopped), evaluate it, keep the results.

The study folder ``DIR`` holds ``runs/NAME/`` (an ordinary run folder of ``gait train``),
``evals/NAME.json`` (the run's evaluation results, :mod:`gaittrain.study.cache`) and, once
summarized, ``study.json`` and ``study.html``.

For each run, :func:`run_one`

1. refuses a run folder whose config, training subjects or pack differ from what the study now
   gives (the study file or the pack changed), naming the run and what changed, unless
   ``overwrite`` (then the run is trained again from scratch);
2. trains it when its last checkpoint is short of ``train.iterations``, continuing a run that
   stopped midway with the trainer's own resume;
3. evaluates every checkpoint (every ``eval_every`` iterations) on the validation subjects and
   the last one on the test subjects, by the study's protocol exactly as ``gait eval`` does
   (Euclidean distance, identical views excluded), skipping results already kept for the same
   checkpoint bytes, pack content, subjects and protocol.

A finished run with all its results costs one hash of each checkpoint (or a stat, when the file
is unchanged). The run's results file is locked for the whole of it, so two jobs of one run are
refused, while jobs of different runs proceed side by side.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gaitprep.errors import GaitError, one_line
from gaitprep.files import OutputLock
from gaitprep.pack import Pack
from gaittrain import checkpoint
from gaittrain.config import ConfigError, load_config
from gaittrain.data.dataset import PackDataset, pack_subjects
from gaittrain.device import Runtime, setup, teardown
from gaittrain.evaluation.embed import embed_dataset, load_model
from gaittrain.evaluation.protocol import evaluate, load_eval_protocol
from gaittrain.study.cache import EvalCache, identity
from gaittrain.study.spec import RunSpec, Study, StudyError, Subjects, resolve_subjects
from gaittrain.trainer import RUN_ENTRIES, RunPaths, train

METRIC = "euclidean"  # gait eval's default, and the protocol's identical-view rule


@dataclass(frozen=True)
class StudyPaths:
    """Where a study keeps its runs, results and summary."""

    root: Path

    def run(self, name: str) -> Path:
        return self.root / "runs" / name

    def evaluation(self, name: str) -> Path:
        return self.root / "evals" / f"{name}.json"

    @property
    def json(self) -> Path:
        return self.root / "study.json"

    @property
    def html(self) -> Path:
        return self.root / "study.html"


@dataclass(frozen=True)
class Context:
    """What every run of one invocation shares: the subjects, the pack and its fingerprint."""

    subjects: Subjects
    pack: Path
    pack_fingerprint: str

    def of(self, split: str, protocol: str) -> dict:
        """The context a result of ``split`` is valid in (see EvalCache)."""
        subjects = self.subjects.validation if split == "validation" else self.subjects.test
        return {
            "pack": self.pack_fingerprint,
            "subjects": list(subjects),
            "protocol": protocol,
            "metric": METRIC,
        }


def study_context(study: Study, pack: Path) -> Context:
    """Resolve the study's subjects in ``pack`` and fingerprint it."""
    subjects = resolve_subjects(study, pack_subjects([pack]))
    with Pack(pack) as p:
        fingerprint = p.fingerprint
    return Context(subjects, Path(pack), fingerprint)


def commands(study_file: Path, pack: Path, out: Path, study: Study, device: str = "auto") -> list:
    """One shell command per run, ``gait study STUDY --pack PACK --out DIR --run I``."""
    extra = [] if device == "auto" else ["--device", device]
    base = ["gait", "study", str(study_file), "--pack", str(pack), "--out", str(out)]
    return [shlex.join([*base, "--run", str(r.index), *extra]) for r in study.runs]


def checkpoints(spec: RunSpec, eval_every: int) -> list[int]:
    """The iterations at which ``spec`` is evaluated on the validation subjects."""
    return list(range(eval_every, spec.config.train.iterations + 1, eval_every))


def last_iteration(run_dir: Path) -> int:
    """The iteration of a run folder's latest checkpoint (0 without one)."""
    latest = checkpoint.latest(run_dir)
    match = checkpoint.NAME.search(latest.name) if latest is not None else None
    return int(match.group(1)) if match else 0


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _span(subjects: list[str]) -> str:
    return f"{len(subjects)} ({subjects[0]}..{subjects[-1]})" if subjects else "none"


def what_changed(spec: RunSpec, run_dir: Path, ctx: Context) -> str | None:
    """What differs between the run folder and what the study now gives it, or None."""
    paths = RunPaths(run_dir)
    if paths.config.is_file():
        try:
            saved = _flat(load_config(paths.config).to_dict())
        except ConfigError as e:
            return f"its config.yaml no longer loads ({e})"
        now = _flat(spec.config.to_dict())
        diff = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        if diff:
            k = diff[0]
            more = f" (and {len(diff) - 1} more keys)" if len(diff) > 1 else ""
            return (
                f"{k} was {saved.get(k)!r} when it was trained, the study now gives "
                f"{now.get(k)!r}{more}"
            )
    if paths.data.is_file():
        try:
            record = json.loads(paths.data.read_text(encoding="utf-8"))
            trained_on = list(record["train_subjects"])
            prints = [p["fingerprint"] for p in record["packs"]]
        except (OSError, ValueError, KeyError, TypeError):
            return "its data.json is unreadable"
        if trained_on != ctx.subjects.train:
            return (
                f"it trained on subjects {_span(trained_on)}, the study now gives "
                f"{_span(ctx.subjects.train)}"
            )
        if prints != [ctx.pack_fingerprint]:
            return f"it trained on another pack than {ctx.pack} (the content differs)"
    return None


def check_unchanged(spec: RunSpec, run_dir: Path, ctx: Context) -> None:
    """Refuse, in one line naming the run and the change, a run the study no longer describes."""
    change = what_changed(spec, run_dir, ctx)
    if change is not None:
        raise StudyError(
            f"run {spec.index} ({spec.name}) in {run_dir}: {change}; the study changed since it "
            "was trained: undo the change, choose another --out, or pass --overwrite to train "
            "the changed runs again"
        )


def _remove_run(run_dir: Path, results: Path) -> None:
    """Delete a run folder (only one that looks like a gait run) and its results file."""
    if run_dir.is_dir():
        entries = {e.name for e in run_dir.iterdir()}
        if not entries & RUN_ENTRIES:
            raise StudyError(f"{run_dir} holds no gait run; move it away by hand")
        shutil.rmtree(run_dir)
    results.unlink(missing_ok=True)


@torch.no_grad()
def evaluate_checkpoint(
    ckpt: Path, pack: Path, subjects: list[str], protocol: str, device: torch.device
) -> dict:
    """Rank-1 and mAP of each probe group (NM, BG, CL) of ``ckpt`` on ``subjects`` of ``pack``,
    computed as ``gait eval`` computes them (every frame, Euclidean, identical views excluded)."""
    trained = load_model(ckpt, device)
    cfg = trained.cfg
    data = PackDataset([pack], subjects, frames=None, height=cfg.data.height, cut=cfg.data.cut)
    try:
        workers = 2 if device.type == "cuda" else 0
        emb = embed_dataset(trained.model, data, device, num_workers=workers)
        keys = [data.key(j) for j in range(len(data))]
    finally:
        data.close()
    result = evaluate(
        dict(zip(keys, emb, strict=True)),
        load_eval_protocol(protocol),
        subjects,
        metric=METRIC,
        device=device,
    )
    return {g: {"rank1": c["rank1"], "mAP": c["mAP"]} for g, c in result["conditions"].items()}


def _figures(conditions: dict) -> str:
    def pct(x) -> str:
        return "–" if x is None else f"{100 * x:.1f}"

    return " ".join(f"{g} {pct(c['rank1'])}" for g, c in conditions.items())


def run_one(
    study: Study,
    spec: RunSpec,
    ctx: Context,
    out: Path,
    runtime: Runtime,
    *,
    overwrite: bool = False,
    progress: bool = True,
    notify: Callable[[str], None] = print,
) -> dict:
    """Train (or resume) and evaluate one run; returns what was done. A problem of the run is
    one line that names it."""
    paths = StudyPaths(Path(out))
    run_dir, results = paths.run(spec.name), paths.evaluation(spec.name)
    tag = f"run {spec.index + 1}/{len(study.runs)} {spec.name}"
    try:
        with OutputLock(results):  # the run's lock among study jobs; the trainer takes run_dir's
            change = what_changed(spec, run_dir, ctx)
            if change is not None:
                if not overwrite:
                    check_unchanged(spec, run_dir, ctx)
                notify(f"{tag}: {change}; --overwrite: training it again from scratch")
                _remove_run(run_dir, results)
            trained = _train(spec, ctx, run_dir, runtime, progress, tag, notify)
            evaluated = _evaluate(study, spec, ctx, run_dir, results, runtime.device, tag, notify)
    except StudyError:
        raise
    except GaitError as e:
        raise StudyError(f"run {spec.index} ({spec.name}): {one_line(e)}") from e
    if not trained and not evaluated:
        notify(f"{tag}: done already")
    return {"index": spec.index, "name": spec.name, "trained": trained, "evaluated": evaluated}


def _train(spec: RunSpec, ctx: Context, run_dir: Path, runtime, progress, tag, notify) -> bool:
    """Train the run up to train.iterations (resuming it); whether there was anything to do."""
    total = spec.config.train.iterations
    done = last_iteration(run_dir)
    if done >= total:
        return False
    notify(f"{tag}: training {'from iteration ' + str(done) if done else 'a new run'}")
    summary = train(
        spec.config,
        [ctx.pack],
        run_dir,
        runtime,
        resume=RunPaths(run_dir).config.is_file(),
        train_split=",".join(ctx.subjects.train),
        progress=progress,
    )
    notify(f"{tag}: trained to {total} in {summary['seconds']:.1f} s")
    return True


def _evaluate(study, spec, ctx: Context, run_dir, results, device, tag, notify) -> int:
    """Evaluate every checkpoint that has no valid result yet; how many were evaluated."""
    cache = EvalCache.read(results)
    todo = [("validation", it) for it in checkpoints(spec, study.eval_every)]
    todo.append(("test", spec.config.train.iterations))
    count = 0
    try:
        for split, it in todo:
            ckpt = checkpoint.path_for(run_dir, it)
            context = ctx.of(split, study.protocol)
            if cache.lookup(split, it, ckpt, context) is not None:
                continue
            if not ckpt.exists():
                notify(f"{tag}: no checkpoint {ckpt.name}, so no {split} result at {it}")
                continue
            ident = identity(ckpt)
            conditions = evaluate_checkpoint(
                ckpt, ctx.pack, context["subjects"], study.protocol, device
            )
            cache.store(split, it, ident, context, conditions)
            cache.write()  # each result is kept as soon as it exists
            count += 1
            notify(f"{tag}: {split} at {it}: rank-1 {_figures(conditions)}")
    finally:
        cache.write()  # sizes and times of checkpoints found unchanged
    return count


def run_study(
    study: Study,
    pack: Path,
    out: Path,
    *,
    only: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    notify: Callable[[str], None] = print,
) -> list[dict]:
    """Train and evaluate every run that is not done (or only run ``only``).

    Every run folder is checked against the study before anything is trained: a changed study
    is refused up front (unless ``overwrite``).
    """
    if only is not None and not 0 <= only < len(study.runs):
        raise StudyError(
            f"--run {only}: {study.path} has {len(study.runs)} runs, 0 to {len(study.runs) - 1}"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise StudyError(
            "gait study trains each run in one process; do not start it with torchrun (hand the "
            "commands of --list to a scheduler instead)"
        )
    ctx = study_context(study, pack)
    chosen = list(study.runs) if only is None else [study.runs[only]]
    paths = StudyPaths(Path(out))
    if not overwrite:
        for spec in chosen:
            check_unchanged(spec, paths.run(spec.name), ctx)
    runtime = setup(device)
    try:
        return [
            run_one(
                study,
                spec,
                ctx,
                out,
                runtime,
                overwrite=overwrite,
                progress=progress,
                notify=notify,
            )
            for spec in chosen
        ]
    finally:
        teardown()


def run_results(study: Study, spec: RunSpec, ctx: Context, out: Path) -> dict:
    """The kept results of one run, as valid now: ``validation`` ({iteration: conditions}) and
    ``test`` (conditions, or None). Nothing is computed."""
    paths = StudyPaths(Path(out))
    run_dir = paths.run(spec.name)
    cache = EvalCache.read(paths.evaluation(spec.name))
    curve = {}
    for it in checkpoints(spec, study.eval_every):
        ckpt = checkpoint.path_for(run_dir, it)
        found = cache.lookup("validation", it, ckpt, ctx.of("validation", study.protocol))
        if found is not None:
            curve[it] = found
    total = spec.config.train.iterations
    ckpt = checkpoint.path_for(run_dir, total)
    test = cache.lookup("test", total, ckpt, ctx.of("test", study.protocol))
    return {"validation": curve, "test": test}
