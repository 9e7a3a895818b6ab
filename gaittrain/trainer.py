"""``gait train``: a plain, linear training loop for CPU, one GPU or many (DDP via torchrun).

The order of things, top to bottom: runtime (device, process group, seeds) -> data (training
subjects, P x K sampler, DataLoader) -> model, objective, optimizer, schedule, AMP scaler ->
resume -> loop (forward, gather features across processes, loss, backward, step, log,
checkpoint). Everything a run needs to continue exactly is in its checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from gaitprep.errors import GaitError
from gaittrain import checkpoint
from gaittrain.config import Config, dump_config, load_config
from gaittrain.data.dataset import PackDataset, collate, pack_subjects
from gaittrain.data.sampler import PKSampler
from gaittrain.data.splits import train_subjects
from gaittrain.device import Runtime
from gaittrain.models import SetModel
from gaittrain.objective import Objective


class TrainError(GaitError, RuntimeError):
    """A run that cannot start or continue, explained in one line."""


@dataclass
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. ``auto``: bf16 on CUDA when supported,
    else fp16 on CUDA, none on CPU."""
    amp = cfg.train.amp
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
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


def _prepare_run_dir(paths: RunPaths, cfg: Config, resume: bool, main: bool) -> Path | None:
    """Check the run folder; on resume return the checkpoint to continue from."""
    last = checkpoint.latest(paths.root)
    if resume:
        if not paths.config.is_file():
            raise TrainError(f"--resume: {paths.root} holds no run (no config.yaml)")
        saved = load_config(paths.config)
        saved.train.iterations = cfg.train.iterations  # a run may be extended
        if saved.to_dict() != cfg.to_dict():
            raise TrainError(
                f"--resume: the configuration differs from {paths.config}; "
                "resume with the same config and options (only --iterations may change)"
            )
        return last
    if not main:  # rank 0 checks and creates the folder
        return None
    if last is not None or paths.log.exists():
        raise TrainError(
            f"{paths.root} already holds a run; pass --resume to continue it "
            "or choose another --out"
        )
    paths.root.mkdir(parents=True, exist_ok=True)
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _truncate_log(path: Path, start: int) -> None:
    """Drop log lines of iterations >= ``start`` (written after the checkpoint we resume)."""
    if not path.exists():
        return
    keep = [
        ln
        for ln in path.read_text().splitlines()
        if ln.strip() and json.loads(ln)["iteration"] < start
    ]
    _write_atomic(path, "".join(ln + "\n" for ln in keep))


def train(
    cfg: Config,
    packs: list[Path],
    out: Path,
    runtime: Runtime,
    resume: bool = False,
    train_split: str | None = None,
    progress: bool = True,
) -> dict:
    """Run (or continue) training; returns a summary. Raises TrainError for unusable input."""
    paths = RunPaths(Path(out))
    device, main = runtime.device, runtime.main
    start_ckpt = _prepare_run_dir(paths, cfg, resume, main)
    seed_everything(cfg.seed, cfg.train.deterministic, device)

    # Data: the training subjects, a deterministic P x K sampler, workers that sample frames.
    subjects = train_subjects(pack_subjects(packs), cfg.data.protocol, train_split)
    data = PackDataset(
        packs,
        subjects,
        frames=cfg.data.frames,
        ordered=cfg.data.sampling == "ordered",
        height=cfg.data.height,
        cut=cfg.data.cut,
        cache=cfg.data.cache,
    )

    # Model, objective, optimizer, schedule, AMP.
    model = SetModel(cfg.model.channels, cfg.model.bins, cfg.model.dim).to(device)
    objective = Objective(cfg, num_classes=len(subjects), parts=model.parts).to(device)
    optimizer = build_optimizer(cfg, list(model.parameters()) + list(objective.parameters()))
    schedule = build_schedule(cfg, optimizer)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start = 0
    if start_ckpt is not None:
        state = checkpoint.load(start_ckpt, device)
        model.load_state_dict(state["model"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        start = state["iteration"]
    if main:
        _write_atomic(paths.config, dump_config(cfg))
        _truncate_log(paths.log, start)
    net = model
    if runtime.distributed:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

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
    writer = _tensorboard(paths.tensorboard) if main else None
    log = paths.log.open("a") if main else None
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
    it = start
    try:
        for it, (frames, _) in enumerate(loader, start=start):
            frames = frames.to(device, non_blocking=True)
            labels = torch.as_tensor(data.labels[[i for i, _ in sampler.batch(it)]], device=device)
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                features = net(frames)
            if runtime.distributed:  # the loss sees the whole batch, gradients flow back
                features = torch.cat(dist_nn.all_gather(features), dim=1)
            loss = objective(features, labels)
            value = float(loss.detach())
            if not math.isfinite(value):
                where = f"; the last good checkpoint is {last_good}" if last_good else ""
                raise TrainError(
                    f"the loss became {value} at iteration {it}{where}; lower "
                    "optim.lr, set train.grad_clip, or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            bar.update(1)
            done = it + 1
            if main and (done % cfg.train.log_every == 0 or done == total):
                stats = {k: v if math.isfinite(v) else None for k, v in objective.stats.items()}
                record = {
                    "iteration": it,
                    "loss": value,
                    "lr": optimizer.param_groups[0]["lr"],
                    **stats,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                for k, v in record.items():
                    if k != "iteration" and v is not None:
                        writer.add_scalar(k, v, it)
                bar.set_postfix(loss=f"{value:.4f}")
            if done % cfg.train.checkpoint_every == 0 or done == total:
                last_good = _checkpoint(
                    paths, done, model, objective, optimizer, schedule, scaler, cfg, runtime
                )
    finally:
        bar.close()
        if log is not None:
            log.close()
        if writer is not None:
            writer.close()
    return {
        "run": str(paths.root),
        "iterations": total,
        "start": start,
        "seconds": round(time.perf_counter() - t0, 3),
        "checkpoint": str(last_good),
    }


def _checkpoint(paths, done, model, objective, optimizer, schedule, scaler, cfg, runtime) -> Path:
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
                "rng": checkpoint.rng_state(),
                "config": cfg.to_dict(),
            },
        )
    if runtime.distributed:
        dist.barrier()
    return path


def _tensorboard(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path), flush_secs=30)
