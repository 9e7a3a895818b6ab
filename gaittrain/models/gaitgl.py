"""GaitGL (Lin et al., "Gait Recognition via Effective Global-Local Feature Representation and
Local Temporal Aggregation", ICCV 2021; OpenGait's ``GaitGL``).

A 3-D convolutional network over the whole clip [frames, H, W]; all convolutions are 3×3×3
(time × height × width) without bias unless said otherwise, each followed by LeakyReLU(0.01):

1. the stem: one convolution from the silhouettes to ``channels[0]`` (two in the deep branch);
2. local temporal aggregation (LTA): a 3×1×1 convolution of stride 3 in time, which turns each
   run of three frames into one step (frames past the last full run are dropped; a sequence of
   one or two frames is first repeated to three or four, as OpenGait does);
3. global-local convolutions (GLConv): a global 3-D convolution over the whole map and a local
   one applied to each of 2^halving horizontal strips on its own (:func:`~gaittrain.models.focal.
   focal`, in 3-D). GLConvA adds the two after their activations; GLConvB stacks them by rows
   (the map's height doubles). The stages are GLConvA0, a 1×2×2 max-pool, GLConvA1, GLConvB2;
   each stage is one GLConv in the ``casia-b`` branch and two in the ``deep`` branch (OpenGait's
   layout for OU-MVLP and GREW, one width more: ``channels`` holds 3 or 4 widths);
4. temporal max pooling over the steps; generalized-mean (GeM) pooling of horizontal strips,
   ``(mean(x^p))^(1/p)`` with a learned p (6.5 at first), one part per strip (64);
5. a separate linear map per part, then one batch norm over the embedding's channels (shared by
   all parts): its output is the embedding, the triplet loss's input and the tensor evaluated.
   A second, plain linear map per part (``classifier``) gives the logits of the cross-entropy.

In training mode :meth:`GaitGL.forward` returns ``(embeddings, logits)`` (so gait's objective
treats it like a BNNeck model: ``bnneck``), in eval mode the embeddings alone.

The clip is convolved in time, so each sequence is embedded on its own: a packed batch
[sum(lengths), H, W] with ``lengths`` gives each sequence its single-sequence embedding
(:func:`~gaittrain.models.sequences.by_length`). A sequence longer than ``chunk`` LTA steps is
embedded ``chunk`` steps at a time, each pass given the frames its steps depend on (the reach of
the stem's and the GLConvs' 3-frame kernels) and the temporal max taken across passes: the
embedding is the same, and the memory a sequence needs is bounded whatever its length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gaittrain.models.focal import focal
from gaittrain.models.gaitbase import require_classes
from gaittrain.models.sequences import by_length
from gaittrain.schema import ConfigError, float_field, int_field, ints_field

BRANCHES = {"casia-b": 3, "deep": 4}  #: the layouts and the widths each takes
CHANNELS = (32, 64, 128)  #: the stem's and the three stages' widths (casia-b)
HALVING = 3  #: the local convolutions' strips: 2^halving (casia-b 3; deep 1)
BINS = (64,)  #: the GeM pooling's strips (parts)
DIM = 128  #: the embedding size per part
GEM_P = 6.5  #: the GeM exponent's initial value
CHUNK = 32  #: LTA steps embedded in one pass (96 frames): longer sequences go in several


@dataclass
class GaitGLConfig:
    """``model: {name: gaitgl, ...}``: :class:`GaitGL`: 3-D global-local convolutions, local
    temporal aggregation, GeM strips, a linear map per part, batch norm, a linear classifier."""

    name: str = field(default="gaitgl", init=False)
    branch: str = "casia-b"  # casia-b (one GLConv per stage) | deep (two; OU-MVLP, GREW)
    channels: list[int] = ints_field(list(CHANNELS), 1, 65536, (3, 4))
    halving: int = int_field(HALVING, 0, 10)
    bins: list[int] = ints_field(list(BINS), 1, 1024, (1, 64))
    dim: int = int_field(DIM, 1, 65536)
    gem_p: float = float_field(GEM_P, hi=100.0, above=0.0)
    classes: int = int_field(0, 0, 10**7)  # the classifier's classes; 0: the training subjects

    def check(self) -> None:
        """What the ranges alone do not check (ConfigError naming the keys)."""
        if self.branch not in BRANCHES:
            raise ConfigError(f"model.branch is {self.branch!r}; use one of {', '.join(BRANCHES)}")
        if len(self.channels) != BRANCHES[self.branch]:
            raise ConfigError(
                f"model.channels holds {len(self.channels)} widths; branch {self.branch} takes "
                f"{BRANCHES[self.branch]} (the stem's, then each stage's)"
            )

    def steps(self) -> list[int]:
        """None: the max-pool halves the rows and GLConvB's stacking doubles them back."""
        return []

    def rows(self, height: int) -> int:
        """Rows of the last stage's output for an input of ``height``."""
        return 2 * (height // 2)


class GLConv(nn.Module):
    """A global-local convolution: a 3-D convolution over the whole map and one over each of
    2^``halving`` horizontal strips, their activations added (GLConvA) or, with ``stack``,
    stacked by rows, global above local (GLConvB)."""

    def __init__(self, c_in: int, c_out: int, halving: int, stack: bool = False):
        super().__init__()
        self.global_conv = nn.Conv3d(c_in, c_out, 3, padding=1, bias=False)
        self.local_conv = nn.Conv3d(c_in, c_out, 3, padding=1, bias=False)
        self.halving = halving
        self.stack = stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.global_conv(x)
        local = focal(self.local_conv, x, self.halving)
        if self.stack:
            return F.leaky_relu(torch.cat([g, local], dim=3))
        return F.leaky_relu(g) + F.leaky_relu(local)


class GeMPooling(nn.Module):
    """Generalized-mean pooling of horizontal strips: maps [B, C, H, W] -> [parts, B, C], for
    each n in ``bins`` n strips, each ``mean(max(x, eps)^p)^(1/p)`` over its rows and columns,
    with one learned ``p`` for all."""

    def __init__(self, bins: Sequence[int] = BINS, p: float = GEM_P, eps: float = 1e-6):
        super().__init__()
        self.bins = tuple(bins)
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        strips = []
        for n in self.bins:
            z = x.reshape(b, c, n, -1).clamp(min=self.eps).pow(self.p)
            strips.append(z.mean(dim=-1).pow(1.0 / self.p))
        return torch.cat(strips, dim=2).permute(2, 0, 1)


class GaitGL(nn.Module):
    """GaitGL: stem, LTA, global-local convolution stages, temporal max, GeM strips, a linear map
    per part, batch norm and a linear classifier per part.

    Parameters
    ----------
    branch : str
        ``casia-b`` (one GLConv per stage) or ``deep`` (two per stage, a second stem
        convolution: OpenGait's layout for OU-MVLP and GREW).
    channels : ints
        The stem's width and each stage's (casia-b: 32, 64, 128, the last stage keeping the
        third; deep: four widths, e.g. 32, 64, 128, 256).
    halving : int
        The local convolutions' strips, 2^halving (casia-b 3, deep 1).
    bins : ints
        Strip counts of the GeM pooling (64 parts).
    dim : int
        Embedding size per part.
    gem_p : float
        The GeM exponent's initial value.
    classes : int
        Classes of the classifier (the training subjects).
    """

    Config = GaitGLConfig
    bnneck = True  #: in training mode it returns (embeddings, classifier logits)
    chunk = CHUNK  #: LTA steps per pass over a long sequence (any value gives the same result)

    @classmethod
    def from_config(cls, c: GaitGLConfig) -> GaitGL:
        require_classes(c.classes, "classifier")
        return cls(c.branch, c.channels, c.halving, c.bins, c.dim, c.gem_p, c.classes)

    def __init__(
        self,
        branch: str = "casia-b",
        channels: Sequence[int] = CHANNELS,
        halving: int = HALVING,
        bins: Sequence[int] = BINS,
        dim: int = DIM,
        gem_p: float = GEM_P,
        classes: int = 74,
    ):
        super().__init__()
        if branch not in BRANCHES or len(channels) != BRANCHES[branch]:
            raise ValueError(f"branch {branch!r} with {len(channels)} widths: see GaitGLConfig")
        if classes < 1:
            raise ValueError(f"classes must be a positive int, got {classes!r}")
        deep = branch == "deep"
        c0, c1, c2 = channels[:3]
        c3 = channels[3] if deep else c2
        stem = [nn.Conv3d(1, c0, 3, padding=1, bias=False), nn.LeakyReLU(0.01, True)]
        if deep:
            stem += [nn.Conv3d(c0, c0, 3, padding=1, bias=False), nn.LeakyReLU(0.01, True)]
        self.stem = nn.Sequential(*stem)
        self.lta = nn.Conv3d(c0, c0, (3, 1, 1), stride=(3, 1, 1), bias=False)
        per_stage = 2 if deep else 1

        def stage(c_in: int, c_out: int, stack: bool = False) -> nn.Module:
            convs = [
                GLConv(c_in if i == 0 else c_out, c_out, halving, stack and i == per_stage - 1)
                for i in range(per_stage)
            ]
            return convs[0] if per_stage == 1 else nn.Sequential(*convs)

        self.glconv_a0 = stage(c0, c1)
        self.glconv_a1 = stage(c1, c2)
        self.glconv_b2 = stage(c2, c3, stack=True)
        # the temporal reach of the stem (in frames) and of the stages (in LTA steps)
        self.stem_reach, self.stage_reach = len(stem) // 2, 3 * per_stage
        self.gem = GeMPooling(bins, gem_p)
        self.bins = tuple(bins)
        self.parts = sum(self.bins)
        self.dim = dim
        self.fc = nn.Parameter(torch.empty(self.parts, c3, dim))
        self.bn = nn.BatchNorm1d(dim)
        self.classifier = nn.Parameter(torch.empty(self.parts, dim, classes))
        nn.init.xavier_uniform_(self.fc)
        nn.init.xavier_uniform_(self.classifier)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.xavier_uniform_(m.weight)
        nn.init.normal_(self.bn.weight, 1.0, 0.02)
        nn.init.zeros_(self.bn.bias)

    def forward(
        self, frames: torch.Tensor, lengths: Sequence[int] | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embed sequences of frames in time order: ``frames`` [B, T, H, W], or [sum(lengths),
        H, W] with ``lengths``.

        Eval mode: embeddings [parts, B, dim]. Training mode: ``(embeddings, logits)``, the
        logits [parts, B, classes] of the classifier.
        """
        x = (
            self.clip_features(frames)
            if lengths is None
            else by_length(self.clip_features, frames, lengths)
        )
        emb = self.gem(x).matmul(self.fc)  # [parts, B, dim]
        emb = self.bn(emb.permute(1, 2, 0)).permute(2, 0, 1)  # channels shared by the parts
        if not self.training:
            return emb
        return emb, emb.matmul(self.classifier)

    def clip_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Clips [n, T, H, W] -> the last stage's map, max-pooled over time [n, C, H', W']."""
        x = frames.unsqueeze(1)  # [n, 1, T, H, W]
        t = x.shape[2]
        if torch.jit.is_tracing() or t < 3:
            # the LTA needs three frames: a clip of one or two is repeated whole, to three or four
            # frames, as OpenGait does (ceil(3 / T) times: once, for T >= 3, when traced)
            x = x.index_select(2, torch.arange(t * ((t + 2) // t), device=x.device) % t)
            t = x.shape[2]
        steps = t // 3
        if torch.jit.is_tracing() or steps <= self.chunk:
            return self.stages(self.aggregate(self.stem(x))).amax(dim=2)
        pooled = None
        for a in range(0, steps, self.chunk):
            b = min(a + self.chunk, steps)
            # the steps [lo, hi) that steps [a, b) depend on, and the frames [f0, f1) those do;
            # outputs within a reach of a cut that is not the clip's end are cropped away
            lo, hi = max(0, a - self.stage_reach), min(steps, b + self.stage_reach)
            f0, f1 = max(0, 3 * lo - self.stem_reach), min(t, 3 * hi + self.stem_reach)
            y = self.stem(x[:, :, f0:f1])[:, :, 3 * lo - f0 : 3 * hi - f0]
            y = self.stages(self.aggregate(y))[:, :, a - lo : b - lo].amax(dim=2)
            pooled = y if pooled is None else torch.maximum(pooled, y)
        return pooled

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """Local temporal aggregation: every three frames [n, C, T, H, W] -> one step."""
        return F.leaky_relu(self.lta(x))

    def stages(self, x: torch.Tensor) -> torch.Tensor:
        """The global-local stages: [n, C, steps, H, W] -> [n, C', steps, H, W] (H halved by
        the max-pool, doubled back by GLConvB's stacking)."""
        x = self.glconv_a0(x)
        x = F.max_pool3d(x, (1, 2, 2))
        return self.glconv_b2(self.glconv_a1(x))
