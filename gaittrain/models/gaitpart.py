"""GaitPart (Fan et al., "GaitPart: Temporal Part-based Model for Gait Recognition", CVPR 2020;
OpenGait's ``GaitPart``).

Per frame, a plain convolution stack (OpenGait's ``Plain`` backbone): the first convolution
5×5, the others 3×3, none with bias, each followed by LeakyReLU(0.01), with a 2×2 max-pool after
the layers ``pool_after`` names. A layer may be a focal convolution (:mod:`gaittrain.models.focal`):
the same weights applied to each of 2^halving horizontal strips on its own (GaitPart: plain for
the first two layers, 4 strips for the next two, 8 for the last two).

Each frame's map is then cut into horizontal strips, the parts (16), each pooled to max + mean.
The Micro-motion Capture Module (MCM) turns each part's features over time into one feature:
two micro-motion template builders (MTB) look at short windows of frames. Each takes a template
of the part's features over its window (the mean plus the max over 3 frames for the first, over
5 for the second) and weights it, channel by channel and frame by frame, by an attention score:
the sigmoid of a small 1-D convolution over time, its own weights for each part (channels
squeezed by ``squeeze``, LeakyReLU, back to the channels; the second convolution spans 1 frame in
the first MTB, 3 in the second). The two weighted templates are added and max-pooled over the
frames. A separate linear map per part gives embeddings [parts, batch, dim].

Frames are ordered in time here (GaitPart is trained on clips of consecutive frames), and each
sequence is aggregated on its own: a packed batch [sum(lengths), H, W] with ``lengths`` gives
each sequence the embedding it gets alone (:func:`~gaittrain.models.sequences.by_length`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gaittrain.models.focal import FocalConv2d
from gaittrain.models.pooling import horizontal_pooling
from gaittrain.models.sequences import by_length
from gaittrain.schema import ConfigError, int_field, ints_field

CHANNELS = (32, 32, 64, 64, 128, 128)  #: each convolution's width
HALVING = (0, 0, 2, 2, 3, 3)  #: each convolution's strips: 2^halving (0: a plain convolution)
POOL_AFTER = (2, 4)  #: the convolutions (counted from 1) followed by a 2×2 max-pool
BINS = (16,)  #: the horizontal strips (parts)
DIM = 128  #: the embedding size per part
SQUEEZE = 4  #: the MTBs' attention convolutions work on channels / squeeze


@dataclass
class GaitPartConfig:
    """``model: {name: gaitpart, ...}``: :class:`GaitPart`: focal convolutions per frame,
    horizontal strips, the micro-motion capture module over time, a linear map per part."""

    name: str = field(default="gaitpart", init=False)
    channels: list[int] = ints_field(list(CHANNELS), 1, 65536, (1, 64))
    halving: list[int] = ints_field(list(HALVING), 0, 10, (1, 64))
    pool_after: list[int] = ints_field(list(POOL_AFTER), 1, 64, (0, 64))
    bins: list[int] = ints_field(list(BINS), 1, 1024, (1, 64))
    dim: int = int_field(DIM, 1, 65536)
    squeeze: int = int_field(SQUEEZE, 1, 65536)

    def check(self) -> None:
        """What the ranges alone do not check (ConfigError naming the keys)."""
        if len(self.halving) != len(self.channels):
            raise ConfigError(
                f"model.halving holds {len(self.halving)} values and model.channels "
                f"{len(self.channels)}: give one halving per convolution"
            )
        pools = self.pool_after
        if pools != sorted(set(pools)) or (pools and pools[-1] > len(self.channels)):
            raise ConfigError(
                f"model.pool_after {pools} must name convolutions 1 to {len(self.channels)}, "
                "each once, in order"
            )
        if self.channels[-1] < self.squeeze:
            raise ConfigError(
                f"model.squeeze {self.squeeze} leaves no channel of the last width "
                f"{self.channels[-1]} to the MCM's attention; use at most {self.channels[-1]}"
            )

    def steps(self) -> list[int]:
        """The factors that reduce the height: one 2 per max-pool."""
        return [2] * len(self.pool_after)

    def rows(self, height: int) -> int:
        """Rows of the backbone's output for an input of ``height`` (each max-pool floors)."""
        for _ in self.pool_after:
            height //= 2
        return height


class MotionTemplate(nn.Module):
    """A micro-motion template builder (MTB): part features [n, parts, C, T] -> the template
    (mean + max over ``window`` frames around each frame) times its attention score (the sigmoid
    of two 1-D convolutions over time, 3 then ``kernel`` frames wide, one pair per part)."""

    def __init__(self, channels: int, parts: int, squeeze: int, window: int, kernel: int):
        super().__init__()
        hidden = channels // squeeze
        self.window = window
        self.attention = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(channels, hidden, 3, padding=1, bias=False),
                nn.LeakyReLU(0.01, inplace=True),
                nn.Conv1d(hidden, channels, kernel, padding=kernel // 2, bias=False),
            )
            for _ in range(parts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, p, c, t = x.shape
        scores = torch.stack([conv(x[:, i]) for i, conv in enumerate(self.attention)], 1)
        flat, k = x.reshape(n * p, c, t), self.window
        # the window is padded at the sequence's ends: by zeros for the mean (which divides by
        # the window's full size), by -inf for the max
        template = F.avg_pool1d(flat, k, 1, k // 2) + F.max_pool1d(flat, k, 1, k // 2)
        return template.reshape(n, p, c, t) * scores.sigmoid()


class MicroMotionCapture(nn.Module):
    """The MCM: part features over time [n, T, parts, C] -> one feature per part [n, parts, C]
    (the two MTBs' weighted templates added, then the max over the frames)."""

    def __init__(self, channels: int, parts: int, squeeze: int = SQUEEZE):
        super().__init__()
        self.mtb1 = MotionTemplate(channels, parts, squeeze, window=3, kernel=1)
        self.mtb2 = MotionTemplate(channels, parts, squeeze, window=5, kernel=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # [n, parts, C, T]
        return (self.mtb1(x) + self.mtb2(x)).amax(dim=-1)


class GaitPart(nn.Module):
    """GaitPart: focal convolutions per frame, horizontal strips, the MCM over time, a separate
    linear map per part.

    Parameters
    ----------
    channels, halving : ints, one per convolution
        Widths (GaitPart: 32, 32, 64, 64, 128, 128) and strips 2^halving (0, 0, 2, 2, 3, 3).
    pool_after : ints
        The convolutions, counted from 1, followed by a 2×2 max-pool (2 and 4).
    bins : ints
        Strip counts of the horizontal pooling (16 parts).
    dim : int
        Embedding size per part.
    squeeze : int
        The attention convolutions' channel reduction (4).
    """

    Config = GaitPartConfig
    bnneck = False  #: its training output carries no BNNeck logits

    @classmethod
    def from_config(cls, c: GaitPartConfig) -> GaitPart:
        return cls(c.channels, c.halving, c.pool_after, c.bins, c.dim, c.squeeze)

    def __init__(
        self,
        channels: Sequence[int] = CHANNELS,
        halving: Sequence[int] = HALVING,
        pool_after: Sequence[int] = POOL_AFTER,
        bins: Sequence[int] = BINS,
        dim: int = DIM,
        squeeze: int = SQUEEZE,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = 1
        for i, (c, h) in enumerate(zip(channels, halving, strict=True), start=1):
            layers += [FocalConv2d(width, c, 5 if i == 1 else 3, h), nn.LeakyReLU(0.01, True)]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            width = c
        self.backbone = nn.Sequential(*layers)  # the layer indices of OpenGait's Plain
        self.bins = tuple(bins)
        self.parts = sum(self.bins)
        self.dim = dim
        self.mcm = MicroMotionCapture(width, self.parts, squeeze)
        self.fc = nn.Parameter(torch.empty(self.parts, width, dim))
        nn.init.xavier_uniform_(self.fc)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, frames: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        """Embed sequences of frames in time order: ``frames`` [B, T, H, W], or [sum(lengths),
        H, W] with ``lengths``. Returns [parts, B, dim]."""
        x = self.backbone(frames.reshape(-1, 1, *frames.shape[-2:]))  # every frame
        x = horizontal_pooling(x, self.bins).transpose(0, 1)  # [frames, parts, C]
        if lengths is None:
            x = self.mcm(x.reshape(*frames.shape[:2], *x.shape[1:]))
        else:
            x = by_length(self.mcm, x, lengths)
        return x.transpose(0, 1).matmul(self.fc)  # [parts, B, dim]
