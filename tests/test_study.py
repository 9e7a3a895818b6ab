"""`gait study`: the study file's checks, the grid, a tiny study end to end (train, evaluate,
resume, refuse a changed study, summarize) and its HTML page in headless Chromium."""

from __future__ import annotations

import copy
import json
import shlex
import shutil
from pathlib import Path

import cv2
import pytest
import yaml

from gaitprep.files import OutputLock
from gaittrain.study import stats
from gaittrain.study.report import to_html, to_markdown
from gaittrain.study.runner import TRAINING_STATISTICS, Context, StudyPaths
from gaittrain.study.spec import StudyError, Subjects, load_study
from gaittrain.study.summary import build_summary
from tests.cli import TINY, assert_one_line_error, chromium, gait, make_pack

RUNS = ["center_ranked-seed0", "center_ranked-seed1", "triplet-seed0", "triplet-seed1"]

#: 2 variants x 2 seeds, 2 iterations each, evaluated after each: a few seconds in all. The
#: sample pack has subjects 001-006: train on 001-002, validate on 003-004, test on 005-006.
STUDY = {
    "base": str(TINY),
    "overrides": {
        "data.batch": {"p": 2, "k": 2},
        "data.workers": 0,
        "data.frames": 6,
        "data.cache": False,
        "schedule": {"name": "constant"},
        "train.iterations": 2,
        "train.log_every": 1,
    },
    "train": "001-004",
    "validation": "last:2",
    "test": "005-006",
    "eval_every": 1,
    "target": 40,
    "axes": [
        {"key": "loss", "values": ["center_ranked", "triplet"]},
        {"key": "seed", "values": [0, 1]},
    ],
}


def write_study(path: Path, **changes) -> Path:
    """The tiny STUDY with top-level ``changes`` (a value of None removes the key)."""
    data = copy.deepcopy(STUDY)
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return make_pack(tmp_path_factory.mktemp("study-pack") / "sample.h5")


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.*")}


@pytest.fixture(scope="module")
def done(pack, tmp_path_factory) -> dict:
    """A study done in two goes: `--run 0` (a scheduler's job), then the whole command."""
    base = tmp_path_factory.mktemp("study")
    study, out = write_study(base / "tiny.yaml"), base / "out"
    first = gait("study", study, "--pack", pack, "--out", out, "--run", "0", "--device", "cpu")
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in (out / "runs").iterdir()) == [RUNS[0]]
    assert not (out / "study.json").exists()  # --run trains and evaluates, never summarizes
    before = mtimes(out / "runs" / RUNS[0])
    before["eval"] = StudyPaths(out).evaluation(RUNS[0]).stat().st_mtime_ns
    full = gait("study", study, "--pack", pack, "--out", out, "--device", "cpu")
    assert full.exit_code == 0, full.output
    return {"study": study, "out": out, "first": first, "full": full, "before": before}


def run_study(done: dict, out: Path, *args) -> object:
    return gait("study", done["study"], "--pack", done["pack"], "--out", out, *args)


@pytest.fixture
def copied(done, pack, tmp_path: Path) -> dict:
    """A copy of the finished study folder, to change without touching the others' one."""
    out = tmp_path / "out"
    shutil.copytree(done["out"], out)
    return {**done, "out": out, "pack": pack}


# -- the study file ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"axis": []}, ["unknown key 'axis' (did you mean 'axes'?)"]),
        ({"eval_every": None}, ["missing key 'eval_every'"]),
        ({"eval_every": "often"}, ["eval_every must be int, got 'often'"]),
        ({"eval_every": 0}, ["eval_every must be at least 1 (got 0)"]),
        ({"target": 150}, ["target must be at most 100 (got 150)"]),
        ({"target": "high"}, ["target must be float, got 'high'"]),
        ({"validation": "last:x"}, ["validation 'last:x': use last:N"]),
        ({"base": "missing.yaml"}, ["cannot read the base config missing.yaml"]),
        ({"protocol": "nope"}, ["protocol: unknown protocol 'nope'"]),
        (
            {"reference": "hinge"},
            [
                "reference 'hinge' is neither a variant nor a label of an axis",
                "center_ranked, triplet",
            ],
        ),
        ({"axes": [{"key": "loss", "value": [1]}]}, ["unknown key 'axes[0].value'", "'values'"]),
        ({"axes": [{"key": "loss", "values": []}]}, ["axes[0].values must be a non-empty list"]),
        (
            {"axes": [{"key": "seed", "values": [0, 1], "labels": ["a/b", "c"]}]},
            ["axes[0].labels[0] is 'a/b'", "labels name folders"],
        ),
        ({"axes": [{"key": "seed", "values": [0, 0]}]}, ["two values have the label 'seed0'"]),
        (
            {"axes": [{"key": "data.batch", "values": [{"p": 2, "k": 2}]}]},
            ["axes[0].key 'data.batch' overlaps overrides key 'data.batch'"],
        ),
        (
            {
                "axes": [
                    {"key": "loss", "values": ["triplet"]},
                    {"key": "loss.margin", "values": [1]},
                ]
            },
            ["axes[0].key 'loss' overlaps axes[1].key 'loss.margin'"],
        ),
        (
            {"overrides": {"train.checkpoint_every": 5}},
            ["train.checkpoint_every is set from eval_every"],
        ),
        (
            {"axes": [{"key": ["optim.lr"], "values": [[0.1]]}]},
            ["axes[0].key lists 1 keys: give one key, or a list of two or more"],
        ),
        (
            {"axes": [{"key": ["optim.lr", "loss.margin"], "values": [[0.1, 0.2], [0.1]]}]},
            ["axes[0].values[1] is [0.1]: with 2 keys, every value is a list of 2 values"],
        ),
        (
            {"axes": [{"key": ["optim.lr", "seed"], "values": [[0.1, 0]]}]},
            ["axes[0].key[1] is 'seed', an axis of its own: give it alone"],
        ),
        (
            {"axes": [{"key": ["optim.lr", "train.iterations"], "values": [[0.1, 4]]}]},
            ["axes[0].key 'train.iterations' overlaps overrides key 'train.iterations'"],
        ),
    ],  # fmt: skip
)
def test_a_bad_study_file_is_one_line_naming_the_key(tmp_path, pack, changes, needles) -> None:
    study = write_study(tmp_path / "bad.yaml", **changes)
    r = gait("study", study, "--pack", pack, "--out", tmp_path / "out", "--list")
    line = assert_one_line_error(r, *needles)
    assert str(study) in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("axes", "needles"),
    [
        (
            [{"key": "loss.margin", "values": [0.1, 5.0]}],
            ["run 1 (margin5.0): loss.margin must be less than loss.alpha"],
        ),
        (
            [{"key": "seed", "values": [0, 1]}, {"key": "data.bach", "values": [1]}],
            ["run 0 (seed0-bach1): unknown key 'data.bach' (did you mean 'batch'?)"],
        ),
        (
            [{"key": "loss", "values": ["triplet", "hinge"]}],
            ["run 1 (hinge): loss.name is 'hinge'; use one of center_ranked, triplet"],
        ),
        (
            [{"key": "optim.lr", "values": [0.001, -1]}],
            ["run 1 (lr-1): optim.lr must be greater than 0"],
        ),
    ],
)
def test_a_bad_run_config_refuses_the_whole_study_up_front(tmp_path, pack, axes, needles) -> None:
    study = write_study(tmp_path / "bad.yaml", axes=axes)
    out = tmp_path / "out"
    assert_one_line_error(gait("study", study, "--pack", pack, "--out", out), *needles)
    assert not out.exists()  # nothing was trained


def test_the_grid_is_the_product_of_the_axes(tmp_path) -> None:
    axes = [
        {"key": "loss", "values": ["center_ranked", {"name": "triplet", "margin": 0.3}]},
        {"key": "data.batch", "values": [{"p": 2, "k": 2}, {"p": 3, "k": 4}]},
        {"key": "seed", "values": [5, 6, 7]},
    ]
    overrides = {k: v for k, v in STUDY["overrides"].items() if k != "data.batch"}
    study = load_study(
        write_study(
            tmp_path / "grid.yaml",
            axes=axes,
            overrides=overrides,
            reference="triplet-margin0.3-p3-k4",
        )
    )
    assert len(study.runs) == 12 and [r.index for r in study.runs] == list(range(12))
    assert [r.name for r in study.runs[:4]] == [
        "center_ranked-p2-k2-seed5",
        "center_ranked-p2-k2-seed6",
        "center_ranked-p2-k2-seed7",
        "center_ranked-p3-k4-seed5",  # the last axis varies fastest
    ]
    assert study.variants == [
        "center_ranked-p2-k2",
        "center_ranked-p3-k4",
        "triplet-margin0.3-p2-k2",
        "triplet-margin0.3-p3-k4",
    ]
    assert study.reference == "triplet-margin0.3-p3-k4"
    run = study.runs[-1]
    assert run.name == "triplet-margin0.3-p3-k4-seed7" and run.variant == "triplet-margin0.3-p3-k4"
    cfg = run.config
    assert (cfg.data.batch.p, cfg.data.batch.k, cfg.seed) == (3, 4, 7)
    assert cfg.loss.name == "triplet" and cfg.loss.margin == 0.3
    assert study.runs[0].config.loss.name == "center_ranked"
    assert study.runs[0].config.loss.margin == 0.4279  # its own default (r2's): section replaced
    for r in study.runs:  # base + overrides for every run; checkpoints at every evaluation
        assert r.config.model.dim == 64 and r.config.schedule.name == "constant"
        assert r.config.train.checkpoint_every == 1 and r.config.train.iterations == 2
    assert study.runs[4].values == {
        "loss": "center_ranked",
        "data.batch": {"p": 3, "k": 4},
        "seed": 6,
    }


@pytest.mark.slow
def test_an_axis_of_several_keys_sets_them_together(tmp_path, pack) -> None:
    """P x K with the iterations that keep the sequences seen equal: a run whose iterations
    eval_every does not divide is evaluated at every eval_every and at its end."""
    overrides = {
        k: v for k, v in STUDY["overrides"].items() if k not in ("data.batch", "train.iterations")
    }
    axes = [
        {
            "key": ["data.batch", "train.iterations"],
            "values": [[{"p": 2, "k": 3}, 2], [{"p": 2, "k": 2}, 3]],
            "labels": ["2x3", "2x2"],
        },
        {"key": "seed", "values": [0]},
    ]
    path = write_study(tmp_path / "pk.yaml", axes=axes, overrides=overrides, eval_every=2)
    study = load_study(path)
    assert [r.name for r in study.runs] == ["2x3-seed0", "2x2-seed0"]
    short, long = (r.config for r in study.runs)
    assert (short.data.batch.k, short.train.iterations, long.data.batch.k) == (3, 2, 2)
    assert long.train.iterations == 3 and long.train.checkpoint_every == 2
    assert study.runs[1].values["data.batch+train.iterations"] == [{"p": 2, "k": 2}, 3]
    assert study.spec()["axes"][0]["key"] == ["data.batch", "train.iterations"]
    out = tmp_path / "out"
    r = gait("study", path, "--pack", pack, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    s = json.loads((out / "study.json").read_text())
    runs = {x["name"]: x for x in s["runs"]}
    assert set(runs["2x2-seed0"]["validation"]) == {"2", "3"}  # every 2 and the last
    assert set(runs["2x3-seed0"]["validation"]) == {"2"}
    assert s["complete"] == 2
    assert [v["sequences_per_iteration"] for v in s["variants"]] == [6, 4]


def test_a_reference_label_compares_within_the_other_axes(tmp_path) -> None:
    """reference: a label of an axis: each variant against the one that differs only there."""
    axes = [
        {"key": "loss", "values": ["center_ranked", "triplet", "ranked_list"]},
        {"key": "data.batch", "values": [{"p": 2, "k": 2}, {"p": 3, "k": 4}], "labels": ["a", "b"]},
        {"key": "seed", "values": [0, 1]},
    ]
    overrides = {k: v for k, v in STUDY["overrides"].items() if k != "data.batch"}
    path = write_study(
        tmp_path / "r.yaml", axes=axes, overrides=overrides, reference="center_ranked"
    )
    study = load_study(path)
    assert study.pairs == (
        ("triplet-a", "center_ranked-a"),
        ("triplet-b", "center_ranked-b"),
        ("ranked_list-a", "center_ranked-a"),
        ("ranked_list-b", "center_ranked-b"),
    )
    by_batch = load_study(write_study(path, axes=axes, overrides=overrides, reference="a"))
    assert by_batch.pairs[0] == ("center_ranked-b", "center_ranked-a") and len(by_batch.pairs) == 3
    both = load_study(
        write_study(path, axes=axes, overrides=overrides, reference=["center_ranked", "a"])
    )
    assert both.pairs == study.pairs + by_batch.pairs and both.reference == "center_ranked, a"
    given = write_study(
        path, axes=axes, overrides=overrides, reference=[{"triplet-b": "triplet-a"}]
    )
    assert load_study(given).pairs == (("triplet-b", "triplet-a"),)
    bad = write_study(path, axes=axes, overrides=overrides, reference=[{"triplet-c": "triplet-a"}])
    with pytest.raises(StudyError, match=r"reference\[0\]: 'triplet-c' is not a variant"):
        load_study(bad)
    ctx = Context(Subjects(["001"], ["002"], ["003"]), Path("p.h5"), "fingerprint")
    results = {  # triplet 0.25 above center_ranked with batch a, 0.5 with b; every seed
        r.name: {
            "validation": {},
            "test": {
                "NM": {
                    "rank1": 0.25
                    + 0.25 * (r.variant.startswith("triplet")) * (1 + r.variant.endswith("b")),
                    "mAP": 0.5,
                }
            },
        }
        for r in study.runs
    }
    s = build_summary(study, ctx, results)
    nm = {
        (c["variant"], c["reference"]): c["mean"]
        for c in s["comparisons"]
        if c["condition"] == "NM"
    }
    assert (
        nm[("triplet-a", "center_ranked-a")] == 0.25 and nm[("triplet-b", "center_ranked-b")] == 0.5
    )
    assert nm[("ranked_list-b", "center_ranked-b")] == 0.0
    assert s["references"] == ["center_ranked-a", "center_ranked-b"]
    assert "| **center_ranked-b** |" in to_markdown(s)


def test_the_reference_and_labels(tmp_path) -> None:
    axes = [
        {
            "key": "data.batch",
            "values": [{"p": 2, "k": 2}, {"p": 3, "k": 2}],
            "labels": ["2x2", "3x2"],
        },
        {"key": "loss.alpha", "values": [1.2, 1.5]},
    ]
    overrides = {k: v for k, v in STUDY["overrides"].items() if k != "data.batch"}
    path = write_study(
        tmp_path / "s.yaml", axes=axes, overrides=overrides, reference="3x2-alpha1.5"
    )
    study = load_study(path)
    assert [r.name for r in study.runs] == [
        "2x2-alpha1.2",
        "2x2-alpha1.5",
        "3x2-alpha1.2",
        "3x2-alpha1.5",
    ]
    assert study.reference == "3x2-alpha1.5" and study.variants == [r.name for r in study.runs]
    assert all(r.seed == 0 for r in study.runs)  # no seed axis: one run a variant, tiny's seed
    default = load_study(write_study(tmp_path / "d.yaml"))
    assert default.reference == "center_ranked" and default.variants == ["center_ranked", "triplet"]


def test_subject_splits_are_checked_against_the_pack(tmp_path, pack) -> None:
    cases = [
        ({"validation": "last:4"}, "validation 'last:4' takes all 4 training subjects"),
        ({"test": "004-006"}, "1 test subjects (004) are training subjects"),
        ({"train": "101-120"}, "train '101-120' selects no subject of the pack"),
        ({"validation": "050"}, "validation '050' selects none of the training subjects"),
    ]
    for changes, needle in cases:
        study = write_study(tmp_path / "s.yaml", **changes)
        r = gait("study", study, "--pack", pack, "--out", tmp_path / "out", "--summarize")
        assert_one_line_error(r, needle)
    assert not (tmp_path / "out").exists()


# -- --list and --run ----------------------------------------------------------------------


def test_list_prints_one_command_per_run(tmp_path, pack) -> None:
    study = write_study(tmp_path / "my study.yaml")
    out = tmp_path / "out"
    r = gait("study", study, "--pack", pack, "--out", out, "--list")
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 4
    for i, line in enumerate(lines):
        args = shlex.split(line)  # quoted for the shell: the file name has a space
        assert args == ["gait", "study", str(study), "--pack", str(pack), "--out", str(out),
                        "--run", str(i)]  # fmt: skip
    cuda = gait("study", study, "--pack", pack, "--out", out, "--list", "--device", "cuda:1")
    assert cuda.output.splitlines()[0].endswith("--run 0 --device cuda:1")
    assert not out.exists()
    r = gait("study", study, "--pack", pack, "--out", out, "--run", "4")
    assert_one_line_error(r, "--run 4:", "has 4 runs, 0 to 3")
    r = gait("study", study, "--pack", pack, "--out", out, "--run", "1", "--list")
    assert r.exit_code == 2 and "--list and --run exclude each other" in r.output


# -- a tiny study, end to end ----------------------------------------------------------------


def test_the_whole_command_skips_the_run_a_job_finished(done) -> None:
    out, first, full = done["out"], done["first"].output, done["full"].output
    assert "run 1/4 center_ranked-seed0: training a new run" in first
    assert "run 1/4 center_ranked-seed0: validation at 1: rank-1 NM" in first
    assert "run 1/4 center_ranked-seed0: test at 2: rank-1 NM" in first
    assert "run 2/4" not in first
    # The whole command did not train or evaluate run 0 again: same files, same times.
    assert "run 1/4 center_ranked-seed0: done already" in full
    assert (
        "center_ranked-seed0: training" not in full
        and "run 1/4 center_ranked-seed0: test" not in full
    )
    for i in range(1, 4):
        assert f"run {i + 1}/4 {RUNS[i]}: training a new run" in full
        assert f"run {i + 1}/4 {RUNS[i]}: validation at 2:" in full
    after = mtimes(out / "runs" / RUNS[0])
    before = {k: v for k, v in done["before"].items() if k != "eval"}
    assert after == before and "checkpoints/iter-000002.pt" in after
    assert StudyPaths(out).evaluation(RUNS[0]).stat().st_mtime_ns == done["before"]["eval"]
    # Every run is an ordinary run folder, usable by `gait eval` and `gait train --resume`.
    for name in RUNS:
        run = out / "runs" / name
        assert (run / "config.yaml").is_file() and (run / "log.jsonl").is_file()
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
            "iter-000001.pt",
            "iter-000002.pt",
        ]
        data = json.loads((run / "data.json").read_text())
        assert data["train_subjects"] == ["001", "002"]  # 001-004 less the validation split
    assert "center_ranked: NM" in full and "(2 seeds)" in full
    assert f"study: {out / 'study.json'}, {out / 'study.html'}" in full


def test_study_json_holds_curves_finals_and_statistics(done) -> None:
    s = json.loads((done["out"] / "study.json").read_text())
    md = (done["out"] / "study.md").read_text()  # the Markdown summary and its figures
    assert md.startswith("## tiny\n") and "4 of 4 runs done" in md
    for g in ("NM", "BG", "CL"):
        png = done["out"] / "figures" / f"validation-{g}.png"
        assert cv2.imread(str(png)) is not None and f"](figures/validation-{g}.png)" in md
    assert s["format"] == "gait-study v1" and s["complete"] == 4 and s["incomplete"] == []
    assert s["subjects"] == {
        "train": ["001", "002"],
        "validation": ["003", "004"],
        "test": ["005", "006"],
    }
    assert s["conditions"] == ["NM", "BG", "CL"] and s["checkpoints"] == [1, 2]
    assert s["study"]["eval_every"] == 1 and s["reference"] == "center_ranked"
    runs = {r["name"]: r for r in s["runs"]}
    assert list(runs) == RUNS
    r = runs["triplet-seed1"]
    assert r["values"] == {"loss": "triplet", "seed": 1} and r["seed"] == 1
    assert set(r["validation"]) == {"1", "2"} and r["complete"]
    for c in [*r["validation"].values(), r["test"]]:
        assert set(c) == {"NM", "BG", "CL"} and all(0 <= c[g]["rank1"] <= 1 for g in c)
    # Per variant: the mean and t interval across the seeds, checked with stats.mean_ci.
    v = {x["name"]: x for x in s["variants"]}
    assert list(v) == ["center_ranked", "triplet"] and v["triplet"]["seeds"] == [0, 1]
    nm = [runs[f"triplet-seed{i}"]["test"]["NM"]["rank1"] for i in (0, 1)]
    expected = stats.mean_ci(nm)
    got = v["triplet"]["test"]["NM"]
    assert got["n"] == 2 and got["mean"] == pytest.approx(expected.mean)
    if expected.low == expected.low:  # two different figures (not NaN)
        assert got["low"] == pytest.approx(expected.low)
    val = [runs[f"triplet-seed{i}"]["validation"]["1"]["BG"]["rank1"] for i in (0, 1)]
    assert v["triplet"]["validation"]["1"]["BG"]["mean"] == pytest.approx(sum(val) / 2)
    # Paired comparisons with the reference, one per probe group, over the two shared seeds.
    comps = s["comparisons"]
    assert [(c["variant"], c["reference"], c["condition"]) for c in comps] == [
        ("triplet", "center_ranked", g) for g in ("NM", "BG", "CL")
    ]
    ref = [runs[f"center_ranked-seed{i}"]["test"]["NM"]["rank1"] for i in (0, 1)]
    assert comps[0]["n"] == 2 and comps[0]["seeds"] == [0, 1]
    assert comps[0]["mean"] == pytest.approx((nm[0] - ref[0] + nm[1] - ref[1]) / 2)
    # Iterations to reach the target (40 % validation NM) per run and per variant.
    for name, run in runs.items():
        curve = [run["validation"][k]["NM"]["rank1"] for k in ("1", "2")]
        assert run["iterations_to_target"] == stats.iterations_to_reach([1, 2], curve, 0.4), name
    t = v["triplet"]["iterations_to_target"]
    assert t["n"] == 2 and set(t["per_seed"]) == {"0", "1"}
    # What each loss saw during training: each run's logged statistics, and their seed means.
    for name, run in runs.items():
        log = [json.loads(line) for line in (done["out"] / "runs" / name / "log.jsonl").open()]
        loss = run["values"]["loss"]
        assert run["training"]["active_pos"] == [
            [x["iteration"] + 1, x[f"{loss}/active_pos"]] for x in log
        ]
        assert run["training"]["grad_norm"] == [[x["iteration"] + 1, x["grad_norm"]] for x in log]
        assert set(run["training"]) == set(TRAINING_STATISTICS), name
    own = [
        dict(map(tuple, runs[f"triplet-seed{i}"]["training"]["geometry/own_center"]))
        for i in (0, 1)
    ]
    assert v["triplet"]["training"]["geometry/own_center"] == [
        [it, pytest.approx((own[0][it] + own[1][it]) / 2)] for it in sorted(own[0])
    ]
    png = done["out"] / "figures" / "training.png"
    assert cv2.imread(str(png)) is not None and "![training statistics](figures/training.png)" in md


@pytest.mark.slow
def test_running_again_changes_nothing(done, pack) -> None:
    out = done["out"]
    before = mtimes(out / "runs")
    summary = (out / "study.json").read_bytes()
    r = gait("study", done["study"], "--pack", pack, "--out", out)
    assert r.exit_code == 0, r.output
    assert r.output.count("done already") == 4 and "training" not in r.output
    assert mtimes(out / "runs") == before
    assert (out / "study.json").read_bytes() == summary  # deterministic, no time stamp


def test_a_run_that_stopped_midway_is_resumed(copied) -> None:
    out = copied["out"]
    run = out / "runs" / RUNS[1]
    kept = (run / "checkpoints" / "iter-000001.pt").stat().st_mtime_ns
    (run / "checkpoints" / "iter-000002.pt").unlink()  # as if killed before its last checkpoint
    r = run_study(copied, out, "--run", "1", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "center_ranked-seed1: training from iteration 1" in r.output
    assert "center_ranked-seed1: trained to 2" in r.output
    assert "validation at 1" not in r.output  # its result is kept: same checkpoint bytes
    assert (run / "checkpoints" / "iter-000001.pt").stat().st_mtime_ns == kept
    assert (run / "checkpoints" / "iter-000002.pt").is_file()
    log = [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert log == [0, 1]  # the trainer's own resume: no iteration twice


@pytest.mark.slow
def test_a_changed_study_is_refused_naming_the_run(copied, tmp_path) -> None:
    out = copied["out"]
    changed = write_study(
        tmp_path / "changed.yaml", overrides={**STUDY["overrides"], "optim.lr": 0.002}
    )
    before = mtimes(out / "runs")
    for args in (["--run", "2"], [], ["--summarize"]):
        r = gait("study", changed, "--pack", copied["pack"], "--out", out, *args)
        line = assert_one_line_error(
            r, "optim.lr was 0.002009 when it was trained, the study now gives 0.002", "--overwrite"
        )
        first = "run 2 (triplet-seed0)" if args[:1] == ["--run"] else "run 0 (center_ranked-seed0)"
        assert first in line
    split = write_study(tmp_path / "split.yaml", validation="last:1")
    r = gait("study", split, "--pack", copied["pack"], "--out", out, "--run", "3")
    assert_one_line_error(r, "run 3 (triplet-seed1)", "trained on subjects 2 (001..002)")
    assert mtimes(out / "runs") == before  # nothing was touched
    # --overwrite trains the changed run again from scratch; the others stay as they are.
    r = gait("study", changed, "--pack", copied["pack"], "--out", out, "--run", "2", "--overwrite")
    assert r.exit_code == 0, r.output
    assert "run 3/4 triplet-seed0: optim.lr was 0.002009" in r.output  # tiny.yaml's
    assert "--overwrite: training it again from scratch" in r.output
    assert "triplet-seed0: training a new run" in r.output
    assert "lr: 0.002" in (out / "runs" / RUNS[2] / "config.yaml").read_text()
    after = mtimes(out / "runs")
    assert all(after[k] == v for k, v in before.items() if not k.startswith(RUNS[2]))


def test_a_run_in_progress_elsewhere_is_refused(copied) -> None:
    with OutputLock(StudyPaths(copied["out"]).evaluation(RUNS[3])):
        r = run_study(copied, copied["out"], "--run", "3")
    assert_one_line_error(r, "is being written by another gait process")


@pytest.mark.slow
def test_summarize_reports_what_is_there(copied) -> None:
    out = copied["out"]
    shutil.rmtree(out / "runs" / RUNS[3])
    StudyPaths(out).evaluation(RUNS[3]).unlink()
    (out / "study.json").unlink()
    r = run_study(copied, out, "--summarize")
    assert r.exit_code == 0, r.output
    assert "1 of 4 runs are not done yet (triplet-seed1); summarizing what is there" in r.output
    assert not (out / "runs" / RUNS[3]).exists()  # --summarize trains nothing
    s = json.loads((out / "study.json").read_text())
    assert s["incomplete"] == ["triplet-seed1"] and s["complete"] == 3
    nm = s["comparisons"][0]
    assert nm["n"] == 1 and nm["seeds"] == [0] and nm["p_value"] is None
    assert (
        s["variants"][1]["test"]["NM"]["n"] == 1 and s["variants"][1]["test"]["NM"]["low"] is None
    )
    assert "Incomplete:" in (out / "study.html").read_text()


def test_summary_statistics_by_hand(tmp_path) -> None:
    """build_summary on made-up results of 3 seeds, each figure checked by hand."""
    axes = [{"key": "loss", "values": ["center_ranked", "triplet"]},
            {"key": "seed", "values": [0, 1, 2]}]  # fmt: skip
    name = "<img src=x onerror=alert(1)>"  # data-borne markup must be escaped in the page
    study = load_study(write_study(tmp_path / "s.yaml", axes=axes, target=62.5, name=name))
    ctx = Context(Subjects(["001"], ["002"], ["003"]), Path("p.h5"), "fingerprint")

    def conditions(nm: float) -> dict:
        return {g: {"rank1": nm, "mAP": nm} for g in ("NM", "BG", "CL")}

    # Binary fractions, so that differences are exact.
    nm1 = {"center_ranked": [0.5, 0.625, 0.75], "triplet": [0.625] * 3}  # at iteration 1
    nm2 = {"center_ranked": [0.625, 0.75, 0.875], "triplet": [0.75, 0.875, 1.0]}  # at 2, test
    results = {
        r.name: {
            "validation": {
                1: conditions(nm1[r.variant][r.seed]),
                2: conditions(nm2[r.variant][r.seed]),
            },
            "test": conditions(nm2[r.variant][r.seed]),
        }
        for r in study.runs
    }
    s = build_summary(study, ctx, results)
    v = {x["name"]: x for x in s["variants"]}
    # center_ranked at 1: 0.5, 0.625, 0.75: mean 0.625, s = 0.125, standard error
    # 0.125 / sqrt(3) = 0.0721688, half width 4.302653 * 0.0721688 = 0.310517.
    i = v["center_ranked"]["validation"]["1"]["NM"]
    assert i["mean"] == 0.625 and i["high"] - i["mean"] == pytest.approx(0.310517, abs=1e-6)
    # triplet at 1: three equal figures: a zero-width interval.
    assert v["triplet"]["validation"]["1"]["NM"] == {
        "mean": 0.625,
        "low": 0.625,
        "high": 0.625,
        "n": 3,
    }
    # Paired on test: triplet - center_ranked = 0.125 for every seed: s = 0, p undefined.
    nm = s["comparisons"][0]
    assert (nm["mean"], nm["low"], nm["high"], nm["p_value"], nm["n"]) == (
        0.125,
        0.125,
        0.125,
        None,
        3,
    )
    # Target 62.5 %: center_ranked's seed 0 reaches it at 2 (0.5 at 1), seeds 1 and 2 at 1;
    # its mean curve (0.625, 0.75) at 1. triplet: 0.625 at 1 for every seed.
    t = v["center_ranked"]["iterations_to_target"]
    assert t["per_seed"] == {"0": 2, "1": 1, "2": 1} and t["mean_curve"] == 1 and t["reached"] == 3
    assert v["triplet"]["iterations_to_target"]["per_seed"] == {"0": 1, "1": 1, "2": 1}
    html = to_html(s)
    assert name not in html and "&lt;img src=x onerror" in html
    assert html.count("data:image/png;base64,") == 3 and "at or above\n62.5 %" in html
    assert "<td>+12.5</td>" in html  # the paired difference, in percentage points
    # The same figures as Markdown: center_ranked's test NM 0.625, 0.75, 0.875: 75.0 ± 31.1.
    md = to_markdown(s, {"NM": "figures/validation-NM.png"})
    assert "| **center_ranked** | 75.0 ± 31.1 | 75.0 ± 31.1 | 75.0 ± 31.1 | 3 |" in md
    assert "| triplet | 87.5 ± 31.1 |" in md and "![NM validation rank-1](figures/" in md
    assert (
        "| triplet | center_ranked | NM | 3 | +12.5 | [+12.5, +12.5] | [+12.5, +12.5] | – |" in md
    )
    assert "| center_ranked | 1 | 4 | 3 / 3 |" in md  # the mean curve: 62.5 % at 1 (P x K 2x2)


@pytest.mark.browser
def test_the_study_page_renders_in_headless_chromium(done, tmp_path) -> None:
    page = done["out"] / "study.html"
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    assert html.count("data:image/png;base64,") == 4  # the NM, BG and CL curves, the training
    for table in ('id="final"', 'id="paired"', 'id="target"', 'id="runs"'):
        assert table in html
    dom = chromium(page, "--dump-dom")
    assert dom.returncode == 0 and 'id="paired"' in dom.stdout
    assert "Paired differences with center_ranked" in dom.stdout
    assert dom.stdout.count("<td>2 of 2</td>") == 2  # each variant: 2 seeds with a test result
    shot = tmp_path / "shot.png"
    assert chromium(page, "--window-size=1200,1600", f"--screenshot={shot}").returncode == 0
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (1600, 1200)
    assert (img < 128).mean() > 0.01  # text and figures, not a blank page


def test_the_example_study_is_valid() -> None:
    study = load_study(
        Path(__file__).resolve().parents[1] / "configs" / "studies" / "loss-demo.yaml"
    )
    assert len(study.runs) == 30 and len(study.variants) == 6
    assert study.reference == "center_ranked, 4x4"
    assert study.runs[0].name == "center_ranked-4x4-seed0"
    assert ("triplet-8x8", "center_ranked-8x8") in study.pairs and len(study.pairs) == 7
    assert ("center_ranked-8x8", "center_ranked-4x4") in study.pairs
    assert {r.config.train.checkpoint_every for r in study.runs} == {250}
    seen = {
        r.config.train.iterations * r.config.data.batch.p * r.config.data.batch.k
        for r in study.runs
    }
    assert seen == {24_000}  # 4x4 for 1,500 iterations, 8x8 for 375
    with pytest.raises(StudyError):
        load_study(Path("missing.yaml"))
