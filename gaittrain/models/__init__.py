"""Gait models, and the registry that builds the one a config's ``model`` section names.

Every model takes frames [B, T, H, W] (or [sum(lengths), H, W] with ``lengths``) and returns
embeddings [parts, batch, dim], the input of every loss in gaittrain.losses; it has ``parts`` and
``fc`` (the per-part maps, [parts, channels, dim]). A model with a BNNeck (gaitbase) returns
``(embeddings, logits)`` in training mode.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gaittrain.models.deepgaitv2 import DeepGaitV2
from gaittrain.models.gaitbase import GaitBase
from gaittrain.models.gaitgl import GaitGL
from gaittrain.models.gaitpart import GaitPart
from gaittrain.models.gaitset import GaitSet
from gaittrain.models.set_model import SetModel

#: The models, by ``model.name``: the one list. Each class owns its config section
#: (``Model.Config``: keys, defaults, ranges), builds itself from it (``Model.from_config``) and
#: says whether it has a BNNeck (``Model.bnneck``). The first is the default model. Adding a
#: model: a module here, and its class in this list.
MODELS: dict[str, type[nn.Module]] = {
    cls.Config.name: cls
    for cls in (
        SetModel,
        GaitSet,
        GaitBase,
        DeepGaitV2,
        GaitPart,
        GaitGL,
    )
}

#: Models whose training output carries BNNeck logits (the cross-entropy then uses those).
BNNECK_MODELS = tuple(name for name, cls in MODELS.items() if cls.bnneck)


def build_model(section: Any) -> nn.Module:
    """The model of a config's ``model`` section (freshly initialized, in training mode)."""
    try:
        make = MODELS[section.name]
    except KeyError:
        raise ValueError(
            f"model.name {section.name!r} is no model; use one of {', '.join(MODELS)}"
        ) from None
    return make.from_config(section)


__all__ = [
    "BNNECK_MODELS",
    "MODELS",
    "DeepGaitV2",
    "GaitBase",
    "GaitGL",
    "GaitPart",
    "GaitSet",
    "SetModel",
    "build_model",
]
