"""`gait train` refuses what would silently change a run, and fails in one line, never in pieces.

Issue 8: item 3 (resume on other data), item 6 (a crashed run's folder stays usable), item 8
(gradient clipping covers the classifier), truncated/foreign checkpoints, a torn log line, a full
disk, and a second writer of the same run folder.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gaitprep.pack import Pack
from gaittrain.config import load_config
from gaittrain.models import SetModel
from gaittrain.objective import Objective
from gaittrain.trainer import seed_everything
from tests.cli import FAST, ROOT, TINY, assert_one_line_error, gait, make_pack, subprocess_env


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> tuple[Path, Path]:
    """The sample pack, and a pack of the same subjects normalized otherwise (same file name)."""
    base = tmp_path_factory.mktemp("packs")
    return (
        make_pack(base / "a" / "sample.h5"),
        make_pack(base / "b" / "sample.h5", binarize=True, largest_blob=True),
    )


def train(pack: Path, out: Path, *extra) -> object:
    return gait("train", TINY, "--pack", pack, "--out", out, *FAST, *extra)


# Item 3 ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_refuses_other_training_subjects(packs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(packs[0], run, "--iterations", "2", "--train-subjects", "first:4").exit_code == 0
    r = train(packs[0], run, "--iterations", "4", "--train-subjects", "first:5", "--resume")
    assert_one_line_error(r, "--resume", "subjects 4 (001..004), now 5 (001..005)")
    r = train(packs[0], run, "--iterations", "4", "--train-subjects", "first:4", "--resume")
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_resume_refuses_another_pack_even_under_the_same_name(packs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(packs[0], run, "--iterations", "2", "--train-subjects", "first:4").exit_code == 0
    r = train(packs[1], run, "--iterations", "4", "--train-subjects", "first:4", "--resume")
    assert_one_line_error(r, "--resume", str(packs[1]), "pack content differs")
    # With cross-entropy on and more subjects, the old code died in a size-mismatch traceback.
    ce = ("--set", "cross_entropy.weight=0.1")
    run2 = tmp_path / "ce"
    assert (
        train(packs[0], run2, "--iterations", "2", "--train-subjects", "first:4", *ce).exit_code
        == 0
    )
    r = train(packs[0], run2, "--iterations", "4", "--train-subjects", "first:6", *ce, "--resume")
    assert_one_line_error(r, "subjects")


def test_resume_names_the_config_key_that_changed(packs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(packs[0], run, "--iterations", "2", "--train-subjects", "first:4").exit_code == 0
    r = train(
        packs[0], run, "--iterations", "4", "--train-subjects", "first:4", "--resume",
        "--set", "optim.lr=0.5",
    )  # fmt: skip
    assert_one_line_error(r, "optim.lr", "0.5")


def test_resume_refuses_to_stretch_a_cosine_schedule(packs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cosine = ("--set", "schedule.name=cosine", "--train-subjects", "first:4")
    assert train(packs[0], run, "--iterations", "2", *cosine).exit_code == 0
    r = train(packs[0], run, "--iterations", "4", *cosine, "--resume")
    assert_one_line_error(r, "--resume", "cosine schedule", "(2 iterations)")


def test_the_run_records_what_it_trained_on(packs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(packs[0], run, "--iterations", "2", "--train-subjects", "first:4").exit_code == 0
    data = json.loads((run / "data.json").read_text())
    assert data["train_subjects"] == ["001", "002", "003", "004"]
    with Pack(packs[0]) as p:
        assert data["packs"] == [
            {"path": str(packs[0]), "fingerprint": p.fingerprint, "dataset": "casia-b"}
        ]
    state = torch.load(run / "checkpoints" / "iter-000002.pt", weights_only=True)
    assert state["data"] == data


# Item 6: a run that died before its first checkpoint does not lock its folder ---------------------


@pytest.mark.slow
def test_a_run_that_died_before_its_first_checkpoint_can_start_again(packs, tmp_path) -> None:
    run = tmp_path / "run"
    diverge = ("--set", "optim.lr=1e30", "--set", "schedule.warmup=0")
    r = train(packs[0], run, "--iterations", "20", "--train-subjects", "first:4", *diverge)
    assert_one_line_error(r, "the loss became")
    assert not list((run / "checkpoints").glob("*.pt"))
    r = train(packs[0], run, "--iterations", "2", "--train-subjects", "first:4")
    assert r.exit_code == 0, r.output
    logged = [json.loads(x)["iteration"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert logged == [0, 1]
    # and --resume on such a folder starts at 0 as well
    run2 = tmp_path / "run2"
    train(packs[0], run2, "--iterations", "20", "--train-subjects", "first:4", *diverge)
    r = train(packs[0], run2, "--iterations", "2", "--train-subjects", "first:4", "--resume")
    assert r.exit_code == 0, r.output


# Item 8 ------------------------------------------------------------------------------------------


def test_gradient_clipping_covers_the_cross_entropy_classifier(packs, tmp_path: Path) -> None:
    """Plain SGD with lr 1: the update is the clipped gradient, so every optimized parameter
    together moves by at most grad_clip."""
    run = tmp_path / "run"
    clip = 1e-4
    sets = [
        "optim.name=sgd", "optim.lr=1.0", "optim.momentum=0.0", "schedule.name=constant",
        "schedule.warmup=0", f"train.grad_clip={clip}", "cross_entropy.weight=1.0",
    ]  # fmt: skip
    extra = [x for s in sets for x in ("--set", s)]
    r = train(packs[0], run, "--iterations", "1", "--train-subjects", "first:4", *extra)
    assert r.exit_code == 0, r.output
    cfg = load_config(run / "config.yaml")
    seed_everything(cfg.seed, False, torch.device("cpu"))  # the trainer's order of creation
    model = SetModel(cfg.model.channels, cfg.model.bins, cfg.model.dim)
    objective = Objective(cfg, num_classes=4, parts=model.parts)
    before = {**model.state_dict(), **{f"o.{k}": v for k, v in objective.state_dict().items()}}
    state = torch.load(run / "checkpoints" / "iter-000001.pt", weights_only=True)
    after = {**state["model"], **{f"o.{k}": v for k, v in state["objective"].items()}}
    assert before.keys() == after.keys()
    moved = torch.sqrt(sum(((after[k] - before[k]).double() ** 2).sum() for k in before))
    classifier = [k for k in before if k.startswith("o.")]
    assert classifier and any(not torch.equal(after[k], before[k]) for k in classifier)
    assert 0 < moved <= clip * 1.05  # float32 rounding of the updated weights


# Checkpoints and logs that cannot be used -------------------------------------------------------


@pytest.fixture()
def short_run(packs, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    args = ("--iterations", "2", "--checkpoint-every", "1", "--train-subjects", "first:4")
    assert train(packs[0], run, *args).exit_code == 0
    return run


RESUME_3 = (
    "--iterations",
    "3",
    "--checkpoint-every",
    "1",
    "--train-subjects",
    "first:4",
    "--resume",
)


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_bad_checkpoint_is_one_line_everywhere(packs, short_run: Path, damage: str) -> None:
    ckpt = short_run / "checkpoints" / "iter-000002.pt"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: 3 * ckpt.stat().st_size // 4])
    else:  # a file of another program: a pickled object torch's safe loader refuses
        torch.save({"model": torch.nn.Linear(2, 2)}, ckpt)
    raw = ROOT / "sample_data" / "casia-b" / "005" / "nm-01" / "090"
    for r in (
        gait("eval", short_run, "--pack", packs[0], "--test-subjects", "005-006"),
        gait("embed", ckpt, packs[0], "--out", short_run / "e.h5"),
        gait("identify", ckpt, packs[0], raw),
        train(packs[0], short_run, *RESUME_3),
    ):
        line = assert_one_line_error(r, str(ckpt))
        assert "weights_only" not in r.output and "gait checkpoint" in line


def test_a_torn_last_log_line_is_dropped_on_resume(packs, short_run: Path) -> None:
    log = short_run / "log.jsonl"
    with log.open("a") as f:
        f.write('{"iteration": 2, "lo')  # a crash in the middle of a write
    r = train(packs[0], short_run, *RESUME_3)
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["iteration"] for x in log.read_text().splitlines()] == [0, 1, 2]


# A second writer, a full disk -------------------------------------------------------------------


def test_a_second_trainer_on_the_same_run_folder_is_refused(packs, tmp_path: Path) -> None:
    from gaitprep.files import OutputLock  # new in issue 8

    run = tmp_path / "run"
    with OutputLock(run):
        r = train(packs[0], run, "--iterations", "2", "--train-subjects", "first:4")
    assert_one_line_error(r, str(run), f"pid {os.getpid()}", "another gait process")
    assert not run.exists()


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_full_disk_while_training_is_one_line_and_resumable(packs, tmp_path: Path) -> None:
    """A run with a checkpoint at 2 is resumed to 4 under a file size limit: the checkpoint at 4
    cannot be written, one line names it and no partial file stays; with room again, --resume
    continues from 2 and logs exactly the losses of an uninterrupted run."""

    def command(out: Path, iterations: int) -> list[str]:
        return [
            *(sys.executable, "-m", "gaitcli", "train", str(TINY), "--pack", str(packs[0])),
            *("--out", str(out), "--iterations", str(iterations), "--checkpoint-every", "2"),
            *("--train-subjects", "first:4", *FAST),
        ]

    env = subprocess_env()
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert subprocess.run(command(ref, 4), capture_output=True, env=env).returncode == 0
    assert subprocess.run(command(run, 2), capture_output=True, env=env).returncode == 0
    done = subprocess.run(
        [*command(run, 4), "--resume"],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=_limit_file_size(64 << 10),
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "iter-000004.pt" in last and "file too large" in last, last
    assert not [p for p in run.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    done = subprocess.run([*command(run, 4), "--resume"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(from 2)" in done.stderr
    assert losses(run) == losses(ref)


def losses(run: Path) -> list[tuple[int, float]]:
    log = (run / "log.jsonl").read_text().splitlines()
    return [(r["iteration"], r["loss"]) for r in map(json.loads, log)]


def test_a_folder_of_other_files_is_refused_not_cleared(packs, tmp_path: Path) -> None:
    """--out on a folder that is not a gait run (here a user's config.yaml and notes) is refused;
    nothing in it is touched."""
    out = tmp_path / "mine"
    (out / "tensorboard").mkdir(parents=True)
    (out / "config.yaml").write_text("my: notes\n")
    (out / "tensorboard" / "mine.txt").write_text("keep me")
    r = train(packs[0], out, "--iterations", "2", "--train-subjects", "first:4")
    assert_one_line_error(r, str(out), "holds no gait run")
    assert (out / "config.yaml").read_text() == "my: notes\n"
    assert (out / "tensorboard" / "mine.txt").read_text() == "keep me"


def test_the_current_folder_can_be_the_run_folder(packs, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    r = train(packs[0], ".", "--iterations", "2", "--train-subjects", "first:4")
    assert r.exit_code == 0, r.output
    assert (run / "checkpoints" / "iter-000002.pt").is_file()


@pytest.mark.slow
def test_a_full_disk_under_tensorboard_is_one_line_without_a_thread_traceback(
    packs, tmp_path: Path
) -> None:
    """TensorBoard writes from a background thread; its failure must not print a traceback
    beside the one line that names the folder."""
    run = tmp_path / "run"
    args = [
        *(sys.executable, "-m", "gaitcli", "train", str(TINY), "--pack", str(packs[0])),
        *("--out", str(run), "--iterations", "40", "--train-subjects", "first:4", *FAST),
        *("--checkpoint-every", "1000"),
    ]
    env = subprocess_env()
    done = subprocess.run(
        args, capture_output=True, text=True, env=env, preexec_fn=_limit_file_size(3000)
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: cannot write") and "file too large" in last, last


def test_a_checkpoint_without_random_states_is_one_line(packs, short_run: Path) -> None:
    ckpt = short_run / "checkpoints" / "iter-000002.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["rng"]
    torch.save(state, ckpt)
    r = train(packs[0], short_run, *RESUME_3)
    assert_one_line_error(r, str(ckpt), "random-number states")
