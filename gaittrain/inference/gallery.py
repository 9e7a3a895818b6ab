"""A gallery of named people that persists: add, list, remove; `gait identify` ranks it.

A gallery is an embeddings file (:mod:`gaittrain.evaluation.embed`): one row per enrolled
sequence, keyed (NAME, "gallery", N, "-"), and attributes recording the model that embedded it
(checkpoint path and fingerprint), the normalization every frame was made with and the storage
(float32 for a new gallery; a gallery keeps the storage it was made with). Adding with another
model is refused: distances between two models mean nothing. A name is 1 to 64 printable
characters (:func:`~gaittrain.inference.identify.valid_name`), checked when enrolling and again
when reading a gallery, which someone else may have made. Every change rewrites the file
atomically under its lock.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gaitprep.files import OutputLock
from gaitprep.process import Params
from gaittrain.evaluation.embeddings_file import (
    DEFAULT_STORAGE,
    read_embeddings,
    write_embeddings_file,
)
from gaittrain.inference.identify import IdentifyError, check_keys, embed_folder, valid_name
from gaittrain.trained_model import NORMALIZATION, TrainedModel, params_from


def _read(gallery: Path) -> tuple[dict, dict]:
    """A gallery's embeddings and attributes (none for a gallery not made yet), its names
    checked."""
    if not Path(gallery).exists():
        return {}, {}
    emb, attrs = read_embeddings(gallery)
    check_keys(emb, gallery)
    return emb, attrs


def add(
    gallery: Path,
    trained: TrainedModel,
    name: str,
    folder: Path,
    device,
    params: Params | None = None,
) -> dict:
    """Enrol the sequence of raw frames in ``folder`` under ``name``. A new gallery records
    ``params`` (default: `gait prep`'s); an existing one its own, and refuses another model.
    Returns what was read and the gallery's counts."""
    valid_name(name)
    with OutputLock(gallery):
        emb, attrs = _read(gallery)
        if attrs:
            if attrs.get("checkpoint_fingerprint") != trained.fingerprint:
                raise IdentifyError(
                    f"{gallery} was embedded by {attrs.get('checkpoint')}, not by "
                    f"{trained.path}: distances between models mean nothing; start another "
                    "gallery for this model"
                )
            params = params_from({k: attrs[f"normalization.{k}"] for k in NORMALIZATION})
        else:
            params = params or Params()
            attrs = {
                "checkpoint": str(trained.path),
                "checkpoint_fingerprint": trained.fingerprint,
                "storage": DEFAULT_STORAGE,
                **{f"normalization.{k}": v for k, v in params.as_dict().items()},
            }
        embedding, info = embed_folder(folder, trained.model, trained.cfg, params, device)
        index = 1 + max((int(k[2]) for k in emb if k[0] == name), default=0)
        emb[(name, "gallery", f"{index:03d}", "-")] = embedding[0].numpy()
        _write(gallery, emb, attrs)
    return {**info, "name": name, "sequences": _counts(emb)}


def remove(gallery: Path, name: str) -> int:
    """Remove every sequence enrolled under ``name``; returns how many there were."""
    with OutputLock(gallery):
        emb, attrs = read_embeddings(gallery)
        check_keys(emb, gallery)
        kept = {k: v for k, v in emb.items() if k[0] != name}
        if len(kept) == len(emb):
            raise IdentifyError(f"{gallery} has nobody named {name!r}")
        _write(gallery, kept, attrs)
    return len(emb) - len(kept)


def listing(gallery: Path) -> dict:
    """The model a gallery was embedded with and its names with their sequence counts."""
    emb, attrs = read_embeddings(gallery)
    check_keys(emb, gallery)
    return {"checkpoint": attrs.get("checkpoint"), "names": _counts(emb)}


def _counts(emb: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in sorted(emb):
        counts[key[0]] = counts.get(key[0], 0) + 1
    return counts


def _write(gallery: Path, emb: dict, attrs: dict) -> None:
    keys = sorted(emb)
    if keys:
        rows = np.stack([emb[k] for k in keys])
        shape = rows.shape[1:]
    else:
        rows, shape = np.zeros((0, 1, 1), np.float32), (1, 1)
    write_embeddings_file(gallery, keys, shape, [rows], attrs)
