"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model, optimizer, scheduler, grad scaler and loss-module states, every RNG
state (Python, NumPy, torch CPU and CUDA) and the next iteration. It contains only tensors and
plain Python values, so it loads with ``torch.load(..., weights_only=True)``. A file that does
not load that way, or lacks a gait checkpoint's entries, is refused with a one-line
:class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from pathlib import Path

import numpy as np
import torch

from gaitprep.errors import GaitError, first_line
from gaitprep.files import atomic_write

NAME = re.compile(r"iter-(\d{6,})\.pt$")
#: Entries every gait checkpoint has (training checkpoints have more).
REQUIRED = ("iteration", "model", "config")


class CheckpointError(GaitError):
    """A file that is not a complete gait checkpoint."""


def rng_state(device: torch.device | str = "cpu") -> dict:
    """Every RNG state this process draws from: Python, NumPy, torch's CPU generator and, on CUDA,
    the generator of the device in use (only that one: a run resumed on a machine with fewer
    GPUs, or under another CUDA_VISIBLE_DEVICES, restores it all the same)."""
    device = torch.device(device)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict, device: torch.device | str = "cpu") -> None:
    """Restore :func:`rng_state` (its tensors on the CPU, as :func:`load` gives them). A CUDA
    state is restored to ``device`` when that is a CUDA device, and ignored on the CPU."""
    device = torch.device(device)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].cpu().numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # written by gait before issue 9: one state per visible device
        cuda = cuda[0] if cuda else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)


def path_for(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"iter-{iteration:06d}.pt"


def save(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` via a temporary file, fsync and an atomic rename.

    The state is serialized in memory first, so a full disk surfaces as one OS error naming
    ``path`` (torch's own writer reports it without the file name) and leaves no partial file.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getbuffer())


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = [
        (int(m.group(1)), p)
        for p in (Path(run_dir) / "checkpoints").glob("iter-*.pt")
        if (m := NAME.search(p.name))
    ]
    return max(found)[1] if found else None


def load(path: Path) -> dict:
    """A checkpoint's state, loaded with ``weights_only=True`` (never arbitrary code), every
    tensor on the CPU whatever device wrote it: ``load_state_dict`` moves each to where its module
    or optimizer lives (Adam's step counters stay on the CPU, as they should).

    Raises CheckpointError for a truncated, damaged or foreign file.
    """
    return load_with_fingerprint(path)[0]


def load_with_fingerprint(path: Path) -> tuple[dict, str]:
    """:func:`load`, and the SHA-256 of the very bytes it was loaded from (one read of the file,
    so the fingerprint cannot describe a newer file than the weights)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of foreign objects, other formats
        raise CheckpointError(
            f"{path} is not a readable gait checkpoint ({_cause(e)}); it is truncated, damaged or "
            "another program's file: use a checkpoints/iter-*.pt file of a gait run"
        ) from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a gait checkpoint (no {', '.join(missing)}); "
            "use a checkpoints/iter-*.pt file of a gait run"
        )
    return state, hashlib.sha256(raw).hexdigest()


def _cause(e: Exception) -> str:
    """torch's reason in a few words (its own text may suggest unsafe loading: never repeat it)."""
    text = str(e).lower()
    if "weights_only" in text or "unpickl" in text:
        return "it is not a tensors-only file that loads safely"
    return first_line(e).split(". ")[0]
