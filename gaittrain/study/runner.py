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

With a ``tune:`` section, the trials come first: each is an ordinary run folder
``tune/VARIANT/trial-NN/`` with its results in ``tune/VARIANT/trial-NN.json``, trained and
resumed like a run (:func:`run_trial`) and evaluated once, at its end, on the validation
subjects only: the test subjects are never evaluated during tuning. :func:`tuning_results`
collects the kept trial results, and a run that takes tuned values gets those of its variant's
best trial (:func:`resolve`); a run whose variant's trials are not all done cannot start.
"""

from __future__ import annotations

import math
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
from gaittrain import checkpoint, run_folder
from gaittrain.config import ConfigError, saved_config
from gaittrain.data.dataset import pack_subjects
from gaittrain.device import Runtime, setup, teardown
from gaittrain.evaluation.embed import embed_dataset, open_model_and_pack
from gaittrain.evaluation.protocol import evaluate, load_eval_protocol
from gaittrain.run_folder import RUN_ENTRIES, RunPaths, read_log
from gaittrain.study import tune
from gaittrain.study.cache import EvalCache, identity
from gaittrain.study.spec import (
    RunSpec,
    Study,
    StudyError,
    Subjects,
    Trial,
    resolve_subjects,
    with_values,
)
from gaittrain.trainer import train

METRIC = "euclidean"  # gait eval's default, and the protocol's identical-view rule


@dataclass(frozen=True)
class StudyPaths:
    """Where a study keeps its runs, results and summary."""

    root: Path

    def run(self, name: str) -> Path:
        return self.root / "runs" / name

    def evaluation(self, name: str) -> Path:
        return self.root / "evals" / f"{name}.json"

    def trial(self, trial: Trial) -> Path:
        return self.root / "tune" / trial.variant / trial.name

    def trial_evaluation(self, trial: Trial) -> Path:
        return self.root / "tune" / trial.variant / f"{trial.name}.json"

    @property
    def json(self) -> Path:
        return self.root / "study.json"

    @property
    def html(self) -> Path:
        return self.root / "study.html"

    @property
    def markdown(self) -> Path:
        return self.root / "study.md"


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

    @property
    def data_record(self) -> dict:
        """The data record (:func:`~gaittrain.run_folder.data_record`) of its runs."""
        pack = {"path": str(self.pack), "fingerprint": self.pack_fingerprint}
        return {"packs": [pack], "train_subjects": list(self.subjects.train)}


def study_context(study: Study, pack: Path) -> Context:
    """Resolve the study's subjects in ``pack`` and fingerprint it."""
    subjects = resolve_subjects(study, pack_subjects([pack]))
    with Pack(pack) as p:
        fingerprint = p.fingerprint
    return Context(subjects, Path(pack), fingerprint)


def commands(study_file: Path, pack: Path, out: Path, study: Study, device: str = "auto") -> list:
    """One shell command per trial, ``gait study STUDY --pack PACK --out DIR --trial VARIANT:I``,
    then one per run, ``... --run I`` (a run that takes tuned values waits for its trials).

    Checked first as ``--run`` and ``--trial`` would check them: the study's subjects must be in
    the pack, and the trial and run folders already in ``out`` must be what the study describes
    (a listed command that could only fail is never handed to a scheduler)."""
    ctx = study_context(study, pack)
    paths = StudyPaths(Path(out))
    tuning = tuning_results(study, ctx, out, strict=True)  # checks every trial folder
    for spec in (resolve(r, tuning) for r in study.runs):
        if spec is not None:
            check_unchanged(spec, paths.run(spec.name), ctx)
    extra = [] if device == "auto" else ["--device", device]
    base = ["gait", "study", str(study_file), "--pack", str(pack), "--out", str(out)]
    trials = [
        shlex.join([*base, "--trial", f"{t.variant}:{t.index}", *extra]) for t in study.trials
    ]
    return trials + [shlex.join([*base, "--run", str(r.index), *extra]) for r in study.runs]


def checkpoints(spec: RunSpec, eval_every: int) -> list[int]:
    """The iterations at which ``spec`` is evaluated on the validation subjects: every
    ``eval_every`` and the last (the trainer keeps a checkpoint at both).

    >>> from types import SimpleNamespace as NS
    >>> checkpoints(NS(config=NS(train=NS(iterations=375))), 250)
    [250, 375]
    """
    total = spec.config.train.iterations
    return sorted({*range(eval_every, total + 1, eval_every), total})


def last_iteration(run_dir: Path) -> int:
    """The iteration of a run folder's latest checkpoint (0 without one)."""
    latest = checkpoint.latest(run_dir)
    match = checkpoint.NAME.search(latest.name) if latest is not None else None
    return int(match.group(1)) if match else 0


def what_changed(spec: RunSpec | Trial, run_dir: Path, ctx: Context) -> str | None:
    """What differs between the run (or trial) folder and what the study now gives it, or
    None."""
    paths = RunPaths(run_dir)
    if paths.config.is_file():
        try:
            saved = saved_config(paths.config).to_dict()
        except ConfigError as e:
            return f"its config.yaml no longer loads ({e})"
        changed = run_folder.config_difference(saved, spec.config.to_dict())
        if changed is not None:
            k, before, now, n = changed
            more = f" (and {n - 1} more keys)" if n > 1 else ""
            return f"{k} was {before!r} when it was trained, the study now gives {now!r}{more}"
    if paths.data.is_file():
        record = run_folder.read_data_record(run_dir)
        if not run_folder.is_data_record(record):
            return "its data.json is unreadable"
        return run_folder.data_difference(record, ctx.data_record)
    return None


def check_unchanged(spec: RunSpec | Trial, run_dir: Path, ctx: Context) -> None:
    """Refuse, in one line naming the run (or trial) and the change, a run the study no longer
    describes."""
    change = what_changed(spec, run_dir, ctx)
    if change is not None:
        raise StudyError(
            f"{spec.title} in {run_dir}: {change}; the study changed since it was trained: undo "
            "the change, choose another --out, or pass --overwrite to train the changed runs again"
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
    trained, data = open_model_and_pack(ckpt, pack, subjects, device)
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
    one line that names it. A run that takes tuned values is given with them
    (:func:`resolve`)."""
    paths = StudyPaths(Path(out))
    run_dir, results = paths.run(spec.name), paths.evaluation(spec.name)
    tag = f"run {spec.index + 1}/{len(study.runs)} {spec.name}"
    todo = [("validation", it) for it in checkpoints(spec, study.eval_every)]
    todo.append(("test", spec.config.train.iterations))
    job = _Job(spec, run_dir, results, tag, todo)
    done = _run_job(study, job, ctx, runtime, overwrite, progress, notify)
    return {"index": spec.index, "name": spec.name, **done}


def run_trial(
    study: Study,
    trial: Trial,
    ctx: Context,
    out: Path,
    runtime: Runtime,
    *,
    overwrite: bool = False,
    progress: bool = True,
    notify: Callable[[str], None] = print,
) -> dict:
    """Train (or resume) one trial and evaluate its last checkpoint on the validation subjects
    (only: the test subjects are not evaluated during tuning); returns what was done."""
    paths = StudyPaths(Path(out))
    trials = study.trials
    tag = f"trial {trials.index(trial) + 1}/{len(trials)} {trial.variant}/{trial.name}"
    todo = [("validation", trial.config.train.iterations)]
    job = _Job(trial, paths.trial(trial), paths.trial_evaluation(trial), tag, todo)
    done = _run_job(study, job, ctx, runtime, overwrite, progress, notify)
    return {"trial": f"{trial.variant}:{trial.index}", "name": trial.name, **done}


@dataclass(frozen=True)
class _Job:
    """A run or a trial: its spec, folder, results file, tag in messages and evaluations."""

    spec: RunSpec | Trial
    run_dir: Path
    results: Path
    tag: str
    todo: list  # (split, iteration)


def _run_job(study, job: _Job, ctx: Context, runtime, overwrite, progress, notify) -> dict:
    spec, run_dir, results, tag = job.spec, job.run_dir, job.results, job.tag
    try:
        with OutputLock(results):  # the run's lock among study jobs; the trainer takes run_dir's
            change = what_changed(spec, run_dir, ctx)
            if change is not None:
                if not overwrite:
                    check_unchanged(spec, run_dir, ctx)
                notify(f"{tag}: {change}; --overwrite: training it again from scratch")
                _remove_run(run_dir, results)
            trained = _train(spec, ctx, run_dir, runtime, progress, tag, notify)
            evaluated = _evaluate(
                study, job.todo, ctx, run_dir, results, runtime.device, tag, notify
            )
    except StudyError:
        raise
    except GaitError as e:
        raise StudyError(f"{spec.title}: {one_line(e)}") from e
    if not trained and not evaluated:
        notify(f"{tag}: done already")
    return {"trained": trained, "evaluated": evaluated}


def _train(spec, ctx: Context, run_dir: Path, runtime, progress, tag, notify) -> bool:
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


def _evaluate(study, todo, ctx: Context, run_dir, results, device, tag, notify) -> int:
    """Evaluate every (split, iteration) of ``todo`` that has no valid result yet; how many
    were evaluated."""
    cache = EvalCache.read(results)
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
    trial: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    notify: Callable[[str], None] = print,
) -> list[dict]:
    """Train and evaluate every trial, then every run, that is not done (or only run ``only``,
    or only the trial named ``trial``, ``VARIANT:I``).

    Every trial and run folder is checked against the study before anything is trained: a
    changed study is refused up front (unless ``overwrite``); a run whose tuned values are not
    known yet is checked once its variant's trials are done. A run that takes tuned values
    refuses to start while a trial of its variant is not done (``only``).
    """
    if only is not None and not 0 <= only < len(study.runs):
        raise StudyError(
            f"--run {only}: {study.path} has {len(study.runs)} runs, 0 to {len(study.runs) - 1}"
        )
    trials = [study.trial(trial)] if trial is not None else []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise StudyError(
            "gait study trains each run in one process; do not start it with torchrun (hand the "
            "commands of --list to a scheduler instead)"
        )
    ctx = study_context(study, pack)
    paths = StudyPaths(Path(out))
    if trial is not None:
        chosen = []
    elif only is not None:
        chosen = [study.runs[only]]
    else:
        chosen, trials = list(study.runs), study.trials
    if not overwrite:
        for t in trials:
            check_unchanged(t, paths.trial(t), ctx)
    # The runs whose config is known now (with tuned values, if their trials are done).
    needed = {spec.tuned for spec in chosen if spec.tuned is not None}
    tuning = tuning_results(study, ctx, out, strict=not overwrite, only=needed)
    if only is not None:
        chosen = [resolve(study.runs[only], tuning, need=True)]
    known = [r for r in (resolve(spec, tuning) for spec in chosen) if r is not None]
    if not overwrite:
        for spec in known:
            check_unchanged(spec, paths.run(spec.name), ctx)
    runtime = setup(device)
    try:
        done = [
            run_trial(
                study, t, ctx, out, runtime, overwrite=overwrite, progress=progress, notify=notify
            )
            for t in trials
        ]
        if trials and needed:  # the tuned values, now that the trials are done
            tuning = tuning_results(study, ctx, out, strict=True, only=needed)
            chosen = [resolve(spec, tuning, need=True) for spec in chosen]
            if not overwrite:
                for spec in chosen:
                    check_unchanged(spec, paths.run(spec.name), ctx)
        return done + [
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


def trial_result(study: Study, trial: Trial, ctx: Context, out: Path) -> dict | None:
    """The kept validation result (group -> rank1, mAP) of a trial at its end, as valid now;
    None when it is not done. Nothing is computed."""
    paths = StudyPaths(Path(out))
    total = trial.config.train.iterations
    ckpt = checkpoint.path_for(paths.trial(trial), total)
    cache = EvalCache.read(paths.trial_evaluation(trial))
    return cache.lookup("validation", total, ckpt, ctx.of("validation", study.protocol))


def score_condition(study: Study) -> str:
    """The probe group whose validation rank-1 scores a trial: the protocol's first (NM)."""
    return next(iter(load_eval_protocol(study.protocol).probes))


def tuning_results(
    study: Study, ctx: Context, out: Path, *, strict: bool = True, only: set | None = None
) -> dict:
    """Per tuned variant: ``results`` (each trial's validation result, None if not done),
    ``scores`` (validation rank-1 of the first probe group), ``missing`` (the trials not done),
    ``best`` (the index of the best trial; None until every trial is done) and its ``values``.
    A trial folder the study no longer describes is refused (``strict``) or counted as not
    done. ``only``: just these variants."""
    if study.tune is None:
        return {}
    paths = StudyPaths(Path(out))
    group = score_condition(study)
    found = {}
    for name, trials in study.tune.searches.items():
        if only is not None and name not in only:
            continue
        results = []
        for t in trials:
            if strict:
                check_unchanged(t, paths.trial(t), ctx)
            elif what_changed(t, paths.trial(t), ctx) is not None:
                results.append(None)
                continue
            results.append(trial_result(study, t, ctx, out))
        scores = [_score(r, group) for r in results]
        missing = [t.index for t, r in zip(trials, results, strict=True) if r is None]
        best = None if missing else tune.best(scores)
        found[name] = {
            "results": results,
            "scores": scores,
            "missing": missing,
            "best": best,
            "values": None if best is None else trials[best].values,
        }
    return found


def _score(conditions: dict | None, group: str) -> float | None:
    if not conditions or group not in conditions:
        return None
    value = conditions[group].get("rank1")
    return None if value is None else float(value)


def resolve(spec: RunSpec, tuning: dict, *, need: bool = False) -> RunSpec | None:
    """``spec`` as it runs: with its variant's tuned values (those of the best trial) when it
    takes them. None when they are not known yet, or, with ``need``, a one-line refusal that
    names the trials missing."""
    if spec.tuned is None:
        return spec
    state = tuning[spec.tuned]
    if state["best"] is None:
        if not need:
            return None
        missing = state["missing"]
        shown = ", ".join(f"{spec.tuned}:{i}" for i in missing[:5])
        more = ", ..." if len(missing) > 5 else ""
        raise StudyError(
            f"{spec.title} takes the tuned values of {spec.tuned}, but {len(missing)} of its "
            f"{len(state['results'])} trials are not done ({shown}{more}): run them first "
            "(--trial VARIANT:I, see --list)"
        )
    return with_values(spec, state["values"])


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
    return {"validation": curve, "test": test, "training": training_statistics(spec, run_dir)}


# The training statistics a study collects from each run's log (docs/losses.md, "Statistics"):
# the metric loss's own (logged as "<loss name>/<key>"), the batch's geometry and the gradient.
TRAINING_STATISTICS = (
    "active_pos",
    "active_neg",
    "active_queries",
    "geometry/own_center",
    "geometry/pos_pair",
    "geometry/neg_pair",
    "geometry/center_to_pair",
    "grad_norm",
)


def training_statistics(spec: RunSpec, run_dir: Path) -> dict[str, list[list[float]]]:
    """The run's logged :data:`TRAINING_STATISTICS`, ``{key: [[iteration, value], ...]}`` (the
    iteration counted from 1; a key the log lacks is left out): what ``log.jsonl`` holds, read
    leniently (a run still training)."""
    log = RunPaths(run_dir).log
    if not log.is_file():
        return {}
    prefix = spec.config.loss.name + "/"
    series: dict[str, list[list[float]]] = {}
    for record in read_log(log, lenient=True):
        for key in TRAINING_STATISTICS:
            value = record.get(key if "/" in key or key == "grad_norm" else prefix + key)
            if isinstance(value, int | float) and math.isfinite(value):
                series.setdefault(key, []).append([record["iteration"] + 1, float(value)])
    return series
