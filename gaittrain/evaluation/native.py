"""The fused int8 distance kernels (``int8_distances.c``): built once per machine by an
explicit step, ``gait build-kernels`` (:func:`build`; ``make install`` runs it), then loaded.

PyTorch computes an int8 product fast (oneDNN, VNNI) but writes every product to memory, and
the square roots over 62 parts then read them back: on a 2-core CPU that traffic cost more than
the products. The C kernels keep a tile's products in registers and re-check pairs without
temporaries. :func:`build` compiles them with the C compiler already at hand for
``torch.compile`` (``$CC``, else ``cc``; given :data:`BUILD_TIMEOUT` seconds) into
``$GAIT_CACHE`` (default ``~/.cache/gait``) under the hash of the source, compiler and flags, so
a changed source is a new library, never the old one reused. It is the only function here that
runs the compiler.

Beside each library a record (``.json``: its size and SHA-256) is written, each file whole or
not at all. Before loading, the library must match its record; once loaded, it must export
every kernel and report this module's :data:`INTERFACE` and tile (:data:`ROW_TILE` x
:data:`COL_TILE`). Loading never compiles: :func:`kernels` (and everything that asks whether
int8 can run) loads the library already built for this source, or returns None, with
:func:`unavailable` saying why: turned off (``GAIT_NATIVE=0``), no AVX-512 VNNI, not built
(:data:`NOT_BUILT`), or a library that fails its checks (skipped with a warning;
:func:`build` compiles it again). :mod:`gaittrain.evaluation.certified` then uses PyTorch: the
same figures, more slowly.
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import functools
import hashlib
import json
import os
import shutil
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from gaitprep.errors import GaitError
from gaitprep.files import atomic_output

SOURCE = Path(__file__).with_name("int8_distances.c")
FLAGS = ["-O3", "-shared", "-fPIC", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vnni"]
FLAGS += ["-mfma", "-mf16c", "-fno-math-errno", "-ffp-contract=off"]
#: Seconds the compiler may take before the kernels are given up.
BUILD_TIMEOUT = 120
#: The version of the kernels' arguments and layouts this module calls them with (the C
#: source's ``INTERFACE``, returned by ``gait_native_interface``; raise both together).
INTERFACE = 1
#: Probe rows and gallery columns of a kernel tile (MR, NR * 16 in the C source; returned by
#: ``gait_native_row_tile`` and ``gait_native_col_tile``).
ROW_TILE, COL_TILE = 8, 48
#: The kernels this module calls, and the functions it checks them by.
KERNELS = ("bounds", "candidates", "pairs", "quantize_f16", "quantize_f32")
KERNELS += ("exact_f16", "exact_f32")
CHECKS = ("gait_native_interface", "gait_native_row_tile", "gait_native_col_tile")
#: Why the kernels do not run on a machine that can run them but where none is built.
NOT_BUILT = "not built: run `gait build-kernels`"


class KernelError(GaitError):
    """Kernels just compiled here that fail their own checks (a broken toolchain, or a C
    source and ``native.py`` of different interfaces): a problem to report, not a limit of the
    machine."""


def cache_dir() -> Path:
    return Path(os.environ.get("GAIT_CACHE", Path.home() / ".cache" / "gait"))


def _cpu_has_vnni() -> bool:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return {"avx512f", "avx512bw", "avx512dq", "avx512_vnni", "f16c"} <= flags


def _machine() -> str | None:
    """Why this process cannot run the kernels whatever is built (None: it can)."""
    if os.environ.get("GAIT_NATIVE", "1") == "0":
        return "turned off by GAIT_NATIVE=0"
    if not _cpu_has_vnni():
        return "no AVX-512 VNNI on this CPU"
    return None


def _compiler() -> str:
    return os.environ.get("CC") or "cc"


def _library(compiler: str) -> Path:
    """Where the library of this source, compiler and flags is cached."""
    source = SOURCE.read_bytes()
    tag = hashlib.sha256(source + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    return cache_dir() / f"int8_distances-{tag}.so"


def _record(library: Path) -> Path:
    """The record written beside ``library``: its size and SHA-256."""
    return library.with_suffix(".json")


def _digest(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _compile(compiler: str, target: Path) -> None:
    """Compile the source into ``target``, then write its record (each whole or not at all;
    temporary names of their own, so that racing builds do not collide)."""
    with atomic_output(target, f".{os.getpid()}.partial") as built:
        command = [compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"]
        try:
            subprocess.run(
                command, check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT
            )
        except OSError as e:  # the compiler itself, not the output, failed
            raise subprocess.SubprocessError(f"cannot run {compiler}: {e.strerror or e}") from e
        record = _digest(built.read_bytes())
    with atomic_output(_record(target), f".{os.getpid()}.partial") as written:
        written.write_text(json.dumps(record))


def _damage(library: Path) -> str | None:
    """Why ``library`` may not be loaded (None: its size and SHA-256 are those of its record):
    a truncated or replaced file would crash the process or call the wrong code."""
    try:
        record = json.loads(_record(library).read_text())
        data = library.read_bytes()
    except (OSError, ValueError):
        return f"{library.name} has no readable record of its size and checksum"
    found = _digest(data)
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in found.items()):
        return f"{library.name} is not the library its record describes (size or SHA-256)"
    return None


def _open(library: Path) -> tuple[ctypes.CDLL | None, str | None]:
    """``library`` loaded, or None and why not: it must match its record, export every kernel,
    and report :data:`INTERFACE` and the tile of :data:`ROW_TILE` x :data:`COL_TILE`."""
    reason = _damage(library)
    if reason is not None:
        return None, reason
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as e:
        return None, str(e).splitlines()[0]
    missing = [name for name in (*CHECKS, *KERNELS) if not hasattr(lib, name)]
    if missing:
        reason = f"{library.name} lacks {', '.join(missing)}"
    else:
        found = lib.gait_native_interface(), lib.gait_native_row_tile(), lib.gait_native_col_tile()
        if found != (INTERFACE, ROW_TILE, COL_TILE):
            reason = (
                f"{library.name} has interface {found[0]} and {found[1]} x {found[2]} tiles, "
                f"native.py expects interface {INTERFACE} and {ROW_TILE} x {COL_TILE} tiles"
            )
    if reason is None:
        return lib, None
    _close(lib)
    return None, reason


def _close(lib: ctypes.CDLL) -> None:
    """Unload ``lib`` (once per load), so that a rebuilt file of that name is read anew."""
    _ctypes.dlclose(lib._handle)


def build() -> tuple[Path | None, str]:
    """Build the kernels into the cache, or verify the build already there (``gait
    build-kernels``): ``(library, "built")`` or ``(library, "up to date")``; ``(None, why)``
    where this machine cannot: ``GAIT_NATIVE=0``, no AVX-512 VNNI, no C compiler, or one that
    fails on the source or takes over :data:`BUILD_TIMEOUT` s. A library that fails its checks
    (truncated, foreign, of another interface) is compiled again. Raises
    :class:`~gaitprep.errors.OutputError` where the cache cannot be written and
    :class:`KernelError` where a library just compiled fails its checks: problems to fix, not
    limits of the machine. The next :func:`kernels` looks afresh."""
    try:
        return _build()
    finally:
        _load.cache_clear()


def _build() -> tuple[Path | None, str]:
    reason = _machine()
    if reason is not None:
        return None, reason
    compiler = _compiler()
    target = _library(compiler)
    if target.exists():
        lib, _ = _open(target)
        if lib is not None:
            _close(lib)
            return target, "up to date"
    if shutil.which(compiler) is None:
        return None, f"no C compiler {compiler} found (set CC to one)"
    try:
        _compile(compiler, target)
    except subprocess.SubprocessError as e:
        return None, _build_error(e, compiler)
    lib, reason = _open(target)
    if lib is None:
        raise KernelError(f"the native kernels just built in {target.parent} fail: {reason}")
    _close(lib)
    return target, "built"


def _build_error(e: Exception, compiler: str) -> str:
    """One line on why the kernels could not be built."""
    if isinstance(e, subprocess.TimeoutExpired):
        return f"the C compiler {compiler} took over {BUILD_TIMEOUT} s"
    if isinstance(e, subprocess.CalledProcessError):
        lines = (e.stderr or "").strip().splitlines()
        errors = [line for line in lines if "error" in line] or lines
        return errors[0] if errors else f"{compiler} failed (exit status {e.returncode})"
    return (str(e) or type(e).__name__).splitlines()[0]


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """The kernels already built for this source, loaded and declared, or None and why not
    (with a warning where a library was found but fails its checks). Never compiles."""
    reason = _machine()
    if reason is not None:
        return None, reason
    try:
        library = _library(_compiler())
    except OSError as e:
        return None, f"cannot read the kernels' source: {e.strerror or e}"
    if not library.exists():
        return None, NOT_BUILT
    lib, reason = _open(library)
    if lib is None:
        reason = f"{reason}; `gait build-kernels` builds it again"
        warnings.warn(f"int8 distances: no native kernels ({reason})", stacklevel=3)
        return None, reason
    return _declare(lib), None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """``lib`` with its kernels' argument and result types."""
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    f32 = ctypes.c_float
    lib.bounds.argtypes = [ptr] * 12 + [i64] * 5 + [f32] * 2 + [i64] * 2 + [ptr] * 2
    lib.candidates.argtypes = [ptr] * 2 + [i64] * 2 + [ptr] * 2 + [i64] * 3 + [ptr] * 3
    lib.pairs.argtypes = [ptr, i64, ptr, i64, i64, ptr, ptr]
    lib.bounds.restype = lib.candidates.restype = lib.pairs.restype = None
    for name in ("quantize_f16", "quantize_f32"):
        getattr(lib, name).argtypes = [ptr] + [i64] * 5 + [ctypes.c_float] + [i64] * 2 + [ptr] * 10
        getattr(lib, name).restype = None
    for name in ("exact_f16", "exact_f32"):
        getattr(lib, name).argtypes = [ptr] * 4 + [i64] * 3 + [ptr]
        getattr(lib, name).restype = None
    return lib


def kernels() -> ctypes.CDLL | None:
    """The loaded kernels, or None where they cannot run here (:func:`unavailable` says why)."""
    return _load()[0]


def unavailable() -> str | None:
    """Why the kernels do not run here, in a few words (None: they do); loaded (never built)
    once per process, then answered at once."""
    return None if kernels() is not None else _load()[1] or "turned off"


def fallback_note(device: torch.device | str) -> str | None:
    """The line to show where int8 was asked for on ``device`` and ranks through PyTorch's
    int8 products instead of the kernels (a CPU without them), or None."""
    if torch.device(device).type != "cpu" or kernels() is not None:
        return None
    return (
        f"int8: native kernels unavailable ({unavailable()}); ranking with the PyTorch int8 "
        "path, slower than --precision fp32; figures identical"
    )


def _ptr(t: torch.Tensor) -> int:
    assert t.is_contiguous() and t.device.type == "cpu"
    return t.data_ptr()


_threads: int | None = None  # while ``exclusive``: the threads the kernels use


@contextlib.contextmanager
def exclusive():
    """The kernels use PyTorch's threads and PyTorch one thread meanwhile: its OpenMP workers
    otherwise spin-wait after each operation on the cores the kernels run on (a view pair of
    OU-MVLP took 1.62 s against 1.48 s, five alternating runs on 2 cores)."""
    global _threads
    before, outer = torch.get_num_threads(), _threads
    _threads = outer or before
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        _threads = outer


def _split(total: int, unit: int) -> list[tuple[int, int]]:
    """[begin, end) ranges of whole ``unit``s, one per thread."""
    threads = max(1, _threads or torch.get_num_threads())
    units = total // unit
    bounds = [unit * (units * t // threads) for t in range(threads + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="gait-native")


def _parallel(calls) -> None:
    """Run the ctypes calls (which let go of the GIL) on one thread each."""
    calls = list(calls)
    if len(calls) == 1:
        calls[0]()
        return
    for f in [_pool(len(calls)).submit(c) for c in calls]:
        f.result()


def bounds(pq, pq2, gq, gq2, shift, shift2, rowf, colf, psq, gsq, rfeat, cfeat, rounding, margin):
    """``lower``, ``upper`` [rows, cols] of every pair's distance (see the C source) from
    tensors in its layouts; ``rowf`` [terms, parts, rows], ``colf`` [terms, parts, cols] (1
    term: one level; 3: two, and ``pq2``, ``gq2``, ``shift2`` used)."""
    lib = kernels()
    parts, rows, dim = pq.shape
    terms, cols = rowf.shape[0], gsq.shape[1]
    assert gq.shape == (parts, cols // 16, dim // 4, 16, 4) and shift.shape == (parts, rows)
    assert colf.shape == (terms, parts, cols) and psq.shape == (parts, rows) == rowf.shape[1:]
    assert rfeat.shape == (3, parts, rows) and cfeat.shape == (3, parts, cols)
    lower = torch.empty(rows, cols)
    upper = torch.empty(rows, cols)
    args = [_ptr(t) for t in (pq, pq2, gq, gq2, shift, shift2, rowf, colf, psq, gsq, rfeat, cfeat)]
    args += [terms, parts, rows, cols, dim, rounding, margin]
    _parallel(
        functools.partial(lib.bounds, *args, a, b, _ptr(lower), _ptr(upper))
        for a, b in _split(cols, COL_TILE)
    )
    return lower, upper


def quantize(x: torch.Tensor, probe_side: bool, margin: float) -> tuple[torch.Tensor, ...]:
    """``q, q2, floats, sums`` of embeddings ``x`` [n, parts, dim] (float16 or float32;
    ``dim`` a multiple of 16, at most 1024), see the C source: the two int8 levels in the
    kernels' layout for probes (int8 [parts, rows, dim], zero rows up to whole tiles) or for a
    gallery (uint8 ``q + 128`` [parts, cols / 16, dim / 4, 16, 4], zero levels up to whole
    tiles); ``floats`` [6, parts, n] (scale, scale2, sq_norm, hat_norm, err_norm, rest_norm)
    and the levels' sums ``sums`` int32 [2, parts, rows]."""
    lib = kernels()
    x = x.contiguous()
    n, parts, dim = x.shape
    assert dim % 16 == 0 and dim <= 1024 and x.dtype in (torch.float16, torch.float32)
    fn = lib.quantize_f16 if x.dtype == torch.float16 else lib.quantize_f32
    # Only the padding is filled here (zero levels: 0 for probes, 128 in a gallery's bytes);
    # the kernel writes the rest.
    if probe_side:
        rows, panels = -(-n // ROW_TILE) * ROW_TILE, 0
        q, q2 = (torch.empty(parts, rows, dim, dtype=torch.int8) for _ in range(2))
        for t in (q, q2):
            t[:, n:] = 0
    else:
        rows, panels = n, -(-n // COL_TILE) * COL_TILE // 16
        shape = (parts, panels, dim // 4, 16, 4)
        q, q2 = (torch.empty(shape, dtype=torch.uint8) for _ in range(2))
        for t in (q, q2):
            t[:, n // 16 :] = 128
    floats = torch.zeros(6, parts, rows)
    sums = torch.zeros(2, parts, rows, dtype=torch.int32)
    outs = [_ptr(q), _ptr(q2), *(_ptr(t) for t in floats), *(_ptr(t) for t in sums)]
    _parallel(
        functools.partial(fn, _ptr(x), n, parts, dim, rows, panels, margin, a, b, *outs)
        for a, b in _split(n, 1)
    )
    return q, q2, floats[:, :, :n], sums


def candidates(lower, upper, n: int, dm_lo, dm_hi) -> tuple[torch.Tensor, ...]:
    """``mask`` bool [b, n] of the pairs to compute exactly, ``surely`` int64 [b, m], the
    pairs certainly nearer than each match, and ``count`` [b], the pairs of each row in the
    mask (see the C source); ``lower``, ``upper`` [b, >= n] contiguous, ``dm_lo``, ``dm_hi``
    float32 [b, m] around the matches' distances (NaN: padding)."""
    lib = kernels()
    rows, stride = lower.shape
    m = dm_lo.shape[1]
    mask = torch.empty(rows, n, dtype=torch.bool)
    surely = torch.empty(rows, m, dtype=torch.int64)
    count = torch.empty(rows, dtype=torch.int64)
    dm_lo, dm_hi = dm_lo.contiguous(), dm_hi.contiguous()
    args = [_ptr(lower), _ptr(upper), stride, n, _ptr(dm_lo), _ptr(dm_hi), m]
    _parallel(
        functools.partial(lib.candidates, *args, a, b, _ptr(mask), _ptr(surely), _ptr(count))
        for a, b in _split(rows, 1)
    )
    return mask, surely, count


def pairs(mask: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask.nonzero(as_tuple=True)`` of a sparse bool mask [rows, n] whose rows hold
    ``count`` [rows] ones, in the same order, on every thread."""
    lib = kernels()
    rows, n = mask.shape
    offset = torch.cumsum(count, 0) - count
    total = int(count.sum())
    out_i, out_j = torch.empty(total, dtype=torch.int64), torch.empty(total, dtype=torch.int64)
    args = [_ptr(mask), n, _ptr(offset)]
    _parallel(
        functools.partial(lib.pairs, *args, a, b, _ptr(out_i), _ptr(out_j))
        for a, b in _split(rows, 1)
    )
    return out_i, out_j


def exact_pairs(probe: torch.Tensor, gallery: torch.Tensor, i, j) -> torch.Tensor:
    """float64 distances of pairs ``(probe[i[t]], gallery[j[t]])``; embeddings [n, parts, dim]
    contiguous, both float16 or both float32, ``dim`` a multiple of 16."""
    lib = kernels()
    fn = lib.exact_f16 if probe.dtype == torch.float16 else lib.exact_f32
    i, j = i.contiguous(), j.contiguous()
    out = torch.empty(len(i), dtype=torch.float64)
    _, parts, dim = probe.shape
    _parallel(
        functools.partial(
            fn,
            _ptr(probe),
            _ptr(gallery),
            _ptr(i) + 8 * a,
            _ptr(j) + 8 * a,
            b - a,
            parts,
            dim,
            _ptr(out) + 8 * a,
        )
        for a, b in _split(len(i), 1)
    )
    return out
