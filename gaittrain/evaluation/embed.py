"""Embeddings of every test sequence of a pack, batched by length, to an HDF5 file.

The file (:mod:`gaittrain.evaluation.embeddings_file`, its format's one owner) holds
``/embeddings`` [N, parts, dim] in its storage (float32, the model's values, unless float16 was
chosen) and ``/sequences/{subject, condition, seq, view}`` keyed like the pack. Its attributes
record everything that made it (:func:`provenance`): the checkpoint's path and fingerprint, the
pack's path and fingerprint, ``max_frames``, the storage and the pack's normalization
parameters. ``gait eval`` reuses a file only when all of them and the exact sequence list match
(:func:`ensure_embeddings`); ``gait identify`` preprocesses a probe with the recorded
normalization parameters, never with defaults.
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gaitprep.errors import first_line
from gaitprep.files import OutputLock, atomic_output
from gaitprep.pack import Pack
from gaittrain.data.dataset import PackDataset, to_model_input
from gaittrain.device import Runtime
from gaittrain.evaluation.embeddings_file import (
    DEFAULT_STORAGE,
    STORAGES,
    WRITE_ROWS,
    EmbeddingsError,
    EmbeddingStore,
    open_embeddings,
    read_embeddings,
    write_embeddings_file,
)
from gaittrain.trained_model import TrainedModel, load_model, pack_normalization


def provenance(
    trained: TrainedModel, pack: Pack, max_frames: int, storage: str = DEFAULT_STORAGE
) -> dict:
    """Everything that determines an embeddings file, as flat HDF5 attributes: taken from the
    loaded model and from the open pack the frames are read through, and the ``storage`` asked
    for (:data:`~gaittrain.evaluation.embeddings_file.STORAGES`)."""
    if storage not in STORAGES:
        raise EmbeddingsError(f"storage must be one of {', '.join(STORAGES)}, not {storage!r}")
    return {
        "checkpoint": str(trained.path),
        "checkpoint_fingerprint": trained.fingerprint,
        "pack": str(pack.path),
        "pack_fingerprint": pack.fingerprint,
        "pack_dataset": str(pack.attrs.get("dataset", "")),
        "max_frames": int(max_frames),
        "storage": storage,
        **{f"normalization.{k}": v for k, v in pack_normalization(pack).items()},
    }


def stale_reason(path: Path, wanted: dict, keys: list[tuple]) -> str | None:
    """Why the embeddings file at ``path`` cannot stand for ``wanted`` (attributes from
    :func:`provenance`, the storage included) and the sequences ``keys``; None when it can be
    reused."""
    if not Path(path).exists():
        return "no embeddings yet"
    try:
        f, stored_keys, attrs = open_embeddings(path)
        f.close()
    except (OSError, KeyError, ValueError, AttributeError):
        return f"{path} is unreadable"
    attrs.setdefault("storage", "float32")  # a file of a gait that recorded no storage
    names = {
        "storage": f"it was stored as {attrs['storage']} (now {wanted['storage']})",
        "checkpoint_fingerprint": "the checkpoint changed",
        "pack_fingerprint": "the pack's content differs",
        "max_frames": f"--max-frames changed ({attrs.get('max_frames')} -> {wanted['max_frames']})",
    }
    for k, reason in names.items():
        if attrs.get(k) != wanted[k]:
            return reason
    if any(attrs.get(k) != v for k, v in wanted.items() if k.startswith("normalization.")):
        return "the pack's normalization parameters differ"
    if stored_keys != [tuple(k) for k in keys]:
        return f"the sequences differ ({len(stored_keys)} embedded, {len(keys)} wanted)"
    return None


def open_model_and_pack(
    ckpt: Path, pack: Path, subjects: list[str] | None, device: torch.device
) -> tuple[TrainedModel, PackDataset]:
    """A checkpoint's model on ``device`` and the whole sequences of ``subjects`` (None: all) of
    ``pack``, read as the model was trained (its height and cut); close the dataset after use."""
    trained = load_model(ckpt, device)
    cfg = trained.cfg
    data = PackDataset([pack], subjects, frames=None, height=cfg.data.height, cut=cfg.data.cut)
    return trained, data


def ensure_embeddings(
    ckpt: Path,
    pack: Path,
    out: Path,
    subjects: list[str] | None,
    device: torch.device,
    max_frames: int = 0,
    stream: bool = False,
    storage: str = DEFAULT_STORAGE,
) -> tuple[dict | EmbeddingStore, dict, str | None]:
    """The embeddings of ``subjects`` (None: all) in ``pack`` by ``ckpt``, kept in ``out`` in
    ``storage`` (:data:`~gaittrain.evaluation.embeddings_file.STORAGES`).

    The file is reused when everything that made it, its storage included, is unchanged,
    otherwise embedded again
    (atomically). Checking, embedding and reading back happen under the output's lock, with the
    model and the pack each read once, so the file always describes what it holds. Returns
    ``(embeddings, attrs, reason)``: ``reason`` says why it was (re)computed, None if reused;
    ``embeddings`` a dict, or with ``stream`` an open :class:`EmbeddingStore` of the file that
    reads rows on request (close it after use).
    """
    trained, data = open_model_and_pack(ckpt, pack, subjects, device)
    try:
        with OutputLock(out):
            attrs = provenance(trained, data.packs[0], max_frames, storage)
            reason = stale_reason(out, attrs, [data.key(j) for j in range(len(data))])
            if reason is not None:
                emb = embed_dataset(
                    trained.model, data, device, max_frames=max_frames, num_workers=_workers(device)
                )
                write_embeddings(out, data, emb, attrs)
            if stream:
                try:
                    f, keys, attrs = open_embeddings(out)
                except (OSError, KeyError, ValueError, AttributeError) as e:
                    raise EmbeddingsError(f"{out} is not readable ({first_line(e)})") from None
                embeddings = EmbeddingStore.from_file(f, keys)
            else:
                embeddings, attrs = read_embeddings(out)
    finally:
        data.close()
    return embeddings, attrs, reason


def embed_pack(
    ckpt: Path,
    pack: Path,
    out: Path,
    subjects: list[str] | None,
    runtime: Runtime,
    max_frames: int = 0,
    storage: str = DEFAULT_STORAGE,
) -> str | None:
    """``gait embed``: make ``out`` up to date in ``storage``, in this process or, under
    torchrun, shared by the job's processes (:func:`ensure_embeddings_distributed`). Returns why
    it was (re)computed, None if it was reused."""
    if runtime.distributed:
        return ensure_embeddings_distributed(
            ckpt, pack, out, subjects, runtime, max_frames, storage
        )
    return ensure_embeddings(
        ckpt, pack, out, subjects, runtime.device, max_frames, storage=storage
    )[2]


def _workers(device: torch.device) -> int:
    return 2 if device.type == "cuda" else 0  # on a CPU the convolutions dominate


def ensure_embeddings_distributed(
    ckpt: Path,
    pack: Path,
    out: Path,
    subjects: list[str] | None,
    runtime: Runtime,
    max_frames: int = 0,
    storage: str = DEFAULT_STORAGE,
) -> str | None:
    """:func:`ensure_embeddings` shared by the processes of a torchrun job (DDP's process group
    joined): rank 0 decides whether ``out`` is up to date; if not, every rank embeds its share of
    the batches (batch i belongs to rank i mod world size; the batches are those of one process,
    so every sequence's figures are those of a single-process run, bit for bit) into
    ``OUT.parts/rank-R.npz``, and rank 0 writes the one file from the parts and removes them.
    Returns the reason it was (re)computed, None if reused (on every rank)."""
    device = runtime.device
    trained, data = open_model_and_pack(ckpt, pack, subjects, device)
    parts = out.with_name(out.name + ".parts")
    lock = OutputLock(out) if runtime.main else nullcontext()
    try:
        with lock:
            reason = [None]
            if runtime.main:
                attrs = provenance(trained, data.packs[0], max_frames, storage)
                reason[0] = stale_reason(out, attrs, [data.key(j) for j in range(len(data))])
                shutil.rmtree(parts, ignore_errors=True)  # left by a job that was killed
                if reason[0] is not None:
                    parts.mkdir(parents=True)
            dist.broadcast_object_list(reason, src=0)
            if reason[0] is None:
                return None
            index, emb = embed_share(
                trained.model,
                data,
                device,
                max_frames,
                share=(runtime.rank, runtime.world_size),
                num_workers=_workers(device),
            )
            with atomic_output(parts / f"rank-{runtime.rank}.npz") as tmp, tmp.open("wb") as f:
                np.savez(f, index=index, embeddings=emb)
            dist.barrier()
            if runtime.main:
                full = np.zeros((len(data), *emb.shape[1:]), np.float32)
                for r in range(runtime.world_size):
                    with np.load(parts / f"rank-{r}.npz") as part:
                        full[part["index"]] = part["embeddings"]
                write_embeddings(out, data, full, attrs)
                shutil.rmtree(parts)
            dist.barrier()
    finally:
        data.close()
    return reason[0]


def even_frames(n: int, cap: int) -> np.ndarray:
    """At most ``cap`` frame indices spread evenly over ``n`` (all of them when cap is 0)."""
    if cap <= 0 or n <= cap:
        return np.arange(n)
    return np.linspace(0, n - 1, cap).round().astype(int)


CUDA_BATCH_FRAMES = 4096  #: frames per embedding batch on CUDA
CPU_BATCH_FRAMES = 512  #: and elsewhere


def _length_batches(lengths: list[int], max_frames: int, batch_frames: int) -> list[list[int]]:
    """Dataset indices in order of length (stable), cut into batches of at most ``batch_frames``
    frames once capped at ``max_frames`` (a longer sequence is a batch of its own)."""
    batches: list[list[int]] = []
    batch: list[int] = []
    total = 0
    for j in np.argsort(lengths, kind="stable"):
        n = min(lengths[j], max_frames) if max_frames > 0 else lengths[j]
        if batch and total + n > batch_frames:
            batches.append(batch)
            batch, total = [], 0
        batch.append(int(j))
        total += n
    if batch:
        batches.append(batch)
    return batches


class _Indexed(Dataset):
    """``data``'s sequences with their index: item j is ``(j, uint8 frames [T, H, W])``."""

    def __init__(self, data: PackDataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor]:
        return j, self.data[j][0]


def _collate_even(
    items: list[tuple[int, torch.Tensor]], max_frames: int
) -> tuple[torch.Tensor, list[int], list[int]]:
    """At most ``max_frames`` evenly spread frames of each sequence, concatenated (uint8), with
    the sequences' lengths and dataset indices."""
    seqs = [
        s if max_frames <= 0 or len(s) <= max_frames else s[even_frames(len(s), max_frames)]
        for _, s in items
    ]
    return torch.cat(seqs), [len(s) for s in seqs], [j for j, _ in items]


@torch.no_grad()
def embed_dataset(
    model: nn.Module,
    data: PackDataset,
    device: torch.device,
    max_frames: int = 0,
    batch_frames: int | None = None,
    *,
    num_workers: int = 0,
) -> np.ndarray:
    """Embeddings [N, parts, dim] of every sequence of ``data``, batched by length.

    A DataLoader reads the batches (sequences sorted by length, at most ``batch_frames`` frames
    each) in ``num_workers`` processes (0: in this one) ahead of the model, into pinned memory
    on CUDA; the frames travel as uint8 and become float on the device. The result does not
    depend on ``num_workers``. ``batch_frames`` None: 4096 on CUDA, 512 elsewhere (on a CPU
    the activations of smaller batches stay in cache: the tiny model embeds 2.4x faster with 512
    frames in channels_last than with 4096 in PyTorch's default layout on one core of this
    project's 2-core CPU, 2026-11-24).
    """
    index, emb = embed_share(model, data, device, max_frames, batch_frames, num_workers=num_workers)
    out = np.zeros((len(data), *emb.shape[1:]), np.float32)
    out[index] = emb
    return out


@torch.no_grad()
def embed_share(
    model: nn.Module,
    data: PackDataset,
    device: torch.device,
    max_frames: int = 0,
    batch_frames: int | None = None,
    *,
    share: tuple[int, int] = (0, 1),
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(index, embeddings)``: the dataset indices of share ``(rank, world size)`` of the
    batches of :func:`embed_dataset` (batch i belongs to rank i mod world size) and their
    embeddings [n, parts, dim], in batch order."""
    device = torch.device(device)
    if batch_frames is None:
        batch_frames = CUDA_BATCH_FRAMES if device.type == "cuda" else CPU_BATCH_FRAMES
    rank, world = share
    lengths = [int(data.packs[pi].length[i]) for pi, i in data.items]
    batches = _length_batches(lengths, max_frames, batch_frames)[rank::world]
    index = np.array([j for b in batches for j in b], np.int64)
    out = np.zeros((len(index), model.parts, model.fc.shape[-1]), np.float32)
    if not batches:
        return index, out
    loader = DataLoader(
        _Indexed(data),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=partial(_collate_even, max_frames=max_frames),
        pin_memory=device.type == "cuda",
    )
    row = {j: r for r, j in enumerate(index.tolist())}
    pending = None  # the previous batch, stored once the next one is queued
    for frames, counts, batch in loader:
        emb = model(to_model_input(frames, device), counts).permute(1, 0, 2).float()
        current = ([row[j] for j in batch], *_to_host(emb))
        if pending is not None:
            _store(out, *pending)
        pending = current
    if pending is not None:
        _store(out, *pending)
    return index, out


def _to_host(emb: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying ``emb`` to the host: on CUDA into pinned memory, without waiting (the event
    marks its end), so the device goes on with the next batch; elsewhere ``emb`` itself."""
    if emb.device.type != "cuda":
        return emb, None
    host = torch.empty(emb.shape, dtype=emb.dtype, pin_memory=True)
    host.copy_(emb, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done


def _store(
    out: np.ndarray, index: list[int], host: torch.Tensor, done: torch.cuda.Event | None
) -> None:
    if done is not None:
        done.synchronize()
    out[index] = host.numpy()


def write_embeddings(path: Path, data: PackDataset, emb: np.ndarray, attrs: dict) -> None:
    """Write a dataset's embeddings with their keys (:func:`write_embeddings_file`)."""
    keys = [data.key(j) for j in range(len(data))]
    blocks = (emb[s : s + WRITE_ROWS] for s in range(0, len(emb), WRITE_ROWS))
    write_embeddings_file(path, keys, emb.shape[1:], blocks, attrs)
