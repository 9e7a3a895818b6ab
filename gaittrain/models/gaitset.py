"""GaitSet as published (Chao et al., AAAI 2019; OpenGait's ``GaitSet``).

Three convolution stages run on every frame (5×5 then 3×3 convolutions without bias, each
followed by LeakyReLU(0.01); a 2×2 max-pool after the first two stages). Their outputs are
set-pooled (max over the frames of each sequence) and feed the multilayer global pipeline:

    g = gl_block2(pool(stage1));  g = gl_block3(g + pool(stage2));  g = g + pool(stage3)

``gl_block2`` and ``gl_block3`` have the layout of stages 2 and 3, with their own weights.
Horizontal pyramid pooling (16, 8, 4, 2, 1 strips, max + mean) of the set-pooled last stage and
of the global map gives 2 × 31 = 62 parts (the frame branch's parts first), each mapped by its
own linear map: embeddings [parts, batch, dim].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from gaittrain.models.pooling import horizontal_pooling, set_pool
from gaittrain.models.set_model import BINS, CHANNELS, DIM, SetNetConfig


@dataclass
class GaitSetConfig(SetNetConfig):
    """``model: {name: gaitset, ...}``: GaitSet as published (:class:`GaitSet`): the setnet
    keys; horizontal pooling of both branches gives 2 x sum(bins) parts (62)."""

    name: str = field(default="gaitset", init=False)


def _stage(c_in: int, c_out: int, k: int, pool: bool) -> nn.Sequential:
    """conv k×k, LeakyReLU, conv 3×3, LeakyReLU[, max-pool 2×2]: indices 0 and 2 are the convs."""
    layers = [
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.LeakyReLU(0.01, inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class GaitSet(nn.Module):
    """GaitSet: frame stages, set pooling, the global pipeline, HPP over both branches.

    Parameters
    ----------
    channels : three ints
        Widths of the three stages (GaitSet: 32, 64, 128).
    bins : ints
        Strip counts of the pyramid (16, 8, 4, 2, 1: 31 strips per branch, 62 parts).
    dim : int
        Embedding size per part.
    """

    Config = GaitSetConfig
    bnneck = False  #: its training output carries no BNNeck logits

    @classmethod
    def from_config(cls, c: GaitSetConfig) -> GaitSet:
        return cls(c.channels, c.bins, c.dim)

    def __init__(
        self,
        channels: Sequence[int] = CHANNELS,
        bins: Sequence[int] = BINS,
        dim: int = DIM,
    ):
        super().__init__()
        c1, c2, c3 = channels
        self.set_block1 = _stage(1, c1, 5, pool=True)
        self.set_block2 = _stage(c1, c2, 3, pool=True)
        self.set_block3 = _stage(c2, c3, 3, pool=False)
        self.gl_block2 = _stage(c1, c2, 3, pool=True)
        self.gl_block3 = _stage(c2, c3, 3, pool=False)
        self.bins = tuple(bins)
        self.parts = 2 * sum(self.bins)
        self.dim = dim
        self.fc = nn.Parameter(torch.empty(self.parts, c3, dim))
        nn.init.xavier_uniform_(self.fc)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, frames: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        """Embed sequences: ``frames`` [B, T, H, W], or [sum(lengths), H, W] with ``lengths``.
        Returns [parts, B, dim]."""
        x, pool = set_pool(frames, lengths)
        x = self.set_block1(x)
        g = self.gl_block2(pool(x))
        x = self.set_block2(x)
        g = self.gl_block3(g + pool(x))
        x = pool(self.set_block3(x))
        g = g + x
        feats = torch.cat([horizontal_pooling(x, self.bins), horizontal_pooling(g, self.bins)])
        return feats.matmul(self.fc)  # [parts, B, dim]
