"""Summaries, checks and montages of a gait pack (``gait inspect``)."""

from __future__ import annotations

from collections import Counter

import numpy as np
from tqdm import tqdm

from gaitprep.pack import DamagedSequence, Pack

LENGTH_BINS = (0, 5, 10, 20, 30, 50, 75, 100, 150, 200)


def summarize(pack: Pack) -> dict:
    """Counts of subjects, conditions, views, sequences and frames, and a length histogram."""
    lengths = pack.length
    edges = [b for b in LENGTH_BINS if b < max(int(lengths.max(initial=0)), 1)] + [None]
    hist = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        top = np.inf if hi is None else hi
        label = f"{lo}+" if hi is None else f"{lo}-{hi - 1}"
        hist[label] = int(((lengths >= lo) & (lengths < top)).sum())
    return {
        "path": str(pack.path),
        "format": pack.attrs.get("format"),
        "version": pack.attrs.get("version"),
        "dataset": pack.attrs.get("dataset"),
        "size": pack.size,
        "subjects": len(set(pack.columns["subject"])),
        "conditions": dict(sorted(Counter(pack.columns["condition"]).items())),
        "views": dict(sorted(Counter(pack.columns["view"]).items())),
        "sequences": len(pack),
        "frames": int(lengths.sum()),
        "length": {
            "min": int(lengths.min()) if len(lengths) else 0,
            "mean": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
            "max": int(lengths.max()) if len(lengths) else 0,
        },
        "length_histogram": hist,
        "attrs": pack.attrs,
    }


def montage(pack: Pack, sequences: int = 8, frames: int = 12, seed: int = 0) -> np.ndarray:
    """A grid image: ``sequences`` rows drawn at random (by ``seed``), ``frames`` evenly spaced
    frames of each, with a one-pixel grey grid."""
    rng = np.random.default_rng(seed)
    rows = sorted(rng.choice(len(pack), size=min(sequences, len(pack)), replace=False))
    s = pack.size
    grid = np.full((len(rows) * (s + 1) + 1, frames * (s + 1) + 1), 64, np.uint8)
    for r, i in enumerate(rows):
        seq = pack[int(i)]
        picks = np.linspace(0, len(seq) - 1, num=min(frames, len(seq))).round().astype(int)
        for c, j in enumerate(picks):
            grid[1 + r * (s + 1) : 1 + r * (s + 1) + s, 1 + c * (s + 1) : 1 + c * (s + 1) + s] = (
                seq[j]
            )
    return grid


def verify(pack: Pack, progress: bool = False) -> list[tuple[str, str]]:
    """Read every sequence of ``pack`` (frames and frame sources) and check its frames against
    their CRC-32. Returns ``(subject-condition-seq-view, reason)`` of each damaged sequence."""
    damaged = []
    bar = tqdm(
        total=int(pack.length.sum()),
        unit="frame",
        unit_scale=True,
        desc="verify",
        disable=not progress,
        mininterval=0.5,
    )
    with bar:
        for i in range(len(pack)):
            try:
                pack[i]
                pack.frame_source(i)
            except DamagedSequence as e:
                damaged.append((e.key, e.reason))
            bar.update(int(pack.length[i]))
    return damaged
