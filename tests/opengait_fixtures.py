"""Helpers shared by the tests against OpenGait's reference fixtures: a pack of the fixtures'
input sequences and `gait import-checkpoint` of one fixture's checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gaitprep.pack import PackWriter
from tests.cli import gait


def fixture_pack(fixtures: Path, path: Path) -> Path:
    """A pack of the six input sequences in ``fixtures``, as they are (OpenGait's 64 x 64
    frames)."""
    inputs = np.load(fixtures / "inputs.npz")
    attrs = {"dataset": "casia-b", "min_sum": 10000, "binarize": False, "largest_blob": False}
    writer = PackWriter(path, 64, attrs=attrs)
    for key in inputs.files:
        subject, condition, seq, view = key.split("-")
        meta = dict(subject=subject, condition=condition, seq=seq, view=view, source=key)
        writer.append(meta, inputs[key], np.arange(len(inputs[key])))
    writer.close()
    return path


def import_checkpoint(
    case: Path, out: Path, *extra, checkpoint: Path | None = None, config: Path | None = None
) -> object:
    """`gait import-checkpoint` of the fixture folder ``case``'s checkpoint and config (or the
    ``checkpoint`` and ``config`` given instead) into ``out``, with ``extra`` arguments."""
    return gait(
        "import-checkpoint",
        checkpoint or case / "checkpoint.pt",
        "--config",
        config or case / "config.yaml",
        "--out",
        out,
        *extra,
    )
