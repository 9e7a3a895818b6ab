"""A trained model as inference uses it: a checkpoint's model, in eval mode, with its config.

``gait eval``, ``gait embed``, ``gait identify``, ``gait gallery`` and ``gait export`` all load a
run's model through :func:`load_model`, and preprocess a probe with the normalization a pack
records (:func:`pack_normalization`, :func:`params_from`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from gaitprep.errors import first_line
from gaitprep.pack import Pack
from gaitprep.process import Params
from gaittrain import checkpoint
from gaittrain.checkpoint import CheckpointError
from gaittrain.config import Config, config_from_dict
from gaittrain.device import place_model
from gaittrain.models import BNNECK_MODELS, build_model
from gaittrain.run_folder import resolve_checkpoint

#: The pack attributes that shape a frame; a probe must be normalized with the gallery's.
NORMALIZATION = ("size", "min_sum", "binarize", "largest_blob")


@dataclass
class TrainedModel:
    """A checkpoint's model in eval mode, its config, the file it came from and the SHA-256 of
    the bytes the weights were read from."""

    model: nn.Module
    cfg: Config
    path: Path
    fingerprint: str


def load_model(ckpt: Path, device: torch.device) -> TrainedModel:
    """The model of a checkpoint (a file, or a run folder's latest), in eval mode."""
    path = resolve_checkpoint(ckpt)
    state, fingerprint = checkpoint.load_with_fingerprint(path)
    cfg = config_from_dict(state["config"], saved=True)
    try:
        model = build_model(_with_classes(cfg, state["model"]).model)
        model.load_state_dict(state["model"])
        model = place_model(model, cfg, torch.device(device))
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: the weights do not fit its own config ({first_line(e)})"
        ) from None
    model.eval()
    return TrainedModel(model, cfg, path, fingerprint)


def _with_classes(cfg: Config, weights) -> Config:
    """A BNNeck model's ``model.classes`` 0 (the training subjects' count) resolved from the
    classifier's shape in the weights."""
    if cfg.model.name not in BNNECK_MODELS or cfg.model.classes > 0:
        return cfg
    classifier = weights.get("classifier") if isinstance(weights, dict) else None
    if not isinstance(classifier, torch.Tensor) or classifier.dim() != 3:
        raise ValueError("no BNNeck classifier [parts, dim, classes] among the weights")
    return replace(cfg, model=replace(cfg.model, classes=int(classifier.shape[-1])))


def pack_normalization(pack: Pack) -> dict:
    """The normalization parameters a pack's frames were made with."""
    return {k: pack.attrs[k] for k in NORMALIZATION}


def params_from(norm: dict) -> Params:
    """:class:`gaitprep.process.Params` from recorded normalization attributes."""
    return Params(
        int(norm["size"]), int(norm["min_sum"]), bool(norm["binarize"]), bool(norm["largest_blob"])
    )
