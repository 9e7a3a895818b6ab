"""DeepGaitV2 (Fan et al., "Exploring Deep Models for Practical Gait Recognition", 2023,
arXiv:2303.03301; OpenGait's ``DeepGaitV2``): a ResNet-like backbone that also convolves over time.

The backbone has a stem and four stages. The stem (``layer0``: a 3×3 convolution, batch norm,
ReLU) and stage 1 (2-D basic blocks, GaitBase's) work on each frame alone. Stages 2 to 4 use the
blocks of ``mode``:

- ``p3d`` (pseudo-3D, what OpenGait's configs use): a 2-D basic block whose first convolution's
  output also gets a temporal term, ``relu(y + bn(conv_t(y)))``, with ``conv_t`` a 3×1×1
  convolution over the previous, current and next frame;
- ``3d``: a basic block of two 3×3×3 convolutions;
- ``2d``: GaitBase's basic block, frame by frame (no temporal term).

Each stage's first block has the stage's stride in height and width (never in time) and, where
the stride or the width changes, a 1×1 (×1) convolution with batch norm on the shortcut. Then
the head is GaitBase's: temporal max pooling over each sequence's frames, horizontal pooling
into strips (max + mean), a separate linear map per strip, and a BNNeck (one batch norm over
all parts' features, per-part cosine classifiers). In training mode :meth:`DeepGaitV2.forward`
returns ``(embeddings [parts, B, dim], logits [parts, B, classes])``; in eval mode the
embeddings alone.

Sequences of different lengths: frames are packed, sequence after sequence, and every temporal
convolution is run with one zero frame between two sequences (:class:`Timeline`), which is the
zero padding a sequence gets when it is embedded alone: no sequence sees another's frames. In
eval mode a batch of more than :attr:`DeepGaitV2.window` frames is embedded in windows of that
many frames, each widened by the backbone's temporal reach (the frames its convolutions look at
on each side) and max-pooled into its sequences' features, so that memory is bounded whatever
the sequences' lengths and the embedding is the same.

The batch norms of 3-D convolutions are ``BatchNorm2d`` over the packed frames: the statistics
of a BatchNorm3d over [B, C, T, H, W] are those over the B × T frames, and the weights are the
same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn

from gaittrain.models.gaitbase import BasicBlock, require_classes
from gaittrain.models.pooling import horizontal_pooling
from gaittrain.models.set_model import segment_max
from gaittrain.schema import ConfigError, int_field, ints_field, show

MODES = ("p3d", "2d", "3d")  #: the blocks of stages 2 to 4
CHANNELS = (64, 128, 256, 512)  #: the four stages' widths (OpenGait's CASIA-B setting)
LAYERS = (1, 1, 1, 1)  #: blocks per stage (Gait3D, GREW: 1, 4, 4, 1)
STRIDES = (1, 2, 2, 1)  #: each stage's stride in height and width (OpenGait's, fixed there)
BINS = (16,)  #: the horizontal pooling's strips
DIM = 256  #: the embedding size per part (OpenGait: the third stage's width)
WINDOW = 1024  #: frames per forward pass in eval mode (plus the temporal reach on each side)


@dataclass
class DeepGaitV2Config:
    """``model: {name: deepgaitv2, ...}``: :class:`DeepGaitV2`, a ResNet-like backbone with
    P3D, 3-D or 2-D blocks, temporal max pooling, horizontal pooling, a BNNeck."""

    name: str = field(default="deepgaitv2", init=False)
    mode: str = "p3d"  # the blocks of stages 2-4: p3d | 2d | 3d
    channels: list[int] = ints_field(list(CHANNELS), 1, 65536, (4, 4))
    layers: list[int] = ints_field(list(LAYERS), 1, 64, (4, 4))
    strides: list[int] = ints_field(list(STRIDES), 1, 8, (4, 4))  # in height and width
    bins: list[int] = ints_field(list(BINS), 1, 1024, (1, 64))
    dim: int = int_field(DIM, 1, 65536)
    classes: int = int_field(0, 0, 10**7)  # the BNNeck's classes; 0: the training subjects' count

    def check(self) -> None:
        """What the ranges alone do not check (ConfigError naming the key)."""
        if self.mode not in MODES:
            raise ConfigError(f"model.mode is {show(self.mode)}; use one of {', '.join(MODES)}")

    def steps(self) -> list[int]:
        """The strides that reduce the height: every stage's (each has at least one block)."""
        return list(self.strides)

    def rows(self, height: int) -> int:
        """Rows of the backbone's output for an input of ``height``: ceil(h / s) per stride."""
        for s in self.steps():
            height = -(-height // s)
        return height


class Timeline:
    """The frames of a batch of sequences, packed [N, C, H, W] one sequence after the other, and
    the 3-D convolutions over them that never mix two sequences.

    ``Timeline.fixed(b, t)``: b sequences of t frames (a reshape to [b, C, t, H, W]);
    ``Timeline.packed(lengths, n)``: sequences of any lengths, laid out in time with one zero frame
    between two (a convolution's temporal kernel spans at most 3 frames, so that frame is
    exactly the zero padding each sequence gets alone).
    """

    def __init__(self, batch: int, frames: int, lengths: list[int] | None):
        self.batch, self.frames, self.lengths = batch, frames, lengths
        if lengths is not None:
            sequence = torch.repeat_interleave(torch.arange(batch), torch.tensor(lengths))
            self.slots = torch.arange(sum(lengths)) + sequence  # frame i of sequence s: i + s
            self.span = sum(lengths) + batch - 1

    @classmethod
    def fixed(cls, batch: int, frames: int) -> Timeline:
        return cls(batch, frames, None)

    @classmethod
    def packed(cls, lengths: Sequence[int], rows: int) -> Timeline:
        """The timeline of ``rows`` packed frames, ``lengths`` of them per sequence."""
        lengths = [int(n) for n in lengths]
        if not lengths or min(lengths) < 1 or sum(lengths) != rows:
            raise ValueError(
                f"lengths must be positive and sum to the {rows} frames given, got {lengths}"
            )
        if len(set(lengths)) == 1:
            return cls.fixed(len(lengths), lengths[0])
        return cls(len(lengths), 0, lengths)

    def conv(self, x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
        """``conv`` (a Conv3d of stride 1 in time) over packed frames [N, C, H, W]."""
        if conv.kernel_size[0] == 1:  # no neighbours in time: frame by frame
            weight = conv.weight.squeeze(2)
            return F.conv2d(x, weight, conv.bias, conv.stride[1:], conv.padding[1:])
        if self.lengths is None:
            y = conv(x.reshape(self.batch, self.frames, *x.shape[1:]).transpose(1, 2))
            return y.transpose(1, 2).flatten(0, 1)
        slots = self.slots.to(x.device)
        spread = x.new_zeros(self.span, *x.shape[1:]).index_copy(0, slots, x)
        y = conv(spread.transpose(0, 1).unsqueeze(0))[0]  # [C', span, H', W']
        return y.transpose(0, 1)[slots]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Temporal max pooling: per-frame maps [N, ...] -> one map per sequence [B, ...]."""
        if self.lengths is None:
            return x.reshape(self.batch, self.frames, *x.shape[1:]).amax(1)
        return segment_max(x, self.lengths)


def _conv_t(c_in: int, c_out: int, kernel, stride, padding) -> nn.Conv3d:
    """A Conv3d without bias; ``kernel``, ``stride``, ``padding``: (time, height, width) or one
    int for all three."""
    return nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    """A 1×1×1 convolution with batch norm where the stride or the width changes, else None."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(_conv_t(c_in, c_out, 1, (1, stride, stride), 0), nn.BatchNorm2d(c_out))


def _shortcut(
    downsample: nn.Sequential | None, x: torch.Tensor, timeline: Timeline
) -> torch.Tensor:
    """A block's input as its output adds it: as it is, or through the 1×1×1 convolution."""
    if downsample is None:
        return x
    conv, bn = downsample
    return bn(timeline.conv(x, conv))


class Block2D(BasicBlock):
    """GaitBase's basic block, frame by frame (the timeline is not used)."""

    def forward(self, x: torch.Tensor, timeline: Timeline | None = None) -> torch.Tensor:
        return super().forward(x)


class BlockP3D(nn.Module):
    """A pseudo-3D basic block: ``conv1`` (3×3, the stride) with batch norm and ReLU per frame,
    plus a temporal term ``relu(y + temporal_bn(temporal(y)))`` (3×1×1), then ``conv2`` (3×3)
    with batch norm per frame, the shortcut added and ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.temporal = _conv_t(c_out, c_out, (3, 1, 1), 1, (1, 0, 0))
        self.temporal_bn = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = _downsample(c_in, c_out, stride)

    def forward(self, x: torch.Tensor, timeline: Timeline) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(y + self.temporal_bn(timeline.conv(y, self.temporal)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + _shortcut(self.downsample, x, timeline))


class Block3D(nn.Module):
    """A 3-D basic block: two 3×3×3 convolutions (the first with the stride in height and
    width) with batch norm, ReLU between them, the shortcut added and ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_t(c_in, c_out, 3, (1, stride, stride), 1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv_t(c_out, c_out, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = _downsample(c_in, c_out, stride)

    def forward(self, x: torch.Tensor, timeline: Timeline) -> torch.Tensor:
        y = F.relu(self.bn1(timeline.conv(x, self.conv1)))
        y = self.bn2(timeline.conv(y, self.conv2))
        return F.relu(y + _shortcut(self.downsample, x, timeline))


BLOCKS = {"p3d": BlockP3D, "2d": Block2D, "3d": Block3D}


class DeepGaitV2(nn.Module):
    """DeepGaitV2: a stem and four residual stages (stage 1 in 2-D, stages 2-4 in the blocks of
    ``mode``), temporal max pooling, horizontal pooling, separate FCs and a BNNeck.

    Parameters
    ----------
    mode : str
        The blocks of stages 2-4: ``p3d``, ``2d`` or ``3d``.
    channels, layers, strides : four ints each
        Widths, block counts (at least 1) and strides in height and width of the four stages.
    bins : ints
        Strip counts of the horizontal pooling (OpenGait: 16).
    dim : int
        Embedding size per part (OpenGait: ``channels[2]``).
    classes : int
        Classes of the BNNeck's classifiers (the training subjects).
    """

    Config = DeepGaitV2Config
    bnneck = True  #: in training mode it returns (embeddings, BNNeck logits)

    @classmethod
    def from_config(cls, c: DeepGaitV2Config) -> DeepGaitV2:
        require_classes(c.classes, "BNNeck")
        return cls(c.mode, c.channels, c.layers, c.strides, c.bins, c.dim, c.classes)

    def __init__(
        self,
        mode: str = "p3d",
        channels: Sequence[int] = CHANNELS,
        layers: Sequence[int] = LAYERS,
        strides: Sequence[int] = STRIDES,
        bins: Sequence[int] = BINS,
        dim: int = DIM,
        classes: int = 74,
    ):
        super().__init__()
        if mode not in BLOCKS or classes < 1 or min(layers) < 1:
            raise ValueError(
                f"mode must be one of {', '.join(BLOCKS)}, every stage at least one block and "
                f"classes positive; got {mode!r}, {list(layers)}, {classes!r}"
            )
        width = channels[0]
        self.layer0 = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages = []
        for i, (c, n, s) in enumerate(zip(channels, layers, strides, strict=True)):
            block = Block2D if i == 0 else BLOCKS[mode]
            stages.append(nn.ModuleList([block(width, c, s), *(block(c, c) for _ in range(n - 1))]))
            width = c
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bins = tuple(bins)
        self.parts = sum(self.bins)
        self.dim = dim
        self.fc = nn.Parameter(torch.empty(self.parts, width, dim))
        self.bn_neck = nn.BatchNorm1d(dim * self.parts)
        self.classifier = nn.Parameter(torch.empty(self.parts, dim, classes))
        #: frames each side of a frame that its backbone output depends on
        self.reach = sum(
            (m.kernel_size[0] - 1) // 2 for m in self.modules() if isinstance(m, nn.Conv3d)
        )
        self.window = WINDOW  #: frames per forward pass in eval mode (memory is bounded by it)
        nn.init.xavier_uniform_(self.fc)
        nn.init.xavier_uniform_(self.classifier)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
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
        if lengths is None:
            b, t, h, w = frames.shape
            x, timeline = frames.reshape(b * t, 1, h, w), Timeline.fixed(b, t)
        else:
            x, timeline = frames.unsqueeze(1), Timeline.packed(lengths, frames.shape[0])
        if self._in_windows(x.shape[0]):
            pooled = self._pooled_in_windows(x, [t] * b if lengths is None else list(lengths))
        else:
            pooled = timeline.pool(self.frame_maps(x, timeline))  # temporal max pooling
        emb = horizontal_pooling(pooled, self.bins).matmul(self.fc)  # [parts, B, dim]
        if not self.training:
            return emb
        return emb, self.logits(emb)

    def _in_windows(self, frames: int) -> bool:
        """Whether a forward pass over ``frames`` packed frames goes window by window: in eval
        mode beyond ``window`` frames, except while traced for ONNX (one graph for any T)."""
        return not self.training and not torch.jit.is_tracing() and frames > self.window

    def frame_maps(self, x: torch.Tensor, timeline: Timeline) -> torch.Tensor:
        """The backbone: packed frames [N, 1, H, W] -> feature maps [N, C, h, w]."""
        x = self.layer0(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x, timeline)
        return x

    def _pooled_in_windows(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Temporal max pooling of :meth:`frame_maps` computed ``window`` frames at a time.

        Each window's frames are embedded with ``reach`` more frames of their sequences on each
        side (their convolutions' inputs), and only the window's own maps are kept: a map
        depends on frames at most ``reach`` away, so each is the one of the whole sequence.
        """
        ends = list(accumulate(lengths))
        starts = [e - n for e, n in zip(ends, lengths, strict=True)]
        pooled: list[torch.Tensor | None] = [None] * len(lengths)
        for a in range(0, ends[-1], self.window):
            b = min(a + self.window, ends[-1])
            seqs = [i for i, (s, e) in enumerate(zip(starts, ends, strict=True)) if s < b and e > a]
            lo = max(a - self.reach, starts[seqs[0]])
            hi = min(b + self.reach, ends[seqs[-1]])
            pieces = [min(ends[i], hi) - max(starts[i], lo) for i in seqs]
            maps = self.frame_maps(x[lo:hi], Timeline.packed(pieces, hi - lo))[a - lo : b - lo]
            own = [min(ends[i], b) - max(starts[i], a) for i in seqs]
            for i, m in zip(seqs, segment_max(maps, own), strict=True):
                pooled[i] = m if pooled[i] is None else torch.maximum(pooled[i], m)
        return torch.stack(pooled)

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        """The BNNeck's cosine logits [parts, B, classes] of embeddings [parts, B, dim] (as
        GaitBase's: one batch norm over OpenGait's feature-major channels ``d × parts + p``)."""
        p, b, d = emb.shape
        y = self.bn_neck(emb.permute(1, 2, 0).reshape(b, d * p))
        y = y.reshape(b, d, p).permute(2, 0, 1)  # [parts, B, dim]
        return F.normalize(y, dim=-1).matmul(F.normalize(self.classifier, dim=1))
