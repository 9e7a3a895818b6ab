"""OpenGait checkpoints into gait run folders: the work behind ``gait import-checkpoint``.

OpenGait (github.com/ShiqiYu/OpenGait) saves ``{"model": state_dict, "iteration": N, ...}``; the
network it describes is given by the ``model_cfg`` section of the YAML it was trained with.
:func:`model_section` maps a ``model_cfg`` of ``GaitSet`` or ``Baseline`` (GaitBase, with its
ResNet9 backbone) onto gait's ``model`` section (``gaitset``, ``gaitbase``; the others of
:data:`MODEL_NAMES` likewise, GaitGL with its YAML's ``data_cfg.dataset_name``), refusing in one
line a model or an option it cannot map. :func:`convert_state` renames the weights, key by key, from
OpenGait's names to gait's (each gait key has exactly one OpenGait name, :data:`KEY_RULES`; for
DeepGaitV2 by its block mode, :func:`rule_set`) and refuses a checkpoint with a key left over or
missing, naming them, or a tensor of another shape.
:func:`import_checkpoint` writes the run folder: ``config.yaml``, ``data.json`` and
``checkpoints/iter-N.pt`` in gait's format, which ``gait eval``, ``gait embed`` and ``gait
identify`` read like any run's. An imported run records no training data: its ``data.json`` and
its checkpoint's ``data`` say where it came from (:func:`imported_record`) instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gaitprep.errors import GaitError, first_line
from gaitprep.files import OutputLock, atomic_write
from gaittrain import checkpoint
from gaittrain.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    dump_config,
)
from gaittrain.models import build_model
from gaittrain.yaml_strict import load_yaml_file


class OpenGaitError(GaitError, ValueError):
    """An OpenGait checkpoint or config that cannot be imported, explained in one line."""


#: OpenGait model name -> gait model name.
MODEL_NAMES = {
    "GaitSet": "gaitset",
    "Baseline": "gaitbase",
    "DeepGaitV2": "deepgaitv2",
    "GaitPart": "gaitpart",
    "GaitGL": "gaitgl",
}

#: DeepGaitV2's rules for its stem (``layer0``), stage 1 and head, whatever its block mode.
_DEEPGAITV2_SHARED = [
    (r"^(layer[01])\.", r"\1.forward_block."),
    (r"^fc$", "FCs.fc_bin"),
    (r"^classifier$", "BNNecks.fc_bin"),
    (r"^bn_neck\.", "BNNecks.bn1d."),
]

#: Per gait model: (pattern, replacement) rules that turn each gait state-dict key into the
#: OpenGait key holding the same tensor (the first matching rule applies).
KEY_RULES: dict[str, list[tuple[str, str]]] = {
    "gaitset": [
        (r"^(set_block\d)\.(\d+)\.weight$", r"\1.forward_block.\2.conv.weight"),
        (r"^(gl_block\d)\.(\d+)\.weight$", r"\1.\2.conv.weight"),
        (r"^fc$", "Head.fc_bin"),
    ],
    "gaitbase": [
        (r"^backbone\.conv1\.weight$", "Backbone.forward_block.conv1.conv.weight"),
        (r"^backbone\.", "Backbone.forward_block."),
        (r"^fc$", "FCs.fc_bin"),
        (r"^classifier$", "BNNecks.fc_bin"),
        (r"^bn_neck\.", "BNNecks.bn1d."),
    ],
    # DeepGaitV2, by block mode (rule_set). OpenGait wraps what runs frame by frame in a
    # SetBlockWrapper (``forward_block``): the stem, stage 1 (_DEEPGAITV2_SHARED), a P3D block's
    # two convolutions with their batch norms (``conv1.forward_block.0`` and ``.1``), and in 2d
    # mode stages 2-4 whole.
    "deepgaitv2/p3d": [
        (r"^(layer[234]\.\d+)\.conv([12])\.weight$", r"\1.conv\2.forward_block.0.weight"),
        (r"^(layer[234]\.\d+)\.bn([12])\.", r"\1.conv\2.forward_block.1."),
        (r"^(layer[234]\.\d+)\.temporal\.", r"\1.shortcut3d."),
        (r"^(layer[234]\.\d+)\.temporal_bn\.", r"\1.sbn."),
        (r"^(layer[234]\.\d+)\.downsample\.", r"\1.downsample."),
        *_DEEPGAITV2_SHARED,
    ],
    "deepgaitv2/2d": [(r"^(layer[234])\.", r"\1.forward_block."), *_DEEPGAITV2_SHARED],
    "deepgaitv2/3d": [(r"^(layer[234])\.", r"\1."), *_DEEPGAITV2_SHARED],
    # GaitPart: the Plain backbone's layers (gait's Sequential keeps their indices), then the
    # MCM's attention convolutions, per part (MTB1: OpenGait's conv1d3x1, MTB2: conv1d3x3).
    "gaitpart": [
        (r"^backbone\.(\d+)\.weight$", r"Backbone.forward_block.feature.\1.conv.weight"),
        (r"^mcm\.mtb1\.attention\.(\d+\.\d)\.", r"TFA.pooling_func.conv1d3x1.\1.conv."),
        (r"^mcm\.mtb2\.attention\.(\d+\.\d)\.", r"TFA.pooling_func.conv1d3x3.\1.conv."),
        (r"^fc$", "Head.fc_bin"),
    ],
    # GaitGL, either branch: a stage is one GLConv (casia-b) or a Sequential of two (deep, whose
    # keys carry the index: "(\d+\.)?"); Head0 is the per-part map, Bn the batch norm after it,
    # Head1 the classifier.
    "gaitgl": [
        (r"^stem\.(\d+)\.weight$", r"conv3d.\1.conv3d.weight"),
        (r"^lta\.weight$", "LTA.0.conv3d.weight"),
        (r"^glconv_a0\.(\d+\.)?(global|local)_conv\.", r"GLConvA0.\1\2_conv3d.conv3d."),
        (r"^glconv_a1\.(\d+\.)?(global|local)_conv\.", r"GLConvA1.\1\2_conv3d.conv3d."),
        (r"^glconv_b2\.(\d+\.)?(global|local)_conv\.", r"GLConvB2.\1\2_conv3d.conv3d."),
        (r"^gem\.p$", "HPP.p"),
        (r"^fc$", "Head0.fc_bin"),
        (r"^bn\.", "Bn."),
        (r"^classifier$", "Head1.fc_bin"),
    ],
}

#: What OpenGait's CASIA-B data are: 64 x 64 frames, cut to 64 x 44 (BaseSilCuttingTransform).
DATA = {"height": 64, "cut": True}


def _show_keys(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _known(section: dict, where: str, allowed: tuple[str, ...]) -> None:
    extra = [str(k) for k in section if k not in allowed]
    if extra:
        raise OpenGaitError(
            f"{where}: cannot map {_show_keys(extra)} (gait maps {', '.join(allowed)})"
        )


def _ints(value: Any, where: str, n: int | None = None) -> list[int]:
    ok = isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )
    if not ok or (n is not None and len(value) != n):
        count = f"{n} " if n is not None else ""
        raise OpenGaitError(f"{where} must be a list of {count}ints, got {value!r}")
    return list(value)


def _section(cfg: dict, key: str, where: str) -> dict:
    value = cfg.get(key)
    if not isinstance(value, dict):
        raise OpenGaitError(f"{where}.{key} is missing or not a mapping")
    return value


def _int(section: dict, key: str, where: str) -> int:
    value = section.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise OpenGaitError(f"{where}.{key} must be an int, got {value!r}")
    return value


def _expect(value: Any, wanted: Any, where: str, why: str) -> None:
    if value != wanted:
        raise OpenGaitError(f"{where} is {value!r}; gait maps only {wanted!r} ({why})")


def model_section(model_cfg: Any, dataset: str | None = None) -> dict:
    """gait's ``model`` section for an OpenGait ``model_cfg`` (a model of :data:`MODEL_NAMES`).
    GaitGL also needs ``dataset``, the YAML's ``data_cfg.dataset_name``: it picks its layout."""
    if not isinstance(model_cfg, dict):
        raise OpenGaitError(
            "model_cfg must be a mapping (the model_cfg section of OpenGait's YAML)"
        )
    name = model_cfg.get("model")
    if name not in MODEL_NAMES:
        raise OpenGaitError(
            f"cannot import OpenGait model {name!r}: gait maps "
            + ", ".join(f"{k} ({v})" for k, v in MODEL_NAMES.items())
        )
    if name == "DeepGaitV2":
        return _deepgaitv2_section(model_cfg)
    if name == "GaitPart":
        return _gaitpart_section(model_cfg)
    if name == "GaitGL":
        return _gaitgl_section(model_cfg, dataset)
    if name == "GaitSet":
        return _gaitset_section(model_cfg)
    return _gaitbase_section(model_cfg)


def _gaitset_section(m: dict) -> dict:
    where = "model_cfg"
    _known(m, where, ("model", "in_channels", "SeparateFCs", "bin_num"))
    channels = _ints(m.get("in_channels"), f"{where}.in_channels", 4)
    _expect(channels[0], 1, f"{where}.in_channels[0]", "single-channel silhouettes")
    bins = _ints(m.get("bin_num"), f"{where}.bin_num")
    fcs = _section(m, "SeparateFCs", where)
    _known(fcs, f"{where}.SeparateFCs", ("in_channels", "out_channels", "parts_num", "norm"))
    _expect(fcs.get("norm", False), False, f"{where}.SeparateFCs.norm", "plain linear maps")
    w = f"{where}.SeparateFCs"
    _expect(_int(fcs, "in_channels", w), channels[3], f"{w}.in_channels", "the last width")
    _expect(_int(fcs, "parts_num", w), 2 * sum(bins), f"{w}.parts_num", "2 x sum(bin_num)")
    dim = _int(fcs, "out_channels", w)
    return {"name": "gaitset", "channels": channels[1:], "bins": bins, "dim": dim}


def _gaitbase_section(m: dict) -> dict:
    where = "model_cfg"
    _known(m, where, ("model", "backbone_cfg", "SeparateFCs", "SeparateBNNecks", "bin_num"))
    bins = _ints(m.get("bin_num"), f"{where}.bin_num")
    bb = _section(m, "backbone_cfg", where)
    w = f"{where}.backbone_cfg"
    _expect(bb.get("type"), "ResNet9", f"{w}.type", "the ResNet9 backbone")
    allowed = ("type", "block", "channels", "layers", "strides", "maxpool", "in_channel")
    _known(bb, w, allowed)
    _expect(bb.get("block"), "BasicBlock", f"{w}.block", "basic residual blocks")
    _expect(bb.get("in_channel", 1), 1, f"{w}.in_channel", "single-channel silhouettes")
    # ResNet9's own defaults where the YAML gives none
    channels = _ints(bb.get("channels", [32, 64, 128, 256]), f"{w}.channels", 4)
    layers = _ints(bb.get("layers", [1, 2, 2, 1]), f"{w}.layers", 4)
    strides = _ints(bb.get("strides", [1, 2, 2, 1]), f"{w}.strides", 4)
    maxpool = bb.get("maxpool", True)
    if not isinstance(maxpool, bool):
        raise OpenGaitError(f"{w}.maxpool must be true or false, got {maxpool!r}")
    stages = zip(channels[::-1], layers[::-1], strict=True)
    width = next((c for c, n in stages if n > 0), channels[0])  # the backbone's last width
    fcs = _section(m, "SeparateFCs", where)
    wf = f"{where}.SeparateFCs"
    _known(fcs, wf, ("in_channels", "out_channels", "parts_num", "norm"))
    _expect(fcs.get("norm", False), False, f"{wf}.norm", "plain linear maps")
    _expect(_int(fcs, "in_channels", wf), width, f"{wf}.in_channels", "the backbone's width")
    _expect(_int(fcs, "parts_num", wf), sum(bins), f"{wf}.parts_num", "sum(bin_num)")
    dim = _int(fcs, "out_channels", wf)
    neck = _section(m, "SeparateBNNecks", where)
    wn = f"{where}.SeparateBNNecks"
    _known(neck, wn, ("class_num", "in_channels", "parts_num", "norm", "parallel_BN1d"))
    _expect(neck.get("norm", True), True, f"{wn}.norm", "cosine logits")
    _expect(neck.get("parallel_BN1d", True), True, f"{wn}.parallel_BN1d", "one BatchNorm1d")
    _expect(_int(neck, "in_channels", wn), dim, f"{wn}.in_channels", "SeparateFCs.out_channels")
    _expect(_int(neck, "parts_num", wn), sum(bins), f"{wn}.parts_num", "sum(bin_num)")
    classes = _int(neck, "class_num", wn)
    return {
        "name": "gaitbase",
        "channels": channels,
        "layers": layers,
        "strides": strides,
        "maxpool": maxpool,
        "bins": bins,
        "dim": dim,
        "classes": classes,
    }


def _deepgaitv2_section(m: dict) -> dict:
    """DeepGaitV2 builds from ``Backbone`` (mode, in_channels, layers, channels) and
    ``SeparateBNNecks.class_num``; the rest is fixed in its code: strides 1/2/2/1, 16 strips,
    embeddings of ``channels[2]`` dims."""
    where = "model_cfg"
    _known(m, where, ("model", "Backbone", "SeparateBNNecks", "use_emb2"))
    _expect(
        m.get("use_emb2", False), False, f"{where}.use_emb2", "the embeddings before the BNNeck"
    )
    bb = _section(m, "Backbone", where)
    w = f"{where}.Backbone"
    _known(bb, w, ("mode", "in_channels", "layers", "channels"))
    mode = bb.get("mode")
    if mode not in ("p3d", "2d", "3d"):
        raise OpenGaitError(f"{w}.mode is {mode!r}; gait maps p3d, 2d and 3d")
    _expect(bb.get("in_channels"), 1, f"{w}.in_channels", "single-channel silhouettes")
    channels = _ints(bb.get("channels"), f"{w}.channels", 4)
    layers = _ints(bb.get("layers"), f"{w}.layers", 4)
    if min(layers) < 0:
        raise OpenGaitError(f"{w}.layers must not be negative, got {layers}")
    neck = _section(m, "SeparateBNNecks", where)
    _known(neck, f"{where}.SeparateBNNecks", ("class_num",))
    return {
        "name": "deepgaitv2",
        "mode": mode,
        "channels": channels,
        "layers": [max(n, 1) for n in layers],  # OpenGait builds a stage's first block always
        "strides": [1, 2, 2, 1],
        "bins": [16],
        "dim": channels[2],
        "classes": _int(neck, "class_num", f"{where}.SeparateBNNecks"),
    }


#: OpenGait's Plain backbone layers: a basic convolution, a focal one (with its halving), a pool.
_PLAIN_LAYER = re.compile(r"^(?:BC-(\d+)|FC-(\d+)-(\d+)|M)$")


def _plain_layers(layers: Any, where: str) -> tuple[list[int], list[int], list[int]]:
    """gaitpart's ``channels``, ``halving`` and ``pool_after`` for a Plain ``layers_cfg``
    (``BC-32``: a convolution of width 32; ``FC-64-2``: a focal one, 2^2 strips; ``M``: a 2x2
    max-pool after the convolution before it)."""
    if not isinstance(layers, list) or not layers:
        raise OpenGaitError(f"{where} must be a list of layers (BC-32, FC-64-2, M), got {layers!r}")
    channels: list[int] = []
    halving: list[int] = []
    pool_after: list[int] = []
    for layer in layers:
        match = _PLAIN_LAYER.match(layer) if isinstance(layer, str) else None
        if match is None:
            raise OpenGaitError(f"{where}: cannot map layer {layer!r} (gait maps BC-C, FC-C-H, M)")
        if layer == "M":
            if not channels or (pool_after and pool_after[-1] == len(channels)):
                raise OpenGaitError(f"{where}: a max-pool M must follow a convolution")
            pool_after.append(len(channels))
            continue
        basic, focal, halves = match.groups()
        channels.append(int(basic or focal))
        halving.append(int(halves or 0))
    return channels, halving, pool_after


def _gaitpart_section(m: dict) -> dict:
    """GaitPart builds from its Plain backbone, SeparateFCs and bin_num; the MCM (OpenGait's
    TFA) takes the backbone's width and the parts, and squeezes its channels by 4."""
    where = "model_cfg"
    _known(m, where, ("model", "backbone_cfg", "SeparateFCs", "bin_num"))
    bins = _ints(m.get("bin_num"), f"{where}.bin_num")
    bb = _section(m, "backbone_cfg", where)
    w = f"{where}.backbone_cfg"
    _known(bb, w, ("type", "in_channels", "layers_cfg"))
    _expect(bb.get("type"), "Plain", f"{w}.type", "the Plain backbone")
    _expect(bb.get("in_channels", 1), 1, f"{w}.in_channels", "single-channel silhouettes")
    channels, halving, pool_after = _plain_layers(bb.get("layers_cfg"), f"{w}.layers_cfg")
    fcs = _section(m, "SeparateFCs", where)
    wf = f"{where}.SeparateFCs"
    _known(fcs, wf, ("in_channels", "out_channels", "parts_num", "norm"))
    _expect(fcs.get("norm", False), False, f"{wf}.norm", "plain linear maps")
    _expect(_int(fcs, "in_channels", wf), channels[-1], f"{wf}.in_channels", "the last width")
    _expect(_int(fcs, "parts_num", wf), sum(bins), f"{wf}.parts_num", "sum(bin_num)")
    return {
        "name": "gaitpart",
        "channels": channels,
        "halving": halving,
        "pool_after": pool_after,
        "bins": bins,
        "dim": _int(fcs, "out_channels", wf),
        "squeeze": 4,
    }


#: The datasets for which OpenGait's GaitGL builds its deep layout (any other: the CASIA-B one).
GAITGL_DEEP = ("OUMVLP", "GREW")


def _gaitgl_section(m: dict, dataset: str | None) -> dict:
    """GaitGL builds from ``channels`` and ``class_num``; ``data_cfg.dataset_name`` picks its
    layout (OUMVLP, GREW: the deep branch, 4 widths, 2^1 local strips; any other: the CASIA-B
    branch, 3 widths, 2^3 strips); 64 GeM strips, embeddings of the last width, fixed in its
    code."""
    where = "model_cfg"
    _known(m, where, ("model", "channels", "class_num"))
    if not isinstance(dataset, str):
        raise OpenGaitError(
            "GaitGL's layout follows data_cfg.dataset_name, which the YAML does not give; give "
            "the whole OpenGait YAML the checkpoint was trained with"
        )
    deep = dataset in GAITGL_DEEP
    channels = _ints(m.get("channels"), f"{where}.channels", 4 if deep else 3)
    return {
        "name": "gaitgl",
        "branch": "deep" if deep else "casia-b",
        "channels": channels,
        "halving": 1 if deep else 3,
        "bins": [64],
        "dim": channels[-1],
        "classes": _int(m, "class_num", where),
    }


def gait_config(model_cfg: Any, overrides: list[str] = (), dataset: str | None = None) -> Config:
    """The gait config of an imported run: the mapped model, OpenGait's data conventions (64 x 64
    frames cut to 64 x 44) and, for the record, OpenGait's objective for that model (triplet,
    margin 0.2; GaitBase adds cross-entropy on the BNNeck logits, weight 1, scale 16); then
    ``overrides`` (``KEY=VALUE``, as ``gait train --set``). GaitPart and GaitGL train on clips of
    consecutive frames (``data.sampling: ordered``); GaitGL adds cross-entropy on its plain
    linear logits (weight 1, scale 1; label smoothing 0.1 in its deep branch's recipes only).
    ``dataset``: the YAML's ``data_cfg.dataset_name`` (GaitGL's layout follows it)."""
    model = model_section(model_cfg, dataset)
    data: dict = {
        "model": model,
        "data": dict(DATA),
        "loss": {"name": "triplet", "margin": 0.2},
    }
    if model["name"] in ("gaitbase", "deepgaitv2"):
        data["cross_entropy"] = {"weight": 1.0, "label_smoothing": 0.1, "scale": 16.0}
    if model["name"] in ("gaitpart", "gaitgl"):
        data["data"]["sampling"] = "ordered"
    if model["name"] == "gaitgl":
        smoothing = 0.1 if model["branch"] == "deep" else 0.0
        data["cross_entropy"] = {"weight": 1.0, "label_smoothing": smoothing, "scale": 1.0}
    apply_overrides(data, list(overrides))
    return config_from_dict(data)


def rule_set(model: Any) -> str:
    """The :data:`KEY_RULES` entry of a gait model section: its name (deepgaitv2: with its
    block mode, ``deepgaitv2/p3d``)."""
    return f"{model.name}/{model.mode}" if model.name == "deepgaitv2" else model.name


def opengait_key(gait_key: str, model: str) -> str:
    """The OpenGait state-dict key of a gait key of ``model`` (a :data:`KEY_RULES` entry:
    gaitset, gaitbase, deepgaitv2/p3d, ...)."""
    for pattern, replacement in KEY_RULES[model]:
        if re.search(pattern, gait_key):
            return re.sub(pattern, replacement, gait_key, count=1)
    raise KeyError(gait_key)


def convert_state(opengait: dict, cfg: Config, source: str = "the checkpoint") -> dict:
    """gait's state dict for ``cfg``'s model from OpenGait's ``opengait`` state dict.

    Refuses (one line) a key left over, a key missing, or a tensor whose shape differs from the
    one ``cfg`` gives (naming the key, both shapes and where the config's comes from).
    """
    model = build_model(cfg.model)
    wanted = model.state_dict()
    names = {k: opengait_key(k, rule_set(cfg.model)) for k in wanted}
    missing = [names[k] for k in wanted if names[k] not in opengait]
    extra = sorted(set(opengait) - set(names.values()))
    if missing or extra:
        parts = []
        if extra:
            parts.append(f"left over: {_show_keys(extra)}")
        if missing:
            parts.append(f"missing: {_show_keys(missing)}")
        raise OpenGaitError(
            f"{source} does not fit the {cfg.model.name} model of its config "
            f"({'; '.join(parts)}); give the YAML it was trained with"
        )
    state = {}
    for key, target in wanted.items():
        tensor = opengait[names[key]]
        if not isinstance(tensor, torch.Tensor):
            raise OpenGaitError(f"{source}: {names[key]} is not a tensor")
        if tensor.shape != target.shape:
            raise OpenGaitError(
                f"{source}: {names[key]} has shape {list(tensor.shape)}, but the config's "
                f"{cfg.model.name} model needs {list(target.shape)}; give the YAML it was trained "
                "with"
            )
        state[key] = tensor.to(target.dtype).clone()
    return state


@dataclass
class OpenGaitCheckpoint:
    """An OpenGait checkpoint file's model weights, its iteration and the SHA-256 of its bytes."""

    state: dict
    iteration: int
    sha256: str


def read_checkpoint(path: Path) -> OpenGaitCheckpoint:
    """An OpenGait checkpoint, loaded with ``weights_only=True`` (never arbitrary code)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        ckpt = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickles, other formats
        raise OpenGaitError(
            f"{path} is not a readable OpenGait checkpoint ({first_line(e).split('. ')[0]}); "
            "give a .pt file OpenGait saved (it loads with torch.load(..., weights_only=True))"
        ) from None
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise OpenGaitError(
            f"{path} is not an OpenGait checkpoint (no 'model' state dict); give a file from "
            "OpenGait's output/.../checkpoints/"
        )
    problem = checkpoint.state_dict_problem(state, "its model")
    if problem:
        raise OpenGaitError(
            f"{path} is damaged or not an OpenGait checkpoint ({problem}); give a file from "
            "OpenGait's output/.../checkpoints/"
        )
    iteration = ckpt.get("iteration", 0)
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        iteration = 0
    return OpenGaitCheckpoint(state, iteration, hashlib.sha256(raw).hexdigest())


def read_model_cfg(path: Path) -> dict:
    """The ``model_cfg`` section of an OpenGait YAML (a whole OpenGait config, or only it)."""
    data = load_yaml_file(path, OpenGaitError)
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg"), dict):
        raise OpenGaitError(
            f"{path} has no model_cfg section; give the OpenGait YAML the checkpoint was "
            "trained with"
        )
    return data["model_cfg"]


def read_dataset_name(path: Path) -> str | None:
    """The ``data_cfg.dataset_name`` of an OpenGait YAML, or None where it gives none."""
    data = load_yaml_file(path, OpenGaitError)
    section = data.get("data_cfg") if isinstance(data, dict) else None
    name = section.get("dataset_name") if isinstance(section, dict) else None
    return name if isinstance(name, str) else None


def imported_record(source: Path, sha256: str, config: Path, model: str, iteration: int) -> dict:
    """What an imported run records instead of its training data: the OpenGait checkpoint and
    config it came from. ``train_subjects`` is None: not known."""
    return {
        "imported": {
            "from": "OpenGait",
            "model": model,
            "checkpoint": str(Path(source).resolve()),
            "checkpoint_sha256": sha256,
            "config": str(Path(config).resolve()),
            "iteration": iteration,
        },
        "packs": [],
        "train_subjects": None,
    }


def imported_from(record: Any) -> dict | None:
    """The ``imported`` entry of a run's data record (data.json), or None for a trained run."""
    if isinstance(record, dict) and isinstance(record.get("imported"), dict):
        return record["imported"]
    return None


def import_checkpoint(ckpt: Path, config: Path, out: Path, overrides: list[str] = ()) -> dict:
    """Convert an OpenGait checkpoint (with the YAML it was trained with) into the gait run
    folder ``out`` (new or empty). Returns a summary: the run, the checkpoint written, the
    OpenGait and gait model names, parts, dim and iteration."""
    out = Path(out)
    model_cfg = read_model_cfg(config)
    try:
        cfg = gait_config(model_cfg, overrides, read_dataset_name(config))
    except ConfigError as e:
        raise OpenGaitError(f"{config}: {e}") from None
    source = read_checkpoint(ckpt)
    state = convert_state(source.state, cfg, str(ckpt))
    record = imported_record(ckpt, source.sha256, config, model_cfg["model"], source.iteration)
    with OutputLock(out):
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise OpenGaitError(f"{out} is not empty; choose an empty or new --out")
        path = checkpoint.path_for(out, source.iteration)
        checkpoint.save(
            path,
            {
                "iteration": source.iteration,
                "model": state,
                "config": cfg.to_dict(),
                "data": record,
            },
        )
        atomic_write(out / "data.json", json.dumps(record, indent=1) + "\n")
        atomic_write(out / "config.yaml", dump_config(cfg))
    return {
        "run": str(out),
        "checkpoint": str(path),
        "opengait_model": model_cfg["model"],
        "model": cfg.model.name,
        "parts": int(state["fc"].shape[0]),
        "dim": cfg.model.dim,
        "iteration": source.iteration,
    }
