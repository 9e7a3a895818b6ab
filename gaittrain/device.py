"""Device selection and the torchrun / DDP process group, with no CUDA assumptions."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gaitprep.errors import GaitError


class DeviceError(GaitError, RuntimeError):
    """A device that cannot be used here, explained in one line."""


@dataclass(frozen=True)
class Runtime:
    """Where this process computes and its place among the DDP processes."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def memory_format(cfg, device: torch.device) -> torch.memory_format:
    """The model's memory format for a config's ``train.memory_format`` on ``device``: ``auto``
    is channels_last on the CPU, where oneDNN's convolutions and max-pools run faster in it
    (bench/train_bench.py; embedding too), and PyTorch's default on CUDA."""
    fmt = cfg.train.memory_format
    if fmt == "channels_last" or (fmt == "auto" and device.type == "cpu"):
        return torch.channels_last
    return torch.contiguous_format


def place_model(model: torch.nn.Module, cfg, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device`` in the memory format of :func:`memory_format`. channels_last is a
    layout of 4-D tensors: the weights of 2-D convolutions take it, those of 3-D convolutions
    (5-D, which ``Module.to(memory_format=channels_last)`` refuses) keep PyTorch's default."""
    model = model.to(device)
    if memory_format(cfg, device) == torch.channels_last:
        for t in (*model.parameters(), *model.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Under torchrun, ``auto`` and ``cuda`` use the GPU of this process's local rank.
    """
    spec = spec.strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {spec}: this machine has no usable CUDA device "
                "(torch.cuda.is_available() is False); use --device cpu or auto"
            )
        index = int(spec.split(":", 1)[1]) if ":" in spec else local_rank
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA devices")
        return torch.device("cuda", index)
    raise DeviceError(f"--device {spec!r} is not auto, cpu, cuda or cuda:N")


def setup(spec: str = "auto") -> Runtime:
    """Pick the device and, when started by torchrun (WORLD_SIZE > 1), join the process group:
    NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and spec.strip().lower().startswith("cuda:"):
        raise DeviceError(
            f"--device {spec} under torchrun would put all {world} processes on one GPU; pass "
            "--device cuda (each process takes the GPU of its local rank; choose GPUs with "
            "CUDA_VISIBLE_DEVICES)"
        )
    device = resolve_device(spec, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device=device, rank=rank, local_rank=local, world_size=world)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _GatherBatch(torch.autograd.Function):
    """Every process's features [parts, b, dim], concatenated along the batch in rank order.

    Backward: every process computed the same loss on the whole batch, so the gradient of this
    process's slice is the sum of the slice's gradients over the processes (an all-reduce); with
    DDP's averaging of the parameter gradients that gives exactly the one-process gradient.
    The same holds for any [parts, b, ...] tensor (a BNNeck's logits).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        chunks = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(chunks, x.contiguous())
        ctx.span = (rank * x.shape[1], (rank + 1) * x.shape[1])
        return torch.cat(chunks, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        lo, hi = ctx.span
        return grad[:, lo:hi]


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """Every process's [parts, b, ...] tensor (float32, with gradients), concatenated along the
    batch in rank order (:class:`_GatherBatch`)."""
    return _GatherBatch.apply(x.float())


def gather_batch(features: torch.Tensor, labels: torch.Tensor):
    """The whole batch from every process's slice: features (float32, with gradients) and
    labels, in rank order."""
    features = gather_features(features)
    chunks = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(chunks, labels.contiguous())
    return features, torch.cat(chunks)


def on_rank0(runtime: Runtime, work):
    """``work()`` on rank 0 only; its result, or its one-line error, reaches every process (which
    all raise the error). Without DDP it is just ``work()``."""
    if not runtime.distributed:
        return work()
    outcome: list = [None, None]  # [result, error message]
    if runtime.main:
        try:
            outcome[0] = work()
        except GaitError as e:
            outcome[1] = str(e)
    device = runtime.device if runtime.device.type == "cuda" else None
    dist.broadcast_object_list(outcome, src=0, device=device)
    if outcome[1] is not None:
        raise GaitError(outcome[1])
    return outcome[0]
