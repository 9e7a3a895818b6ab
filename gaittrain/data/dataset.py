"""A dataset of pack sequences for training: frame sampling and cropping in the workers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from gaitprep.pack import Pack, PackError
from gaittrain.data.augment import augment_sequence


def pack_subjects(packs: list[Path]) -> list[str]:
    """Every subject id found in ``packs``; a sequence of nobody known (``Pack.labelled`` False:
    GREW's test probes and distractors, docs/pack-format.md) names no subject."""
    found: set[str] = set()
    for path in packs:
        with Pack(path) as p:
            found.update(
                s for s, known in zip(p.columns["subject"], p.labelled, strict=True) if known
            )
    return sorted(found)


def cut_width(size: int) -> int:
    """Columns removed on each side by the standard width cut: 10 at S=64, 20 at S=128."""
    return round(10 * size / 64)


def shape_frames(frames: np.ndarray, height: int, cut: bool) -> np.ndarray:
    """Resize S x S frames to ``height`` (when different) and apply the width cut."""
    if frames.shape[1] != height:
        frames = np.stack(
            [cv2.resize(f, (height, height), interpolation=cv2.INTER_AREA) for f in frames]
        )
    if cut:
        c = cut_width(height)
        frames = frames[:, :, c : height - c]
    return frames


def sample_frames(n: int, count: int, ordered: bool, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``count`` frames from a sequence of ``n``.

    Unordered: drawn with replacement, as GaitSet does (the model is a set function). Ordered: a
    contiguous window at a random start, cycling through the sequence when it is shorter.
    """
    if not ordered:
        return np.sort(rng.integers(0, n, size=count))
    start = int(rng.integers(0, max(1, n - count + 1)))
    return (start + np.arange(count)) % n


class PackDataset(Dataset):
    """Sequences of the given subjects, from one or more packs, as uint8 tensors [T, H, W]
    (:func:`to_model_input` makes the model's float input on the device).

    Items are addressed by ``(index, seed)`` pairs from :class:`~gaittrain.data.sampler.PKSampler`;
    the seed makes frame sampling reproducible whatever the worker. ``frames=None`` returns every
    frame (evaluation). ``cache=True`` reads the selected sequences into RAM once. ``augment``
    (a :class:`~gaittrain.config.AugmentConfig`, training only) augments each sampled sequence
    with the same seeded generator (:func:`~gaittrain.data.augment.augment_sequence`).
    """

    def __init__(
        self,
        packs: list[Path],
        subjects: list[str] | None = None,
        frames: int | None = 30,
        ordered: bool = False,
        height: int | None = None,
        cut: bool = True,
        cache: bool = False,
        augment=None,
    ):
        self.packs = [Pack(p) for p in packs]
        sizes = {p.size for p in self.packs}
        if len(sizes) != 1:
            raise PackError(f"packs of different frame sizes {sorted(sizes)} cannot be mixed")
        self.size = sizes.pop()
        wanted = None if subjects is None else set(subjects)
        self.items = [
            (pi, i)
            for pi, p in enumerate(self.packs)
            for i in range(len(p))
            if wanted is None or p.columns["subject"][i] in wanted
        ]
        if not self.items:
            raise PackError(
                f"no sequence of {', '.join(str(p.path) for p in self.packs)} belongs to the "
                "selected subjects"
            )
        names = sorted(
            {self.packs[pi].columns["subject"][i] for pi, i in self.items},
            key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s),
        )
        self.subjects = names
        label_of = {s: n for n, s in enumerate(names)}
        self.labels = np.array(
            [label_of[self.packs[pi].columns["subject"][i]] for pi, i in self.items]
        )
        self.frames, self.ordered = frames, ordered
        self.height = height or self.size
        self.cut = cut
        self.augment = augment
        self._cache = [self._read(j) for j in range(len(self.items))] if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def close(self) -> None:
        """Close the packs' files (they reopen on the next read)."""
        for p in self.packs:
            p.close()

    def key(self, j: int) -> tuple[str, str, str, str]:
        pi, i = self.items[j]
        c = self.packs[pi].columns
        return (c["subject"][i], c["condition"][i], c["seq"][i], c["view"][i])

    def _read(self, j: int) -> np.ndarray:
        pi, i = self.items[j]
        return self.packs[pi][i]

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, int]:
        j, seed = item if isinstance(item, tuple) else (item, 0)
        seq = self._cache[j] if self._cache is not None else self._read(j)
        if self.frames is not None:
            rng = np.random.default_rng(seed)
            seq = seq[sample_frames(len(seq), self.frames, self.ordered, rng)]
            if self.augment is not None:  # the same generator: reproducible whatever the worker
                cut = cut_width(self.height) if self.cut else 0
                seq = shape_frames(seq, self.height, cut=False)
                seq = augment_sequence(seq, rng, self.augment, cut)
                return torch.from_numpy(np.ascontiguousarray(seq)), int(self.labels[j])
        x = torch.from_numpy(np.ascontiguousarray(shape_frames(seq, self.height, self.cut)))
        return x, int(self.labels[j])  # uint8: a quarter of float32's bytes to copy and move


def to_model_input(frames: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 frames (as the dataset gives them) -> float32 in [0, 1] on ``device``.

    The bytes travel as uint8 (non-blocking from pinned memory) and are converted on the device.
    """
    return frames.to(device, non_blocking=True).float().div_(255.0)


def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack fixed-length samples into [B, T, H, W] and labels [B]."""
    frames, labels = zip(*batch, strict=True)
    return torch.stack(frames), torch.tensor(labels, dtype=torch.long)
