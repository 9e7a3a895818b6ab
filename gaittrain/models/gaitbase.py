"""GaitBase (Fan et al., CVPR 2023; OpenGait's ``Baseline`` with its ``ResNet9`` backbone).

Per frame, a ResNet-9-style backbone: a 3×3 convolution (no bias), batch norm, ReLU, an optional
3×3 max-pool of stride 2, then four stages of basic residual blocks (two 3×3 convolutions with
batch norm; a 1×1 convolution with batch norm on the shortcut where the stride or the width
changes), with the widths, block counts and strides of the config (OpenGait's CASIA-B setting:
64/128/256/512, one block each, strides 1/2/2/1, no max-pool; a stage of 0 blocks is skipped).
Then temporal max pooling over the frames of each sequence, horizontal pooling into 16 strips
(max + mean) and a separate linear map per part: embeddings [parts, batch, dim], the tensor
OpenGait evaluates and trains the triplet loss on.

The BNNeck: one batch norm over all parts' features together (``BatchNorm1d(dim × parts)``, its
channels in OpenGait's order, feature-major: channel ``d × parts + p``), then per part the cosine
between the normalized feature and each class's normalized weight: logits [parts, batch,
classes] for the cross-entropy. In training mode :meth:`GaitBase.forward` returns
``(embeddings, logits)``; in eval mode the embeddings alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gaittrain.models.pooling import horizontal_pooling, set_pool
from gaittrain.schema import int_field, ints_field

CHANNELS = (64, 128, 256, 512)  #: the four stages' widths
LAYERS = (1, 1, 1, 1)  #: basic blocks per stage (0: the stage is skipped)
STRIDES = (1, 2, 2, 1)  #: each stage's first stride
BINS = (16,)  #: the horizontal pooling's strips
DIM = 256  #: the embedding size per part


@dataclass
class GaitBaseConfig:
    """``model: {name: gaitbase, ...}``: :class:`GaitBase`, OpenGait's Baseline: a ResNet-9-style
    backbone, temporal max pooling, horizontal pooling, a BNNeck."""

    name: str = field(default="gaitbase", init=False)
    channels: list[int] = ints_field(list(CHANNELS), 1, 65536, (4, 4))
    layers: list[int] = ints_field(list(LAYERS), 0, 64, (4, 4))
    strides: list[int] = ints_field(list(STRIDES), 1, 8, (4, 4))
    maxpool: bool = False  # a 3x3 max-pool of stride 2 after the first convolution
    bins: list[int] = ints_field(list(BINS), 1, 1024, (1, 64))
    dim: int = int_field(DIM, 1, 65536)
    classes: int = int_field(0, 0, 10**7)  # the BNNeck's classes; 0: the training subjects' count

    def steps(self) -> list[int]:
        """The strides that reduce the height: the max-pool's 2, each stage's with blocks."""
        steps = [2] if self.maxpool else []
        return steps + [s for s, n in zip(self.strides, self.layers, strict=True) if n > 0]

    def rows(self, height: int) -> int:
        """Rows of the backbone's output for an input of ``height``: ceil(h / s) per step."""
        for s in self.steps():
            height = -(-height // s)
        return height


def _conv3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and a residual shortcut (projected by a 1×1
    convolution with batch norm, ``downsample``, where the stride or the width changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + shortcut)


class Backbone(nn.Module):
    """The ResNet-9-style frame backbone (``conv1``, ``bn1``, ReLU, optional max-pool,
    ``layer1`` .. ``layer4``)."""

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (1, 1, 1, 1),
        strides: Sequence[int] = (1, 2, 2, 1),
        maxpool: bool = False,
    ):
        super().__init__()
        width = channels[0]
        self.conv1 = _conv3(1, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if maxpool else None
        stages = []
        for c, n, s in zip(channels, layers, strides, strict=True):
            if n == 0:  # a stage of no blocks is the identity; the width stays
                stages.append(nn.Sequential())
                continue
            stages.append(
                nn.Sequential(BasicBlock(width, c, s), *(BasicBlock(c, c) for _ in range(n - 1)))
            )
            width = c
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def out_size(size: int, strides: Sequence[int], layers: Sequence[int], maxpool: bool) -> int:
    """The backbone's output height (or width) for an input of ``size``: each stride-s stage with
    at least one block gives ceil(size / s), as does the max-pool with s = 2."""
    steps = [2] if maxpool else []
    steps += [s for s, n in zip(strides, layers, strict=True) if n > 0]
    for s in steps:
        size = -(-size // s)
    return size


def require_classes(classes: int, head: str) -> None:
    """Refuse a model section whose ``classes`` is still 0 (the trainer fills in the number of
    training subjects); ``head`` names what needs the count (``BNNeck``, ``classifier``)."""
    if classes < 1:
        raise ValueError(
            "model.classes is 0 (the number of training subjects, filled in by the trainer): "
            f"give the {head}'s class count"
        )


class GaitBase(nn.Module):
    """GaitBase: ResNet-9-style backbone, temporal max pooling, horizontal pooling, separate
    FCs and a BNNeck with per-part cosine classifiers.

    Parameters
    ----------
    channels, layers, strides : four ints each
        Widths, block counts and strides of the four stages.
    maxpool : bool
        A 3×3 max-pool of stride 2 after the first convolution.
    bins : ints
        Strip counts of the horizontal pooling (GaitBase: 16).
    dim : int
        Embedding size per part.
    classes : int
        Classes of the BNNeck's classifiers (the training subjects).
    """

    Config = GaitBaseConfig
    bnneck = True  #: in training mode it returns (embeddings, BNNeck logits)

    @classmethod
    def from_config(cls, c: GaitBaseConfig) -> GaitBase:
        require_classes(c.classes, "BNNeck")
        return cls(c.channels, c.layers, c.strides, c.maxpool, c.bins, c.dim, c.classes)

    def __init__(
        self,
        channels: Sequence[int] = CHANNELS,
        layers: Sequence[int] = LAYERS,
        strides: Sequence[int] = STRIDES,
        maxpool: bool = False,
        bins: Sequence[int] = BINS,
        dim: int = DIM,
        classes: int = 74,
    ):
        super().__init__()
        if classes < 1:
            raise ValueError(f"classes must be a positive int, got {classes!r}")
        self.backbone = Backbone(channels, layers, strides, maxpool)
        self.bins = tuple(bins)
        self.parts = sum(self.bins)
        self.dim = dim
        self.fc = nn.Parameter(torch.empty(self.parts, self.backbone.out_channels, dim))
        self.bn_neck = nn.BatchNorm1d(dim * self.parts)
        self.classifier = nn.Parameter(torch.empty(self.parts, dim, classes))
        nn.init.xavier_uniform_(self.fc)
        nn.init.xavier_uniform_(self.classifier)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(
        self, frames: torch.Tensor, lengths: Sequence[int] | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embed sequences: ``frames`` [B, T, H, W], or [sum(lengths), H, W] with ``lengths``.

        Eval mode: embeddings [parts, B, dim]. Training mode: ``(embeddings, logits)``, the
        logits [parts, B, classes] of the BNNeck (cosines, to be scaled by the loss).
        """
        x, pool = set_pool(frames, lengths)
        x = pool(self.backbone(x))  # temporal max pooling
        emb = horizontal_pooling(x, self.bins).matmul(self.fc)  # [parts, B, dim]
        if not self.training:
            return emb
        return emb, self.logits(emb)

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        """The BNNeck's cosine logits [parts, B, classes] of embeddings [parts, B, dim]."""
        p, b, d = emb.shape
        y = self.bn_neck(emb.permute(1, 2, 0).reshape(b, d * p))  # OpenGait's channel order
        y = y.reshape(b, d, p).permute(2, 0, 1)  # [parts, B, dim]
        return F.normalize(y, dim=-1).matmul(F.normalize(self.classifier, dim=1))
