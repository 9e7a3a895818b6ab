r"""Exact nearest neighbours from low-rank products: project, bound, re-check.

Trained gait embeddings are nearly low-rank part by part: most of a part's energy lies in a few
dozen of its directions (measured in docs/evaluation.md). Here every part is projected onto the
top r of them, every pair's Euclidean protocol distance :math:`D = \frac{1}{P}\sum_k r_k`,
:math:`r_k = \sqrt{S_k}`, :math:`S_k = \lVert p_k - g_k\rVert^2`, is approximated from
r-dimensional float32 products and bounded rigorously, and the pairs whose bounds leave the
answer open are computed exactly by :func:`gaittrain.evaluation.certified.certify` (step 4 of
:mod:`~gaittrain.evaluation.certified`): the figures are those of float64 distances, whatever
the data; only the time depends on it. Only matrix products and elementwise operations are
used, on any CPU (or GPU).

1. **Fit** (:func:`fit`), per part, from the gallery being ranked (at most :data:`FIT_ROWS`
   evenly spaced sequences): :math:`V` [dim, r], the top r eigenvectors of the part's
   second-moment matrix :math:`\sum_i x_i x_i^\top`, stored in float32. r is the smallest
   multiple of :data:`RANK_STEP` whose directions leave at most :data:`RESIDUAL` of the
   energy out (mean over parts), at most a quarter of dim. The bound below holds for any
   :math:`V`; a poor one only leaves more pairs to re-check.
2. **Project** (:func:`project`) every sequence's part x (probe or gallery): its coordinates
   :math:`\hat a = \mathrm{fl}(V^\top x)` (a float32 product), :math:`n = \mathrm{fl}\lVert
   x\rVert^2` and :math:`\bar\rho`, a bound on the norm :math:`\rho` of its residual
   :math:`e = x - V\hat a` (below).
3. **Bound** (:func:`interval`), per part: :math:`\tilde S = \mathrm{fl}(n_p + n_g -
   2\,\hat a_p \cdot \hat a_g)`, one float32 product of width r + 2 (the norms ride along as
   two more coordinates: :math:`[\hat a_p, n_p, 1] \cdot [-2\hat a_g, 1, n_g]`), and
   :math:`|S - \tilde S| \le \delta = 2\bar\rho_p\bar\rho_g + c\,(n_p + n_g) + t` (proof
   below), so :math:`\sqrt{\max(\tilde S - \delta, 0)} \le r_k \le \sqrt{\tilde S + \delta}`;
   summed over the parts (fused per tile of pairs, one pass over the products), the ends of
   an interval that holds D. In exact arithmetic (:math:`\hat a = a`, :math:`V` orthonormal,
   :math:`c = t = 0`) these are the Pythagorean bounds: :math:`S = \lVert a_p - a_g\rVert^2 +
   \lVert e_p - e_g\rVert^2` with :math:`(\rho_p - \rho_g)^2 \le \lVert e_p - e_g\rVert^2 \le
   (\rho_p + \rho_g)^2`, and :math:`\tilde S \mp \delta = \lVert a_p - a_g\rVert^2 + (\rho_p
   \mp \rho_g)^2`.
4. **Re-check**: :func:`~gaittrain.evaluation.certified.certify`, as for int8 products.

**Proof of the bound.** Write :math:`a = V^\top x` (exact), :math:`E = V^\top V - I`
(:math:`\lVert E\rVert \le \varepsilon`, measured in float64 when fitting) and
:math:`\eta = \lVert a - \hat a\rVert`. Expanding :math:`p = V\hat a_p + e_p`, :math:`g = V\hat
a_g + e_g` with :math:`V^\top e = a - \hat a - E\hat a`:

.. math::

    p \cdot g = \hat a_p \cdot \hat a_g + \hat a_p \cdot (a_g - \hat a_g)
    + (a_p - \hat a_p) \cdot \hat a_g - \hat a_p^\top E\,\hat a_g + e_p \cdot e_g.

The last term carries the approximation: :math:`|e_p \cdot e_g| \le \rho_p\rho_g`
(Cauchy-Schwarz). The others are float32 rounding, with :math:`u = 2^{-24}` and
:math:`\gamma_k = k u / (1 - k u)` (the error of any float32 sum of k products, in any order,
relative to the sum of their magnitudes):

* a float32 product :math:`V^\top x` is within :math:`\gamma_{dim} |V|^\top |x|` of
  :math:`a`, so :math:`\eta \le \kappa \lVert x\rVert`, :math:`\kappa = \gamma_{dim}
  \lVert V\rVert_F \approx dim\,\sqrt{r}\,u`, and :math:`\lVert\hat a\rVert \le (1 +
  \varepsilon + \kappa)\lVert x\rVert`; the three middle terms are at most :math:`(2\kappa +
  \varepsilon)(1 + \varepsilon + \kappa)^2 \lVert p\rVert\lVert g\rVert`;
* :math:`n` is within :math:`\gamma_{dim+1}\lVert x\rVert^2` of :math:`\lVert x\rVert^2`,
  and the product of width :math:`K = r + 2` within :math:`\gamma_K (n_p + n_g + 2\sum_i
  |\hat a_{p,i} \hat a_{g,i}|) \le 2.03\,\gamma_K (n_p + n_g)`;
* the residual: :math:`\rho^2 = \lVert x\rVert^2 - \lVert\hat a\rVert^2 - 2 (a - \hat a)
  \cdot \hat a + \hat a^\top E \hat a \le n - \mathrm{fl}\lVert\hat a\rVert^2 + \lambda n`
  with :math:`\lambda = 1.1\,((dim + r + 2) u + 2\kappa + \varepsilon)`, evaluated in float64
  and rounded up to float32: :math:`\bar\rho \ge \rho`.

Adding them, with :math:`2\lVert p\rVert\lVert g\rVert \le \lVert p\rVert^2 + \lVert
g\rVert^2`: :math:`|S - \tilde S| \le 2\rho_p\rho_g + c\,(n_p + n_g)` with :math:`c = 1.1
\,((dim + 1) u + 2\kappa + \varepsilon + 2.03\,\gamma_K)` (the 1.1 covers the products of
small factors left out); :math:`t = 2^{-100}` covers products that underflow. In float32,
:math:`\delta`'s features are scaled by :math:`1 + 2^{-20}` so that its three roundings
cannot take it below the true value, each part's ends are rounded once more (the subtraction
or addition, the square root) and the sum over parts is rounded: the sums are widened by the
relative margin :data:`~gaittrain.evaluation.certified.SUM_MARGIN` (:math:`2^{-14}`, far
above :math:`\gamma_P` for fewer than 1,000 parts). The float32 products must be IEEE ones:
they are computed with :func:`torch.set_float32_matmul_precision` "highest" (no TF32 on
CUDA, no bf16 in oneDNN).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch

from gaittrain.evaluation import certified

#: float32 unit roundoff.
U = 2.0**-24
#: Gallery sequences the directions are fitted on, at most (evenly spaced).
FIT_ROWS = 1024
#: The rank is the smallest multiple of RANK_STEP leaving at most this fraction of the energy
#: (mean over parts) out of the directions kept.
RESIDUAL = 0.04
RANK_STEP = 8
#: Covers products that underflow (:math:`t` in the module's docstring).
TINY = 2.0**-100
#: Probe rows x gallery columns x parts of one fused step (their float32 products: 4 MB).
ROWS, TILE, PART_CHUNK = 128, 512, 16
#: Sequences projected at once (their float32 temporaries: about 12 bytes per entry).
PROJECT_ROWS = 64


@dataclass
class Basis:
    """The directions every part is projected onto, and what the bound needs of them.

    Attributes
    ----------
    directions : Tensor float32 [parts, dim, rank]
        :math:`V` of every part (orthonormal columns to float32 rounding).
    epsilon : float
        A bound on :math:`\\lVert V^\\top V - I\\rVert` over the parts (computed in float64).
    residual : float
        The fraction of the fitted sequences' energy the directions leave out, mean over parts.
    """

    directions: torch.Tensor
    epsilon: float
    residual: float

    @property
    def rank(self) -> int:
        return self.directions.shape[2]

    @property
    def kappa(self) -> float:
        r""":math:`\kappa`: :math:`\lVert \hat a - a\rVert \le \kappa \lVert x\rVert`."""
        dim = self.directions.shape[1]
        return _gamma(dim) * math.sqrt(self.rank * (1 + self.epsilon))

    @property
    def residual_margin(self) -> float:
        r""":math:`\lambda` (the module's docstring)."""
        dim = self.directions.shape[1]
        return 1.1 * ((dim + self.rank + 2) * U + 2 * self.kappa + self.epsilon)

    @property
    def rounding(self) -> float:
        r""":math:`c` (the module's docstring)."""
        dim = self.directions.shape[1]
        gamma_k = _gamma(self.rank + 2)
        return 1.1 * ((dim + 1) * U + 2 * self.kappa + self.epsilon + 2.03 * gamma_k)


def _gamma(k: int) -> float:
    return k * U / (1 - k * U)


def choose_rank(energy: torch.Tensor) -> int:
    """The rank from a spectrum ``energy`` [parts, dim] (descending): the smallest multiple of
    :data:`RANK_STEP` whose directions leave at most :data:`RESIDUAL` of the energy out, mean
    over parts; at most dim / 4 (the whole dim where it is below :data:`RANK_STEP`).

    Examples
    --------
    >>> choose_rank(torch.tensor([[9.0] * 10 + [0.01] * 246]))  # 10 strong directions of 256
    16
    >>> choose_rank(torch.ones(3, 256))  # white noise: the most allowed
    64
    """
    dim = energy.shape[1]
    most = max(min(dim, RANK_STEP), dim // 4)
    left = _left_out(energy)
    for rank in range(RANK_STEP, most, RANK_STEP):
        if float(left[:, rank - 1].mean()) <= RESIDUAL:
            return rank
    return most


def _left_out(energy: torch.Tensor) -> torch.Tensor:
    """[parts, dim]: the fraction of each part's energy outside its top 1, 2, ... directions."""
    total = energy.sum(1, keepdim=True)
    kept = energy.cumsum(1) / torch.where(total > 0, total, 1.0)
    return (1 - kept).clamp_min(0).masked_fill(total == 0, 0.0)


def fit(gallery: torch.Tensor, rank: int | None = None) -> Basis:
    """The directions of every part of ``gallery`` [n, parts, dim] (any float dtype, any
    device): the top ``rank`` (default: :func:`choose_rank`) eigenvectors of each part's
    second-moment matrix over at most :data:`FIT_ROWS` evenly spaced sequences.

    Examples
    --------
    >>> g = torch.randn(500, 2, 6) @ torch.randn(6, 64)  # rank 6 in 64 dims
    >>> basis = fit(g)
    >>> basis.rank, basis.residual < 1e-6, basis.epsilon < 1e-5
    (8, True, True)
    """
    n, parts, dim = gallery.shape
    sample = gallery[:: max(1, n // FIT_ROWS)][:FIT_ROWS].float().transpose(0, 1)
    with ieee_float32():
        moment = (sample.mT @ sample).double()  # [parts, dim, dim]
    energy, vectors = torch.linalg.eigh(moment)  # ascending
    energy, vectors = energy.flip(-1).clamp_min(0), vectors.flip(-1)
    rank = choose_rank(energy) if rank is None else rank
    v = vectors[..., :rank].float().contiguous()
    eye = torch.eye(rank, dtype=torch.float64, device=v.device)
    off = torch.linalg.matrix_norm(v.double().mT @ v.double() - eye)  # Frobenius >= spectral
    residual = float(_left_out(energy)[:, rank - 1].mean())
    return Basis(v, float(off.max()) + 2.0**-40, residual)


@contextlib.contextmanager
def ieee_float32():
    """Float32 matrix products in IEEE float32 meanwhile, as the bound assumes (no TF32 on
    CUDA, no bf16 in oneDNN, whatever the caller chose)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@dataclass
class Projected:
    r"""Sequences [n, parts, dim] projected onto a :class:`Basis`, as one side of the products.

    Attributes
    ----------
    coords : Tensor float32 [chunks, rows, rank + 2]
        Probe side: :math:`[\hat a, n, 1]`; gallery side: :math:`[-2\hat a, 1, n]` (so that
        their product is :math:`\tilde S`); zero rows past ``n`` up to whole :data:`ROWS`
        (probes) or :data:`TILE` (gallery), zero parts past ``parts`` up to whole
        :data:`PART_CHUNK` (they add 0 to both ends of every interval: one fused step, one
        compiled graph).
    spread : Tensor float32 [2, chunks, rows, 1] (probes) or [2, chunks, 1, rows] (gallery)
        :math:`\delta = p_0 g_0 + p_1 + g_1` from probe features :math:`(2\bar\rho,
        c\,n + t)` and gallery features :math:`(\bar\rho, c\,n)`, scaled by
        :math:`1 + 2^{-20}` (the module's docstring); zero past ``n`` and ``parts``.
    n, parts : int
        The sequences and their parts.
    basis : Basis
        What they were projected onto (the other side is projected onto it too).
    """

    coords: torch.Tensor
    spread: torch.Tensor
    n: int
    parts: int
    basis: Basis

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.coords, self.spread))


#: Scales :math:`\delta`'s features so that their float32 roundings cannot lower it.
SPREAD_SCALE = 1 + 2.0**-20


def project(x: torch.Tensor, basis: Basis, probe_side: bool) -> Projected:
    """``x`` [n, parts, dim] (float16 or float32, as stored) projected onto ``basis``, as probes
    or as a gallery (:class:`Projected`), :data:`PROJECT_ROWS` sequences at a time.

    Examples
    --------
    >>> g = torch.randn(100, 2, 32)
    >>> basis = fit(g)
    >>> p = project(g, basis, probe_side=False)
    >>> p.coords.shape  # 2 parts padded to 16, 100 sequences to a tile; rank 8 and the norms
    torch.Size([16, 512, 10])
    >>> x = g.transpose(0, 1)
    >>> residual = (x - x @ basis.directions @ basis.directions.mT).norm(dim=-1)
    >>> bool((p.spread[0, :2, 0, :100] >= residual).all())  # the gallery's first feature
    True
    """
    n, parts, _ = x.shape
    rank, lam, c = basis.rank, basis.residual_margin, basis.rounding
    rows = -(-n // (ROWS if probe_side else TILE)) * (ROWS if probe_side else TILE)
    chunks = -(-parts // PART_CHUNK) * PART_CHUNK
    coords = torch.zeros(chunks, rows, rank + 2, device=x.device)
    spread = torch.zeros(2, chunks, rows, device=x.device)
    for s in range(0, n, PROJECT_ROWS):
        chunk = x[s : s + PROJECT_ROWS].float()
        e = s + chunk.shape[0]
        with ieee_float32():
            a = torch.bmm(chunk.transpose(0, 1), basis.directions)  # [parts, m, rank]
        norm = (chunk**2).sum(-1).T  # [parts, m]
        bound = norm.double() - (a**2).sum(-1).double() + lam * norm.double()
        rho = bound.clamp_min_(0).sqrt_().float().mul_(1 + 2.0**-22)  # rounded up
        if probe_side:
            coords[:parts, s:e] = torch.cat(
                [a, norm[..., None], torch.ones_like(norm)[..., None]], -1
            )
            spread[0, :parts, s:e] = 2 * rho * SPREAD_SCALE
            spread[1, :parts, s:e] = (c * norm + TINY) * SPREAD_SCALE
        else:
            coords[:parts, s:e] = torch.cat(
                [-2 * a, torch.ones_like(norm)[..., None], norm[..., None]], -1
            )
            spread[0, :parts, s:e] = rho
            spread[1, :parts, s:e] = c * norm * SPREAD_SCALE
    spread = spread[..., None] if probe_side else spread[:, :, None, :]
    return Projected(coords, spread, n, parts, basis)


def _fold(s, p0, p1, g0, g1, lower, upper):
    r"""Add the ends of every part's interval to ``lower`` and ``upper`` [rows, cols], from a
    chunk of parts' :math:`\tilde S` ``s`` [parts, rows, cols] and :math:`\delta`'s features
    (:class:`Projected`'s ``spread``: [parts, rows, 1] and [parts, 1, cols])."""
    d = p0 * g0 + p1 + g1
    lower = lower + torch.sqrt(torch.relu(s - d)).sum(0)
    return lower, upper + torch.sqrt(torch.relu(s + d)).sum(0)


@functools.cache
def _compiled_fold():
    """:func:`_fold` fused (:func:`~gaittrain.evaluation.certified.compiled`): unfused, its
    passes over the products cost ten times the products themselves (measured on CPU)."""
    s, z = torch.zeros(PART_CHUNK, ROWS, TILE), torch.zeros(ROWS, TILE)
    row, col = s[:, :, :1], s[:, :1, :]
    return certified.compiled(_fold, s, row, row, col, col, z, z)


def interval(probe: Projected, gallery: Projected) -> tuple[torch.Tensor, torch.Tensor]:
    """``lower``, ``upper`` [b, n] (contiguous) of every pair's distance (the module's
    docstring, step 3), a tile of :data:`ROWS` probes x :data:`TILE` gallery sequences and
    :data:`PART_CHUNK` parts at a time."""
    chunks, b, n = probe.coords.shape[0], probe.n, gallery.n
    device = probe.coords.device
    fold = _compiled_fold() if device.type == "cpu" else _fold
    lower = torch.empty(b, n, device=device)
    upper = torch.empty(b, n, device=device)
    s = torch.empty(PART_CHUNK, ROWS, TILE, device=device)
    with ieee_float32():
        for j in range(0, n, TILE):
            g = gallery.coords[:, j : j + TILE].mT  # [chunks, rank + 2, TILE]
            g0, g1 = gallery.spread[..., j : j + TILE]
            for i in range(0, b, ROWS):
                p0, p1 = probe.spread[:, :, i : i + ROWS]
                lo = torch.zeros(ROWS, TILE, device=device)
                hi = torch.zeros(ROWS, TILE, device=device)
                for k in range(0, chunks, PART_CHUNK):
                    ks = slice(k, k + PART_CHUNK)
                    torch.bmm(probe.coords[ks, i : i + ROWS], g[ks], out=s)
                    lo, hi = fold(s, p0[ks], p1[ks], g0[ks], g1[ks], lo, hi)
                t = min(TILE, n - j)  # the padding's columns and rows left out
                lower[i : i + ROWS, j : j + t] = lo[: min(ROWS, b - i), :t]
                upper[i : i + ROWS, j : j + t] = hi[: min(ROWS, b - i), :t]
    margin, parts = certified.SUM_MARGIN, probe.parts
    return lower.mul_((1 - margin) / parts), upper.mul_((1 + margin) / parts)


def block_rows(n_gallery: int, parts: int, dim: int, rank: int, max_memory: int) -> int:
    """Probes per block so that :func:`rank_block`'s working set stays under ``max_memory``
    (whole tiles of :data:`ROWS` where there is room for one): per probe and gallery sequence,
    the interval's two ends (8 bytes), the masks and the int64 copy PyTorch makes of a mask to
    count it (counted as 32 in all); per probe, its coordinates and features; and, whatever
    the block, the padding of its last tile of probes, one fused step's products and sums,
    the projection's and the re-check's temporaries."""
    per_row = n_gallery * 40 + parts * (rank + 4) * 4
    fixed = ROWS * parts * (rank + 4) * 4 + (PART_CHUNK + 6) * ROWS * TILE * 4
    fixed += PROJECT_ROWS * parts * dim * 12 + certified.RECHECK_CHUNK * parts * dim * 8 * 3
    rows = max(1, int((max_memory - fixed) // per_row))
    return rows // ROWS * ROWS if rows >= ROWS else rows


def rank_block(
    probe: torch.Tensor,
    gallery: torch.Tensor,
    probe_p: Projected,
    gallery_p: Projected,
    matches: torch.Tensor,
) -> certified.BlockRanks:
    """The nearest gallery sequence of every probe and the exact ranks of its correct matches
    (ties broken by gallery order), from low-rank distances re-checked wherever their bound
    leaves the answer open (:func:`~gaittrain.evaluation.certified.certify`; a block where
    more than :data:`~gaittrain.evaluation.certified.FALLBACK_FRACTION` of the pairs stay
    open is computed whole in float64).

    Parameters
    ----------
    probe, gallery : Tensor [b, parts, dim], [n, parts, dim]
        The stored embeddings (float32 or float16); re-checked pairs are computed from them.
    probe_p, gallery_p : Projected
        Their :func:`project` copies (on the same :class:`Basis`).
    matches : Tensor int64 [b, M]
        Each probe's correct gallery indices, padded with -1.
    """
    limit = certified.FALLBACK_FRACTION * gallery.shape[0]

    def tries():  # one approximation, made when certify asks for it
        yield (*interval(probe_p, gallery_p), limit)

    return certified.certify(probe, gallery, matches, tries())
