"""OpenGait checkpoints into gait run folders: the work behind ``gait import-checkpoint``.

OpenGait (github.com/ShiqiYu/OpenGait) saves ``{"model": state_dict, "iteration": N, ...}``; the
network it describes is given by the ``model_cfg`` section of the YAML it was trained with.
:func:`model_section` maps a ``model_cfg`` of ``GaitSet`` or ``Baseline`` (GaitBase, with its
ResNet9 backbone) onto gait's ``model`` section (``gaitset``, ``gaitbase``), refusing in one line
a model or an option it cannot map. :func:`convert_state` renames the weights, key by key, from
OpenGait's names to gait's (each gait key has exactly one OpenGait name, :data:`KEY_RULES`) and
refuses a checkpoint with a key left over or missing, naming them, or a tensor of another shape.
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
MODEL_NAMES = {"GaitSet": "gaitset", "Baseline": "gaitbase"}

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


def model_section(model_cfg: Any) -> dict:
    """gait's ``model`` section for an OpenGait ``model_cfg`` (GaitSet or Baseline)."""
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


def gait_config(model_cfg: Any, overrides: list[str] = ()) -> Config:
    """The gait config of an imported run: the mapped model, OpenGait's data conventions (64 x 64
    frames cut to 64 x 44) and, for the record, OpenGait's objective for that model (triplet,
    margin 0.2; GaitBase adds cross-entropy on the BNNeck logits, weight 1, scale 16); then
    ``overrides`` (``KEY=VALUE``, as ``gait train --set``)."""
    model = model_section(model_cfg)
    data: dict = {
        "model": model,
        "data": dict(DATA),
        "loss": {"name": "triplet", "margin": 0.2},
    }
    if model["name"] == "gaitbase":
        data["cross_entropy"] = {"weight": 1.0, "label_smoothing": 0.1, "scale": 16.0}
    apply_overrides(data, list(overrides))
    return config_from_dict(data)


def opengait_key(gait_key: str, model: str) -> str:
    """The OpenGait state-dict key of a gait key of ``model`` (gaitset, gaitbase)."""
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
    names = {k: opengait_key(k, cfg.model.name) for k in wanted}
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
        cfg = gait_config(model_cfg, overrides)
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
