r"""Exact nearest neighbours from low-rank products: project, bound from below, re-check.

Trained gait embeddings are nearly low-rank part by part: most of a part's energy lies in a few
dozen of its directions (measured in docs/evaluation.md). Here every part is projected onto the
top r of them, a lower bound of every pair's Euclidean protocol distance :math:`D =
\frac{1}{P}\sum_k r_k`, :math:`r_k = \sqrt{S_k}`, :math:`S_k = \lVert p_k - g_k\rVert^2`, is
computed from r-dimensional float32 products, and the few pairs whose lower end does not rule
them out are computed exactly by :func:`gaittrain.evaluation.certified.certify_lower`: the
figures are those of float64 distances, whatever the data; only the time depends on it. Only
matrix products and elementwise operations are used, on any CPU (or GPU).

1. **Fit** (:func:`fit`), per part, from the gallery being ranked (at most :data:`FIT_ROWS`
   evenly spaced sequences): :math:`V` [dim, r], the top r eigenvectors of the part's
   second-moment matrix :math:`\sum_i x_i x_i^\top`, stored in float32. r is the smallest
   multiple of :data:`RANK_STEP` whose directions leave at most :data:`RESIDUAL` of the
   energy out (mean over parts), at most a quarter of dim. The bound below holds for any
   :math:`V`; a poor one only leaves more pairs to re-check.
2. **Project** (:func:`project`) every sequence's part x (probe or gallery): its coordinates
   :math:`\hat a = \mathrm{fl}(V^\top x)` (a float32 product), :math:`n = \mathrm{fl}\lVert
   x\rVert^2` and :math:`\bar\rho`, a bound on the norm :math:`\rho` of its residual
   :math:`e = x - V\hat a` (below), as one side of a product of width r + 3: probes
   :math:`[\hat a, n^-_p, 1, \bar\rho_p]`, gallery :math:`[-2\hat a, 1, n^-_g, -2\bar\rho_g]`,
   with :math:`n^-_p \le (1 - c)\,n_p` and :math:`n^-_g \le (1 - c)\,n_g - 2t` (computed in
   float64, rounded down to float32).
3. **Bound** (:func:`interval`), per part, from one float32 product of width K = r + 3:
   :math:`\underline S = \mathrm{fl}(n^-_p + n^-_g - 2\,\hat a_p \cdot \hat a_g - 2\bar\rho_p
   \bar\rho_g) \le S` (proof below), so :math:`r_k \ge \sqrt{\max(\underline S, 0)}`; summed
   over the parts (fused per tile of pairs: one square root per pair and part), the lower end
   :math:`\underline D \le D`. In exact arithmetic (:math:`\hat a = a`, :math:`V`
   orthonormal, :math:`c = t = 0`) this is Pythagoras: :math:`S = \lVert a_p - a_g\rVert^2 +
   \lVert e_p - e_g\rVert^2 \ge \lVert a_p - a_g\rVert^2 + (\rho_p - \rho_g)^2`.
4. **Re-check** (:func:`~gaittrain.evaluation.certified.certify_lower`): a pair matters only
   if it may be nearer than (or as near as) one of the probe's correct matches, or than the
   nearest. Every pair whose lower end exceeds its row's threshold (float32 above the largest
   exact distance of the row's matches, or, for a probe without matches, of the pair of
   smallest lower end) is farther than all of them; the few left (a handful per probe) get an
   upper end too (:func:`upper_ends`): :math:`\sqrt{\bar S}`, :math:`\bar S = n_p + n_g -
   2\hat a_p \cdot \hat a_g + 2\bar\rho_p\bar\rho_g + c\,(n_p + n_g) + t \ge S` evaluated in
   float64 from the same coordinates (the proof below bounds :math:`|S - (n_p + n_g - 2\hat
   a_p \cdot \hat a_g)|` by :math:`2\rho_p\rho_g + c_0 (n_p + n_g) + t`, and float64's
   rounding is far below :math:`(c - c_0)(n_p + n_g)`), summed and raised by the relative
   margin. Those certainly nearer than a match are counted; those whose interval may hold the
   nearest distance or a match's are computed exactly.

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
* :math:`n` is within :math:`\gamma_{dim+1}\lVert x\rVert^2` of :math:`\lVert x\rVert^2`;
* the residual: :math:`\rho^2 = \lVert x\rVert^2 - \lVert\hat a\rVert^2 - 2 (a - \hat a)
  \cdot \hat a + \hat a^\top E \hat a \le n - \mathrm{fl}\lVert\hat a\rVert^2 + \lambda n`
  with :math:`\lambda = 1.1\,((dim + r + 2) u + 2\kappa + \varepsilon)`, evaluated in float64
  and rounded up to float32: :math:`\bar\rho \ge \rho`;
* the product of width K: its exact value :math:`\Sigma = n^-_p + n^-_g - 2\hat a_p \cdot
  \hat a_g - 2\bar\rho_p\bar\rho_g` is rounded by at most :math:`\gamma_K` times the sum of
  its terms' magnitudes, :math:`|n^-_p| + |n^-_g| + 2(\sum_i |\hat a_{p,i}\hat a_{g,i}| +
  \bar\rho_p\bar\rho_g) \le n_p + n_g + (\lVert\hat a_p\rVert^2 + \bar\rho_p^2) +
  (\lVert\hat a_g\rVert^2 + \bar\rho_g^2) + 2t \le 2.03\,(n_p + n_g) + 2t` (Cauchy-Schwarz in
  r + 1 dimensions, and :math:`\lVert\hat a\rVert^2 + \bar\rho^2 \le 1.01\,n` by the bounds
  above).

Adding them, with :math:`2\lVert p\rVert\lVert g\rVert \le \lVert p\rVert^2 + \lVert
g\rVert^2`: :math:`S \ge n_p + n_g - 2\hat a_p \cdot \hat a_g - 2\rho_p\rho_g - c_0(n_p +
n_g) - t` with :math:`c_0 = 1.1\,((dim + 1) u + 2\kappa + \varepsilon)` (:math:`t =
2^{-100}` covers products that underflow), so :math:`S \ge \Sigma + (c - c_0)(n_p + n_g) + t
\ge \mathrm{fl}(\Sigma) = \underline S` for :math:`c = 1.1\,((dim + 1) u + 2\kappa +
\varepsilon + 2.03\,\gamma_K)` (the 1.1 covers the products of small factors left out and the
float64 evaluation of :math:`n^-`; :math:`\gamma_K\,2t \le t`). Each part's square root is
rounded once more and the sum over parts is rounded: the sum is lowered by the relative margin
:data:`~gaittrain.evaluation.certified.SUM_MARGIN` (:math:`2^{-14}`, far above
:math:`\gamma_P` for fewer than 1,000 parts, and above the float64 rounding of the re-checked
distances it is compared with). The float32 products must be IEEE ones: they are computed with
:func:`torch.set_float32_matmul_precision` "highest" (no TF32 on CUDA, no bf16 in oneDNN).

Only the lower end is needed (step 4): a pair and part costs a product of width r + 3 and one
square root. Both ends of the interval (the upper one from the same product with the sign of the
:math:`\bar\rho` term and of the margins turned, and its own square root) doubled the
elementwise work, which cost about as much as the products (measured, docs/evaluation.md).
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
        gamma_k = _gamma(self.rank + 3)
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
    coords : Tensor float32 [chunks, rows, rank + 3]
        Probe side: :math:`[\hat a, n^-, 1, \bar\rho]`; gallery side: :math:`[-2\hat a, 1, n^-,
        -2\bar\rho]` (so that their product is :math:`\underline S`, the module's docstring);
        zero rows past ``n`` up to whole :data:`ROWS` (probes) or :data:`TILE` (gallery), zero
        parts past ``parts`` up to whole :data:`PART_CHUNK` (they add 0 to every lower end:
        one fused step, one compiled graph).
    norms : Tensor float32 [chunks, rows]
        :math:`n` (the upper ends of :func:`upper_ends`); zero past ``n`` and ``parts``.
    n, parts : int
        The sequences and their parts.
    basis : Basis
        What they were projected onto (the other side is projected onto it too).
    """

    coords: torch.Tensor
    norms: torch.Tensor
    n: int
    parts: int
    basis: Basis

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.coords, self.norms))


def _round_down(x: torch.Tensor) -> torch.Tensor:
    """float32 at most float64 ``x`` (the nearest such)."""
    y = x.float()
    return torch.where(y.double() > x, torch.nextafter(y, torch.full_like(y, -torch.inf)), y)


def project(x: torch.Tensor, basis: Basis, probe_side: bool) -> Projected:
    """``x`` [n, parts, dim] (float16 or float32, as stored) projected onto ``basis``, as probes
    or as a gallery (:class:`Projected`), :data:`PROJECT_ROWS` sequences at a time.

    Examples
    --------
    >>> g = torch.randn(100, 2, 32)
    >>> basis = fit(g)
    >>> p = project(g, basis, probe_side=False)
    >>> p.coords.shape  # 2 parts padded to 16, 100 sequences to a tile; rank 8, norms, residual
    torch.Size([16, 512, 11])
    >>> x = g.transpose(0, 1)
    >>> residual = (x - x @ basis.directions @ basis.directions.mT).norm(dim=-1)
    >>> bool((-p.coords[:2, :100, -1] / 2 >= residual).all())  # the gallery's last coordinate
    True
    """
    n, parts, _ = x.shape
    rank, lam, c = basis.rank, basis.residual_margin, basis.rounding
    rows = -(-n // (ROWS if probe_side else TILE)) * (ROWS if probe_side else TILE)
    chunks = -(-parts // PART_CHUNK) * PART_CHUNK
    coords = torch.zeros(chunks, rows, rank + 3, device=x.device)
    norms = torch.zeros(chunks, rows, device=x.device)
    for s in range(0, n, PROJECT_ROWS):
        chunk = x[s : s + PROJECT_ROWS].float()
        e = s + chunk.shape[0]
        with ieee_float32():
            a = torch.bmm(chunk.transpose(0, 1), basis.directions)  # [parts, m, rank]
        norm = (chunk**2).sum(-1).T.double()  # [parts, m]
        bound = norm - (a**2).sum(-1).double() + lam * norm
        rho = bound.clamp_min_(0).sqrt_().float().mul_(1 + 2.0**-22)  # rounded up
        one = torch.ones_like(rho)
        if probe_side:
            kept = _round_down(norm * (1 - c))
            columns = [a, kept[..., None], one[..., None], rho[..., None]]
        else:
            kept = _round_down(norm * (1 - c) - 2 * TINY)
            columns = [-2 * a, one[..., None], kept[..., None], -2 * rho[..., None]]
        coords[:parts, s:e] = torch.cat(columns, -1)
        norms[:parts, s:e] = norm
    return Projected(coords, norms, n, parts, basis)


def _fold(s, lower):
    r"""Add the lower ends of every part's distance to ``lower`` [rows, cols], from a chunk of
    parts' :math:`\underline S` ``s`` [parts, rows, cols]."""
    return lower + torch.sqrt(torch.relu(s)).sum(0)


@functools.cache
def _compiled_fold():
    """:func:`_fold` fused (:func:`~gaittrain.evaluation.certified.compiled`): unfused, its
    passes over the products cost several times the products themselves (measured on CPU:
    PyTorch's own square root is slow where its argument is 0)."""
    s, z = torch.zeros(PART_CHUNK, ROWS, TILE), torch.zeros(ROWS, TILE)
    return certified.compiled(_fold, s, z)


def interval(probe: Projected, gallery: Projected) -> torch.Tensor:
    """The lower end [b, n] (contiguous) of every pair's distance (the module's docstring, step
    3), a tile of :data:`ROWS` probes x :data:`TILE` gallery sequences and :data:`PART_CHUNK`
    parts at a time."""
    chunks, b, n = probe.coords.shape[0], probe.n, gallery.n
    device = probe.coords.device
    fold = _compiled_fold() if device.type == "cpu" else _fold
    lower = torch.empty(b, n, device=device)
    s = torch.empty(PART_CHUNK, ROWS, TILE, device=device)
    with ieee_float32():
        for j in range(0, n, TILE):
            g = gallery.coords[:, j : j + TILE].mT  # [chunks, rank + 3, TILE]
            t = min(TILE, n - j)  # the padding's columns and rows left out
            for i in range(0, b, ROWS):
                lo = torch.zeros(ROWS, TILE, device=device)
                for k in range(0, chunks, PART_CHUNK):
                    ks = slice(k, k + PART_CHUNK)
                    lo = fold(torch.bmm(probe.coords[ks, i : i + ROWS], g[ks], out=s), lo)
                lower[i : i + ROWS, j : j + t] = lo[: min(ROWS, b - i), :t]
    return lower.mul_((1 - certified.SUM_MARGIN) / probe.parts)


def upper_ends(probe: Projected, gallery: Projected, i, j) -> torch.Tensor:
    r"""float64 upper ends [L] of the distances of pairs ``(i[t], j[t])`` (the few that
    :func:`interval`'s lower ends leave open): per part :math:`\sqrt{\bar S}`, :math:`\bar S =
    n_p + n_g - 2\hat a_p \cdot \hat a_g + 2\bar\rho_p\bar\rho_g + c\,(n_p + n_g) + t` from the
    projected coordinates, evaluated in float64 (the module's docstring, step 4),
    :data:`UPPER_PAIRS` pairs at a time."""
    rank, parts, c = probe.basis.rank, probe.parts, probe.basis.rounding
    out = torch.empty(len(i), dtype=torch.float64, device=probe.coords.device)
    for s in range(0, len(i), UPPER_PAIRS):
        ps, gs = i[s : s + UPPER_PAIRS], j[s : s + UPPER_PAIRS]
        p = probe.coords[:parts].index_select(1, ps).double()  # [parts, L, rank + 3]
        g = gallery.coords[:parts].index_select(1, gs).double()
        norm = probe.norms[:parts, ps].double() + gallery.norms[:parts, gs].double()
        across = (p[..., :rank] * g[..., :rank]).sum(-1) - p[..., -1] * g[..., -1]
        sq = (norm * (1 + c) + across + TINY).clamp_min_(0)
        out[s : s + UPPER_PAIRS] = sq.sqrt_().sum(0) * ((1 + certified.SUM_MARGIN) / parts)
    return out


#: Pairs whose upper ends are computed at once (their float64 coordinates and products: about
#: 3 x parts x (rank + 3) x 8 bytes each, 3.3 MB at 62 parts and rank 32, less than the fused
#: step's products, freed by then).
UPPER_PAIRS = 64


def block_rows(n_gallery: int, parts: int, dim: int, rank: int, max_memory: int) -> int:
    """Probes per block so that :func:`rank_block`'s working set stays under ``max_memory``
    (whole tiles of :data:`ROWS` where there is room for one): per probe and gallery sequence,
    the lower end (4 bytes) and what ranking from it takes (counted as :data:`PAIR_BYTES` in
    all); per probe, its coordinates; and, whatever the block, the padding
    of its last tile of probes, one fused step's products and sums, the projection's and the
    re-check's temporaries."""
    per_row = n_gallery * PAIR_BYTES + parts * (rank + 3) * 4
    fixed = ROWS * parts * (rank + 3) * 4 + (PART_CHUNK + 3) * ROWS * TILE * 4
    fixed += PROJECT_ROWS * parts * dim * 12 + certified.RECHECK_CHUNK * parts * dim * 8 * 3
    rows = max(1, int((max_memory - fixed) // per_row))
    return rows // ROWS * ROWS if rows >= ROWS else rows


#: Bytes per probe and gallery pair of a block (:func:`block_rows`): the lower end (4), the
#: survivors' mask and lists, or a quarter of the block's float64 distances and their masks
#: where it is computed whole (:func:`~gaittrain.evaluation.certified.certify_lower`).
PAIR_BYTES = 16


def rank_block(
    probe: torch.Tensor,
    gallery: torch.Tensor,
    probe_p: Projected,
    gallery_p: Projected,
    matches: torch.Tensor,
) -> certified.BlockRanks:
    """The nearest gallery sequence of every probe and the exact ranks of its correct matches
    (ties broken by gallery order), from low-rank lower bounds: the pairs they do not rule out
    are computed exactly (:func:`~gaittrain.evaluation.certified.certify_lower`; a block where
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
    lower = interval(probe_p, gallery_p)

    def upper_of(i, j):
        return upper_ends(probe_p, gallery_p, i, j)

    return certified.certify_lower(probe, gallery, matches, lower, upper_of, limit)
