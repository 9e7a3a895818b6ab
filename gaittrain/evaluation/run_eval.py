"""Evaluate a training run on a pack: the work behind ``gait eval``, as plain functions.

:func:`evaluate_run` resolves the protocol and test subjects, makes or reuses the run's
embeddings of the pack (:func:`~gaittrain.evaluation.embed.ensure_embeddings`), scores them and
adds what a reader must know about the numbers: the checkpoint, the pack, the storage the
figures were computed from (float32, the model's values, or float16), and a warning when test
subjects were among the run's training subjects (or, for a run imported from OpenGait, that its
training subjects are not known). :func:`render_report` turns the result into
JSON, CSV or the HTML page. :func:`memory_size` reads ``--max-memory``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import torch

from gaittrain.data.dataset import pack_subjects
from gaittrain.data.splits import SplitError, select
from gaittrain.evaluation import native
from gaittrain.evaluation.embed import ensure_embeddings
from gaittrain.evaluation.embeddings_file import DEFAULT_STORAGE
from gaittrain.evaluation.protocol import evaluate, load_eval_protocol
from gaittrain.evaluation.report import to_csv, to_html, to_json
from gaittrain.run_folder import (
    RunPaths,
    default_embeddings,
    imported_note,
    read_log,
    run_folder,
    trained_test_subjects,
)

#: The memory caps ``gait eval --max-memory`` accepts. A size without a unit is in bytes, so the
#: least, 1 MB, refuses a forgotten unit (256) rather than crawl through one-probe blocks; 1 TB
#: is beyond any machine gait runs on.
MIN_MEMORY, MAX_MEMORY = 1 << 20, 1 << 40
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def memory_size(text: str) -> int:
    """Bytes of a size like ``256MB``, ``2GB``, ``1.5g`` or ``1048576`` (units of 1024 bytes),
    between :data:`MIN_MEMORY` and :data:`MAX_MEMORY`; ValueError, in one line, otherwise
    (``inf``, ``nan``, ``0``, a negative size).

    Examples
    --------
    >>> memory_size("256MB") == 256 << 20
    True
    >>> memory_size("0")
    Traceback (most recent call last):
    ValueError: '0' is less than 1MB, the least memory an evaluation can work in
    """
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a positive size like 256MB or 2GB")
    size = float(text.strip()[: found.start(2)]) * _UNITS[found.group(2).lower()]
    if not math.isfinite(size) or size > MAX_MEMORY:
        raise ValueError(f"{text!r} is more than 1TB; give a size like 256MB or 2GB")
    if size < MIN_MEMORY:
        raise ValueError(f"{text!r} is less than 1MB, the least memory an evaluation can work in")
    return int(size)


def evaluate_run(
    run: Path,
    pack: Path,
    protocol: str = "casia-b-lt",
    test_subjects: str | None = None,
    include_identical: bool = False,
    metric: str = "euclidean",
    max_memory: int = 256 << 20,
    max_frames: int = 0,
    device: torch.device | str = "cpu",
    notify: Callable[[str], None] = print,
    precision: str = "auto",
    storage: str = DEFAULT_STORAGE,
) -> dict:
    """The protocol result of ``run`` (a run folder or checkpoint) on ``pack``, computed from
    embeddings stored in ``storage`` (float32: the model's values; float16: rounded, half the
    bytes), which the result names (``storage``).

    ``notify`` receives one-line notes: why embeddings were computed again, that ``int8`` runs
    without the native kernels (:func:`~gaittrain.evaluation.native.fallback_note`), and a
    warning when test subjects were trained on (the result then also lists them under
    ``warnings``).
    """
    proto = load_eval_protocol(protocol)
    test = select(pack_subjects([pack]), test_subjects or proto.test)
    if not test:
        raise SplitError(f"no subject of {pack} is a test subject ({test_subjects or proto.test})")
    emb_path = default_embeddings(run, pack)
    store, attrs, reason = ensure_embeddings(
        run, pack, emb_path, test, torch.device(device), max_frames, stream=True, storage=storage
    )
    if reason is not None and reason != "no embeddings yet":
        notify(f"embedded again: {reason}")
    slow = native.fallback_note(device) if precision == "int8" else None
    if slow is not None:  # asked for int8 where only PyTorch's int8 path runs
        notify(slow)
    with store:  # one gallery view and one block of probes read at a time
        result = evaluate(
            store,
            proto,
            test,
            include_identical,
            metric,
            max_memory=max_memory,
            device=device,
            precision=precision,
        )
    result.update(
        checkpoint=attrs.get("checkpoint"),
        pack=str(pack),
        storage=attrs.get("storage", "float32"),
        warnings=run_warnings(run, attrs, test),
    )
    for warning in result["warnings"]:
        notify(f"warning: {warning}")
    return result


def run_warnings(run: Path, attrs: dict, test: list[str]) -> list[str]:
    """What a reader of ``run``'s figures on the test subjects ``test`` must know: that some
    were its training subjects, or, for a run imported from OpenGait, that its training subjects
    are not known. ``attrs``: the embeddings file's."""
    warnings = []
    seen, same_pack = trained_test_subjects(run, attrs, test)
    if seen:
        ids = ", ".join(seen[:5]) + (", ..." if len(seen) > 5 else "")
        where = "" if same_pack else " (in another pack of the same dataset)"
        warnings.append(
            f"{len(seen)} of the {len(test)} test subjects ({ids}) were training subjects of "
            f"this run{where}: if they are the same people, these figures do not measure "
            "recognition of unseen people"
        )
    note = imported_note(run)
    if note is not None:
        warnings.append(note)
    return warnings


def render_report(result: dict, fmt: str, run: Path, pack: Path) -> str:
    """The report text of an :func:`evaluate_run` result: ``json``, ``csv`` or ``html``."""
    if fmt == "json":
        return to_json(result)
    if fmt == "csv":
        return to_csv(result)
    folder = run_folder(run)
    paths = RunPaths(folder)
    return to_html(
        result,
        title=f"{folder.name} on {Path(pack).name}",
        pack_path=Path(pack),
        log=read_log(paths.log, lenient=True),
        config_text=paths.config.read_text() if paths.config.exists() else "",
        provenance={
            "run": str(folder),
            "checkpoint": result.get("checkpoint"),
            "protocol": result.get("protocol"),
        },
    )
