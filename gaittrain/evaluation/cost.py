"""`--precision auto`: the path predicted fastest for a retrieval on this device, by measurement.

Every path gives exact figures (``fp32``: those of float32 distances; ``int8`` and ``lowrank``:
those of float64 ones); only the time differs, and it depends on the device more than on any
CPU flag. So ``auto`` predicts the seconds of each path from a **calibration**: the first time a
machine ranks a large Euclidean retrieval, each path ranks a small synthetic block (256 probes
x 2,048 gallery sequences x 16 parts at the embeddings' width) and the seconds per pair and part
are kept, with the seconds per re-checked pair, in ``$GAIT_CACHE/eval-calibration.json`` (default
``~/.cache/gait``) under the device (CPU model or GPU name), PyTorch's version and threads,
whether the native int8 kernels run, and the width. The prediction for b probes x n gallery
sequences of P parts:

* ``fp32``: b n P t_fp32;
* ``int8`` (only where it has a fast implementation: the native kernels, or a CUDA GPU of
  compute capability 8.0 or later, :func:`fast_int8`): b n P t_int8 plus b :data:`OPEN`
  re-checked pairs;
* ``lowrank`` (only where the gallery's spectrum lets r directions keep all but
  :data:`~gaittrain.evaluation.lowrank.RESIDUAL` of its energy, r at most dim / 4): b n P (t_0 +
  r t_1) (a straight line through the times at two ranks) plus b :data:`OPEN` re-checked pairs.

Retrievals of fewer than :data:`AUTO_PAIRS` pairs, and the cosine metrics, take ``fp32`` at
once: their cost is mostly per call, and the certified paths compute the Euclidean metric only.
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from pathlib import Path

import torch

from gaitprep.errors import GaitError
from gaitprep.files import atomic_output
from gaittrain.evaluation import certified, lowrank, native
from gaittrain.evaluation.metrics import PATHS, distance_blocks, squared_norms

#: What ``--precision`` takes: a path, or the one predicted fastest.
PRECISIONS = (*PATHS, "auto")
#: ``auto`` predicts only for retrievals of at least this many probe x gallery pairs (an OU-MVLP
#: view pair has 26.6 million; a CASIA-B cell 20,000, where fp32 is taken at once).
AUTO_PAIRS = 1 << 22
#: Re-checked pairs per probe expected of the certified paths, its matches included (on the
#: bench's model-like OU-MVLP embeddings: int8 about 5, lowrank about 2 at r = 32).
OPEN = {"int8": 5, "lowrank": 2}
#: The synthetic block a calibration ranks: probes, gallery sequences, parts.
BLOCK = (256, 2048, 16)
#: Bumped when what a calibration measures changes (older entries are measured again).
VERSION = 3  # 2: lowrank's lower ends only; 3: the fused re-check


def fast_int8(device: torch.device | str) -> bool:
    """Whether the int8 path has a fast implementation on ``device``: a CPU where the native
    kernels run (:mod:`gaittrain.evaluation.native`), or a CUDA GPU of compute capability 8.0
    or later (int8 tensor cores). Elsewhere PyTorch's int8 path is slower than float32 (docs/
    evaluation.md), and ``auto`` does not time it."""
    device = torch.device(device)
    if device.type == "cpu":
        return native.kernels() is not None
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(
    precision: str,
    metric: str,
    device: torch.device | str,
    probes: int,
    gallery: int,
    shape: tuple[int, int],
    rank: int | None = None,
) -> str:
    """The path (``fp32``, ``int8`` or ``lowrank``) that ranks ``probes`` against ``gallery``
    sequences of ``shape`` (parts, dim) on ``device``: ``precision`` itself, or for ``auto``
    the one :func:`predict` finds fastest. ``rank``: the low-rank path's rank for this gallery,
    or None where its spectrum does not qualify (the module's docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if precision in ("int8", "lowrank") and metric != "euclidean":
        raise ValueError(f"precision {precision} computes the euclidean metric only")
    if precision != "auto":
        return precision
    if metric != "euclidean" or probes * gallery < AUTO_PAIRS:
        return "fp32"
    seconds = predict(calibration(device, shape[1]), probes, gallery, shape[0], rank)
    return min(seconds, key=seconds.get)


def predict(rates: dict, probes: int, gallery: int, parts: int, rank: int | None) -> dict:
    """Predicted seconds of each path that may run (the module's docstring), from a
    :func:`calibration`'s ``rates``.

    Examples
    --------
    >>> rates = {"fp32": 20e-9, "lowrank": [1e-9, 0.05e-9], "recheck": 2e-7}
    >>> {k: round(v, 3) for k, v in predict(rates, 1000, 5000, 62, 32).items()}
    {'fp32': 6.2, 'lowrank': 0.831}
    >>> list(predict(rates, 1000, 5000, 62, None))  # a gallery whose spectrum does not qualify
    ['fp32']
    """
    work = probes * gallery * parts
    seconds = {"fp32": work * rates["fp32"]}
    recheck = probes * parts * rates["recheck"]
    if "int8" in rates:
        seconds["int8"] = work * rates["int8"] + OPEN["int8"] * recheck
    if rank is not None:
        base, per_rank = rates["lowrank"]
        seconds["lowrank"] = work * (base + rank * per_rank) + OPEN["lowrank"] * recheck
    return seconds


def calibration(device: torch.device | str, dim: int) -> dict:
    """The rates :func:`predict` takes for embeddings of width ``dim`` on ``device``: seconds per
    pair and part of ``fp32``, of ``int8`` (where :func:`fast_int8`), of ``lowrank`` (a base
    and a slope per rank) and of a re-check; measured once per machine (:func:`_measure`) and
    kept in ``$GAIT_CACHE/eval-calibration.json``."""
    return _calibration(_key(torch.device(device), dim))


def calibration_file() -> Path:
    return native.cache_dir() / "eval-calibration.json"


@functools.cache
def _calibration(key: str) -> dict:
    path = calibration_file()
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    if not isinstance(kept, dict):
        kept = {}
    if not isinstance(kept.get(key), dict):
        kept[key] = _measure(json.loads(key))
        try:
            with atomic_output(path, f".{os.getpid()}.partial") as tmp:
                tmp.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
        except GaitError as e:  # measured again by the next process
            warnings.warn(f"--precision auto: calibration not kept ({e})", stacklevel=4)
    return kept[key]


def _key(device: torch.device, dim: int) -> str:
    """What a calibration depends on, as the JSON text that keys it."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()
    return json.dumps(
        {
            "device": device.type if device.index is None else f"{device.type}:{device.index}",
            "model": name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "int8": fast_int8(device),
            "dim": dim,
            "version": VERSION,
        },
        sort_keys=True,
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _measure(key: dict) -> dict:
    """Time every path on a synthetic block of :data:`BLOCK` (the fastest of three runs each,
    after one that warms up, e.g. compiles)."""
    device, dim = torch.device(key["device"]), key["dim"]
    b, n, parts = BLOCK
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(b, parts, dim, generator=g).to(device)
    gallery = torch.randn(n, parts, dim, generator=g).to(device)
    work = b * n * parts

    def fp32():
        norms = (squared_norms(probe), squared_norms(gallery))
        for _ in distance_blocks(probe, gallery, max_memory=1 << 40, norms=norms):
            pass

    def ranked(rank):
        basis = lowrank.fit(gallery, rank)
        gallery_p = lowrank.project(gallery, basis, False)
        return lambda: lowrank.interval(lowrank.project(probe, basis, True), gallery_p)

    low, high = lowrank.RANK_STEP, max(2 * lowrank.RANK_STEP, dim // 4)
    t_low, t_high = _seconds(ranked(low), device), _seconds(ranked(high), device)
    slope = max(t_high - t_low, 0.0) / (high - low)
    rates = {
        "fp32": _seconds(fp32, device) / work,
        "lowrank": [max(t_low - low * slope, 0.0) / work, slope / work],
    }
    if key["int8"]:
        gallery_q = certified.quantize(gallery, probe_side=False)
        with certified.threads_for(gallery_q):
            rates["int8"] = _seconds(
                lambda: certified.interval(certified.quantize(probe, True), gallery_q, n, 1),
                device,
            )
        rates["int8"] /= work
    i = torch.arange(n, device=device) % b
    j = torch.arange(n, device=device)
    recheck = _seconds(lambda: certified.exact_pairs(probe, gallery, i, j), device)
    rates["recheck"] = recheck / (n * parts)
    return rates


def _seconds(fn, device: torch.device, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best
