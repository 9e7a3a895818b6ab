"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model, optimizer, scheduler, grad scaler and loss-module states, every RNG
state (Python, NumPy, torch CPU and CUDA) and the next iteration. It contains only tensors and
plain Python values, so it loads with ``torch.load(..., weights_only=True)``. A file that does
not load that way, lacks a gait checkpoint's entries or holds them in another structure (a state
dict with a key that is not a name, a list for a dict, a number for a tensor) is refused with a
one-line :class:`CheckpointError`.
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
    problem = state_problem(state)
    if problem:
        raise CheckpointError(
            f"{path} is damaged or not a gait checkpoint ({problem}); "
            "use a checkpoints/iter-*.pt file of a gait run"
        )
    return state, hashlib.sha256(raw).hexdigest()


def _a(value) -> str:
    """What ``value`` is, for a message: ``a list``, ``an int``."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _mapping_problem(value, what: str) -> str | None:
    """Why ``value`` is not a dict with string keys (said of ``what``), or None."""
    if not isinstance(value, dict):
        return f"{what} is {_a(value)}, not a dict"
    bad = next((key for key in value if not isinstance(key, str)), None)
    return None if bad is None else f"{what} has the key {bad!r:.40}, not a name"


def state_dict_problem(value, what: str) -> str | None:
    """Why ``value`` is not a state dict (names -> tensors), said of ``what``; None if it is one."""
    problem = _mapping_problem(value, what)
    if problem:
        return problem
    for key, tensor in value.items():
        if not isinstance(tensor, torch.Tensor):
            return f"{what} {key:.60} is {_a(tensor)}, not a tensor"
    return None


def _optimizer_problem(value) -> str | None:
    """Why ``value`` is not an optimizer's state dict: per-parameter dicts of tensors and numbers
    (``state``) and a list of parameter groups (``param_groups``), each listing its ``params``."""
    what = "its optimizer state"
    problem = _mapping_problem(value, what)
    if problem:
        return problem
    params, groups = value.get("state"), value.get("param_groups")
    if not isinstance(params, dict) or not all(isinstance(p, dict) for p in params.values()):
        return f"{what} has no dict of per-parameter dicts ('state')"
    for param in params.values():
        for key, v in param.items():
            if not isinstance(key, str) or not isinstance(
                v, (torch.Tensor, int, float, type(None))
            ):
                return f"{what} holds {key!r:.40}: {_a(v)}, not a tensor or a number"
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
    ):
        return f"{what} has no list of parameter groups with their params ('param_groups')"
    return None


def _rng_problem(value) -> str | None:
    """Why ``value`` is not :func:`rng_state`'s dict (as far as its tensors go), or None."""
    what = "its random-number state"
    problem = _mapping_problem(value, what)
    if problem:
        return problem
    numpy, cuda = value.get("numpy"), value.get("cuda")
    tensors = [
        ("numpy keys", numpy.get("keys") if isinstance(numpy, dict) else numpy),
        ("torch", value.get("torch")),
        *(("cuda", c) for c in (cuda if isinstance(cuda, list) else [cuda]) if c is not None),
    ]
    for name, tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            return f"{what}: {name} is {_a(tensor)}, not a tensor"
    return None


#: What each entry of a gait checkpoint holds, as a function that says why a value does not; the
#: entries only a training checkpoint has are checked where they are present.
ENTRIES = {
    "model": lambda v: state_dict_problem(v, "its model"),
    "config": lambda v: _mapping_problem(v, "its config"),
    "objective": lambda v: state_dict_problem(v, "its objective"),
    "optimizer": _optimizer_problem,
    "schedule": lambda v: _mapping_problem(v, "its schedule state"),
    "scaler": lambda v: _mapping_problem(v, "its scaler state"),
    "rng": _rng_problem,
}


def state_problem(state: dict) -> str | None:
    """Why a loaded checkpoint (a dict with the :data:`REQUIRED` entries) is not one gait writes:
    an entry that is not a name, an iteration that is not a count, an entry of :data:`ENTRIES`
    of another structure (a list for a dict, a number for a tensor). None if it is one.

    Checked when it is loaded, so that a damaged or foreign file is one line, not a traceback from
    where it is used (``load_state_dict``, the RNG restore, the training loop).
    """
    problem = _mapping_problem(state, "it")
    if problem:
        return problem
    iteration = state["iteration"]
    if type(iteration) is not int or iteration < 0:
        return f"its iteration is {iteration!r:.40}, not a count"
    for key, problem_of in ENTRIES.items():
        problem = problem_of(state[key]) if key in state else None
        if problem:
            return problem
    return None


def _cause(e: Exception) -> str:
    """torch's reason in a few words (its own text may suggest unsafe loading: never repeat it)."""
    text = str(e).lower()
    if "weights_only" in text or "unpickl" in text:
        return "it is not a tensors-only file that loads safely"
    return first_line(e).split(". ")[0]
