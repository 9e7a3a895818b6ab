"""What the first GPU or cluster run would hit (issue 9), reproduced on the CPU.

DDP runs use gloo through torchrun; CUDA-only behaviour is checked through the switches and
checkpoint contents that decide it. Tests that need a GPU are skipped without one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gaittrain.config import load_config
from tests.cli import (
    FAST,
    TINY,
    assert_one_line_error,
    gait,
    make_pack,
    subprocess_env,
    train_tiny,
)

SHORT = ("--train-subjects", "first:4", "--device", "cpu")


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return make_pack(tmp_path_factory.mktemp("gpu") / "sample.h5")


def torchrun(out: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
        *("--nproc_per_node", str(nproc), "-m", "gaitcli", "train", str(TINY)),
        *("--out", str(out), *args),
    ]
    env = subprocess_env(OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def parameters(run: Path, iteration: int) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / f"iter-{iteration:06d}.pt", weights_only=True)
    return {**state["model"], **{f"objective.{k}": v for k, v in state["objective"].items()}}


# Item 5/6 and the DDP gradient: 2 processes equal 1 in parameters, head included --------------


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_with_sgd_and_cross_entropy_equals_one_process(pack: Path, tmp_path: Path) -> None:
    """SGD (not Adam, whose normalization would hide a gradient off by a factor of the world
    size) with the cross-entropy head on: after 3 steps every parameter matches."""
    sets = ["optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.0", "cross_entropy.weight=0.5"]
    args = [*FAST, *SHORT, "--iterations", "3", *[x for s in sets for x in ("--set", s)]]
    single = tmp_path / "single"
    assert gait("train", TINY, "--pack", pack, "--out", single, *args).exit_code == 0
    done = torchrun(tmp_path / "ddp", "--pack", str(pack), *args)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = parameters(single, 3), parameters(tmp_path / "ddp", 3)
    start = torch.load(single / "checkpoints" / "iter-000003.pt", weights_only=True)
    assert one.keys() == two.keys() and any(k.startswith("objective.") for k in one)
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-6), k
    assert start["iteration"] == 3


@pytest.mark.slow
@pytest.mark.ddp
def test_a_refusal_on_rank_0_reaches_every_rank(pack: Path, tmp_path: Path) -> None:
    """An existing run without --resume: every process stops with the one line (none hangs
    waiting for rank 0 until torchrun kills it)."""
    run = tmp_path / "run"
    assert train_tiny(pack, run, *SHORT, "--iterations", "2").exit_code == 0
    done = torchrun(run, "--pack", str(pack), *FAST, *SHORT, "--iterations", "2")
    assert done.returncode != 0
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 2 and all("already holds a run" in ln for ln in lines), done.stderr[-3000:]


def test_an_explicit_gpu_under_torchrun_is_refused(pack: Path, tmp_path: Path, monkeypatch):
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    r = train_tiny(pack, tmp_path / "run", "--device", "cuda:1", "--train-subjects", "first:4")
    assert_one_line_error(r, "--device cuda:1 under torchrun", "--device cuda")


# Items 1-2: checkpoints from a GPU machine resume anywhere ------------------------------------


def test_a_checkpoint_with_cuda_rng_states_resumes_on_the_cpu(pack: Path, tmp_path: Path) -> None:
    """A checkpoint written on a machine with 3 GPUs (older gait: one CUDA RNG state per visible
    device; now: the device in use only) resumes here."""
    run = tmp_path / "run"
    assert train_tiny(pack, run, *SHORT, "--iterations", "2").exit_code == 0
    ckpt = run / "checkpoints" / "iter-000002.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["rng"]["cuda"] is None  # trained on the CPU: no CUDA state saved
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 3
    torch.save(state, ckpt)
    r = train_tiny(pack, run, *SHORT, "--iterations", "3", "--resume")
    assert r.exit_code == 0, r.output


def test_checkpoints_load_to_the_cpu(tmp_path: Path, monkeypatch) -> None:
    from gaittrain import checkpoint

    seen = {}
    real = torch.load

    def spy(f, *args, **kwargs):
        seen["map_location"] = kwargs.get("map_location")
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    path = tmp_path / "c.pt"
    checkpoint.save(path, {"iteration": 1, "model": {}, "config": {}})
    assert checkpoint.load(path)["iteration"] == 1
    assert seen["map_location"] == "cpu"


# Items 4, 7, 8: numerics switches --------------------------------------------------------------


def test_auto_amp_takes_fp16_where_bf16_is_only_emulated(monkeypatch) -> None:
    from gaittrain.trainer import amp_dtype

    def v100(including_emulation: bool = True) -> bool:  # emulated bf16 only
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", v100)
    cfg = load_config(TINY, ["train.amp=auto"])
    assert amp_dtype(cfg, torch.device("cuda", 0)) == torch.float16
    assert amp_dtype(cfg, torch.device("cpu")) is None


def test_deterministic_and_tf32_are_set_both_ways(pack: Path, tmp_path: Path) -> None:
    """Process-wide switches follow each run's config, in both directions."""
    det = ("--set", "train.deterministic=true")
    assert train_tiny(pack, tmp_path / "a", *SHORT, "--iterations", "1", *det).exit_code == 0
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    tf32 = ("--set", "train.tf32=true")
    assert train_tiny(pack, tmp_path / "b", *SHORT, "--iterations", "1", *tf32).exit_code == 0
    assert not torch.are_deterministic_algorithms_enabled()  # did not leak from run a
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert train_tiny(pack, tmp_path / "c", *SHORT, "--iterations", "1").exit_code == 0
    assert not torch.backends.cudnn.allow_tf32  # amp: none means float32, also for cuDNN
    r = train_tiny(pack, tmp_path / "d", *SHORT, *det, *tf32)
    assert_one_line_error(r, "train.tf32 and train.deterministic")


# Items 6, 10 and the fp16 schedule: the training step ------------------------------------------


class SyncCounter:
    """Counts the calls that make a host wait for the device (on CUDA)."""

    NAMES = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu", "nonzero")

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        for name in self.NAMES:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(real))
        for name in ("unique", "nonzero"):
            monkeypatch.setattr(torch, name, self._wrap(getattr(torch, name)))

    def _wrap(self, real):
        def counted(*args, **kwargs):
            # gait's own calls only: torch.optim reads its step counters with .item(), which
            # stay on the CPU on every device (checkpoints load to the CPU for that reason)
            caller = sys._getframe(1).f_code.co_filename
            if "/torch/optim/" not in caller:
                self.count += 1
            return real(*args, **kwargs)

        return counted


def _step_parts(**overrides):
    from gaittrain.models import SetModel
    from gaittrain.objective import Objective
    from gaittrain.trainer import build_optimizer

    cfg = load_config(TINY, ["cross_entropy.weight=0.5", *overrides.get("sets", [])])
    torch.manual_seed(0)
    model = SetModel(cfg.model.channels, cfg.model.bins, cfg.model.dim)
    objective = Objective(cfg, num_classes=4, parts=model.parts)
    optimizer = build_optimizer(cfg, [*model.parameters(), *objective.parameters()])
    frames = torch.rand(8, 6, 32, 22)
    labels = torch.arange(4).repeat_interleave(2)
    return model, objective, optimizer, frames, labels


def test_a_training_step_synchronizes_once(monkeypatch) -> None:
    from gaittrain.trainer import train_step

    model, objective, optimizer, frames, labels = _step_parts()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    counter = SyncCounter(monkeypatch)
    value, stepped = train_step(model, objective, optimizer, scaler, frames, labels, grad_clip=1.0)
    assert stepped and value > 0
    assert counter.count <= 1, counter.count  # the loss's value: one check per step
    monkeypatch.undo()
    assert set(objective.stats) >= {"center_ranked/loss", "cross_entropy/loss"}  # read on demand


def test_a_skipped_fp16_step_does_not_advance_the_schedule() -> None:
    """A grad scale so large that the scaled gradients overflow: the scaler skips the step, and
    train_step says so (the trainer then leaves the learning-rate schedule alone)."""
    from gaittrain.trainer import train_step

    model, objective, optimizer, frames, labels = _step_parts(sets=["cross_entropy.weight=1e3"])
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # scaled gradients overflow
    _, stepped = train_step(model, objective, optimizer, scaler, frames, labels)
    assert not stepped
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    _, stepped = train_step(model, objective, optimizer, scaler, frames, labels)
    assert stepped


def test_the_batch_is_gathered_in_float32_with_its_gradient(tmp_path: Path) -> None:
    """One gloo process: gather_batch returns float32 features (bf16 in) and labels, and the
    gradient reaches the input."""
    import torch.distributed as dist

    from gaittrain.device import gather_batch

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        x = torch.randn(3, 4, 5).to(torch.bfloat16).requires_grad_()
        features, labels = gather_batch(x, torch.arange(4))
        assert features.dtype == torch.float32 and torch.equal(labels, torch.arange(4))
        features.sum().backward()
        assert x.grad is not None and torch.equal(x.grad.float(), torch.ones(3, 4, 5))
    finally:
        dist.destroy_process_group()


# Item 9: exact resume is a CPU promise; on CUDA with deterministic settings ---------------------


@pytest.mark.cuda
def test_cuda_resume_with_deterministic_settings_repeats_the_losses(pack, tmp_path) -> None:
    args = [*FAST, "--train-subjects", "first:4", "--device", "cuda"]
    args += ["--set", "train.deterministic=true", "--set", "train.amp=none"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert gait("train", TINY, "--pack", pack, "--out", ref, *args, "--iterations", "6")
    assert gait("train", TINY, "--pack", pack, "--out", run, *args, "--iterations", "3")
    r = gait("train", TINY, "--pack", pack, "--out", run, *args, "--iterations", "6", "--resume")
    assert r.exit_code == 0, r.output

    def losses(p: Path) -> list:
        return [json.loads(x)["loss"] for x in (p / "log.jsonl").read_text().splitlines()]

    assert losses(run) == losses(ref)
