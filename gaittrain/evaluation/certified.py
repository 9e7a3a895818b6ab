r"""Exact nearest neighbours from int8 products: approximate, bound, re-check.

The Euclidean protocol distance of a probe p and a gallery sequence g with P parts is
:math:`D = \frac{1}{P}\sum_k r_k`, :math:`r_k = \sqrt{S_k}`,
:math:`S_k = \lVert p_k\rVert^2 + \lVert g_k\rVert^2 - 2\,p_k \cdot g_k`. Its cost is the P dot
products of every pair. Here they are computed from int8 copies, exactly in int32 (VNNI on
CPUs, int8 tensor cores on CUDA), and every figure is still that of the exact distances:

1. **Quantize** every (sequence, part) vector symmetrically, :math:`\hat x = s\,q` with
   :math:`q = \mathrm{round}(x / s) \in [-127, 127]` (probes: :math:`s = \max|x| / 127` per
   sequence and part; gallery: per part through PyTorch, per sequence and part through the
   native kernels), and its residual :math:`e = x - \hat x` the same way
   (:math:`\hat e`, leaving :math:`f = e - \hat e`); the norms are kept, rounded up.
2. **Approximate**: :math:`\tilde S_k = \lVert p_k\rVert^2 + \lVert g_k\rVert^2 - 2\,d_k`
   with :math:`d_k = \hat p_k \cdot \hat g_k` (one level: one int8 product per part) or
   :math:`d_k = \hat p_k \cdot \hat g_k + \hat p_k \cdot \hat e_{g,k} + \hat e_{p,k} \cdot
   \hat g_k` (two levels: three), :math:`\tilde r_k = \sqrt{\max(\tilde S_k, 0)}`,
   :math:`\tilde D = \frac{1}{P}\sum_k \tilde r_k`.
3. **Bound**: one level, :math:`|p\cdot g - d| \le \lVert\hat p\rVert\lVert e_g\rVert +
   \lVert\hat g\rVert\lVert e_p\rVert + \lVert e_p\rVert\lVert e_g\rVert`; two levels, the
   same with :math:`f` in the first two terms. So :math:`|S_k - \tilde S_k| \le \delta_k` (twice
   that, plus a margin of float32 rounding); then :math:`|r_k - \tilde r_k| \le \min(\delta_k /
   \tilde r_k, \sqrt{\delta_k})` and, with :math:`\Delta = \sum_k \delta_k` (one small matrix
   product) and :math:`m = \min_k \tilde r_k`, :math:`|D - \tilde D| \le \tau = \min(\Delta /
   (P m), \sqrt{\Delta / P})`.
4. **Re-check**: the true distance lies in :math:`[\tilde D - \tau, \tilde D + \tau]`. Every
   correct match, every gallery sequence whose interval may hold the smallest distance and, for
   each match, every sequence whose interval holds the match's distance get their distances
   computed exactly (float64 from the stored values). The nearest sequence is then the exact
   one, ties broken by gallery order, and a match's rank is the number of sequences certainly
   nearer (upper end below its distance) plus the re-checked ones nearer: exact.

A block tries one level, then two where too many pairs stay open, then computes every pair in
float64 (:func:`exact_block`). So rank-1, the CMC, mAP, mINP and the failures are those of
float64 distances, whatever the data; only the time depends on it.

On CPUs with AVX-512 VNNI and a C compiler, steps 1-4 run in the fused kernels of
:mod:`gaittrain.evaluation.native` (a tile's products stay in registers; the re-check reads the
stored rows); elsewhere (CUDA included) in PyTorch, :func:`torch._int_mm` for the products.
Step 4 (:func:`certify`) takes intervals from any approximation; the low-rank path
(:mod:`gaittrain.evaluation.lowrank`) bounds distances from below only and ranks through
:func:`certify_lower`.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass

import torch

from gaittrain.evaluation import native
from gaittrain.evaluation.ranking import match_ranks

#: Margin for float32 rounding in :math:`\tilde S` (the products, the conversions and the sums
#: of norms, a few units in the last place each), as a fraction of the norms' sum.
ROUNDING = 2.0**-18
#: Relative margin on :math:`\tilde D` for the float32 sum over parts and :math:`\Delta`'s.
SUM_MARGIN = 2.0**-14
#: Gallery columns per tile and parts per epilogue call: a tile's int32 products stay in cache.
TILE, PART_CHUNK = 1024, 16
#: The approximations tried, cheapest first: int8 levels (1: one product per part; 2: three).
LEVELS = (1, 2)
PAD = 32  # int8 products want rows and columns in multiples of 8 (CUDA: more than 16 rows)


@dataclass
class Quantized:
    """int8 copies of embeddings [n, parts, dim] and what the bound needs of each side.

    Attributes
    ----------
    q : Tensor int8
        Probe side: [parts, n, dim]; gallery side: [tiles, parts, dim, TILE], n padded with
        zero columns to whole tiles (each tile contiguous, as int8 products want it), or where
        ``packed``, uint8 ``q + 128`` in the layout of the native kernels (their C source).
    scale : Tensor float32
        :math:`s`: probe side [parts, n], one per (sequence, part); gallery side [parts], one
        per part (so that the epilogue scales rows only).
    q2, scale2 : Tensor
        The residual :math:`e = x - \\hat x` quantized the same way.
    sq_norm, hat_norm, err_norm, rest_norm : Tensor float32 [parts, n]
        :math:`\\lVert x\\rVert^2`, :math:`\\lVert\\hat x\\rVert`,
        :math:`\\lVert e\\rVert` and :math:`\\lVert f\\rVert` with
        :math:`f = e - \\hat e` (the last three rounded up).
    packed : bool
        Whether the fused native kernels (:mod:`gaittrain.evaluation.native`) compute its
        products, rather than :func:`torch._int_mm`; then the scales are per sequence and
        part on both sides, and probe rows are padded with zero levels to whole tiles.
    shift, shift2 : Tensor int32 [parts, rows] or None
        Packed probes: 128 times the sum of each row's levels, which undoes the gallery's
        unsigned levels (``q + 128``) in the kernel's products.
    """

    q: torch.Tensor
    scale: torch.Tensor
    q2: torch.Tensor
    scale2: torch.Tensor
    sq_norm: torch.Tensor
    hat_norm: torch.Tensor
    err_norm: torch.Tensor
    rest_norm: torch.Tensor
    packed: bool = False
    shift: torch.Tensor | None = None
    shift2: torch.Tensor | None = None

    def kernel_columns(self, levels: int) -> tuple[torch.Tensor, ...]:
        """A packed gallery's column operands of the native kernel (:func:`_native_bounds`),
        made once per level: factors [terms, parts, cols] (the scales :math:`s, s', s`),
        squared norms [parts, cols] and the bound's features [3, parts, cols] (:func:`_delta`'s
        first three), zero past the gallery's sequences."""
        cache = self.__dict__.setdefault("_kernel_columns", {})
        if levels not in cache:
            cols = self.q.shape[1] * 16
            left = self.err_norm if levels == 1 else self.rest_norm
            factors = [self.scale, self.scale2, self.scale][: 1 if levels == 1 else 3]
            cache[levels] = tuple(
                torch.nn.functional.pad(t, (0, cols - self.scale.shape[1])).contiguous()
                for t in (
                    torch.stack(factors),
                    self.sq_norm,
                    torch.stack([left, self.hat_norm, self.err_norm]),
                )
            )
        return cache[levels]

    @property
    def nbytes(self) -> int:
        tensors = [t for t in vars(self).values() if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


#: Relative margin on norms computed in float32 (sums of at most a few thousand squares).
NORM_MARGIN = 2.0**-12


def uses_native(x: torch.Tensor) -> bool:
    """Whether the native kernels compute products of embeddings like ``x`` [n, parts, dim]:
    on a CPU where they could be built, with ``dim`` a multiple of 16 up to 1024."""
    dim = x.shape[-1]
    return x.device.type == "cpu" and dim % 16 == 0 and dim <= 1024 and native.kernels() is not None


def threads_for(gallery: Quantized):
    """The context to rank against ``gallery`` in: where the native kernels compute it, they
    take PyTorch's threads meanwhile (:func:`native.exclusive`)."""
    return native.exclusive() if gallery.packed else contextlib.nullcontext()


def quantize(x: torch.Tensor, probe_side: bool, packed: bool | None = None) -> Quantized:
    """int8 copy of embeddings ``x`` [n, parts, dim] (any float dtype), laid out for
    :func:`torch._int_mm` or, where ``packed`` (default: :func:`uses_native`), the native
    kernels, as probes (rows, one scale per sequence and part) or as a gallery (columns in
    tiles, one scale per part).

    Examples
    --------
    >>> x = torch.randn(40, 3, 16)
    >>> g = quantize(x, probe_side=False, packed=False)
    >>> g.q.shape, g.q.dtype
    (torch.Size([1, 3, 16, 1024]), torch.int8)
    >>> p = quantize(x, probe_side=True)
    >>> bool((p.err_norm <= p.scale * 16**0.5 / 2 * 1.001).all())  # half a step per entry
    True
    """
    n, parts, _ = x.shape
    packed = uses_native(x) if packed is None else packed
    if packed:  # one scale per sequence and part on both sides, the native kernels' way
        if x.dtype not in (torch.float16, torch.float32):
            x = x.float()
        q, q2, floats, sums = native.quantize(x, probe_side, NORM_MARGIN)
        shift, shift2 = sums.mul_(128) if probe_side else (None, None)
        return Quantized(q, floats[0], q2, floats[1], *floats[2:], True, shift, shift2)
    chunks = [x[s : s + QUANTIZE_ROWS].to(torch.float32) for s in range(0, n, QUANTIZE_ROWS)]
    scale = scale2 = None
    if not probe_side:  # one scale per part over every sequence, found chunk by chunk
        scale = _scale(torch.stack([c.abs().amax(dim=(0, 2)) for c in chunks]).amax(0))
        top2 = [(c - _levels(c, scale)[1]).abs().amax(dim=(0, 2)) for c in chunks]
        scale2 = _scale(torch.stack(top2).amax(0))
    pieces = [_quantize_rows(c, scale, scale2) for c in chunks]
    q, s1, q2, s2, *norms = (torch.cat(t) for t in zip(*pieces, strict=True))
    q, s1 = _layout(q, s1 if probe_side else scale, probe_side)
    q2, s2 = _layout(q2, s2 if probe_side else scale2, probe_side)
    return Quantized(q, s1, q2, s2, *(t.T.contiguous() for t in norms))


#: Sequences quantized at once (their float32 temporaries: about 24 bytes per entry).
QUANTIZE_ROWS = 256


def _scale(top: torch.Tensor) -> torch.Tensor:
    return torch.where(top > 0, top / 127.0, torch.ones_like(top))


def _quantize_rows(x: torch.Tensor, scale=None, scale2=None):
    """q, scale, q2, scale2 and the four norms of rows ``x`` [n, parts, dim]; scales per
    (row, part) unless given per part."""
    scale = _scale(x.abs().amax(dim=-1)) if scale is None else scale.expand(x.shape[:2])
    q, hat = _levels(x, scale)
    e = x - hat
    scale2 = _scale(e.abs().amax(dim=-1)) if scale2 is None else scale2.expand(x.shape[:2])
    q2, e_hat = _levels(e, scale2)
    hat_norm = hat.norm(dim=-1)
    slack = hat_norm * 2.0**-22
    err_norm = e.norm(dim=-1).mul_(1 + NORM_MARGIN).add_(slack)
    rest_norm = e.sub_(e_hat).norm(dim=-1).mul_(1 + NORM_MARGIN).add_(slack)
    sq_norm = x.square().sum(-1)
    return q, scale, q2, scale2, sq_norm, hat_norm.mul_(1 + NORM_MARGIN), err_norm, rest_norm


def _levels(x: torch.Tensor, scale: torch.Tensor):
    """``(q, q * scale)``: symmetric int8 levels of ``x`` [n, parts, dim] with ``scale``
    [n, parts] (or [parts])."""
    q = torch.round(x / scale[..., None]).clamp_(-127, 127)
    return q.to(torch.int8), q * scale[..., None]


def _layout(q: torch.Tensor, scale: torch.Tensor, probe_side: bool):
    """Probe side: q [parts, n, dim], scale [parts, n]; gallery side: q in tiles
    [tiles, parts, dim, TILE] (zero columns pad the last), scale [parts]."""
    n, parts, dim = q.shape
    if probe_side:
        return q.permute(1, 0, 2).contiguous(), scale.T.contiguous()
    scale = scale.reshape(-1, parts)[0] if scale.dim() > 1 else scale
    tiles = -(-n // TILE)
    q = torch.nn.functional.pad(q, (0, 0, 0, 0, 0, tiles * TILE - n))
    return q.view(tiles, TILE, parts, dim).permute(0, 2, 3, 1).contiguous(), scale.contiguous()


def _epilogue(products, coef, p_sq, g_sq, total, smallest):
    """Add :math:`\\sum_k \\tilde r_k` of a chunk of parts to ``total`` and fold
    :math:`\\min_k \\tilde r_k` into ``smallest``; products int32 [terms, parts, b, t]
    (:math:`q_p q_g`, then for two levels :math:`q_p q'_g`, :math:`q'_p q_g`) and their factors
    coef [terms, parts, b, 1] (:math:`-2 s_p s_g`, :math:`-2 s_p s'_g`, :math:`-2 s'_p s_g`)."""
    dot = (coef * products.float()).sum(0)  # over the products of the levels
    r = torch.sqrt(torch.relu(p_sq + g_sq + dot))
    return total + r.sum(0), torch.minimum(smallest, r.amin(0))


def compiled(fn, *example: torch.Tensor, dynamic: bool = False):
    """``fn`` as one fused loop (torch.compile), tried once on ``example``, where a C++
    compiler is at hand; else ``fn`` itself, op by op (slower on CPU, the same arithmetic).
    ``dynamic``: one graph for every size (else one per shape)."""
    try:
        import torch._dynamo.config as dynamo
        import torch._inductor.config as inductor

        inductor.compile_threads = 1  # no worker processes left competing for the cores
        dynamo.recompile_limit = max(dynamo.recompile_limit, 64)  # one graph per block shape
        fused = torch.compile(fn, dynamic=dynamic)
        fused(*example)
        return fused
    except Exception as e:  # noqa: BLE001 - any failure to build falls back to eager
        warnings.warn(f"distances: no fused epilogue ({str(e).splitlines()[0]})", stacklevel=3)
        return fn


@functools.cache
def _compiled_epilogue():
    """:func:`_epilogue`, :func:`compiled`."""
    z, one = torch.zeros(2, 32, 1), torch.zeros(1, 2, 32, 1)
    products = torch.zeros(1, 2, 32, 32, dtype=torch.int32)
    return compiled(_epilogue, products, one, z, z.mT, z[0], z[0])


def _int_mm_sums(probe: Quantized, gallery: Quantized, n: int, coef: torch.Tensor):
    """:math:`\\sum_k \\tilde r_k` and :math:`\\min_k \\tilde r_k` [b, n] through
    :func:`torch._int_mm` (products written to memory, a tile and a chunk of parts at a time)
    and the epilogue; ``coef`` [terms, parts, b] as :func:`_epilogue` takes them."""
    parts, b, _ = probe.q.shape
    device = probe.q.device
    epilogue = _epilogue if device.type != "cpu" else _compiled_epilogue()
    rows = -(-b // PAD) * PAD
    pad = (0, 0, 0, rows - b)
    pq, pq2 = (torch.nn.functional.pad(q, pad) for q in (probe.q, probe.q2))
    terms = coef.shape[0]
    coef = coef[..., None]  # [terms, parts, b, 1]
    p_sq = probe.sq_norm[..., None]
    g_sq = torch.nn.functional.pad(gallery.sq_norm, (0, gallery.q.shape[0] * TILE - n))
    total = torch.empty(b, n, device=device)
    smallest = torch.empty(b, n, device=device)
    products = torch.empty(terms, PART_CHUNK, rows, TILE, dtype=torch.int32, device=device)
    for tile, (gq, gq2) in enumerate(zip(gallery.q, gallery.q2, strict=True)):
        j = tile * TILE
        t = min(TILE, n - j)
        tot = torch.zeros(b, TILE, device=device)
        low = torch.full((b, TILE), torch.inf, device=device)
        for k0 in range(0, parts, PART_CHUNK):
            ks = range(k0, min(k0 + PART_CHUNK, parts))
            for i, k in enumerate(ks):
                torch._int_mm(pq[k], gq[k], out=products[0, i])
                if terms == 3:
                    torch._int_mm(pq[k], gq2[k], out=products[1, i])
                    torch._int_mm(pq2[k], gq[k], out=products[2, i])
            c = len(ks)
            tot, low = epilogue(
                products[:, :c, :b],
                coef[:, k0 : k0 + c],
                p_sq[k0 : k0 + c],
                g_sq[k0 : k0 + c, None, j : j + TILE],
                tot,
                low,
            )
        total[:, j : j + t] = tot[:, :t]
        smallest[:, j : j + t] = low[:, :t]
    return total, smallest


def _native_bounds(probe: Quantized, gallery: Quantized, levels: int):
    """``lower``, ``upper`` [rows, cols] of every pair (rows and columns padded to whole tiles)
    by the fused native kernel: the same approximation and bound as :func:`approximate`,
    with the scales per sequence and part on both sides applied as row and column factors,
    the shifts undoing the gallery's unsigned levels and every product kept in registers."""
    b, rows = probe.scale.shape[1], probe.q.shape[1]

    def pad(t: torch.Tensor) -> torch.Tensor:  # [..., b] -> [..., rows]
        return torch.nn.functional.pad(t, (0, rows - b)).contiguous()

    p, two = probe, levels > 1  # the residuals' levels are read only for two levels
    rowf = torch.stack([p.scale, p.scale, p.scale2][: 3 if two else 1]).mul_(-2.0)
    p_left = p.err_norm if levels == 1 else p.rest_norm
    rfeat = torch.stack([2 * p.hat_norm, 2 * p_left, 2 * p.err_norm])
    colf, g_sq, cfeat = gallery.kernel_columns(levels)
    pq2, shift2 = (p.q2, p.shift2) if two else (p.q, p.shift)
    operands = (p.q, pq2, gallery.q, gallery.q2, p.shift, shift2, pad(rowf), colf)
    return native.bounds(*operands, pad(p.sq_norm), g_sq, pad(rfeat), cfeat, ROUNDING, SUM_MARGIN)


def approximate(
    probe: Quantized, gallery: Quantized, n: int, levels: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`\tilde D` [b, n] and its bound :math:`\tau` [b, n] for every pair (see the module's
    docstring) of the first ``n`` gallery columns; probe and gallery as :func:`quantize` makes
    them on each side. ``levels`` 1: one int8 product per part, :math:`\hat p \cdot \hat g`;
    2: three, adding the residuals' :math:`\hat p \cdot \hat e_g + \hat e_p \cdot \hat g`.
    (A packed gallery's are the centre and half-width of the native kernel's intervals.)"""
    if gallery.packed:
        b = probe.scale.shape[1]
        lower, upper = (t[:b, :n] for t in _native_bounds(probe, gallery, levels))
        return (lower + upper) / 2, (upper - lower) / 2
    total, smallest = _int_mm_sums(probe, gallery, n, _coef(probe, gallery, levels))
    approx = total.div_(probe.scale.shape[0])
    return approx, _bound(probe, gallery, approx, smallest, levels)


def _coef(probe: Quantized, gallery: Quantized, levels: int) -> torch.Tensor:
    """The factors of the int8 products [terms, parts, b]: :math:`-2 s_p s_g` (and, for two
    levels, :math:`-2 s_p s'_g`, :math:`-2 s'_p s_g`)."""
    factors = [
        probe.scale * gallery.scale[:, None],
        probe.scale * gallery.scale2[:, None],
        probe.scale2 * gallery.scale[:, None],
    ]
    return torch.stack(factors[: 1 if levels == 1 else 3]).mul_(-2.0)


def _bound(probe: Quantized, gallery: Quantized, approx, smallest, levels: int) -> torch.Tensor:
    r""":math:`\tau` of every pair from :math:`\Delta` (:func:`_delta`) and the smallest part
    distance (where :math:`\Delta = 0` and so is a part's distance, the square root)."""
    parts = probe.scale.shape[0]
    delta = _delta(probe, gallery, levels).mul_(1 + SUM_MARGIN)
    per_min = delta / (parts * smallest)  # inf where some part's distance is 0
    root = (delta / parts).sqrt_()
    return torch.fmin(per_min, root).add_(approx * SUM_MARGIN)


def _delta(probe: Quantized, gallery: Quantized, levels: int) -> torch.Tensor:
    r""":math:`\Delta = \sum_k \delta_k` [b, n] as one product of [b, 5 parts] by [5 parts, n]
    non-negative features. What one side's products leave out is :math:`e` (one level) or
    :math:`f` (two)."""
    ones = torch.ones_like(probe.scale)
    p_left, g_left = (
        (probe.err_norm, gallery.err_norm) if levels == 1 else (probe.rest_norm, gallery.rest_norm)
    )
    left = torch.cat(
        [
            2 * probe.hat_norm,
            2 * p_left,
            2 * probe.err_norm,
            ROUNDING * probe.sq_norm,
            ROUNDING * ones,
        ]
    ).T  # [b, 5P]
    right = torch.cat(
        [
            g_left,
            gallery.hat_norm,
            gallery.err_norm,
            torch.ones_like(gallery.sq_norm),
            gallery.sq_norm,
        ]
    )  # [5P, n]
    return left @ right


def exact_distances(probe: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Euclidean distances averaged over parts of row pairs ``probe[i]``, ``gallery[i]``
    ([L, parts, dim] each), in float64: the values the re-check trusts.

    Examples
    --------
    >>> p, g = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    >>> exact_distances(p, g)
    tensor([1.7321], dtype=torch.float64)
    """
    return (probe.double() - gallery.double()).square().sum(-1).sqrt().mean(-1)


def _gathered_distances(probe, gallery, i, j):
    """:func:`exact_distances` of the rows ``probe[i]``, ``gallery[j]``: fused by
    :func:`_compiled_pairs`, one pass over the two rows of each pair and no temporaries."""
    return exact_distances(probe[i], gallery[j])


def exact_block(probe: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Every pair's distance [b, n] in float64 (one part at a time, as matrix products): what a
    block falls back to when its bound leaves too many pairs open."""
    d = torch.zeros(probe.shape[0], gallery.shape[0], dtype=torch.float64, device=probe.device)
    sq = torch.empty_like(d)
    for k in range(probe.shape[1]):  # one part in float64 at a time
        p, g = probe[:, k].double(), gallery[:, k].double()
        torch.add((p**2).sum(-1)[:, None], (g**2).sum(-1), out=sq)
        sq.addmm_(p, g.T, alpha=-2.0)
        d += sq.clamp_min_(0.0).sqrt_()
    return d.div_(probe.shape[1])


#: A block whose open pairs exceed this fraction of its pairs is computed whole in float64
#: (re-checking a pair one by one costs about as much as this many pairs in a matrix product).
FALLBACK_FRACTION = 1 / 50
#: Open pairs per probe above which one int8 level gives way to two: two more products per
#: part cost about as much as re-checking this many pairs (measured on a 2-core CPU).
ONE_LEVEL_OPEN = 32


def _open_limit(levels: int, n: int) -> float:
    """Open pairs per probe (beyond its matches) that an approximation of ``levels`` may leave
    to re-checking before the next is tried."""
    if levels < LEVELS[-1]:
        return min(ONE_LEVEL_OPEN, FALLBACK_FRACTION * n)
    return FALLBACK_FRACTION * n


def block_rows(n_gallery: int, parts: int, dim: int, max_memory: int, packed: bool = False) -> int:
    """Probes per block so that :func:`rank_block`'s working set stays under ``max_memory``.

    Through :func:`torch._int_mm`: per probe and gallery sequence, :func:`approximate`'s two
    sums and bound, the interval's two ends, the masks and the int64 copy PyTorch makes of a
    mask to count it (40 bytes); per probe, its share of the int32 products and sums of one
    tile, its int8 and float32 rows and the quantization's temporaries; and the re-check's
    float64 differences. Through the native kernels (``packed``): per pair, the interval's
    two ends (8 bytes), the mask (1) and what the re-check lists of its candidates (counted as
    15 in all); per probe, its two int8 levels and its float operands of the kernels.
    """
    if packed:
        return max(1, int(max_memory // (n_gallery * 24 + 2 * parts * dim + 64 * parts)))
    per_row = n_gallery * 40 + 3 * PART_CHUNK * TILE * 4 + 2 * TILE * 4 + parts * dim * 30
    fixed = RECHECK_CHUNK * parts * dim * 8 * 3
    return max(1, int((max_memory - fixed) // per_row))


@dataclass
class BlockRanks:
    """What :func:`certify` finds for a block of probes, exactly: ``ranks`` [b, M] of each
    correct match (padding: the largest int64), ``nearest`` [b]; ``rechecked``: how many pairs
    were computed one by one; ``tries``: how many approximations were computed (int8: the
    levels of the last); ``fallback``: whether the block was computed whole."""

    ranks: torch.Tensor
    nearest: torch.Tensor
    rechecked: int
    tries: int
    fallback: bool


def rank_block(
    probe: torch.Tensor,
    gallery: torch.Tensor,
    probe_q: Quantized,
    gallery_q: Quantized,
    matches: torch.Tensor,
) -> BlockRanks:
    """The nearest gallery sequence of every probe and the exact ranks of its correct matches
    (ties broken by gallery order), from int8 distances re-checked wherever their bound
    leaves the answer open (:func:`certify`): one int8 level, then two.

    Parameters
    ----------
    probe, gallery : Tensor [b, parts, dim], [n, parts, dim]
        The stored embeddings (float32 or float16); re-checked pairs are computed from them.
    probe_q, gallery_q : Quantized
        Their :func:`quantize` copies.
    matches : Tensor int64 [b, M]
        Each probe's correct gallery indices, padded with -1.
    """
    n = gallery.shape[0]
    tries = (
        (*interval(probe_q, gallery_q, n, levels), _open_limit(levels, n)) for levels in LEVELS
    )
    return certify(probe, gallery, matches, tries)


def certify(probe: torch.Tensor, gallery: torch.Tensor, matches: torch.Tensor, tries) -> BlockRanks:
    """Exact ranks of a block from intervals that hold every pair's distance (step 4 of the
    module's docstring), whatever approximation made them.

    Parameters
    ----------
    probe, gallery, matches
        As :func:`rank_block` takes them.
    tries : iterable of (lower, upper, limit)
        Approximations, cheapest first, made only when asked for (a generator): the ends
        ``lower``, ``upper`` [b, >= n] (columns past n: padding) of every pair's interval, and
        the open pairs per probe (beyond its matches) above which the next is tried; past the
        last, the block is computed whole in float64 (:func:`exact_block`).
    """
    b, n = probe.shape[0], gallery.shape[0]
    device = probe.device
    valid = matches >= 0
    at = matches.clamp(min=0)
    rows = torch.arange(b, device=device)[:, None].expand_as(matches)
    # The matches first: their exact distances decide which other pairs matter.
    dm = torch.full(matches.shape, torch.nan, dtype=torch.float64, device=device)
    dm[valid] = exact_pairs(probe, gallery, rows[valid], matches[valid])
    dm_lo, dm_hi = _float32_around(dm)  # NaN (padding) stays NaN: nothing is compared with it
    tried = 0
    for lower, upper, limit in tries:  # the cheaper approximation first
        tried += 1
        todo, surely, count = candidates(lower, upper, n, dm_lo, dm_hi)
        known = todo[rows[valid], matches[valid]]  # the matches are known already
        todo[rows[valid], matches[valid]] = False
        count = count.index_add(0, rows[valid], -known.long())
        if int(count.sum()) <= limit * b:  # beyond the matches
            break
    else:
        whole = exact_block(probe, gallery)
        ranks = match_ranks(whole, matches)
        return BlockRanks(ranks, whole.argmin(dim=1), int(valid.sum()), tried, True)
    # Every candidate's exact distance, with the matches', as lists of pairs (i, j).
    i, j = native.pairs(todo, count) if _native_ranking(lower) else todo.nonzero(as_tuple=True)
    exact = exact_pairs(probe, gallery, i, j)
    i, j = torch.cat([i, rows[valid]]), torch.cat([j, matches[valid]])
    exact = torch.cat([exact, dm[valid]])
    up = upper[i, j]
    nearest = _nearest(i, j, exact, b, n)  # the first of the row's smallest exact distances
    # A match's rank: the pairs certainly nearer, then the candidates nearer (not counted yet).
    big = torch.iinfo(torch.int64).max
    ranks = torch.full(matches.shape, big, dtype=torch.int64, device=device)
    for t in range(matches.shape[1]):
        d, m = dm[i, t], at[i, t]
        nearer = (up >= dm_lo[i, t]) & ((exact < d) | ((exact == d) & (j < m)))
        rank = surely[:, t] + torch.zeros(b, dtype=torch.int64, device=device).index_add_(
            0, i, nearer.long()
        )
        ranks[:, t] = torch.where(valid[:, t], rank, big)
    return BlockRanks(ranks, nearest, len(exact), tried, False)


def certify_lower(
    probe: torch.Tensor,
    gallery: torch.Tensor,
    matches: torch.Tensor,
    lower: torch.Tensor,
    upper_of,
    limit: float,
) -> BlockRanks:
    """Exact ranks of a block from lower ends of every pair's distance and upper ends of the
    few pairs they leave (the low-rank path, :mod:`gaittrain.evaluation.lowrank`).

    Each row's threshold is float32 at or above the largest exact distance of its matches (a
    row without matches: of its pair of smallest lower end, an upper end of its nearest
    distance). A pair whose lower end exceeds it is farther than every match of its row and
    than its nearest sequence: it neither is the nearest nor comes before a match, tied or not.
    The pairs left (the survivors, the matches among them) get their upper ends, and from
    there on it is step 4 of the module's docstring on them alone: a survivor whose upper end
    is below a match's distance is certainly nearer; those whose lower end is at most the
    row's smallest upper end (or a match's distance), or whose ends hold a match's distance,
    are computed exactly.

    Parameters
    ----------
    probe, gallery, matches
        As :func:`rank_block` takes them.
    lower : Tensor float32 [b, >= n]
        A lower end of every pair's distance (columns past n: padding).
    upper_of : callable
        ``upper_of(i, j)``: float64 upper ends [L] of the distances of pairs ``(i, j)``.
    limit : float
        Pairs to compute exactly per probe (beyond its matches) above which the block is
        computed whole in float64 (:func:`exact_block`), as it is where more than
        :data:`SURVIVORS_FRACTION` of the pairs survive the threshold.
    """
    b, n = probe.shape[0], gallery.shape[0]
    device = probe.device
    valid = matches >= 0
    rows = torch.arange(b, device=device)[:, None].expand_as(matches)
    dm = torch.full(matches.shape, torch.nan, dtype=torch.float64, device=device)
    dm[valid] = exact_pairs(probe, gallery, rows[valid], matches[valid])
    dm_hi = _float32_around(dm)[1]
    lower = lower[:, :n]
    threshold = torch.where(valid, dm_hi, -torch.inf).amax(dim=1)  # [b]
    alone = (~valid.any(dim=1)).nonzero()[:, 0]
    if len(alone) and n:
        nearest_lower = lower[alone].argmin(dim=1)
        threshold[alone] = _float32_around(exact_pairs(probe, gallery, alone, nearest_lower))[1]
    survive = lower <= threshold[:, None]
    if int(survive.count_nonzero()) > SURVIVORS_FRACTION * b * n:
        return _whole(probe, gallery, matches, valid)
    i, j = survive.nonzero(as_tuple=True)
    del survive
    low, up = lower[i, j].double(), upper_of(i, j)
    same = matches[i] == j[:, None]  # [L, M]: which survivor is which match
    is_match = same.any(dim=1)
    if int(is_match.sum()) != int(valid.sum()):  # the proof says every match survives
        raise RuntimeError("certify_lower: a lower end exceeds a match's exact distance")
    # the nearest is among the survivors whose lower end is at most the row's least upper end
    least = torch.where(valid, dm, torch.inf).amin(dim=1)
    least = least.scatter_reduce(0, i, up, "amin")
    check = low <= least[i]
    surely = torch.zeros(matches.shape, dtype=torch.int64, device=device)
    for t in range(matches.shape[1]):
        below = up < dm[i, t]  # NaN (padding): none
        surely[:, t] = torch.zeros(b, dtype=torch.int64, device=device).index_add_(
            0, i, below.long()
        )
        check |= ~below & (low <= dm_hi[i, t])
    check &= ~is_match  # known already
    if int(check.sum()) > limit * b:
        return _whole(probe, gallery, matches, valid)
    exact = torch.where(same, dm[i], 0.0).sum(dim=1)  # the matches' distances
    exact[check] = exact_pairs(probe, gallery, i[check], j[check])
    keep = check | is_match
    i, j, up, exact = i[keep], j[keep], up[keep], exact[keep]
    nearest = _nearest(i, j, exact, b, n)
    big = torch.iinfo(torch.int64).max
    ranks = torch.full(matches.shape, big, dtype=torch.int64, device=device)
    at = matches.clamp(min=0)
    for t in range(matches.shape[1]):
        d, m = dm[i, t], at[i, t]
        nearer = (up >= d) & ((exact < d) | ((exact == d) & (j < m)))  # not counted yet
        rank = surely[:, t] + torch.zeros(b, dtype=torch.int64, device=device).index_add_(
            0, i, nearer.long()
        )
        ranks[:, t] = torch.where(valid[:, t], rank, big)
    return BlockRanks(ranks, nearest, int(check.sum()) + int(valid.sum()), 1, False)


#: A block where more than this fraction of the pairs survive certify_lower's threshold is
#: computed whole in float64 (their upper ends, gathered, would cost more).
SURVIVORS_FRACTION = 1 / 8


def _whole(probe, gallery, matches, valid) -> BlockRanks:
    """A block's :class:`BlockRanks` from every pair's float64 distance (:func:`exact_block`),
    a quarter of its rows at a time (so that the working set per pair of the block stays
    below :data:`~gaittrain.evaluation.lowrank.PAIR_BYTES` with its lower ends)."""
    step = -(-probe.shape[0] // WHOLE_PIECES)
    ranks, nearest = [], []
    for s in range(0, probe.shape[0], step):
        whole = exact_block(probe[s : s + step], gallery)
        ranks.append(match_ranks(whole, matches[s : s + step]))
        nearest.append(whole.argmin(dim=1))
        del whole
    return BlockRanks(torch.cat(ranks), torch.cat(nearest), int(valid.sum()), 1, True)


#: The pieces a block that certify_lower computes whole is cut into.
WHOLE_PIECES = 4


def _nearest(i, j, exact, b: int, n: int) -> torch.Tensor:
    """[b]: each row's first (in gallery order) of its smallest exact distances, from pairs
    ``(i, j)`` of distances ``exact`` (n where a row has none)."""
    row_best = torch.full((b,), torch.inf, dtype=torch.float64, device=exact.device)
    row_best = row_best.scatter_reduce(0, i, exact, "amin")
    first = torch.where(exact == row_best[i], j, n)
    return torch.full((b,), n, device=exact.device).scatter_reduce(0, i, first, "amin")


def interval(probe: Quantized, gallery: Quantized, n: int, levels: int):
    """``lower``, ``upper`` [b, >= n] (columns past ``n``: padding) of every pair's distance:
    :func:`approximate` and its bound, by the native kernel where the gallery is packed."""
    if not gallery.packed:
        approx, tau = approximate(probe, gallery, n, levels)
        return approx - tau, approx + tau
    b = probe.scale.shape[1]
    lower, upper = _native_bounds(probe, gallery, levels)
    return lower[:b], upper[:b]  # rows padding dropped; still contiguous


def candidates(lower, upper, n: int, dm_lo, dm_hi) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The pairs whose exact distance decides the answer, ``todo`` bool [b, n]: those that may
    be the nearest (lower end at most the row's smallest upper end) and, for each match, those
    whose interval holds the match's distance (float32 ``dm_lo`` <= ``dm_hi`` [b, M] around
    it; NaN: padding); ``surely`` [b, M], how many pairs are certainly nearer than each match;
    and how many pairs of each row ``todo`` holds [b]."""
    if _native_ranking(lower):
        return native.candidates(lower, upper, n, dm_lo.float(), dm_hi.float())
    lower, upper = lower[:, :n], upper[:, :n]
    todo = lower <= upper.amin(dim=1, keepdim=True)
    surely = torch.zeros(dm_lo.shape, dtype=torch.int64, device=lower.device)
    for t in range(dm_lo.shape[1]):
        below = upper < dm_lo[:, t, None]
        todo |= ~below & (lower <= dm_hi[:, t, None])  # NaN (padding): none
        surely[:, t] = below.sum(dim=1)
    return todo, surely, todo.sum(dim=1)


def _native_ranking(lower: torch.Tensor) -> bool:
    return native.kernels() is not None and lower.device.type == "cpu" and lower.is_contiguous()


def _float32_around(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 values just below and just above float64 ``x`` (equal where exact)."""
    y = x.float()
    inf = torch.full_like(y, torch.inf)
    below = torch.where(y.double() > x, torch.nextafter(y, -inf), y)
    above = torch.where(y.double() < x, torch.nextafter(y, inf), y)
    return below, above


#: Pairs re-checked at once: their float64 differences take RECHECK_CHUNK x parts x dim x 8 bytes.
RECHECK_CHUNK = 64


def exact_pairs(probe: torch.Tensor, gallery: torch.Tensor, i, j) -> torch.Tensor:
    """float64 distances of the pairs ``(probe[i[t]], gallery[j[t]])`` from the stored values
    (:func:`exact_distances`; by the native kernel where it runs, else fused on a CPU with a C++
    compiler: the same sums, without temporaries, equal to float64 rounding)."""
    if uses_native(gallery) and probe.dtype == gallery.dtype in (torch.float16, torch.float32):
        return native.exact_pairs(probe.contiguous(), gallery.contiguous(), i, j)
    out = torch.empty(len(i), dtype=torch.float64, device=probe.device)
    fused = _compiled_pairs(probe.dtype) if probe.device.type == "cpu" else None
    if fused is not None and probe.dtype == gallery.dtype and len(i):
        # whole chunks of indices (the last one padded with row 0): one graph for all
        pad = torch.zeros(RECHECK_CHUNK, dtype=i.dtype, device=i.device)
        for s in range(0, len(i), RECHECK_CHUNK):
            m = len(i[s : s + RECHECK_CHUNK])
            ii, jj = i[s : s + m], j[s : s + m]
            if m < RECHECK_CHUNK:
                ii, jj = torch.cat([ii, pad[m:]]), torch.cat([jj, pad[m:]])
            out[s : s + m] = fused(probe, gallery, ii, jj)[:m]
        return out
    # exact_distances' operations into buffers made once: fresh ones for every chunk cost a
    # page fault per 4 KB and made a re-check 2.3 times slower (measured on a 2-core CPU)
    shape = (RECHECK_CHUNK, *probe.shape[1:])
    read = [torch.empty(shape, dtype=x.dtype, device=x.device) for x in (probe, gallery)]
    wide = torch.empty(2, *shape, dtype=torch.float64, device=probe.device)
    for s in range(0, len(i), RECHECK_CHUNK):
        m = len(i[s : s + RECHECK_CHUNK])
        p, g = wide[:, :m]
        p.copy_(torch.index_select(probe, 0, i[s : s + m], out=read[0][:m]))
        g.copy_(torch.index_select(gallery, 0, j[s : s + m], out=read[1][:m]))
        out[s : s + m] = p.sub_(g).square_().sum(-1).sqrt_().mean(-1)
    return out


@functools.cache
def _compiled_pairs(dtype: torch.dtype):
    """:func:`_gathered_distances` fused for rows of ``dtype``, any number of rows, parts and
    width, chunks of :data:`RECHECK_CHUNK` pairs (None where it cannot be compiled): it reads
    each pair's two rows once, 4 times faster than gathering, widening and reducing them op by
    op (15 against 59 us a pair of 62 x 256 float32 values, one AVX2 thread, measured)."""
    rows, index = torch.zeros(3, 2, 8, dtype=dtype), torch.zeros(RECHECK_CHUNK, dtype=torch.int64)
    fused = compiled(_gathered_distances, rows, rows, index, index, dynamic=True)
    return None if fused is _gathered_distances else fused
