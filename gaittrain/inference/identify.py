"""Identify one raw sequence against a gallery: preprocess as `gait prep`, embed, rank subjects."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
import torch

from gaitprep.errors import GaitError
from gaitprep.layout import IMAGE_EXTENSIONS, RawSequence
from gaitprep.normalize import normalize_frame
from gaitprep.process import Params, process_sequence
from gaitprep.segment import doubts, segment
from gaittrain.data.dataset import shape_frames, to_model_input
from gaittrain.evaluation.embed import ensure_embeddings
from gaittrain.evaluation.embeddings_file import read_embeddings
from gaittrain.evaluation.metrics import distance_blocks
from gaittrain.run_folder import run_folder
from gaittrain.trained_model import NORMALIZATION, TrainedModel, params_from


class IdentifyError(GaitError):
    """A gallery or probe that cannot be used for identification."""


#: The most characters a name in a gallery (and each part of a gallery's keys) may have.
MAX_NAME = 64


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot stand in a gallery key, which `gait identify` and `gait gallery list`
    print: None where it is 1 to :data:`MAX_NAME` printable characters (``str.isprintable``: no
    newline, tab, escape or other control or format character, so a name cannot forge a line or
    recolour the terminal)."""
    if not isinstance(name, str) or not name:
        return "empty"
    if len(name) > MAX_NAME:
        return f"longer than {MAX_NAME} characters"
    if not name.isprintable():
        return "not printable text (a control character, newline or escape)"
    return None


def valid_name(name: str) -> str:
    """``name`` if a person may be enrolled under it: :func:`name_problem`'s rules, no '/' and no
    space at either end; IdentifyError otherwise."""
    problem = name_problem(name)
    if problem is None and "/" in name:
        problem = "holds '/'"
    if problem is None and name != name.strip():
        problem = "begins or ends with a space"
    if problem is not None:
        raise IdentifyError(
            f"{ascii(name)[:80]} is not a name to enrol ({problem}): use 1 to {MAX_NAME} "
            "printable characters, no '/'"
        )
    return name


def check_keys(keys: Iterable[tuple], gallery: Path) -> None:
    """IdentifyError where a key of ``gallery`` (a file someone else may have made) holds a part
    that :func:`name_problem` refuses."""
    for key in keys:
        for part in key:
            problem = name_problem(part)
            if problem is not None:
                raise IdentifyError(
                    f"{gallery} holds a name that is {problem} ({ascii(part)[:80]}): it is not "
                    "a gallery to trust; make it again with gait gallery add or gait embed"
                )


def valid_threshold(threshold: float | None) -> float | None:
    """``threshold`` if it is a distance to decide by (finite, at least 0) or None;
    IdentifyError otherwise."""
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise IdentifyError(
            f"the threshold must be a finite distance of at least 0, not {threshold}"
        )
    return threshold


def check_not_empty(emb: dict, gallery: Path | None = None) -> None:
    """IdentifyError where the embeddings ``emb`` of ``gallery`` hold nobody (every person of a
    gallery removed, or a pack without sequences)."""
    if not emb:
        where = "the gallery" if gallery is None else f"the gallery {gallery}"
        raise IdentifyError(f"{where} holds nobody; add people with gait gallery add")


def gallery_embeddings(
    gallery: Path, trained: TrainedModel, device, notify=lambda line: None
) -> tuple[dict, Params]:
    """Embeddings of a gallery given as an embeddings file or as a pack, and the normalization
    parameters its frames were made with (a probe must be made the same way).

    A pack is embedded once into RUN/gallery-PACKNAME.h5 beside the model's run and reused while
    the checkpoint, the pack's content and its sequences are unchanged (``notify`` hears when it
    is embedded and why). An embeddings file must have been made by ``trained``'s checkpoint and
    must record its normalization. A gallery that holds nobody, or a name that is not printable
    text (:func:`check_keys`), is refused.
    """
    try:
        with h5py.File(gallery, "r") as f:
            is_embeddings = "embeddings" in f
    except OSError:
        raise IdentifyError(
            f"{gallery} is not an HDF5 file; give an embeddings file (gait embed) or a pack"
        ) from None
    if not is_embeddings:
        cache = run_folder(trained.path) / f"gallery-{Path(gallery).stem}.h5"
        emb, attrs, reason = ensure_embeddings(trained.path, gallery, cache, None, device)
        if reason is not None:
            notify(f"embedded the gallery into {cache} ({reason})")
        check_keys(emb, gallery)
        check_not_empty(emb, gallery)
        return emb, params_from({k: attrs[f"normalization.{k}"] for k in NORMALIZATION})
    emb, attrs = read_embeddings(gallery)
    check_keys(emb, gallery)
    missing = [k for k in NORMALIZATION if f"normalization.{k}" not in attrs]
    if missing or "checkpoint_fingerprint" not in attrs:
        raise IdentifyError(
            f"{gallery} does not record its normalization and checkpoint (an older gait made "
            "it); make it again with `gait embed CHECKPOINT PACK`"
        )
    if attrs["checkpoint_fingerprint"] != trained.fingerprint:
        raise IdentifyError(
            f"{gallery} was embedded by {attrs.get('checkpoint')}, not by {trained.path}: "
            f"distances between models mean nothing; run `gait embed {trained.path} PACK` "
            "for this model"
        )
    check_not_empty(emb, gallery)
    return emb, params_from({k: attrs[f"normalization.{k}"] for k in NORMALIZATION})


@torch.no_grad()
def embed_folder(folder: Path, model, cfg, params: Params, device) -> tuple[torch.Tensor, dict]:
    """The embedding [1, parts, dim] of the raw frames in ``folder`` (or of the walker in a
    video file, segmented by :func:`gaitprep.segment.segment` first), preprocessed as `gait prep`
    does with ``params``, and what was read (``frames_read``, ``frames_used``,
    ``frames_unreadable``); IdentifyError when no frame can be used."""
    if Path(folder).is_file():
        return _embed_video(Path(folder), model, cfg, params, device)
    files = sorted(
        f.name
        for f in Path(folder).iterdir()
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise IdentifyError(f"{folder} holds no png, jpg or bmp frame")
    seq = RawSequence("?", "?", "?", "?", ".", tuple(files))
    res = process_sequence(Path(folder), seq, params)
    if len(res.frames) == 0:
        if res.unreadable:
            shown = ", ".join(f for f, _ in res.unreadable[:3])
            more = f" and {len(res.unreadable) - 3} more" if len(res.unreadable) > 3 else ""
            raise IdentifyError(
                f"{len(res.unreadable)} of {res.read} frames in {folder} cannot be read "
                f"({shown}{more}: {res.unreadable[0][1]}) and no other frame has enough "
                "foreground; give a folder of silhouette images"
            )
        raise IdentifyError(f"no frame of {folder} has enough foreground to normalize")
    info = {
        "frames_read": res.read,
        "frames_used": len(res.frames),
        "frames_unreadable": [f for f, _ in res.unreadable],
    }
    return _embed_frames(res.frames, model, cfg, device), info


def _embed_video(path: Path, model, cfg, params: Params, device) -> tuple[torch.Tensor, dict]:
    """:func:`embed_folder` of a video: the walker's silhouettes (`gait segment`'s defaults),
    each normalized as `gait prep` would. Where the segmentation is in doubt (most frames
    rejected, sizes jumping: :func:`gaitprep.segment.doubts`), a UserWarning says so and the
    result's ``warnings`` list the reasons."""
    found = segment(path)
    unsure = [f"{path}: {line}; the answer may be wrong" for line in doubts(found)]
    for line in unsure:
        warnings.warn(line, stacklevel=2)
    kept = [
        normalize_frame(m, params.size, params.min_sum, params.binarize, params.largest_blob)[0]
        for _, m in found.masks
    ]
    kept = [f for f in kept if f is not None]
    if not kept:
        raise IdentifyError(f"no silhouette of {path} has enough foreground to normalize")
    info = {
        "frames_read": found.read,
        "frames_used": len(kept),
        "frames_unreadable": [],
        "frames_rejected": sum(found.rejected.values()),
        "warnings": unsure,
    }
    return _embed_frames(np.stack(kept), model, cfg, device), info


def _embed_frames(frames: np.ndarray, model, cfg, device) -> torch.Tensor:
    """The embedding [1, parts, dim] of normalized frames [T, S, S]."""
    x = shape_frames(frames, cfg.data.height, cfg.data.cut)
    x = to_model_input(torch.from_numpy(np.ascontiguousarray(x)), device)
    with torch.no_grad():
        return model(x, [len(x)]).permute(1, 0, 2).float().cpu()  # [1, parts, dim]


@torch.no_grad()
def identify(
    folder: Path,
    model,
    cfg,
    gallery: dict,
    params: Params,
    device,
    top_k: int = 5,
    threshold: float | None = None,
) -> dict:
    """The ``top_k`` gallery subjects nearest to the sequence in ``folder`` (a subject's distance
    is that of its nearest gallery sequence); with ``threshold``, also the ``decision``: the
    nearest subject if its distance is at most ``threshold``, else None (unknown). IdentifyError
    for an empty gallery or a threshold that is not a finite distance."""
    valid_threshold(threshold)
    check_not_empty(gallery)
    probe, info = embed_folder(folder, model, cfg, params, device)
    keys = list(gallery)
    g = torch.from_numpy(np.stack([gallery[k] for k in keys]))
    ((_, d),) = distance_blocks(probe, g)
    best: dict[str, tuple[float, tuple]] = {}
    for key, dist in zip(keys, d[0].tolist(), strict=True):
        if key[0] not in best or dist < best[key[0]][0]:
            best[key[0]] = (dist, key)
    ranked = sorted(best.items(), key=lambda kv: kv[1][0])[:top_k]
    result = {
        "sequence": str(folder),
        **info,
        "matches": [
            {"rank": i + 1, "subject": s, "distance": round(dist, 6), "nearest": "-".join(key)}
            for i, (s, (dist, key)) in enumerate(ranked)
        ],
    }
    if threshold is not None:
        near = ranked[0] if ranked else None
        result["threshold"] = threshold
        result["decision"] = near[0] if near and near[1][0] <= threshold else None
    return result
