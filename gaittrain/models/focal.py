"""Focal convolution: one convolution applied to each horizontal strip of a map on its own.

GaitPart (Fan et al., "GaitPart: Temporal Part-based Model for Gait Recognition", CVPR 2020)
introduced it: the rows of a feature map are cut into 2^halving strips of equal height and the
same convolution runs over each strip separately, its zero padding at every strip's border, so
that no output sees past its strip. Deeper layers then describe small body parts instead of the
whole silhouette. GaitGL (Lin et al., ICCV 2021) uses the same cut in 3-D for its local branch.

Strips are cut as OpenGait cuts them: ``rows // 2^halving`` rows each from the top, so a row
count that 2^halving does not divide gives more strips than 2^halving (the last maybe shorter).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def focal(
    conv: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, halving: int
) -> torch.Tensor:
    """``conv`` applied to each of the 2^``halving`` horizontal strips of ``x`` [..., H, W]
    separately (the whole of ``x`` when ``halving`` is 0), the results stacked back by rows."""
    if halving == 0:
        return conv(x)
    rows = max(1, x.shape[-2] // 2**halving)
    return torch.cat([conv(strip) for strip in x.split(rows, dim=-2)], dim=-2)


class FocalConv2d(nn.Conv2d):
    """A 2-D convolution (no bias) applied to each of 2^``halving`` horizontal strips on its own;
    ``halving`` 0 is a plain convolution."""

    def __init__(self, c_in: int, c_out: int, kernel: int, halving: int):
        super().__init__(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.halving = halving

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return focal(super().forward, x, self.halving)
