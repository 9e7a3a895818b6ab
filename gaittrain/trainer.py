"""``gait train``: a plain, linear training loop for CPU, one GPU or many (DDP via torchrun).

The order of things, top to bottom: runtime (device, process group, seeds) -> data (training
subjects, P x K sampler, DataLoader) -> model, objective, optimizer, schedule, AMP scaler ->
resume -> loop (forward, gather features across processes, loss, backward, step, log,
checkpoint). Everything a run needs to continue exactly is in its checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from contextlib import nullcontext, suppress
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from gaitprep.errors import GaitError, OutputError, describe_os_error, first_line
from gaitprep.files import OutputLock, atomic_write
from gaittrain import checkpoint, run_folder
from gaittrain.checkpoint import CheckpointError
from gaittrain.config import Config, dump_config, saved_config
from gaittrain.data.dataset import PackDataset, collate, pack_subjects, to_model_input
from gaittrain.data.sampler import PKSampler
from gaittrain.data.splits import train_subjects
from gaittrain.device import Runtime, gather_batch, gather_features, on_rank0, place_model
from gaittrain.models import BNNECK_MODELS, build_model
from gaittrain.objective import Objective
from gaittrain.run_folder import RunPaths


class TrainError(GaitError, RuntimeError):
    """A run that cannot start or continue, explained in one line."""


def seed_everything(
    seed: int, deterministic: bool, device: torch.device, tf32: bool = False
) -> None:
    """Seed every generator and set the process-wide numerics switches, each both ways (so one
    in-process run never leaks its settings into the next).

    ``deterministic``: deterministic algorithms (warning where none exists), cuDNN without
    benchmarking, and cuBLAS's fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, unless already set).
    ``tf32``: TensorFloat-32 matrix products and convolutions on Ampere and newer GPUs (faster,
    about 10 mantissa bits); off, ``amp: none`` computes in true float32.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. ``auto``: bf16 on CUDA where the GPU has
    it natively (Ampere and newer), else fp16 with a grad scaler (V100, T4: bf16 would only be
    emulated); none on the CPU."""
    amp = cfg.train.amp
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16" or (
        amp == "auto" and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        return torch.float16
    return torch.bfloat16


def build_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def build_schedule(cfg: Config, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration factor: linear warm-up, then multistep decay, cosine or constant."""
    s, total = cfg.schedule, cfg.train.iterations

    def factor(it: int) -> float:
        warm = min(1.0, (it + 1) / s.warmup) if s.warmup else 1.0
        if s.name == "multistep":
            return warm * s.gamma ** sum(it >= m for m in s.milestones)
        if s.name == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
        return warm

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(
    net: torch.nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    frames: torch.Tensor,
    labels: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    grad_clip: float = 0.0,
    distributed: bool = False,
) -> tuple[float, bool]:
    """One optimization step on one batch; returns the loss and whether the optimizer stepped.

    Forward under autocast (``dtype`` None: full precision); a model that returns ``(features,
    logits)`` (a BNNeck's, in training mode) has both passed to the objective. Under DDP the
    features (and logits) are gathered in float32 with their gradients, and the labels with
    them, so the loss sees the whole batch;
    the loss is computed in float32; backward; clipping of every parameter the optimizer updates
    (the cross-entropy classifier's included); the step. A loss that is not finite is returned
    without any update. With fp16 the grad scaler skips steps whose gradients overflowed: then
    the second value is False (the learning-rate schedule must not advance).

    One host synchronization on the CPU path: the loss's value (the finiteness check).
    """
    amp = dtype is not None
    with torch.autocast(frames.device.type, dtype=dtype or torch.float32, enabled=amp):
        out = net(frames)
    features, logits = out if isinstance(out, tuple) else (out, None)  # logits: a BNNeck's
    if distributed:
        if logits is not None:
            logits = gather_features(logits)
        features, labels = gather_batch(features, labels)
    loss = objective(features, labels) if logits is None else objective(features, labels, logits)
    value = float(loss.detach())
    if not math.isfinite(value):
        return value, False
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        params = [q for group in optimizer.param_groups for q in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if not scaler.is_enabled():
        optimizer.step()
        return value, True
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return value, scaler.get_scale() >= scale  # a skipped step lowers the scale


def gradient_norm(model: torch.nn.Module) -> float:
    """The 2-norm of the gradient that reached the model's parameters in the last step (unscaled:
    the grad scaler's step unscales them); nan when none has a gradient. Not the objective's own
    classifiers: what the metric loss sends back to the network."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return math.nan
    return float(torch.nn.utils.get_total_norm(grads))


def train(
    cfg: Config,
    packs: list[Path],
    out: Path,
    runtime: Runtime,
    resume: bool = False,
    train_split: str | None = None,
    progress: bool = True,
) -> dict:
    """Run (or continue) training; returns a summary. Raises TrainError for unusable input.

    The main process holds the run folder's lock for the whole run, so a second ``gait train``
    on the same ``--out`` is refused instead of interleaving checkpoints.
    """
    paths = RunPaths(Path(out))
    with OutputLock(paths.root) if runtime.main else nullcontext():
        return _train(cfg, packs, paths, runtime, resume, train_split, progress)


class TrainLog:
    """Where the main process logs the run: a line of JSON per record appended to log.jsonl
    (flushed at once) and the record's numbers in TensorBoard. An OS error (a full disk, also
    in TensorBoard's writer thread) names the file or folder."""

    def __init__(self, paths: RunPaths):
        from torch.utils.tensorboard import SummaryWriter

        self.paths = paths
        self.file = paths.log.open("a", encoding="utf-8")
        self.writer = SummaryWriter(str(paths.tensorboard), flush_secs=30)

    def write(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:
            raise OutputError(describe_os_error(e, self.paths.log)) from e
        try:
            for k, v in record.items():
                if k != "iteration" and v is not None:
                    self.writer.add_scalar(k, v, record["iteration"])
        except OSError as e:
            raise OutputError(describe_os_error(e, self.paths.tensorboard)) from e

    def close(self) -> None:
        for closing in (self.file, self.writer):
            with suppress(OSError):
                closing.close()


def _restore(state: dict, path: Path, *modules) -> None:
    """Load a training checkpoint into (name, module) pairs, refusing one that does not fit."""
    for name, module in modules:
        if name not in state:
            raise CheckpointError(f"{path} has no {name} state; it is not a training checkpoint")
        try:
            module.load_state_dict(state[name])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(
                f"{path}: its {name} state does not fit this run ({first_line(e)})"
            ) from None


def _resume_state(paths: RunPaths, cfg: Config, identity: dict, resume: bool):
    """The checkpoint to continue from and its state (on the CPU), checked against this run; or
    (None, None) for a fresh start (the folder then prepared)."""
    start_ckpt = run_folder.prepare(paths, resume)
    if start_ckpt is None:
        return None, None
    state = checkpoint.load(start_ckpt)
    _check_same_run(paths, cfg, identity, state.get("data"))
    return start_ckpt, state


def _check_same_run(paths: RunPaths, cfg: Config, data: dict, saved_data) -> None:
    """Refuse, naming what changed, a --resume with another config, pack or subject split.

    ``saved_data`` is the data record of the checkpoint being resumed (tied to its weights).
    """
    if isinstance(saved_data, dict) and "imported" in saved_data:
        raise TrainError(
            f"--resume: the run in {paths.root} was imported (gait import-checkpoint) and holds "
            "no training state to continue; train a new run with another --out"
        )
    saved = saved_config(paths.config)
    if saved.train.iterations != cfg.train.iterations and cfg.schedule.name == "cosine":
        raise TrainError(
            f"--resume: --iterations {cfg.train.iterations} would stretch the cosine schedule of "
            f"the run in {paths.root} ({saved.train.iterations} iterations) and make its learning "
            "rate jump; resume with the same --iterations, or start a new run"
        )
    saved.train.iterations = cfg.train.iterations  # a run may be extended
    changed = run_folder.config_difference(saved.to_dict(), cfg.to_dict())
    if changed is not None:
        k, before, now, n = changed
        raise TrainError(
            f"--resume: {k} is {now!r} but the run in {paths.root} used {before!r}"
            + (f" (and {n - 1} more keys differ)" if n > 1 else "")
            + "; resume with the same config and options (only --iterations may change)"
        )
    difference = run_folder.data_difference(saved_data, data)
    if difference is not None:
        raise TrainError(
            f"--resume: the run in {paths.root}: {difference}; start a new run with another "
            "--out, or resume with the same --pack files, --train-subjects and data.protocol"
        )


def with_classes(cfg: Config, classes: int) -> Config:
    """``cfg`` with a BNNeck model's ``model.classes`` filled in: 0 becomes ``classes`` (the
    training subjects' count); another count than that is refused. The run's config.yaml and
    checkpoints keep the section as given (0 stays 0: the count follows from data.json's
    subjects, and from the classifier's shape in the weights)."""
    if cfg.model.name not in BNNECK_MODELS:
        return cfg
    given = cfg.model.classes
    if given == 0:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, classes=classes))
    if given != classes:
        raise TrainError(
            f"model.classes is {given}, but the run trains on {classes} subjects (one class "
            f"each); set model.classes to 0 (the subjects' count) or {classes}"
        )
    return cfg


def _train(cfg, packs, paths: RunPaths, runtime: Runtime, resume, train_split, progress) -> dict:
    device, main = runtime.device, runtime.main

    # Data: the training subjects, a deterministic P x K sampler, workers that sample frames.
    subjects = train_subjects(pack_subjects(packs), cfg.data.protocol, train_split)
    built = with_classes(cfg, len(subjects))  # the model's class count, checked here
    data = PackDataset(
        packs,
        subjects,
        frames=cfg.data.frames,
        ordered=cfg.data.sampling == "ordered",
        height=cfg.data.height,
        cut=cfg.data.cut,
        cache=cfg.data.cache,
        augment=cfg.data.augment if cfg.data.augment.active() else None,
    )
    identity = run_folder.data_record(
        data.packs, subjects
    )  # the handles the frames are read through
    # Rank 0 alone reads and checks the run folder and the checkpoint, then sends the outcome (an
    # error, or the state to resume) to every process: the other ranks never read --out, and
    # never hang on a refusal that only rank 0 saw.
    start_ckpt, state = on_rank0(runtime, lambda: _resume_state(paths, cfg, identity, resume))
    seed_everything(cfg.seed, cfg.train.deterministic, device, cfg.train.tf32)

    # Model, objective, optimizer, schedule, AMP.
    model = build_model(built.model)
    model = place_model(model, cfg, device)
    objective = Objective(cfg, num_classes=len(subjects), parts=model.parts).to(device)
    optimizer = build_optimizer(cfg, list(model.parameters()) + list(objective.parameters()))
    schedule = build_schedule(cfg, optimizer)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start = 0
    if state is not None:
        modules = [
            ("model", model),
            ("objective", objective),
            ("optimizer", optimizer),
            ("schedule", schedule),
        ]
        if scaler.is_enabled() and state.get("scaler"):  # fp16 then and now: keep its scale
            modules.append(("scaler", scaler))
        _restore(state, start_ckpt, *modules)
        try:
            checkpoint.set_rng_state(state["rng"], device)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"{start_ckpt}: its random-number states cannot be restored ({first_line(e)}); "
                "it is not a complete training checkpoint"
            ) from None
        start = state["iteration"]
        del state
    if main:
        atomic_write(paths.config, dump_config(cfg))
        atomic_write(paths.data, json.dumps(identity, indent=1) + "\n")
        run_folder.truncate_log(paths.log, start)
    net = model
    if runtime.distributed:
        # a BNNeck without cross-entropy: its classifier gets no gradient
        unused = cfg.model.name in BNNECK_MODELS and cfg.cross_entropy.weight == 0
        net = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=unused,
        )
    if cfg.train.compile:
        net = torch.compile(net)

    total = cfg.train.iterations
    sampler = PKSampler(
        data.labels,
        cfg.data.batch.p,
        cfg.data.batch.k,
        cfg.seed,
        start=start,
        iterations=total,
        rank=runtime.rank,
        world_size=runtime.world_size,
    )
    loader = DataLoader(
        data,
        batch_sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    logger = TrainLog(paths) if main else None
    bar = tqdm(
        total=total,
        initial=start,
        desc="train",
        unit="it",
        disable=not (progress and main),
        dynamic_ncols=True,
        mininterval=1.0,
    )
    last_good = checkpoint.latest(paths.root)
    t0 = time.perf_counter()
    model.train()
    try:
        for it, (frames, labels) in enumerate(loader, start=start):
            frames = to_model_input(frames, device)
            labels = labels.to(device, non_blocking=True)
            value, stepped = train_step(
                net,
                objective,
                optimizer,
                scaler,
                frames,
                labels,
                dtype=dtype,
                grad_clip=cfg.train.grad_clip,
                distributed=runtime.distributed,
            )
            if not math.isfinite(value):
                where = f"; the last good checkpoint is {last_good}" if last_good else ""
                raise TrainError(
                    f"the loss became {value} at iteration {it}{where}; lower "
                    "optim.lr, set train.grad_clip, or check the data"
                )
            if stepped:
                schedule.step()
            bar.update(1)
            done = it + 1
            if main and (done % cfg.train.log_every == 0 or done == total):
                stats = {**objective.stats, "grad_norm": gradient_norm(model)}
                stats = {k: v if math.isfinite(v) else None for k, v in stats.items()}
                record = {
                    "iteration": it,
                    "loss": value,
                    "lr": optimizer.param_groups[0]["lr"],
                    **stats,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                logger.write(record)
                bar.set_postfix(loss=f"{value:.4f}")
            if done % cfg.train.checkpoint_every == 0 or done == total:
                states = (model, objective, optimizer, schedule, scaler)
                last_good = _checkpoint(paths, done, states, cfg, identity, runtime)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    return {
        "run": str(paths.root),
        "iterations": total,
        "start": start,
        "seconds": round(time.perf_counter() - t0, 3),
        "checkpoint": str(last_good),
    }


def _checkpoint(paths, done, states, cfg, identity, runtime) -> Path:
    model, objective, optimizer, schedule, scaler = states
    path = checkpoint.path_for(paths.root, done)
    if runtime.main:
        checkpoint.save(
            path,
            {
                "iteration": done,
                "model": model.state_dict(),
                "objective": objective.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": checkpoint.rng_state(runtime.device),
                "config": cfg.to_dict(),
                "data": identity,
            },
        )
    if runtime.distributed:
        dist.barrier()
    return path
