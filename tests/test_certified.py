"""int8 and low-rank distances re-checked to exact (gaittrain.evaluation.certified,
gaittrain.evaluation.lowrank) against float32 and float64 computations of the same
embeddings."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from gaittrain.evaluation import certified, lowrank, native
from gaittrain.evaluation.metrics import _match_table, retrieve
from gaittrain.evaluation.ranking import match_ranks, score_ranks
from tests.cli import subprocess_env


@pytest.fixture(params=["native", "torch"])
def path(request, monkeypatch):
    """Each test runs through the native kernels (where this CPU can build them) and through
    PyTorch (:func:`torch._int_mm` and tensor operations; for the low-rank path, the
    re-check and the selection of candidates)."""
    if request.param == "native":
        request.getfixturevalue("kernels")
    if request.param == "torch":
        monkeypatch.setattr(native, "kernels", lambda: None)
    return request.param


#: The certified paths every equality test runs.
CERTIFIED = ["int8", "lowrank"]


@pytest.fixture
def fallbacks(monkeypatch) -> list:
    """Whether each block a certified path ranked was computed whole in float64 (its bound
    left too much open), in order."""
    found = []

    def spy(certify):
        def ranked(*args):
            out = certify(*args)
            found.append(out.fallback)
            return out

        return ranked

    for name in ("certify", "certify_lower"):  # int8's intervals, lowrank's lower ends
        monkeypatch.setattr(certified, name, spy(getattr(certified, name)))
    return found


def structured(n_subjects, per_subject, parts, dim, noise, seed, rank=None):
    """Embeddings of subjects (a mean each, plus noise per sequence) and their ids; with
    ``rank``, means and noise lie in ``rank`` directions of each part (as a trained model's
    nearly do)."""
    g = torch.Generator().manual_seed(seed)
    if rank is not None:  # the directions of a seed, whatever the sizes
        basis = torch.linalg.qr(torch.randn(parts, dim, rank, generator=g))[0]
    width = dim if rank is None else rank
    ids = np.repeat(np.arange(n_subjects), per_subject)
    means = torch.randn(n_subjects, parts, width, generator=g)
    x = means[ids] + noise * torch.randn(len(ids), parts, width, generator=g)
    if rank is not None:
        x = torch.einsum("npr,pdr->npd", x, basis) * (dim / rank) ** 0.5
    return x, ids


def reference64(probe, p_ids, gallery, g_ids):
    """Figures of the float64 distance matrix: the definition of exact."""
    d = certified.exact_block(probe, gallery)
    p, g = torch.from_numpy(np.asarray(p_ids)), torch.from_numpy(np.asarray(g_ids))
    matches = _match_table(p.int(), g.int())
    out = score_ranks(match_ranks(d, matches), matches, d.argmin(dim=1), d.shape[1])
    return [x.numpy() for x in out]


def same(a, b):
    for name in ("first", "nearest", "nearest_match"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_allclose(a.ap, b.ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.inp, b.inp, rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("precision", CERTIFIED)
@pytest.mark.parametrize("rank", [None, 6], ids=["full-rank", "rank-6"])
@pytest.mark.parametrize("noise", [0.5, 1.0, 3.0])
def test_certified_equals_fp32_and_float64(noise, rank, precision, path, fallbacks):
    """Easy to hopeless (the last: rank-1 near chance, most pairs open, blocks computed whole
    in float64), on full-rank embeddings and on a gallery of rank 6 per part (the probes' noise
    is full-rank: the low-rank bound needs only one side's residual to be small)."""
    gallery, g_ids = structured(150, 2, 8, 64, noise, seed=0, rank=rank)
    probe, p_ids = structured(150, 1, 8, 64, noise, seed=0, rank=rank)
    probe = probe + noise * torch.randn(probe.shape, generator=torch.Generator().manual_seed(1))
    fast = retrieve(probe, p_ids, gallery, g_ids, precision=precision, max_memory=4 << 20)
    slow = retrieve(probe, p_ids, gallery, g_ids, precision="fp32")
    same(fast, slow)
    ref = reference64(probe, p_ids, gallery, g_ids)
    np.testing.assert_array_equal(fast.first, ref[0])
    np.testing.assert_array_equal(fast.nearest, ref[3])
    if noise == 0.5:
        assert fast.cmc(1)[0] > 0.9
    if noise == 3.0:
        assert fast.cmc(1)[0] < 0.1
    if precision == "lowrank" and rank is not None and noise < 3.0:
        assert fallbacks and not any(fallbacks)  # the bound decided, a few pairs re-checked


@pytest.mark.slow
@pytest.mark.parametrize("precision", CERTIFIED)
def test_near_ties_and_duplicates(precision, path, fallbacks):
    """Adversarial galleries: each probe's nearest sequence has near-twins of other subjects
    whose distances differ by 1e-6 .. 1e-3 relative (far inside the int8 error and the
    low-rank bound, beyond float32 rounding), and exact duplicates (ties, broken by gallery
    order); the embeddings lie in 8 directions of each part's 64 (so that the low-rank path's
    bound decides, without computing blocks whole)."""
    g = torch.Generator().manual_seed(3)
    parts, dim, n = 6, 64, 40
    turn = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(4)))[0]

    def low_rank(x):  # x in 8 directions of each part, turned by a rotation of their own
        return torch.nn.functional.pad(x[..., :8], (0, dim - 8)) @ turn * (dim / 8) ** 0.5

    base = low_rank(torch.randn(n, parts, dim, generator=g))
    probe = base + 0.3 * low_rank(torch.randn(n, parts, dim, generator=g))
    twins, twin_ids = [base], [np.arange(n)]
    for k, eps in enumerate([1e-3, 1e-4, 1e-5, 1e-6]):
        # a twin just beyond (or just inside) the original's distance
        direction = torch.nn.functional.normalize(probe - base, dim=-1)
        sign = torch.randint(0, 2, (n, 1, 1), generator=g) * 2 - 1  # inside or outside
        twins.append(base + sign * eps * direction * (probe - base).norm(dim=-1, keepdim=True))
        twin_ids.append(np.arange(n) + 1000 * (k + 1))
    twins.append(base.clone())  # exact duplicates, of another subject, later in the gallery
    twin_ids.append(np.arange(n) + 9000)
    gallery = torch.cat(twins)
    g_ids = np.concatenate(twin_ids)
    perm = torch.randperm(len(gallery), generator=g)
    gallery, g_ids = gallery[perm], g_ids[perm.numpy()]
    others = low_rank(torch.randn(300, parts, dim, generator=g))  # a gallery of some size
    gallery, g_ids = torch.cat([gallery, others]), np.concatenate([g_ids, 20000 + np.arange(300)])
    fast = retrieve(probe, np.arange(n), gallery, g_ids, precision=precision)
    ref = reference64(probe, np.arange(n), gallery, g_ids)
    np.testing.assert_array_equal(fast.first, ref[0])
    np.testing.assert_array_equal(fast.nearest, ref[3])
    np.testing.assert_allclose(fast.ap, ref[1], atol=1e-12)
    assert 0 < (fast.first == 0).mean() < 1  # the twins decide some probes, not all
    slow = retrieve(probe, np.arange(n), gallery, g_ids, precision="fp32")
    # float32 agrees wherever the gaps exceed its rounding (all but the 1e-6 twins)
    agree = np.mean(slow.nearest == fast.nearest)
    assert agree >= 0.9
    if precision == "lowrank":
        assert fallbacks and not any(fallbacks)


def extremes() -> tuple[torch.Tensor, torch.Tensor]:
    """35 probes and 35 gallery sequences of 5 parts x 32: zero sequences and parts, tiny and
    huge scales, a distance of 0, one large coordinate per part (a coarse int8 scale)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(70, 5, 32, generator=g)
    x[3] = 0.0
    x[4, 2] = 0.0
    x[5] *= 1e-4
    x[6] *= 1e3
    x[7] = x[8]  # identical pair: distance 0
    x[9, :, 0] = 50.0  # one large coordinate per part: a coarse scale
    probe, gallery = x[:35], x[35:].clone()
    gallery[0] = probe[7]
    return probe, gallery


@pytest.mark.parametrize("levels", [1, 2])
def test_bound_holds_for_every_pair(levels, path):
    """|D~ - D| <= tau for every pair of :func:`extremes`, with one int8 level and two, 35
    probes (not a whole number of the native kernel's tiles)."""
    probe, gallery = extremes()
    p_q, g_q = certified.quantize(probe, True), certified.quantize(gallery, False)
    assert p_q.packed == g_q.packed == (path == "native")
    approx, tau = certified.approximate(p_q, g_q, len(gallery), levels)
    exact = certified.exact_block(probe, gallery)
    err = (approx.double() - exact).abs()
    assert bool((err <= tau.double()).all()), float((err - tau.double()).max())
    useful = 0.05 if levels == 1 else 0.002
    assert float((tau / approx.clamp_min(1e-6))[10:].median()) < useful  # and is useful


@pytest.mark.parametrize("storage", [torch.float32, torch.float16])
@pytest.mark.parametrize("rank", [1, None, 32], ids=["rank-1", "chosen", "whole-dim"])
def test_lowrank_bound_holds_for_every_pair(rank, storage):
    """lower <= D for every pair of :func:`extremes` (stored in float32 or float16) whatever
    the rank: 1 (most of every part left out), the one chosen from the spectrum, and the whole
    width; and the bound is tight where the gallery is low-rank."""
    probe, gallery = (x.to(storage) for x in extremes())
    basis = lowrank.fit(gallery, rank)
    assert basis.rank == (rank or 8) and basis.epsilon < 1e-5
    lower = lowrank.interval(
        lowrank.project(probe, basis, True), lowrank.project(gallery, basis, False)
    )
    exact = certified.exact_block(probe, gallery)
    assert lower.shape == exact.shape and lower.is_contiguous()
    assert bool((lower.double() <= exact).all()), float((lower.double() - exact).max())
    assert bool((lower.double() < exact)[exact > 0].all())  # strictly, beyond float64 rounding
    gallery, _ = structured(60, 1, 5, 32, 0.0, seed=2, rank=6)  # rank 6: all of it kept
    probe, _ = structured(35, 1, 5, 32, 0.3, seed=2, rank=6)  # near the first 35
    probe, gallery = probe.to(storage), gallery.to(storage)
    basis = lowrank.fit(gallery)
    lower = lowrank.interval(
        lowrank.project(probe, basis, True), lowrank.project(gallery, basis, False)
    )
    exact = certified.exact_block(probe, gallery)
    assert bool((lower.double() <= exact).all())
    assert float(((exact - lower) / exact).median()) < 1e-4  # and is useful


def test_lowrank_examples():
    found = doctest.testmod(lowrank)
    assert found.failed == 0 and found.attempted >= 5


@pytest.mark.parametrize("rank", [1, None], ids=["rank-1", "chosen"])
def test_lowrank_upper_ends_hold_for_every_pair(rank):
    """upper_ends >= D >= lower for every pair of :func:`extremes`, whatever the rank (the
    re-check's second stage computes them for the pairs the lower ends leave)."""
    probe, gallery = extremes()
    basis = lowrank.fit(gallery, rank)
    p_p, g_p = lowrank.project(probe, basis, True), lowrank.project(gallery, basis, False)
    i, j = (x.flatten() for x in torch.meshgrid(torch.arange(35), torch.arange(35), indexing="ij"))
    upper = lowrank.upper_ends(p_p, g_p, i, j).view(35, 35)
    exact = certified.exact_block(probe, gallery)
    assert upper.dtype == torch.float64
    assert bool((exact <= upper).all()), float((exact - upper).max())
    assert bool((lowrank.interval(p_p, g_p).double() <= exact).all())


@pytest.mark.parametrize("matches", ["one", "four", "none", "mixed"])
def test_lowrank_ranks_from_lower_ends_equal_float64(matches, path, fallbacks):
    """certify_lower's thresholds and second stage against the float64 figures: one correct
    match per probe, four (the farthest decides the threshold), none (the threshold comes
    from the pair of smallest lower end) and a mix, with exact duplicates of each probe's
    nearest sequence (of another subject, and of the same), twins 1e-6 relative beyond or
    inside it, and a zero probe; 3 blocks of 40 probes."""
    g = torch.Generator().manual_seed(11)
    gallery, g_ids = structured(120, 4, 6, 64, 0.4, seed=4, rank=6)
    probe, p_ids = structured(120, 1, 6, 64, 0.4, seed=4, rank=6)
    probe = probe + 0.2 * torch.randn(probe.shape, generator=g)
    p_ids = {"one": p_ids * 4, "four": p_ids, "none": p_ids + 1000}.get(
        matches, np.where(np.arange(120) % 3 == 0, p_ids + 1000, p_ids)
    )
    if matches == "one":
        g_ids = np.arange(len(gallery))  # each probe's subject: one sequence of the four
    nearest = certified.exact_block(probe, gallery).argmin(dim=1)
    copies = gallery[nearest[:40]]
    twins = copies * (1 + 1e-6 * torch.randn(40, 1, 1, generator=g).sign())
    gallery = torch.cat([gallery, copies, twins])
    g_ids = np.concatenate([g_ids, g_ids[nearest[:40].numpy()], 5000 + np.arange(40)])
    probe[7] = 0.0
    rank, sizes = lowrank.fit(gallery).rank, (len(gallery), 6, 64)
    cap = next(
        m for m in range(1 << 20, 1 << 30, 1 << 16) if lowrank.block_rows(*sizes, rank, m) >= 40
    )
    fast = retrieve(probe, p_ids, gallery, g_ids, precision="lowrank", max_memory=cap)
    ref = reference64(probe, p_ids, gallery, g_ids)
    np.testing.assert_array_equal(fast.first, ref[0])
    np.testing.assert_array_equal(fast.nearest, ref[3])
    np.testing.assert_allclose(fast.ap, ref[1], atol=1e-12)
    np.testing.assert_allclose(fast.inp, ref[2], atol=1e-12)
    assert len(fallbacks) == 3 and not any(fallbacks)  # blocks of 40, the bounds decided


@pytest.mark.slow
def test_lowrank_on_full_rank_noise_is_still_exact(path, fallbacks):
    """Independent Gaussian embeddings: every direction is worth as much as another, the
    largest rank (dim / 4) leaves three quarters of the energy out, the bound certifies little
    and blocks are computed whole in float64: slower, and still the float64 figures."""
    g = torch.Generator().manual_seed(7)
    gallery, probe = torch.randn(400, 4, 64, generator=g), torch.randn(100, 4, 64, generator=g)
    g_ids, p_ids = np.arange(400) // 2, np.arange(100) * 2
    basis = lowrank.fit(gallery)
    assert basis.rank == 16 and basis.residual > 0.5
    fast = retrieve(probe, p_ids, gallery, g_ids, precision="lowrank", max_memory=1 << 20)
    ref = reference64(probe, p_ids, gallery, g_ids)
    np.testing.assert_array_equal(fast.first, ref[0])
    np.testing.assert_array_equal(fast.nearest, ref[3])
    np.testing.assert_allclose(fast.ap, ref[1], atol=1e-12)
    np.testing.assert_allclose(fast.inp, ref[2], atol=1e-12)
    assert fallbacks and all(fallbacks)  # blocks computed whole


@pytest.mark.parametrize("fused", [True, False])
def test_pytorch_recheck_is_exact_distances(monkeypatch, fused):
    """Without the kernels, the re-check gives exact_distances' float64 values: fused (one
    compiled graph for every shape, chunks padded) to float64 rounding, or op by op (chunks of
    buffers made once) bit for bit; float16 and float32 rows, a last chunk not whole, two
    shapes of table."""
    monkeypatch.setattr(native, "kernels", lambda: None)
    if fused:
        assert certified._compiled_pairs(torch.float32) is not None  # CI has a C++ compiler
    else:
        monkeypatch.setattr(certified, "_compiled_pairs", lambda dtype: None)
    g = torch.Generator().manual_seed(12)
    for rows, cols, parts, dim in ((30, 50, 4, 32), (7, 90, 3, 20)):
        probe = torch.randn(rows, parts, dim, generator=g)
        gallery = torch.randn(cols, parts, dim, generator=g)
        n = 3 * certified.RECHECK_CHUNK + 5
        i = torch.randint(0, rows, (n,), generator=g)
        j = torch.randint(0, cols, (n,), generator=g)
        for dtype in (torch.float16, torch.float32):
            p, q = probe.to(dtype), gallery.to(dtype)
            got, want = certified.exact_pairs(p, q, i, j), certified.exact_distances(p[i], q[j])
            if fused:
                torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
            else:
                assert torch.equal(got, want)


def test_native_pieces_equal_their_pytorch_versions(kernels):
    """The native re-check is exact_distances' float64 sums (float16 and float32 rows), the
    native selection of candidates is the PyTorch one, pair for pair, and the native list of
    a mask's pairs is ``nonzero``'s."""
    g = torch.Generator().manual_seed(11)
    probe, gallery = torch.randn(30, 4, 32, generator=g), torch.randn(50, 4, 32, generator=g)
    i, j = torch.randint(0, 30, (200,), generator=g), torch.randint(0, 50, (200,), generator=g)
    for dtype in (torch.float16, torch.float32):
        p, q = probe.to(dtype), gallery.to(dtype)
        got = native.exact_pairs(p, q, i, j)
        want = certified.exact_distances(p[i], q[j])
        torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    p_q, g_q = certified.quantize(probe, True), certified.quantize(gallery, False)
    lower, upper = certified.interval(p_q, g_q, 50, 1)
    dm = certified.exact_block(probe, gallery)[:, :2]  # two matches, one of them padding
    dm[::3, 1] = torch.nan
    lo, hi = certified._float32_around(dm)
    todo, surely, count = certified.candidates(lower, upper, 50, lo, hi)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(native, "kernels", lambda: None)
        want = certified.candidates(lower.clone()[:, :50], upper.clone()[:, :50], 50, lo, hi)
    assert torch.equal(todo, want[0]) and torch.equal(surely, want[1])
    assert torch.equal(count, want[2]) and 0 < int(count.sum()) < todo.numel()
    for a, b in zip(native.pairs(todo, count), todo.nonzero(as_tuple=True), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_native_build_is_cached_by_source(kernels, tmp_path, monkeypatch):
    """The kernels are compiled once into the cache, under the source's hash: a changed
    source is a new library, never the old one reused."""
    monkeypatch.setenv("GAIT_CACHE", str(tmp_path))
    first, outcome = native.build()
    assert outcome == "built" and first.parent == tmp_path and first.exists()
    stamp = first.stat().st_mtime_ns
    assert native.build() == (first, "up to date") and first.stat().st_mtime_ns == stamp
    changed = tmp_path / "changed.c"
    changed.write_text(native.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(native, "SOURCE", changed)
    second, outcome = native.build()
    assert outcome == "built" and second not in (None, first)


MEASURE = textwrap.dedent(
    """
    import json, sys, numpy as np, torch
    from gaittrain.evaluation.metrics import retrieve

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    cap, precision, kept = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3000, 4, 64, generator=g)
    gallery = means + 0.5 * torch.randn(3000, 4, 64, generator=g)
    probe = means[:2000] + 0.5 * torch.randn(2000, 4, 64, generator=g)
    gallery[..., kept:] = probe[..., kept:] = 0.0  # kept < 64: low-rank embeddings
    ids = np.arange(3000)
    retrieve(probe, ids[:2000], gallery, ids, precision=precision, max_memory=cap)  # warm-up
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current size
    start = hwm()
    r = retrieve(probe, ids[:2000], gallery, ids, precision=precision, max_memory=cap)
    print(json.dumps({"start": start, "peak": hwm(), "rank1": float(r.cmc(1)[0])}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8", "int8-torch", "lowrank", "lowrank-fullrank"])
def test_distance_stage_stays_under_its_cap(precision, request):
    """Measured: the peak resident size while ranking 2,000 probes against 3,000 sequences
    grows by less than --max-memory plus a small constant (the full float64 matrix alone
    would take 48 MB). A fixed malloc mmap threshold returns freed blocks at once, so that the
    peak counts live buffers, not what the allocator kept from earlier calls. The low-rank
    path on embeddings of 12 directions per part (its bound decides) and on full-rank ones
    (every block computed whole in float64)."""
    cap = 8 << 20
    if precision == "int8":  # through the kernels of the module's cache ($GAIT_CACHE)
        request.getfixturevalue("kernels")
    native_kernels = "0" if precision == "int8-torch" else "1"
    kept = "12" if precision == "lowrank" else "64"
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(cap), precision.split("-")[0], kept],
        capture_output=True,
        text=True,
        env=subprocess_env(MALLOC_MMAP_THRESHOLD_="131072", GAIT_NATIVE=native_kernels),
    )
    if out.returncode and "clear_refs" in out.stderr:
        pytest.skip("this kernel does not reset the peak resident size")
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["rank1"] > 0.9
    grown = m["peak"] - m["start"]
    assert grown <= cap + (4 << 20), f"grew {grown / 2**20:.1f} MB over a cap of 8 MB"


@pytest.mark.cuda
@pytest.mark.parametrize("precision", CERTIFIED)
def test_certified_on_cuda_equals_float64(precision) -> None:
    """int8 tensor-core products (torch._int_mm on CUDA) and low-rank float32 products (TF32
    turned off meanwhile, even where the caller turned it on), re-checked: the float64
    figures."""
    gallery, g_ids = structured(300, 2, 8, 64, 1.0, seed=0, rank=None if precision == "int8" else 6)
    probe, p_ids = structured(300, 1, 8, 64, 1.0, seed=0, rank=None if precision == "int8" else 6)
    probe = probe + torch.randn(probe.shape, generator=torch.Generator().manual_seed(1))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 allowed by the caller
    try:
        fast = retrieve(probe.cuda(), p_ids, gallery.cuda(), g_ids, precision=precision)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    ref = reference64(probe, p_ids, gallery, g_ids)
    np.testing.assert_array_equal(fast.first, ref[0])
    np.testing.assert_array_equal(fast.nearest, ref[3])
    np.testing.assert_allclose(fast.ap, ref[1], atol=1e-12)
