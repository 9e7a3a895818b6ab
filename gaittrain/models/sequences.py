"""Packed sequences through a network that looks across frames (GaitPart, GaitGL).

A batch of sequences of different lengths arrives packed: their frames (or per-frame features)
concatenated along the first axis, [sum(lengths), ...], with ``lengths``. A set-based model pools
such a batch with one segment max (:func:`gaittrain.models.set_model.segment_max`), but a model
that convolves over time must see each sequence on its own: padding would change what the
convolutions see at a sequence's end, and concatenating would let one sequence's frames leak into
its neighbour's. :func:`by_length` runs the network on the sequences of each length together, so
each sequence's result is the one it gets alone, in as few calls as there are distinct lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def check_lengths(lengths: Sequence[int], rows: int) -> list[int]:
    """``lengths`` as a list of ints; ValueError unless they are positive and sum to ``rows``."""
    n = torch.as_tensor(lengths, dtype=torch.long).flatten().tolist()
    if not n or min(n) < 1 or sum(n) != rows:
        raise ValueError(f"lengths must be positive and sum to the {rows} rows given, got {n}")
    return n


def by_length(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, lengths: Sequence[int]
) -> torch.Tensor:
    """``fn`` applied to the sequences packed in ``x`` [sum(lengths), ...], those of one length
    stacked into one batch [n, length, ...]; ``fn`` returns one row per sequence [n, ...].

    Returns the rows of all sequences in the order of ``lengths``: [len(lengths), ...].
    """
    n = check_lengths(lengths, x.shape[0])
    if len(set(n)) == 1:  # all of one length: a reshape
        return fn(x.reshape(len(n), n[0], *x.shape[1:]))
    seqs = x.split(n)
    rows: list[torch.Tensor | None] = [None] * len(n)
    for length in sorted(set(n)):
        index = [i for i, m in enumerate(n) if m == length]
        for i, row in zip(index, fn(torch.stack([seqs[i] for i in index])), strict=True):
            rows[i] = row
    return torch.stack(rows)
