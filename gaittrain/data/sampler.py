"""P x K batches that are a pure function of (seed, iteration).

Every batch draws P subjects and K sequences of each (with replacement only when a subject has
fewer than K), and one frame-sampling seed per sample. Because batch ``i`` depends only on
``(seed, i)``, every DDP rank computes the same batch and takes its own slice without any
communication, and a resumed run continues the exact sequence of batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gaitprep.errors import GaitError


class SamplerError(GaitError, ValueError):
    """A batch shape that the training subjects or processes cannot fill."""


Sample = tuple[int, int]  # (sequence index in the dataset, frame-sampling seed)


class PKSampler:
    """Batches of P subjects x K sequences for iterations ``start``, ``start + 1``, ...

    Parameters
    ----------
    labels : sequence of int
        The subject label of every sequence in the dataset.
    p, k : int
        Subjects per batch and sequences per subject.
    seed : int
        Base seed of the run.
    start : int
        First iteration to produce (for resuming).
    iterations : int
        Produce batches up to, excluding, this iteration.
    rank, world_size : int
        This process's slice of each batch under DDP: samples [rank * B/W, (rank + 1) * B/W).
    """

    def __init__(
        self,
        labels,
        p: int,
        k: int,
        seed: int,
        start: int = 0,
        iterations: int = 1 << 62,
        rank: int = 0,
        world_size: int = 1,
    ):
        labels = np.asarray(labels)
        self.classes = np.unique(labels)
        if p > len(self.classes):
            raise SamplerError(
                f"batch P={p} is more than the {len(self.classes)} training subjects"
            )
        if (p * k) % world_size:
            raise SamplerError(f"batch P*K={p * k} does not divide among {world_size} processes")
        self.members = [np.flatnonzero(labels == c) for c in self.classes]
        self.p, self.k, self.seed = p, k, seed
        self.start, self.iterations = start, iterations
        self.rank, self.world_size = rank, world_size

    def batch(self, iteration: int) -> list[Sample]:
        """The whole batch (all ranks) of ``iteration``."""
        rng = np.random.default_rng([self.seed, iteration])
        chosen = rng.choice(len(self.classes), size=self.p, replace=False)
        out: list[Sample] = []
        for c in chosen:
            pool = self.members[c]
            picks = rng.choice(pool, size=self.k, replace=len(pool) < self.k)
            out += [(int(i), 0) for i in picks]
        seeds = rng.integers(0, 2**63 - 1, size=len(out))
        return [(i, int(s)) for (i, _), s in zip(out, seeds, strict=True)]

    def local(self, iteration: int) -> list[Sample]:
        """This rank's slice of the batch of ``iteration``."""
        b = self.batch(iteration)
        n = len(b) // self.world_size
        return b[self.rank * n : (self.rank + 1) * n]

    def __iter__(self) -> Iterator[list[Sample]]:
        for it in range(self.start, self.iterations):
            yield self.local(it)

    def __len__(self) -> int:
        return max(0, self.iterations - self.start)
