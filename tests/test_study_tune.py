"""`gait study` with a `tune:` section (issue 11, item 3): the schema, the seeded random search
(deterministic, independent of order, trial 0 the defaults), trial configs refused up front, the
choice of the best trial by validation score only, the tuned values in the run configs, resuming,
and a tiny tuned study end to end with a `tune` axis (default and tuned runs)."""

from __future__ import annotations

import copy
import doctest
import json
import shutil
from pathlib import Path

import pytest
import yaml

from gaittrain import checkpoint
from gaittrain.config import dump_config, load_config
from gaittrain.study import spec as spec_module
from gaittrain.study import tune
from gaittrain.study.runner import Context, StudyPaths
from gaittrain.study.spec import StudyError, Subjects, load_study
from gaittrain.study.summary import build_summary
from tests.cli import TINY, assert_one_line_error, gait, make_pack
from tests.test_study import STUDY as BASE_STUDY

#: 2 losses x 1 seed, 2 iterations, evaluated after each, 2 trials of 1 iteration per loss. The
#: sample pack has subjects 001-006: train on 001-002, validate on 003-004, test on 005-006.
STUDY = {
    **{k: v for k, v in BASE_STUDY.items() if k not in ("target", "axes")},
    "tune": {
        "trials": 2,
        "seed": 0,
        "iterations": 1,
        "space": {
            "all": {"optim.lr": {"log": [0.0003, 0.003]}},
            "center_ranked": {"loss.alpha": [0.8, 1.6], "loss.margin": [0.2, 0.6]},
            "triplet": {"loss.margin": [0.1, 0.4]},
        },
    },
    "axes": [
        {"key": "loss", "values": ["center_ranked", "triplet"]},
        {"key": "seed", "values": [0]},
    ],
}
VALIDATION, TEST = ["003", "004"], ["005", "006"]
TUNE_AXIS = {"key": "tune", "values": ["default", "tuned"]}


def write_study(path: Path, tune_changes: dict | None = None, **changes) -> Path:
    """The tiny STUDY with top-level ``changes`` and ``tune:`` ``tune_changes`` (a value of
    None removes the key)."""
    data = copy.deepcopy(STUDY)
    for k, v in (tune_changes or {}).items():
        if v is None:
            data["tune"].pop(k, None)
        else:
            data["tune"][k] = v
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return make_pack(tmp_path_factory.mktemp("tune-pack") / "sample.h5")


def conditions(nm: float) -> dict:
    return {g: {"rank1": nm, "mAP": nm} for g in ("NM", "BG", "CL")}


# -- the schema ------------------------------------------------------------------------------


SPACE = STUDY["tune"]["space"]


@pytest.mark.parametrize(
    ("changes", "tune_changes", "needles"),
    [
        ({}, {"trails": 3}, ["unknown key 'tune.trails' (did you mean 'trials'?)"]),
        ({}, {"trials": None}, ["missing key 'tune.trials'"]),
        ({}, {"space": None}, ["missing key 'tune.space'"]),
        ({}, {"trials": 0}, ["tune.trials must be at least 1 (got 0)"]),
        ({}, {"trials": "six"}, ["tune.trials must be int, got 'six'"]),
        ({}, {"seed": -1}, ["tune.seed must be at least 0"]),
        ({}, {"iterations": 1.5}, ["tune.iterations must be int (a whole number), got 1.5"]),
        ({}, {"space": [1]}, ["tune.space must map 'all' or a variant's label"]),
        (
            {},
            {"space": {"hinge": {"loss.margin": [0.1, 0.2]}}},
            ["tune.space.hinge: 'hinge' is no label of any variant", "center_ranked, triplet"],
        ),
        ({}, {"space": {"all": {}}}, ["tune.space.all must map dotted config keys to ranges"]),
        (
            {},
            {"space": {"triplet": {"loss.margin": {"lg": [0.1, 0.2]}}}},
            ["tune.space.triplet key 'loss.margin': unknown form 'lg' (did you mean 'log'?)"],
        ),
        (
            {},
            {"space": {"all": {"optim.lr": {"log": [0, 0.1]}}}},
            ["tune.space.all key 'optim.lr': log: [lo, hi] needs 0 < lo"],
        ),
        (
            {},
            {"space": {"triplet": {"loss.margin": [0.4, 0.1]}}},
            ["tune.space.triplet key 'loss.margin': [lo, hi] needs lo < hi"],
        ),
        (
            {},
            {"space": {"all": {"model.dim": {"int": [4, 8.5]}}}},
            ["tune.space.all key 'model.dim': int: [lo, hi] needs two whole numbers"],
        ),
        (
            {},
            {"space": {"all": {"optim.name": {"choice": ["adam"]}}}},
            ["tune.space.all key 'optim.name': choice: needs a list of at least 2 values"],
        ),
        (
            {},
            {"space": {"all": {"optim.lr": 0.001}}},
            ["tune.space.all key 'optim.lr': use [lo, hi], {log: [lo, hi]}"],
        ),
        (
            {},
            {"space": {"all": {"loss": {"choice": ["triplet", "ranked_list"]}}}},
            ["tune.space.all key 'loss' is also axes[0].key 'loss'", "ambiguous"],
        ),
        (
            {},
            {"space": {"all": {"data.frames": {"int": [4, 8]}}}},
            ["tune.space.all key 'data.frames' is also overrides key 'data.frames'"],
        ),
        (
            {},
            {"space": {"all": {"data": {"choice": [{"frames": 4}, {"frames": 8}]}}}},
            ["tune.space.all key 'data' is also overrides key 'data.batch'"],
        ),
        ({}, {"space": {"all": {"seed": {"int": [0, 9]}}}}, ["key 'seed': the trials' seed"]),
        (
            {},
            {"space": {"all": {"train.iterations": {"int": [1, 9]}}}},
            ["tune.space.all key 'train.iterations': the trials' seed is tune.seed"],
        ),
        (
            {},
            {"space": {"all": {"train.checkpoint_every": {"int": [1, 9]}}}},
            ["train.checkpoint_every is set from eval_every"],
        ),
        (
            {},
            {"space": {"all": {"loss.alpha": [0.8, 1.6]}}},
            ["tune.space.all key 'loss.alpha': the config of variant triplet has no such key"],
        ),
        (
            {},
            {"space": {**SPACE, "center_ranked": {"optim.lr": [0.001, 0.002]}}},
            ["tune.space: variant center_ranked gets 'optim.lr' from 'center_ranked'", "'all'"],
        ),
        (
            {},
            {"space": {"triplet": {"loss.margin": [0.1, 0.4]}}},
            ["tune.space gives variant center_ranked nothing to tune", "or 'all'"],
        ),
        (
            {"tune": None, "axes": [*STUDY["axes"], TUNE_AXIS]},
            {},
            ["axes[2].key tune picks default or tuned hyper-parameters", "no tune: section"],
        ),
        (
            {"axes": [{"key": "tune", "values": ["default", "best"]}]},
            {},
            ["axes[0].values[1] is 'best': the tune axis takes default"],
        ),
        ({"tune": [6]}, {}, ["tune must be a mapping (trials, space, ...), got [6]"]),
    ],  # fmt: skip
)
def test_a_bad_tune_section_is_one_line_naming_the_key(
    tmp_path, pack, changes, tune_changes, needles
) -> None:
    study = write_study(tmp_path / "bad.yaml", tune_changes, **changes)
    r = gait("study", study, "--pack", pack, "--out", tmp_path / "out", "--list")
    line = assert_one_line_error(r, *needles)
    assert str(study) in line
    assert not (tmp_path / "out").exists()


def test_an_invalid_trial_point_is_refused_up_front_naming_the_trial(tmp_path, pack) -> None:
    # Every margin in [1.3, 2.0] is at least center_ranked's alpha 1.2: trial 1 is invalid
    # (trial 0, the defaults, is not).
    space = {**SPACE, "center_ranked": {"loss.margin": [1.3, 2.0]}}
    study = write_study(tmp_path / "s.yaml", {"space": space})
    out = tmp_path / "out"
    line = assert_one_line_error(
        gait("study", study, "--pack", pack, "--out", out),
        "tune: trial 1 of variant center_ranked (optim.lr=",
        "loss.margin must be less than loss.alpha",
        "narrow tune.space",
    )
    assert str(study) in line
    assert not out.exists()  # nothing was trained


def test_trial_references_and_list_order(tmp_path, pack) -> None:
    study = write_study(tmp_path / "s.yaml")
    out = tmp_path / "out"
    r = gait("study", study, "--pack", pack, "--out", out, "--list")
    assert r.exit_code == 0, r.output
    tails = [line.split(f"--out {out} ")[1] for line in r.output.strip().splitlines()]
    assert tails == [
        "--trial center_ranked:0",
        "--trial center_ranked:1",
        "--trial triplet:0",
        "--trial triplet:1",
        "--run 0",
        "--run 1",
    ]
    for ref, needles in [
        ("triplet", ["--trial 'triplet': use VARIANT:I, e.g. center_ranked:0"]),
        ("hinge:0", ["--trial hinge:0: 'hinge' is not a tuned variant", "center_ranked, triplet"]),
        ("triplet:2", ["--trial triplet:2: triplet has 2 trials, 0 to 1"]),
    ]:
        assert_one_line_error(gait("study", study, "--pack", pack, "--out", out, "--trial", ref),
                              *needles)  # fmt: skip
    plain = write_study(tmp_path / "plain.yaml", tune=None)
    r = gait("study", plain, "--pack", pack, "--out", out, "--trial", "triplet:0")
    assert_one_line_error(r, "--trial triplet:0:", "has no tune: section")
    r = gait("study", study, "--pack", pack, "--out", out, "--trial", "triplet:0", "--run", "1")
    assert r.exit_code == 2 and "--run and --trial exclude each other" in r.output
    assert not out.exists()


# -- the search ------------------------------------------------------------------------------


def test_the_search_is_deterministic_and_independent_of_order(tmp_path) -> None:
    """Trial i of a variant is the same in a study that lists the variants in another order and
    adds one, and is what tune.point draws from (seed, variant, i) alone."""
    trials = {"trials": 5, "seed": 7}
    a = load_study(write_study(tmp_path / "a.yaml", trials))
    space = {**SPACE, "ranked_list": {"loss.lam": [0.5, 2.0]}}
    axes = [{"key": "loss", "values": ["ranked_list", "triplet", "center_ranked"]},
            {"key": "seed", "values": [3, 4]}]  # fmt: skip
    b = load_study(write_study(tmp_path / "b.yaml", {**trials, "space": space}, axes=axes))
    assert [t.title for t in b.trials[:2]] == ["trial ranked_list:0", "trial ranked_list:1"]
    for variant in ("center_ranked", "triplet"):
        for i in range(5):
            ta, tb = a.trial(f"{variant}:{i}"), b.trial(f"{variant}:{i}")
            assert ta.values == tb.values and ta.config == tb.config, (variant, i)
            assert ta.config.seed == 7 and ta.config.train.iterations == 1  # tune's, not runs'
            assert ta.config.train.checkpoint_every == 1
            if i:
                assert ta.values == tune.point(a.tune.spaces[variant], 7, variant, i)
    points = [a.trial(f"triplet:{i}").values for i in range(1, 5)]
    assert len({json.dumps(p) for p in points}) == 4  # random points, all different
    for p in points:
        assert set(p) == {"optim.lr", "loss.margin"}
        assert 0.0003 <= p["optim.lr"] <= 0.003 and 0.1 <= p["loss.margin"] <= 0.4
    # Another search seed draws other points; the same seed the same again.
    other = load_study(write_study(tmp_path / "c.yaml", {**trials, "seed": 8}))
    assert other.trial("triplet:1").values != a.trial("triplet:1").values
    assert load_study(tmp_path / "a.yaml").trial("triplet:3") == a.trial("triplet:3")
    # A key added to a variant's space leaves the draws of its other keys as they were.
    more = {**SPACE, "triplet": {"loss.margin": [0.1, 0.4], "data.sampling": {
        "choice": ["ordered", "unordered"]}}}  # fmt: skip
    c = load_study(write_study(tmp_path / "d.yaml", {**trials, "space": more}))
    for i in range(1, 5):
        v = c.trial(f"triplet:{i}").values
        assert {k: v[k] for k in ("optim.lr", "loss.margin")} == points[i - 1]
        assert v["data.sampling"] in ("ordered", "unordered")


def test_the_forms_of_a_space() -> None:
    space = {
        "a": tune.parse("a", [1, 2]),
        "b": tune.parse("b", {"log": [1e-4, 1e-2]}),
        "c": tune.parse("c", {"int": [3, 5]}),
        "d": tune.parse("d", {"choice": [{"p": 2}, "x", 4]}),
    }
    seen = {k: [] for k in space}
    for i in range(1, 200):
        for k, v in tune.point(space, 0, "v", i).items():
            seen[k].append(v)
    assert all(isinstance(x, float) and 1 <= x <= 2 for x in seen["a"])
    assert all(isinstance(x, float) and 1e-4 <= x <= 1e-2 for x in seen["b"])
    below = sum(x < 1e-3 for x in seen["b"])  # log-uniform: half of the draws below 1e-3
    assert 60 < below < 140
    assert sorted(set(seen["c"])) == [3, 4, 5] and all(type(x) is int for x in seen["c"])
    assert {json.dumps(x) for x in seen["d"]} == {'{"p": 2}', '"x"', "4"}
    assert {k: d.form() for k, d in space.items()} == {
        "a": [1.0, 2.0],
        "b": {"log": [1e-4, 1e-2]},
        "c": {"int": [3, 5]},
        "d": {"choice": [{"p": 2}, "x", 4]},
    }
    assert tune.best([0.5, 0.75, 0.75, None]) == 1 and tune.best([None, None]) == 0
    assert tune.best([0.5, float("nan"), 0.5]) == 0
    with pytest.raises(ValueError, match="trial 0 is the defaults"):
        tune.point(space, 0, "v", 0)


def test_the_modules_examples() -> None:
    for module in (tune, spec_module):
        failures, tried = doctest.testmod(module, raise_on_error=False)
        assert tried > 0 and failures == 0, module.__name__


def test_trial_0_is_the_defaults_and_the_tune_axis(tmp_path) -> None:
    axes = [STUDY["axes"][0], TUNE_AXIS, {"key": "seed", "values": [0, 1]}]
    study = load_study(write_study(tmp_path / "s.yaml", {"trials": 3}, axes=axes))
    assert [r.name for r in study.runs[:4]] == [
        "center_ranked-default-seed0",
        "center_ranked-default-seed1",
        "center_ranked-tuned-seed0",
        "center_ranked-tuned-seed1",
    ]
    assert study.variants == [
        "center_ranked-default",
        "center_ranked-tuned",
        "triplet-default",
        "triplet-tuned",
    ]
    assert [r.tuned for r in study.runs] == [None, None, "center_ranked", "center_ranked"] + [
        None,
        None,
        "triplet",
        "triplet",
    ]
    assert list(study.tune.searches) == ["center_ranked", "triplet"]  # one search per loss
    assert len(study.trials) == 6
    for variant, run in (("center_ranked", study.runs[0]), ("triplet", study.runs[4])):
        t0 = study.trial(f"{variant}:0")
        assert t0.name == "trial-00" and t0.title == f"trial {variant}:0"
        cfg = run.config  # the default run: the variant's config as it is
        expected = {"optim.lr": cfg.optim.lr, "loss.margin": cfg.loss.margin}
        if variant == "center_ranked":
            expected["loss.alpha"] = cfg.loss.alpha
        assert t0.values == expected
        # Trial 0's config is the run's, but for the seed and the iterations of the tuning.
        mine, theirs = t0.config.to_dict(), cfg.to_dict()
        assert (mine.pop("seed"), mine["train"].pop("iterations")) == (0, 1)
        theirs.pop("seed"), theirs["train"].pop("iterations")
        assert mine == theirs
    # Without the tune axis every run takes its variant's tuned values.
    plain = load_study(write_study(tmp_path / "p.yaml"))
    assert [(r.name, r.tuned) for r in plain.runs] == [
        ("center_ranked-seed0", "center_ranked"),
        ("triplet-seed0", "triplet"),
    ]
    assert plain.spec()["tune"] == {**STUDY["tune"]}


# -- choosing, by validation score only (training and evaluation stood in for) ----------------


@pytest.fixture
def fake(monkeypatch) -> dict:
    """Training writes config.yaml and a stand-in file per checkpoint; evaluation returns scripted
    figures and records every call. A trial's validation score is ``scores[variant][i]``; on the
    test subjects (never asked for a trial) its figure would be the reverse ranking."""
    record = {"calls": [], "trained": [], "scores": {}}

    def train(cfg, packs, out, runtime, resume=False, train_split=None, progress=True):
        out = Path(out)
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg))
        total, every = cfg.train.iterations, cfg.train.checkpoint_every
        for it in sorted({*range(every, total + 1, every), total}):
            checkpoint.path_for(out, it).write_bytes(f"{out} {it}".encode())
        record["trained"].append(out)
        return {"seconds": 0.0}

    def evaluate_checkpoint(ckpt, pack, subjects, protocol, device):
        run_dir = Path(ckpt).parents[1]
        record["calls"].append((run_dir, Path(ckpt).name, list(subjects)))
        if run_dir.parent.parent.name == "tune":
            score = record["scores"][run_dir.parent.name][int(run_dir.name[6:])]
            return conditions(score if list(subjects) == VALIDATION else 1 - score)
        return conditions(0.5)

    monkeypatch.setattr("gaittrain.study.runner.train", train)
    monkeypatch.setattr("gaittrain.study.runner.evaluate_checkpoint", evaluate_checkpoint)
    return record


@pytest.mark.slow
def test_the_best_trial_is_chosen_by_validation_score_only(tmp_path, pack, fake) -> None:
    fake["scores"] = {"center_ranked": [0.5, 0.75, 0.75], "triplet": [0.5, 0.25, 0.5]}
    study = write_study(tmp_path / "s.yaml", {"trials": 3})
    out = tmp_path / "out"
    # A run of a tuned variant waits for its trials; --summarize writes what there is.
    r = gait("study", study, "--pack", pack, "--out", out, "--run", "1")
    assert_one_line_error(
        r,
        "run 1 (triplet-seed0) takes the tuned values of triplet, but 3 of its 3 trials are not "
        "done (triplet:0, triplet:1, triplet:2): run them first",
    )
    r = gait("study", study, "--pack", pack, "--out", out, "--summarize")
    assert r.exit_code == 0, r.output
    assert "6 of 6 trials are not done yet" in r.output
    s = json.loads((out / "study.json").read_text())
    assert s["tuning"]["incomplete"][0] == "center_ranked/trial-00" and s["complete"] == 0
    assert s["tuning"]["variants"][0]["chosen"] is None
    # One trial on its own, as a scheduler's job: trained, evaluated on validation only.
    r = gait("study", study, "--pack", pack, "--out", out, "--trial", "triplet:2")
    assert r.exit_code == 0, r.output
    assert "trial 6/6 triplet/trial-02: training a new run" in r.output
    assert fake["calls"] == [(out / "tune" / "triplet" / "trial-02", "iter-000001.pt", VALIDATION)]
    assert not (out / "runs").exists()
    # The whole study: the other trials first, then the runs.
    r = gait("study", study, "--pack", pack, "--out", out)
    assert r.exit_code == 0, r.output
    assert "trial 6/6 triplet/trial-02: done already" in r.output
    assert r.output.index("trial 5/6") < r.output.index("run 1/2")
    trial_calls = [c for c in fake["calls"] if "tune" in c[0].parts]
    assert len(trial_calls) == 6  # each trial once, at its end, on the validation subjects
    assert all(subjects == VALIDATION and name == "iter-000001.pt"
               for _, name, subjects in trial_calls)  # fmt: skip
    run_calls = [c for c in fake["calls"] if "runs" in c[0].parts]
    assert [c[2] for c in run_calls].count(TEST) == 2  # the runs are tested, the trials never
    s = json.loads((out / "study.json").read_text())
    t = {v["name"]: v for v in s["tuning"]["variants"]}
    # center_ranked: 0.75 twice, the lower trial wins; triplet: the defaults tie with trial 2.
    assert t["center_ranked"]["chosen"]["trial"] == 1
    assert t["center_ranked"]["chosen"]["score"] == 0.75
    assert t["triplet"]["chosen"]["trial"] == 0 and t["triplet"]["default"]["score"] == 0.5
    assert [x["score"] for x in t["center_ranked"]["trials"]] == [0.5, 0.75, 0.75]
    assert t["center_ranked"]["budget"] == t["triplet"]["budget"] == 3
    assert s["tuning"]["complete"] and s["tuning"]["condition"] == "NM"
    # The chosen values reach the runs' configs (config.yaml), after base, overrides and axes.
    chosen = load_study(study).trial("center_ranked:1").values
    assert t["center_ranked"]["chosen"]["values"] == chosen
    cfg = load_config(out / "runs" / "center_ranked-seed0" / "config.yaml")
    assert (cfg.optim.lr, cfg.loss.alpha, cfg.loss.margin) == (
        chosen["optim.lr"],
        chosen["loss.alpha"],
        chosen["loss.margin"],
    )
    assert cfg.seed == 0 and cfg.train.iterations == 2 and cfg.data.frames == 6
    cfg = load_config(out / "runs" / "triplet-seed0" / "config.yaml")
    assert (cfg.optim.lr, cfg.loss.margin) == (load_config(TINY).optim.lr, 0.2)  # the defaults
    runs = {r["name"]: r for r in s["runs"]}
    assert runs["center_ranked-seed0"]["tuned_values"] == chosen
    html = (out / "study.html").read_text()
    assert 'id="tuning"' in html and "trial 1: optim.lr=" in html
    assert "the defaults (trial 0): optim.lr=0.002009, loss.margin=0.2" in html  # tiny.yaml's


@pytest.mark.slow
def test_resuming_skips_finished_trials_and_a_changed_space_is_refused(
    tmp_path, pack, fake
) -> None:
    fake["scores"] = {"center_ranked": [0.5, 0.75], "triplet": [0.5, 0.25]}
    study = write_study(tmp_path / "s.yaml")
    out = tmp_path / "out"
    assert gait("study", study, "--pack", pack, "--out", out).exit_code == 0
    assert len(fake["trained"]) == 6
    trial = out / "tune" / "triplet" / "trial-01"
    shutil.rmtree(trial)  # as if that trial's job never ran
    trial.with_suffix(".json").unlink()
    r = gait("study", study, "--pack", pack, "--out", out)
    assert r.exit_code == 0, r.output
    assert fake["trained"][6:] == [trial]  # that trial only: the others and the runs are done
    assert r.output.count("done already") == 5
    assert "trial 4/4 triplet/trial-01: training a new run" in r.output
    # A narrower space moves the random points: the trials made from the old one are refused.
    space = {**SPACE, "center_ranked": {"loss.alpha": [0.8, 1.6], "loss.margin": [0.2, 0.5]}}
    changed = write_study(tmp_path / "changed.yaml", {"space": space})
    for args in ([], ["--summarize"], ["--trial", "center_ranked:1"], ["--run", "0"]):
        r = gait("study", changed, "--pack", pack, "--out", out, *args)
        assert_one_line_error(
            r, "trial center_ranked:1 in", "the study changed since it was trained", "--overwrite"
        )
    before = len(fake["trained"])
    r = gait("study", changed, "--pack", pack, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert "--overwrite: training it again from scratch" in r.output
    assert fake["trained"][before] == out / "tune" / "center_ranked" / "trial-01"


def test_build_summary_chooses_from_validation_results(tmp_path) -> None:
    """build_summary on made-up trial results: the best validation score, ties to the lower
    trial, a variant with a trial not done has no choice yet."""
    study = load_study(write_study(tmp_path / "s.yaml", {"trials": 4}))
    ctx = Context(Subjects(["001"], VALIDATION, TEST), Path("p.h5"), "fingerprint")
    results = {r.name: {"validation": {}, "test": None} for r in study.runs}
    trials = {
        "center_ranked": [conditions(x) for x in (0.25, 0.5, 1.0, 1.0)],
        "triplet": [conditions(0.75), None, conditions(1.0), conditions(0.5)],
    }
    s = build_summary(study, ctx, results, trials)["tuning"]
    cr, tr = s["variants"]
    assert cr["chosen"] == {"trial": 2, "values": study.trial("center_ranked:2").values,
                            "score": 1.0}  # fmt: skip
    assert cr["default"] == {"values": study.trial("center_ranked:0").values, "score": 0.25}
    assert tr["chosen"] is None and tr["done"] == 3 and s["incomplete"] == ["triplet/trial-01"]
    assert [x["default"] for x in cr["trials"]] == [True, False, False, False]
    assert cr["space"] == {"optim.lr": {"log": [0.0003, 0.003]}, "loss.alpha": [0.8, 1.6],
                           "loss.margin": [0.2, 0.6]}  # fmt: skip
    assert build_summary(load_study(write_study(tmp_path / "p.yaml", tune=None)), ctx,
                         results)["tuning"] is None  # fmt: skip
    with pytest.raises(StudyError):
        load_study(write_study(tmp_path / "bad.yaml", {"trials": True}))


# -- a tiny tuned study, end to end -------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_tuned_study_with_a_tune_axis_end_to_end(tmp_path, pack) -> None:
    """2 losses x (default, tuned) x 1 seed: 4 trials of 1 iteration, then 4 runs of 2."""
    axes = [STUDY["axes"][0], TUNE_AXIS, STUDY["axes"][1]]
    study = write_study(tmp_path / "s.yaml", axes=axes)
    out = tmp_path / "out"
    # A default run needs no trial; a tuned one waits for its variant's.
    r = gait("study", study, "--pack", pack, "--out", out, "--run", "0", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "run 1/4 center_ranked-default-seed0: test at 2" in r.output
    r = gait("study", study, "--pack", pack, "--out", out, "--run", "1")
    assert_one_line_error(r, "run 1 (center_ranked-tuned-seed0) takes the tuned values of "
                             "center_ranked, but 2 of its 2 trials are not done")  # fmt: skip
    r = gait("study", study, "--pack", pack, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    for i, name in enumerate(["center_ranked/trial-00", "center_ranked/trial-01",
                              "triplet/trial-00", "triplet/trial-01"]):  # fmt: skip
        assert f"trial {i + 1}/4 {name}: training a new run" in r.output
        assert f"trial {i + 1}/4 {name}: validation at 1: rank-1 NM" in r.output
        folder = out / "tune" / name
        assert (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()
        assert json.loads((folder / "data.json").read_text())["train_subjects"] == ["001", "002"]
        kept = json.loads(folder.with_suffix(".json").read_text())
        assert list(kept["validation"]) == ["1"] and kept["test"] == {}  # never tested
        assert kept["validation"]["1"]["context"]["subjects"] == VALIDATION
    assert "trial 4/4" not in r.output.split("run 1/4")[-1]  # the trials came first
    assert "run 1/4 center_ranked-default-seed0: done already" in r.output
    s = json.loads((out / "study.json").read_text())
    assert s["complete"] == 4 and s["tuning"]["complete"]
    assert [v["name"] for v in s["variants"]] == [
        "center_ranked-default",
        "center_ranked-tuned",
        "triplet-default",
        "triplet-tuned",
    ]
    for t in s["tuning"]["variants"]:
        scores = [x["score"] for x in t["trials"]]
        assert t["chosen"]["trial"] == tune.best(scores) and t["budget"] == 2
        assert t["default"]["score"] == scores[0] and t["runs"] == [f"{t['name']}-tuned-seed0"]
        tuned = load_config(out / "runs" / f"{t['name']}-tuned-seed0" / "config.yaml")
        default = load_config(out / "runs" / f"{t['name']}-default-seed0" / "config.yaml")
        for key, value in t["chosen"]["values"].items():
            section, name = key.split(".")
            assert getattr(getattr(tuned, section), name) == value, key
        for key, value in t["default"]["values"].items():
            section, name = key.split(".")
            assert getattr(getattr(default, section), name) == value, key
    html = (out / "study.html").read_text()
    assert 'id="tuning"' in html and "Fair tuning" in html
    assert "tuning center_ranked: default" in r.output
    # Again: nothing is trained or evaluated, trials included.
    before = {p: p.stat().st_mtime_ns for p in (out / "tune").rglob("*.*")}
    again = gait("study", study, "--pack", pack, "--out", out, "--device", "cpu")
    assert again.exit_code == 0, again.output
    assert again.output.count("done already") == 8 and "training" not in again.output
    assert {p: p.stat().st_mtime_ns for p in (out / "tune").rglob("*.*")} == before
    assert StudyPaths(out).trial(load_study(study).trial("triplet:1")).is_dir()


def test_the_example_tuned_study_is_valid() -> None:
    study = load_study(
        Path(__file__).resolve().parents[1] / "configs" / "studies" / "loss-tuned.yaml"
    )
    assert len(study.runs) == 30 and len(study.variants) == 6 and len(study.trials) == 18
    assert study.reference == "center_ranked-tuned"
    assert study.runs[0].name == "center_ranked-default-seed1" and study.runs[0].tuned is None
    assert study.runs[5].name == "center_ranked-tuned-seed1"
    assert study.runs[5].tuned == "center_ranked"
    assert list(study.tune.searches) == ["center_ranked", "triplet", "ranked_list"]
    assert set(study.tune.spaces["triplet"]) == {"optim.lr", "loss.margin"}
    for name in ("center_ranked", "ranked_list"):
        assert set(study.tune.spaces[name]) == {
            "optim.lr",
            "loss.alpha",
            "loss.margin",
            "loss.lam",
            "loss.t_n",
        }
    assert {t.config.seed for t in study.trials} == {0}  # not one of the runs' seeds, 1-5
    assert {t.config.train.iterations for t in study.trials} == {1500}
