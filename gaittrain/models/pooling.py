"""Poolings the gait models share: set (temporal) max pooling and horizontal pooling.

Set pooling is :func:`gaittrain.models.set_model.segment_max` for sequences of different lengths
and a reshape + max for a fixed-length batch; :func:`set_pool` picks one. Horizontal pooling cuts
a feature map into ``n`` horizontal strips for each ``n`` in ``bins`` and pools each strip with
max + mean, giving one feature per strip ("part").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gaittrain.models.set_model import segment_max


def set_pool(
    frames: torch.Tensor, lengths: Sequence[int] | None
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The frames as a batch of single-channel images [N, 1, H, W] and the set pooling that turns
    per-frame maps [N, ...] back into one map per sequence [B, ...] (max over its frames).

    ``frames`` is [B, T, H, W] (fixed length) or [sum(lengths), H, W] with ``lengths``.
    """
    if lengths is None:
        b, t, h, w = frames.shape
        return frames.reshape(b * t, 1, h, w), lambda x: x.reshape(b, t, *x.shape[1:]).amax(1)
    return frames.unsqueeze(1), lambda x: segment_max(x, lengths)


def horizontal_pooling(x: torch.Tensor, bins: Sequence[int]) -> torch.Tensor:
    """Strip features of maps [B, C, H, W]: for each n in ``bins`` (in order) the H rows are cut
    into n strips, each pooled to max + mean over its rows and columns. Returns [parts, B, C]
    with parts = sum(bins), the strips of the first bin first, each bin's from the top down."""
    b, c = x.shape[:2]
    strips = []
    for n in bins:
        z = x.reshape(b, c, n, -1)
        strips.append(z.amax(dim=-1) + z.mean(dim=-1))
    return torch.cat(strips, dim=2).permute(2, 0, 1)
