"""The summary of a study: ``study.json`` (docs/study.md describes it) and ``study.html``.

:func:`build_summary` is pure: from the study and each run's kept results it computes, per
variant, the mean and 95 % Student-t interval across seeds at every checkpoint and at the end,
the paired comparison of every variant with the reference over their shared seeds, and the
iterations to reach the target. :func:`write_summary` collects the results from a study folder
(computing nothing) and writes both files atomically. Rank-1 and mAP are fractions in [0, 1], as
in ``gait eval``'s JSON; the target is in percent, as written in the study file.

A run without a test result is listed as incomplete and left out of the final figures and the
comparisons; its validation results still count at their checkpoints.

With a ``tune:`` section, ``tuning`` holds per tuned variant every trial's values and validation
score, the default score (trial 0), the chosen trial (the best score; the lowest index among
equals) and the budget; only validation results enter it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gaitprep.files import OutputLock, atomic_write
from gaittrain.evaluation.protocol import load_eval_protocol
from gaittrain.study import stats, tune
from gaittrain.study.report import curve_figures, to_html, to_markdown, training_figure
from gaittrain.study.runner import (
    Context,
    StudyPaths,
    check_unchanged,
    checkpoints,
    resolve,
    run_results,
    study_context,
    tuning_results,
)
from gaittrain.study.spec import SEED, Study

FORMAT = "gait-study v1"
CONFIDENCE = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def _num(x) -> float | None:
    """A JSON number: NaN (undefined) becomes null."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _interval(values: list[float]) -> dict:
    m = stats.mean_ci(values, CONFIDENCE)
    return {"mean": _num(m.mean), "low": _num(m.low), "high": _num(m.high), "n": m.n}


def _across(results: list[dict | None], group: str) -> dict | None:
    """The interval of ``group``'s rank-1 over the results that have it (None if none does)."""
    xs = [v for c in results if (v := _rank1(c, group)) is not None]
    return _interval(xs) if xs else None


def _rank1(conditions: dict | None, group: str) -> float | None:
    if not conditions or group not in conditions:
        return None
    value = conditions[group].get("rank1")
    return None if value is None else float(value)


def build_summary(
    study: Study, ctx: Context, results: dict[str, dict], trials: dict | None = None
) -> dict:
    """The study.json data from ``results`` (run name -> :func:`run_results`) and ``trials``
    (tuned variant -> each trial's validation result at its end, None if not done)."""
    groups = list(load_eval_protocol(study.protocol).probes)  # NM, BG, CL in the protocol's order
    for r in results.values():
        for conditions in [*r["validation"].values(), r["test"] or {}]:
            groups += [g for g in conditions if g not in groups]
    first = groups[0] if groups else "NM"
    target = None if study.target is None else study.target / 100
    tuning = _tuning(study, trials or {}, first)
    chosen = {v["name"]: v["chosen"] for v in tuning["variants"]} if tuning else {}
    runs = []
    for spec in study.runs:
        r = results[spec.name]
        curve = dict(sorted(r["validation"].items()))
        reach = None
        if target is not None and curve:
            values = [_rank1(c, first) for c in curve.values()]
            its = [it for it, v in zip(curve, values, strict=True) if v is not None]
            reach = stats.iterations_to_reach(its, [v for v in values if v is not None], target)
        runs.append(
            {
                "index": spec.index,
                "name": spec.name,
                "variant": spec.variant,
                "seed": spec.seed,
                "sequences_per_iteration": spec.config.data.batch.p * spec.config.data.batch.k,
                "values": spec.values,
                "labels": spec.labels,
                "tuned": spec.tuned,
                "tuned_values": (chosen.get(spec.tuned) or {}).get("values")
                if spec.tuned
                else None,
                "complete": r["test"] is not None
                and len(curve) == len(checkpoints(spec, study.eval_every)),
                "validation": {str(it): c for it, c in curve.items()},
                "test": r["test"],
                "training": r.get("training") or {},
                "iterations_to_target": reach,
            }
        )
    variants = [_variant(study, name, runs, groups, first, target) for name in study.variants]
    comparisons = [c for v, ref in study.pairs for c in _compare(v, ref, runs, groups)]
    evaluated = sorted({int(it) for r in runs for it in r["validation"]})
    return {
        "format": FORMAT,
        "study": study.spec(),
        "pack": {"path": str(ctx.pack), "fingerprint": ctx.pack_fingerprint},
        "subjects": {
            "train": ctx.subjects.train,
            "validation": ctx.subjects.validation,
            "test": ctx.subjects.test,
        },
        "conditions": groups,
        "target_condition": first,
        "checkpoints": evaluated,
        "statistics": {
            "confidence": CONFIDENCE,
            "interval": "Student t, n - 1 degrees of freedom, across seeds",
            "test": "two-sided paired t-test over shared seeds",
            "bootstrap": {"resamples": RESAMPLES, "seed": BOOTSTRAP_SEED, "kind": "percentile"},
        },
        "runs": runs,
        "variants": variants,
        "reference": study.reference,
        "references": sorted({ref for _, ref in study.pairs}) or [study.reference],
        "comparisons": comparisons,
        "complete": sum(r["complete"] for r in runs),
        "incomplete": [r["name"] for r in runs if not r["complete"]],
        "tuning": tuning,
    }


def _tuning(study: Study, trials: dict, first: str) -> dict | None:
    """The tuning section: per tuned variant its space, budget, every trial (values, score,
    validation result), the defaults' score and the chosen trial (once every trial is done)."""
    if study.tune is None:
        return None
    variants, incomplete = [], []
    for name, specs in study.tune.searches.items():
        found = list(trials.get(name) or [])
        found += [None] * (len(specs) - len(found))
        scores = [_rank1(r, first) for r in found]
        missing = [t.name for t, r in zip(specs, found, strict=True) if r is None]
        incomplete += [f"{name}/{m}" for m in missing]
        best = None if missing else tune.best(scores)
        variants.append(
            {
                "name": name,
                "space": {k: d.form() for k, d in study.tune.spaces[name].items()},
                "budget": len(specs),
                "done": len(specs) - len(missing),
                "iterations": specs[0].config.train.iterations,
                "default": {"values": specs[0].values, "score": _num(scores[0])},
                "chosen": None
                if best is None
                else {"trial": best, "values": specs[best].values, "score": _num(scores[best])},
                "runs": [r.name for r in study.runs if r.tuned == name],
                "trials": [
                    {
                        "index": t.index,
                        "name": t.name,
                        "default": t.index == 0,
                        "values": t.values,
                        "score": _num(score),
                        "validation": r,
                    }
                    for t, score, r in zip(specs, scores, found, strict=True)
                ],
            }
        )
    return {
        **study.tune.spec(),
        "condition": first,
        "score": f"validation rank-1 of {first} at the end of the trial, on the validation "
        "subjects (the test subjects are not evaluated during tuning)",
        "choice": "the highest score; the lowest trial index among equals; trial 0 is the defaults",
        "variants": variants,
        "complete": not incomplete,
        "incomplete": incomplete,
    }


def _variant(study: Study, name: str, runs: list[dict], groups, first, target) -> dict:
    mine = [r for r in runs if r["variant"] == name]
    values = {k: v for k, v in mine[0]["values"].items() if k != SEED}
    evaluated = sorted({int(it) for r in mine for it in r["validation"]})
    validation = {}
    mean_curve = []
    for it in evaluated:
        at = [r["validation"].get(str(it)) for r in mine]
        validation[str(it)] = {g: _across(at, g) for g in groups}
        firsts = [_rank1(c, first) for c in at]
        if all(v is not None for v in firsts):  # the mean curve: every seed at this checkpoint
            mean_curve.append((it, float(np.mean(firsts))))
    test = {g: _across([r["test"] for r in mine], g) for g in groups}
    reach = None
    if target is not None:
        its = [it for it, _ in mean_curve]
        reach = {
            "mean_curve": stats.iterations_to_reach(its, [m for _, m in mean_curve], target)
            if mean_curve
            else None,
            "per_seed": {str(r["seed"]): r["iterations_to_target"] for r in mine},
            "reached": sum(r["iterations_to_target"] is not None for r in mine),
            "n": len(mine),
        }
    return {
        "name": name,
        "values": values,
        "training": _training_means(mine),
        "runs": [r["name"] for r in mine],
        "seeds": [r["seed"] for r in mine],
        "sequences_per_iteration": mine[0]["sequences_per_iteration"],
        "validation": validation,
        "test": test,
        "iterations_to_target": reach,
    }


def _training_means(runs: list[dict]) -> dict[str, list[list[float]]]:
    """Each training statistic's mean across the runs (seeds) at every iteration that all the
    runs with that statistic logged: ``{key: [[iteration, mean], ...]}``."""
    means = {}
    for key in {k for r in runs for k in r["training"]}:
        series = [dict(map(tuple, r["training"][key])) for r in runs if key in r["training"]]
        shared = sorted(set.intersection(*(set(s) for s in series)))
        means[key] = [[it, float(np.mean([s[it] for s in series]))] for it in shared]
    return dict(sorted(means.items()))


def _compare(variant: str, reference: str, runs: list[dict], groups: list[str]) -> list[dict]:
    """variant - reference on the final test rank-1 of each group, paired by seed."""
    out = []
    for g in groups:
        a = {r["seed"]: _rank1(r["test"], g) for r in runs if r["variant"] == variant}
        b = {r["seed"]: _rank1(r["test"], g) for r in runs if r["variant"] == reference}
        seeds = [s for s in a if s in b and a[s] is not None and b[s] is not None]
        entry = {"variant": variant, "reference": reference, "condition": g, "seeds": seeds}
        if seeds:
            d = stats.paired_difference(
                [a[s] for s in seeds],
                [b[s] for s in seeds],
                CONFIDENCE,
                RESAMPLES,
                BOOTSTRAP_SEED,
            )
            entry.update(
                n=d.n,
                mean=_num(d.mean),
                low=_num(d.low),
                high=_num(d.high),
                p_value=_num(d.p_value),
                boot_low=_num(d.boot_low),
                boot_high=_num(d.boot_high),
            )
        else:
            entry.update(
                n=0, mean=None, low=None, high=None, p_value=None, boot_low=None, boot_high=None
            )
        out.append(entry)
    return out


def summary_lines(summary: dict) -> list[str]:
    """A few lines for the terminal: each variant's final figures, mean ± half width."""

    def pm(i: dict | None) -> str:
        if i is None:
            return "–"
        if i["high"] is None:
            return f"{100 * i['mean']:.1f}"
        return f"{100 * i['mean']:.1f} ± {100 * (i['high'] - i['mean']):.1f}"

    lines = []
    for t in (summary.get("tuning") or {}).get("variants", []):
        c = t["chosen"]
        chosen = (
            f"tuned {pm_score(c['score'])} (trial {c['trial']})" if c else "tuned: trials not done"
        )
        lines.append(
            f"tuning {t['name']}: default {pm_score(t['default']['score'])}, {chosen}, "
            f"{t['done']} of {t['budget']} trials"
        )
    for v in summary["variants"]:
        n = max((i["n"] for i in v["test"].values() if i), default=0)
        figures = ", ".join(f"{g} {pm(v['test'].get(g))}" for g in summary["conditions"])
        lines.append(f"{v['name']}: {figures or 'no test result yet'} ({n} seeds)")
    if summary["incomplete"]:
        lines.append(f"incomplete runs: {len(summary['incomplete'])} of {len(summary['runs'])}")
    return lines


def pm_score(x: float | None) -> str:
    """A validation score in percent."""
    return "–" if x is None else f"{100 * x:.1f}"


def write_summary(
    study: Study, pack: Path, out: Path, notify: Callable[[str], None] = print
) -> dict:
    """Collect the kept results of every trial and run in ``out`` and write study.json and
    study.html (atomically, under a lock). Trials and runs that are not done are reported as
    incomplete (a run whose tuned values are not known yet too); a trial or run that the study
    no longer describes is refused (:func:`~gaittrain.study.runner.check_unchanged`).
    """
    ctx = study_context(study, pack)
    paths = StudyPaths(Path(out))
    tuning = tuning_results(study, ctx, out)
    results = {}
    for spec in study.runs:
        resolved = resolve(spec, tuning)
        if resolved is None:  # its variant's trials are not all done: nothing to show yet
            results[spec.name] = {"validation": {}, "test": None}
            continue
        check_unchanged(resolved, paths.run(spec.name), ctx)
        results[spec.name] = run_results(study, resolved, ctx, out)
    trials = {name: state["results"] for name, state in tuning.items()}
    summary = build_summary(study, ctx, results, trials)
    if summary["tuning"] and summary["tuning"]["incomplete"]:
        missing = summary["tuning"]["incomplete"]
        more = ", ..." if len(missing) > 3 else ""
        notify(
            f"{len(missing)} of {len(study.trials)} trials are not done yet "
            f"({', '.join(missing[:3])}{more}); their variants' tuned runs wait for them"
        )
    if summary["incomplete"]:
        shown = ", ".join(summary["incomplete"][:3])
        more = ", ..." if len(summary["incomplete"]) > 3 else ""
        notify(
            f"{len(summary['incomplete'])} of {len(study.runs)} runs are not done yet "
            f"({shown}{more}); summarizing what is there"
        )
    figures = {g: paths.root / "figures" / f"validation-{g}.png" for g in summary["conditions"]}
    with OutputLock(paths.json):
        for g, png in curve_figures(summary).items():
            atomic_write(figures[g], png)
        training = training_figure(summary)
        if training is not None:
            figures["training"] = paths.root / "figures" / "training.png"
            atomic_write(figures["training"], training)
        shown = {g: str(f.relative_to(paths.root)) for g, f in figures.items()}
        atomic_write(paths.markdown, to_markdown(summary, shown))
        atomic_write(paths.json, json.dumps(summary, indent=1, default=str) + "\n")
        atomic_write(paths.html, to_html(summary))
    return summary
