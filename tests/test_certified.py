"""int8 distances re-checked to exact (gaittrain.evaluation.certified) against float32 and
float64 computations of the same embeddings."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from gaittrain.evaluation import certified, native
from gaittrain.evaluation.metrics import _match_table, retrieve
from gaittrain.evaluation.ranking import match_ranks, score_ranks
from tests.cli import subprocess_env


@pytest.fixture(params=["native", "torch"])
def path(request, monkeypatch):
    """Each test runs through the native kernels (where this CPU can build them) and through
    PyTorch (:func:`torch._int_mm` and tensor operations)."""
    if request.param == "native":
        request.getfixturevalue("kernels")
    if request.param == "torch":
        monkeypatch.setattr(native, "kernels", lambda: None)
    return request.param


def structured(n_subjects, per_subject, parts, dim, noise, seed):
    """Embeddings of subjects (a mean each, plus noise per sequence) and their ids."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_subjects, parts, dim, generator=g)
    ids = np.repeat(np.arange(n_subjects), per_subject)
    x = means[ids] + noise * torch.randn(len(ids), parts, dim, generator=g)
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
@pytest.mark.parametrize("noise", [0.5, 1.0, 3.0])
def test_int8_equals_fp32_and_float64(noise, path):
    """Easy to hopeless (the last: rank-1 near chance, most pairs open, blocks computed whole
    in float64)."""
    gallery, g_ids = structured(150, 2, 8, 64, noise, seed=0)
    probe, p_ids = structured(150, 1, 8, 64, noise, seed=0)
    probe = probe + noise * torch.randn(probe.shape, generator=torch.Generator().manual_seed(1))
    fast = retrieve(probe, p_ids, gallery, g_ids, precision="int8", max_memory=4 << 20)
    slow = retrieve(probe, p_ids, gallery, g_ids, precision="fp32")
    same(fast, slow)
    ref = reference64(probe, p_ids, gallery, g_ids)
    np.testing.assert_array_equal(fast.first, ref[0])
    np.testing.assert_array_equal(fast.nearest, ref[3])
    if noise == 0.5:
        assert fast.cmc(1)[0] > 0.9
    if noise == 3.0:
        assert fast.cmc(1)[0] < 0.1


@pytest.mark.slow
def test_near_ties_and_duplicates(path):
    """Adversarial galleries: each probe's nearest sequence has near-twins of other subjects
    whose distances differ by 1e-6 .. 1e-3 relative (far inside the int8 error, beyond float32
    rounding), and exact duplicates (ties, broken by gallery order)."""
    g = torch.Generator().manual_seed(3)
    parts, dim, n = 6, 64, 40
    base = torch.randn(n, parts, dim, generator=g)
    probe = base + 0.3 * torch.randn(n, parts, dim, generator=g)
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
    fast = retrieve(probe, np.arange(n), gallery, g_ids, precision="int8")
    ref = reference64(probe, np.arange(n), gallery, g_ids)
    np.testing.assert_array_equal(fast.first, ref[0])
    np.testing.assert_array_equal(fast.nearest, ref[3])
    np.testing.assert_allclose(fast.ap, ref[1], atol=1e-12)
    assert 0 < (fast.first == 0).mean() < 1  # the twins decide some probes, not all
    slow = retrieve(probe, np.arange(n), gallery, g_ids, precision="fp32")
    # float32 agrees wherever the gaps exceed its rounding (all but the 1e-6 twins)
    agree = np.mean(slow.nearest == fast.nearest)
    assert agree >= 0.9


@pytest.mark.parametrize("levels", [1, 2])
def test_bound_holds_for_every_pair(levels, path):
    """|D~ - D| <= tau for every pair, including zero parts, tiny and huge scales, with one
    int8 level and two, 35 probes (not a whole number of the native kernel's tiles)."""
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
    p_q, g_q = certified.quantize(probe, True), certified.quantize(gallery, False)
    assert p_q.packed == g_q.packed == (path == "native")
    approx, tau = certified.approximate(p_q, g_q, len(gallery), levels)
    exact = certified.exact_block(probe, gallery)
    err = (approx.double() - exact).abs()
    assert bool((err <= tau.double()).all()), float((err - tau.double()).max())
    useful = 0.05 if levels == 1 else 0.002
    assert float((tau / approx.clamp_min(1e-6))[10:].median()) < useful  # and is useful


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


def test_auto_takes_int8_only_where_it_pays():
    from gaittrain.evaluation.metrics import AUTO_PAIRS, fast_int8, resolve_precision

    assert resolve_precision("auto", "euclidean", "cpu", 10) == "fp32"
    expected = "int8" if fast_int8(torch.device("cpu")) else "fp32"
    assert resolve_precision("auto", "euclidean", "cpu", AUTO_PAIRS) == expected
    assert resolve_precision("auto", "cosine", "cpu", AUTO_PAIRS) == "fp32"
    with pytest.raises(ValueError, match="euclidean"):
        resolve_precision("int8", "cosine", "cpu", 1)


MEASURE = textwrap.dedent(
    """
    import json, sys, numpy as np, torch
    from gaittrain.evaluation.metrics import retrieve

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    cap, precision = int(sys.argv[1]), sys.argv[2]
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3000, 4, 64, generator=g)
    gallery = means + 0.5 * torch.randn(3000, 4, 64, generator=g)
    probe = means[:2000] + 0.5 * torch.randn(2000, 4, 64, generator=g)
    ids = np.arange(3000)
    retrieve(probe, ids[:2000], gallery, ids, precision=precision, max_memory=cap)  # warm-up
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current size
    start = hwm()
    r = retrieve(probe, ids[:2000], gallery, ids, precision=precision, max_memory=cap)
    print(json.dumps({"start": start, "peak": hwm(), "rank1": float(r.cmc(1)[0])}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8", "int8-torch"])
def test_distance_stage_stays_under_its_cap(precision, request):
    """Measured: the peak resident size while ranking 2,000 probes against 3,000 sequences
    grows by less than --max-memory plus a small constant (the full float64 matrix alone
    would take 48 MB). A fixed malloc mmap threshold returns freed blocks at once, so that the
    peak counts live buffers, not what the allocator kept from earlier calls."""
    cap = 8 << 20
    if precision == "int8":  # through the kernels of the module's cache ($GAIT_CACHE)
        request.getfixturevalue("kernels")
    native_kernels = "0" if precision == "int8-torch" else "1"
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(cap), precision.split("-")[0]],
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
def test_int8_on_cuda_equals_float64() -> None:
    """int8 tensor-core products (torch._int_mm on CUDA), re-checked: the float64 figures."""
    gallery, g_ids = structured(300, 2, 8, 64, 1.0, seed=0)
    probe, p_ids = structured(300, 1, 8, 64, 1.0, seed=0)
    probe = probe + torch.randn(probe.shape, generator=torch.Generator().manual_seed(1))
    fast = retrieve(probe.cuda(), p_ids, gallery.cuda(), g_ids, precision="int8")
    ref = reference64(probe, p_ids, gallery, g_ids)
    np.testing.assert_array_equal(fast.first, ref[0])
    np.testing.assert_array_equal(fast.nearest, ref[3])
    np.testing.assert_allclose(fast.ap, ref[1], atol=1e-12)
