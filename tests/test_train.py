"""`gait train` end to end on CPU: logs, checkpoints, resume after kill -9, DDP (gloo), errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gaitcli.main import cli
from gaitprep.layout import CASIA_B
from gaitprep.prep import PrepJob, run_prep

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
# A few-second run: 4 training subjects, P x K = 4 x 2, no DataLoader workers.
FAST = [
    "--train-subjects",
    "first:4",
    "--set",
    "data.batch.p=4",
    "--set",
    "data.batch.k=2",
    "--set",
    "data.workers=0",
    "--set",
    "train.log_every=1",
    "--set",
    "data.frames=8",
]


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "sample.h5"
    run_prep(
        PrepJob(raw=ROOT / "sample_data" / "casia-b", out=out, dataset="casia-b", layout=CASIA_B),
        workers=1,
    )
    return out


def gait(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def train_tiny(pack: Path, out: Path, *extra) -> object:
    """`gait train configs/tiny.yaml` with the FAST settings and ``extra`` options."""
    return gait("train", TINY, "--pack", pack, "--out", out, *FAST, *extra)


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["iteration"], r["loss"]) for r in map(json.loads, (run / "log.jsonl").open())]


def test_train_on_cpu_writes_logs_checkpoints_and_tensorboard(pack: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = train_tiny(pack, run, "--iterations", "6", "--checkpoint-every", "3", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert [i for i, _ in losses(run)] == list(range(6))
    assert (run / "config.yaml").read_text().startswith("model:")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "iter-000003.pt",
        "iter-000006.pt",
    ]
    state = torch.load(run / "checkpoints/iter-000006.pt", weights_only=True)
    assert state["iteration"] == 6 and "model" in state and "rng" in state
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    record = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert {"loss", "lr", "center_ranked/loss", "geometry/center_to_pair"} <= set(record)
    assert record["grad_norm"] > 0  # the gradient that reached the model
    again = train_tiny(pack, run, "--iterations", "6")
    assert again.exit_code == 1 and "--resume" in again.output


@pytest.mark.slow
def test_the_loss_falls(pack: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = train_tiny(
        pack,
        run,
        "--iterations",
        "60",
        "--set",
        "train.checkpoint_every=1000",
        "--set",
        "schedule.warmup=5",
    )
    assert r.exit_code == 0, r.output
    values = [v for _, v in losses(run)]
    assert sum(values[-10:]) / 10 < 0.7 * sum(values[:10]) / 10


KILLABLE = [sys.executable, "-m", "gaitcli", "train", str(TINY)]


@pytest.mark.slow
def test_kill_9_and_resume_logs_the_same_losses(pack: Path, tmp_path: Path) -> None:
    # exact equality is a CPU promise (cuDNN picks kernels per run unless train.deterministic;
    # tests/test_gpu_readiness.py has the CUDA variant with deterministic settings)
    args = ["--pack", str(pack), "--iterations", "30", "--checkpoint-every", "4", *FAST]
    args += ["--device", "cpu"]
    ref = tmp_path / "ref"
    assert gait("train", TINY, "--out", ref, *args).exit_code == 0

    run = tmp_path / "run"
    proc = subprocess.Popen(
        KILLABLE + ["--out", str(run), *args],
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    log = run / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 10:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    logged = len(log.read_text().splitlines())
    assert 10 <= logged < 30, "the run ended before it could be killed mid-way"
    r = gait("train", TINY, "--out", run, "--resume", *args)
    assert r.exit_code == 0, r.output
    assert losses(run) == losses(ref)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_ddp_with_gloo_matches_one_process(pack: Path, tmp_path: Path) -> None:
    args = ["--pack", str(pack), "--iterations", "3", "--device", "cpu", *FAST]
    single = tmp_path / "single"
    assert gait("train", TINY, "--out", single, *args).exit_code == 0
    ddp = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "gaitcli",
        "train",
        str(TINY),
        "--out",
        str(ddp),
        *args,
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = losses(single), losses(ddp)
    assert [i for i, _ in a] == [i for i, _ in b]
    for (_, x), (_, y) in zip(a, b, strict=True):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x))


def test_cuda_where_there_is_none_is_one_clear_line(pack: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = train_tiny(pack, tmp_path / "r", "--device", "cuda")
    assert r.exit_code == 1
    assert "no usable CUDA device" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(pack, tmp_path) -> None:
    run = tmp_path / "run"
    r = train_tiny(
        pack,
        run,
        "--iterations",
        "50",
        "--checkpoint-every",
        "1",
        "--set",
        "optim.lr=1e30",
        "--set",
        "schedule.warmup=0",
    )
    assert r.exit_code == 1, r.output
    assert "the loss became" in r.output and "last good checkpoint" in r.output
    kept = sorted((run / "checkpoints").glob("iter-*.pt"))
    assert kept and str(kept[-1]) in r.output


def test_config_errors_are_one_line(pack: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: 0.1, momentun: 0.9}\n")
    r = gait("train", bad, "--pack", pack, "--out", tmp_path / "r")
    assert r.exit_code == 1 and "unknown key 'optim.momentun'" in r.output
    r = gait("train", TINY, "--pack", pack, "--out", tmp_path / "r", "--train-subjects", "900-910")
    assert r.exit_code == 1 and "no subject of the pack matches" in r.output


def test_gradient_norm_is_that_of_the_models_gradient() -> None:
    from gaittrain.trainer import gradient_norm

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    assert gradient_norm(model) != gradient_norm(model)  # nan before any backward
    model[1].weight.requires_grad_(False)  # a frozen parameter has no gradient: left out
    model(torch.randn(5, 3, generator=torch.Generator().manual_seed(0))).pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == 3
    expected = sum(float(g.double().pow(2).sum()) for g in grads) ** 0.5
    assert gradient_norm(model) == pytest.approx(expected, rel=1e-6)
