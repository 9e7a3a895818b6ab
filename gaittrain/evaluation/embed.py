"""Embeddings of every test sequence of a pack, batched by length, to an HDF5 file.

The file holds ``/embeddings`` float32 [N, parts, dim] and ``/sequences/{subject, condition, seq,
view}`` keyed like the pack, with the checkpoint and pack it came from as attributes, so that
``gait eval`` can reuse it.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from gaittrain import checkpoint
from gaittrain.config import Config, config_from_dict
from gaittrain.data.dataset import PackDataset
from gaittrain.models import SetModel

KEY_COLUMNS = ("subject", "condition", "seq", "view")


def resolve_checkpoint(ckpt: Path) -> Path:
    """A checkpoint file as given, or a run folder's latest checkpoint."""
    path = Path(ckpt)
    if not path.is_dir():
        return path
    found = checkpoint.latest(path)
    if found is None:
        raise FileNotFoundError(f"{path} holds no checkpoint (checkpoints/iter-*.pt)")
    return found


def load_model(ckpt: Path, device: torch.device) -> tuple[SetModel, Config]:
    """The model of a checkpoint (a file, or a run folder's latest), in eval mode."""
    state = checkpoint.load(resolve_checkpoint(ckpt), device)
    cfg = config_from_dict(state["config"])
    model = SetModel(cfg.model.channels, cfg.model.bins, cfg.model.dim).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg


def even_frames(n: int, cap: int) -> np.ndarray:
    """At most ``cap`` frame indices spread evenly over ``n`` (all of them when cap is 0)."""
    if cap <= 0 or n <= cap:
        return np.arange(n)
    return np.linspace(0, n - 1, cap).round().astype(int)


@torch.no_grad()
def embed_dataset(
    model: SetModel,
    data: PackDataset,
    device: torch.device,
    max_frames: int = 0,
    batch_frames: int = 4096,
) -> np.ndarray:
    """Embeddings [N, parts, dim] of every sequence of ``data``, batched by length."""
    lengths = [int(data.packs[pi].length[i]) for pi, i in data.items]
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(data), model.parts, model.fc.shape[-1]), np.float32)
    batch: list[int] = []
    total = 0

    def flush() -> None:
        seqs = [data[j][0] for j in batch]
        seqs = [s[even_frames(len(s), max_frames)] for s in seqs]
        frames = torch.cat(seqs).to(device, non_blocking=True)
        emb = model(frames, [len(s) for s in seqs])  # [parts, b, dim]
        out[batch] = emb.permute(1, 0, 2).float().cpu().numpy()

    for j in order:
        n = min(lengths[j], max_frames) if max_frames > 0 else lengths[j]
        if batch and total + n > batch_frames:
            flush()
            batch, total = [], 0
        batch.append(int(j))
        total += n
    if batch:
        flush()
    return out


def write_embeddings(path: Path, data: PackDataset, emb: np.ndarray, attrs: dict) -> None:
    """Write embeddings with their keys (temporary name, then rename)."""
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("embeddings", data=emb)
        keys = [data.key(j) for j in range(len(data))]
        text = h5py.string_dtype("utf-8")
        for c, col in enumerate(KEY_COLUMNS):
            f.create_dataset(
                f"sequences/{col}", data=np.array([k[c] for k in keys], object), dtype=text
            )
        f.attrs.update(attrs)
    os.replace(tmp, path)


def read_embeddings(path: Path) -> tuple[dict, dict]:
    """``({key: [parts, dim]}, attrs)`` from an embeddings file."""
    with h5py.File(path, "r") as f:
        emb = f["embeddings"][()]
        cols = [[s.decode() for s in f[f"sequences/{c}"][()]] for c in KEY_COLUMNS]
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return {key: emb[i] for i, key in enumerate(zip(*cols, strict=True))}, attrs
