"""The field's standard set-based gait model (GaitSet-like), as a plain module.

Frames -> a shared frame-level CNN -> set pooling (max over the frames of each sequence, so the
output does not depend on frame order or count) -> horizontal pyramid pooling (the feature map is
cut into 16, 8, 4, 2 and 1 horizontal strips; each strip is max + mean pooled) -> a separate
linear map per strip ("part"). The output is an embedding of shape [parts, batch, dim], the input
every loss in gaittrain.losses expects.

Sequences of different lengths share a batch without padding their frames: pass the frames of all
sequences concatenated along the first axis and their ``lengths`` (set pooling is then one
vectorized segment max, :func:`segment_max`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from gaittrain.schema import int_field, ints_field

CHANNELS = (32, 64, 128)  #: the three stages' widths (GaitSet's)
BINS = (16, 8, 4, 2, 1)  #: the pyramid's strip counts (31 parts)
DIM = 256  #: the embedding size per part


@dataclass
class SetNetConfig:
    """``model: {name: setnet, ...}`` (the default, also for a model section without ``name``):
    :class:`SetModel` (GaitSet without its global branch)."""

    name: str = field(default="setnet", init=False)
    channels: list[int] = ints_field(list(CHANNELS), 1, 65536, (3, 3))
    bins: list[int] = ints_field(list(BINS), 1, 1024, (1, 64))
    dim: int = int_field(DIM, 1, 65536)


def segment_max(x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """The max over each run of ``lengths`` consecutive rows of ``x`` [sum(lengths), ...]:
    [len(lengths), ...], without a Python loop over the runs.

    One ``scatter_reduce`` ("amax") of the rows onto their sequence's row (equal lengths: a
    reshape), so values and gradients (split evenly between tied maxima) are those of
    ``torch.stack([s.amax(0) for s in torch.split(x, lengths)])``.
    """
    n = torch.as_tensor(lengths, dtype=torch.long).flatten().cpu()
    if n.numel() == 0 or int(n.min()) < 1 or int(n.sum()) != x.shape[0]:
        raise ValueError(
            f"lengths must be positive and sum to the {x.shape[0]} rows given, got {n.tolist()}"
        )
    b, t = n.numel(), int(n.max())
    if b * t == x.shape[0]:  # all of one length
        return x.reshape(b, t, *x.shape[1:]).amax(dim=1)
    rows = x.reshape(x.shape[0], -1)
    seq = torch.repeat_interleave(torch.arange(b), n).to(x.device)  # each row's sequence
    out = rows.new_empty(b, rows.shape[1])
    out.scatter_reduce_(0, seq[:, None].expand_as(rows), rows, "amax", include_self=False)
    return out.reshape(b, *x.shape[1:])


def _conv(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.LeakyReLU(0.01, inplace=True)
    )


class SetModel(nn.Module):
    """GaitSet-style backbone with set pooling and horizontal pyramid pooling.

    Parameters
    ----------
    channels : three ints
        Widths of the three conv stages (GaitSet: 32, 64, 128).
    bins : ints
        Horizontal strip counts of the pyramid (16, 8, 4, 2, 1 gives 31 parts).
    dim : int
        Embedding size per part.
    """

    Config = SetNetConfig
    bnneck = False  #: its training output carries no BNNeck logits

    @classmethod
    def from_config(cls, c: SetNetConfig) -> SetModel:
        return cls(c.channels, c.bins, c.dim)

    def __init__(
        self,
        channels: Sequence[int] = CHANNELS,
        bins: Sequence[int] = BINS,
        dim: int = DIM,
    ):
        super().__init__()
        c1, c2, c3 = channels
        self.backbone = nn.Sequential(
            _conv(1, c1, 5),
            _conv(c1, c1, 3),
            nn.MaxPool2d(2),
            _conv(c1, c2, 3),
            _conv(c2, c2, 3),
            nn.MaxPool2d(2),
            _conv(c2, c3, 3),
            _conv(c3, c3, 3),
        )
        self.bins = tuple(bins)
        self.parts = sum(self.bins)
        self.fc = nn.Parameter(torch.empty(self.parts, c3, dim))
        nn.init.xavier_uniform_(self.fc)
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, frames: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        """Embed sequences.

        ``frames`` is [B, T, H, W] (fixed length) or [sum(lengths), H, W] with ``lengths``.
        Returns [parts, B, dim].
        """
        if lengths is None:
            b, t, h, w = frames.shape
            x = self.backbone(frames.reshape(b * t, 1, h, w))
            x = x.reshape(b, t, *x.shape[1:]).amax(dim=1)  # set pooling
        else:
            x = segment_max(self.backbone(frames.unsqueeze(1)), lengths)
        return self.pyramid(x)

    def pyramid(self, x: torch.Tensor) -> torch.Tensor:
        """Horizontal pyramid pooling of set features [B, C, H, W] and the per-part maps."""
        b, c = x.shape[:2]
        strips = []
        for n in self.bins:
            z = x.reshape(b, c, n, -1)
            strips.append(z.amax(dim=-1) + z.mean(dim=-1))
        feats = torch.cat(strips, dim=2).permute(2, 0, 1)  # [parts, B, C]
        return feats.matmul(self.fc)  # [parts, B, dim]
