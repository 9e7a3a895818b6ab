"""Gait models, and the registry that builds the one a config's ``model`` section names.

Every model takes frames [B, T, H, W] (or [sum(lengths), H, W] with ``lengths``) and returns
embeddings [parts, batch, dim], the input of every loss in gaittrain.losses; it has ``parts`` and
``fc`` (the per-part maps, [parts, channels, dim]). A model with a BNNeck (gaitbase) returns
``(embeddings, logits)`` in training mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from gaittrain.models.gaitbase import GaitBase
from gaittrain.models.gaitset import GaitSet
from gaittrain.models.set_model import SetModel


def _setnet(c: Any) -> nn.Module:
    return SetModel(c.channels, c.bins, c.dim)


def _gaitset(c: Any) -> nn.Module:
    return GaitSet(c.channels, c.bins, c.dim)


def _gaitbase(c: Any) -> nn.Module:
    if c.classes < 1:
        raise ValueError(
            "model.classes is 0 (the number of training subjects, filled in by the trainer): "
            "give the BNNeck's class count"
        )
    return GaitBase(c.channels, c.layers, c.strides, c.maxpool, c.bins, c.dim, c.classes)


#: The model of each ``model.name``, built from that section (gaittrain.config).
MODELS: dict[str, Callable[[Any], nn.Module]] = {
    "setnet": _setnet,
    "gaitset": _gaitset,
    "gaitbase": _gaitbase,
}


def build_model(section: Any) -> nn.Module:
    """The model of a config's ``model`` section (freshly initialized, in training mode)."""
    try:
        make = MODELS[section.name]
    except KeyError:
        raise ValueError(
            f"model.name {section.name!r} is no model; use one of {', '.join(MODELS)}"
        ) from None
    return make(section)


__all__ = ["MODELS", "GaitBase", "GaitSet", "SetModel", "build_model"]
