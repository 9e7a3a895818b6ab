"""Training configuration: YAML in, typed dataclasses out, validated strictly.

Every section is a dataclass; a key that no field names is an error that names it (with the
closest known key), so a typo never silently falls back to a default. Every number has a range
(finite, and large enough for any real run but not absurd), so a config that could only end in a
traceback or an exhausted machine is refused before anything is written. ``--set a.b=value``
overrides any field, with ``value`` parsed as YAML.

``loss`` is a tagged union: its ``name`` picks one of :data:`LOSSES`, and each loss has its own
keys and defaults (the triplet margin is 0.2, the ranked losses' 0.4); a key of another loss is
an error that says whose key it is. ``model`` is one the same way: its ``name`` picks one of
:data:`MODELS` (``setnet``, the default, ``gaitset`` or ``gaitbase``), each with its own keys.
"""

from __future__ import annotations

import difflib
import math
import reprlib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from gaitprep.errors import GaitError
from gaittrain.yaml_strict import load_yaml, load_yaml_file


class ConfigError(GaitError, ValueError):
    """A configuration that cannot be used, explained in one line."""


INT_MAX = 10**9  # iteration counts and the like
SEED_MAX = 2**63 - 1
HEIGHT_MIN, HEIGHT_MAX = 8, 4096
POOLING = 4  # the model's two 2x2 max-pools divide the input height by 4


def _int(default: int, lo: int, hi: int) -> Any:
    """An int field that must lie in [lo, hi]."""
    return field(default=default, metadata={"range": (lo, hi)})


def _float(default: float, lo: float | None = None, hi: float | None = None, *, above=None) -> Any:
    """A finite float field; ``lo``/``hi`` are inclusive bounds, ``above`` an exclusive one."""
    return field(default=default, metadata={"range": (lo, hi), "above": above})


def _ints(default: list[int], lo: int, hi: int, length: tuple[int, int]) -> Any:
    """A list of ints, each in [lo, hi], with a length in ``length``."""
    return field(
        default_factory=lambda: list(default), metadata={"range": (lo, hi), "length": length}
    )


@dataclass
class SetNetConfig:
    """``model: {name: setnet, ...}`` (the default, also for a model section without ``name``):
    the set-based model gaittrain.models.SetModel (GaitSet without its global branch)."""

    name: str = field(default="setnet", init=False)
    channels: list[int] = _ints([32, 64, 128], 1, 65536, (3, 3))
    bins: list[int] = _ints([16, 8, 4, 2, 1], 1, 1024, (1, 64))
    dim: int = _int(256, 1, 65536)


@dataclass
class GaitSetConfig(SetNetConfig):
    """``model: {name: gaitset, ...}``: GaitSet as published (gaittrain.models.GaitSet): the
    setnet keys; horizontal pooling of both branches gives 2 x sum(bins) parts (62)."""

    name: str = field(default="gaitset", init=False)


@dataclass
class GaitBaseConfig:
    """``model: {name: gaitbase, ...}``: GaitBase (gaittrain.models.GaitBase), OpenGait's
    Baseline: a ResNet-9-style backbone, temporal max pooling, horizontal pooling, a BNNeck."""

    name: str = field(default="gaitbase", init=False)
    channels: list[int] = _ints([64, 128, 256, 512], 1, 65536, (4, 4))  # the four stages' widths
    layers: list[int] = _ints([1, 1, 1, 1], 0, 64, (4, 4))  # basic blocks per stage (0: skipped)
    strides: list[int] = _ints([1, 2, 2, 1], 1, 8, (4, 4))  # each stage's first stride
    maxpool: bool = False  # a 3x3 max-pool of stride 2 after the first convolution
    bins: list[int] = _ints([16], 1, 1024, (1, 64))
    dim: int = _int(256, 1, 65536)
    classes: int = _int(0, 0, 10**7)  # the BNNeck's classes; 0: the training subjects' count

    def steps(self) -> list[int]:
        """The strides that reduce the height: the max-pool's 2, each stage's with blocks."""
        steps = [2] if self.maxpool else []
        return steps + [s for s, n in zip(self.strides, self.layers, strict=True) if n > 0]

    def rows(self, height: int) -> int:
        """Rows of the backbone's output for an input of ``height``: ceil(h / s) per step."""
        for s in self.steps():
            height = -(-height // s)
        return height


# The first is the default (also for a model section without ``name``).
ModelConfig = SetNetConfig | GaitSetConfig | GaitBaseConfig
MODELS: dict[str, type] = {
    cls.name: cls  # type: ignore[attr-defined]
    for cls in (SetNetConfig, GaitSetConfig, GaitBaseConfig)
}
#: Models whose training output carries BNNeck logits (the cross-entropy then uses those).
BNNECK_MODELS = ("gaitbase",)


@dataclass
class BatchConfig:
    p: int = _int(8, 1, 10**5)  # subjects per batch
    k: int = _int(16, 1, 10**5)  # sequences per subject


@dataclass
class RotateConfig:
    """A random rotation of the whole sequence by one angle in [-degrees, degrees]."""

    prob: float = _float(0.0, 0.0, 1.0)
    degrees: float = _float(10.0, 0.0, 180.0)


@dataclass
class EraseConfig:
    """Random erasing: one rectangle, set to 0 in every frame, of a random area (a fraction of
    the frame in [area_min, area_max]) and aspect ratio (in [aspect_min, 1 / aspect_min])."""

    prob: float = _float(0.0, 0.0, 1.0)
    area_min: float = _float(0.05, hi=1.0, above=0.0)
    area_max: float = _float(0.2, hi=1.0, above=0.0)
    aspect_min: float = _float(0.3, hi=1.0, above=0.0)


@dataclass
class FlipConfig:
    """A horizontal flip of the whole sequence."""

    prob: float = _float(0.0, 0.0, 1.0)


@dataclass
class PerspectiveConfig:
    """A random perspective warp (before the width cut): the top and bottom corners of each side
    move inwards by up to ``shift`` of the width, that quadrilateral stretched to the frame."""

    prob: float = _float(0.0, 0.0, 1.0)
    shift: float = _float(0.15625, hi=0.5, above=0.0)  # 10 of 64 columns, as OpenGait's


@dataclass
class AugmentConfig:
    """Training augmentation, per sequence, in the data workers (gaittrain.data.augment): all
    off by default (every ``prob`` 0)."""

    perspective: PerspectiveConfig = field(default_factory=PerspectiveConfig)
    flip: FlipConfig = field(default_factory=FlipConfig)
    rotate: RotateConfig = field(default_factory=RotateConfig)
    erase: EraseConfig = field(default_factory=EraseConfig)

    def active(self) -> bool:
        """Whether any augmentation can fire."""
        return any(a.prob > 0 for a in (self.perspective, self.flip, self.rotate, self.erase))


@dataclass
class DataConfig:
    frames: int = _int(30, 1, 10000)  # frames per training sample
    sampling: str = "unordered"  # unordered | ordered
    # input height after resizing the pack's S x S frames (S if equal); must suit model.bins
    height: int = _int(64, HEIGHT_MIN, HEIGHT_MAX)
    cut: bool = True  # the standard width cut (64 -> 44 at S=64)
    batch: BatchConfig = field(default_factory=BatchConfig)
    protocol: str = "casia-b-lt"  # protocol file with the subject split
    workers: int = _int(2, 0, 1024)  # DataLoader worker processes
    cache: bool = False  # hold the training sequences in RAM
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class RankedListLossConfig:
    """``loss: {name: ranked_list, ...}``: gaittrain.losses.RankedListLoss."""

    name: str = field(default="ranked_list", init=False)
    alpha: float = _float(1.2, above=0.0)
    margin: float = _float(0.4, 0.0)  # must be < alpha
    t_n: float = _float(10.0, 0.0)
    t_p: float = _float(0.0, 0.0)
    lam: float = _float(1.0, 0.0)


@dataclass
class CenterRankedLossConfig(RankedListLossConfig):
    """``loss: {name: center_ranked, ...}``: gaittrain.losses.CenterRankedLoss (the ranked-list
    keys, ranked around class centers; docs/losses.md, "The center-ranked design space")."""

    name: str = field(default="center_ranked", init=False)
    anchor: str = "center"  # center | sample | both (the mean of the two)
    detach_center: bool = False  # no gradient through the class centers
    centers: str = "batch"  # batch | memory (+ a moving average of every training class's center)
    memory_momentum: float = _float(0.9, 0.0)  # in [0, 1): weight of the old center (memory only)
    normalize: bool = True  # false: raw features and distances; alpha, margin on their scale


@dataclass
class TripletLossConfig:
    """``loss: {name: triplet, margin}``: gaittrain.losses.TripletLoss (GaitSet's margin 0.2)."""

    name: str = field(default="triplet", init=False)
    margin: float = _float(0.2, 0.0)


# The first is the default (also for a loss section without ``name``).
LossConfig = CenterRankedLossConfig | TripletLossConfig | RankedListLossConfig
LOSSES: dict[str, type] = {
    cls.name: cls  # type: ignore[attr-defined]
    for cls in (CenterRankedLossConfig, TripletLossConfig, RankedListLossConfig)
}
#: The tagged unions, by section: their members by name.
UNIONS: dict[str, dict[str, type]] = {"loss": LOSSES, "model": MODELS}


@dataclass
class CrossEntropyConfig:
    weight: float = _float(0.0, 0.0)  # 0 switches the per-part cross-entropy off
    label_smoothing: float = _float(0.1, 0.0, 1.0)
    # logits are multiplied by it before the softmax; gaitbase's BNNeck logits are cosines
    # (OpenGait scales them by 16)
    scale: float = _float(1.0, above=0.0)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: float = _float(1e-4, above=0.0)
    weight_decay: float = _float(0.0, 0.0)
    momentum: float = _float(0.9, 0.0, 1.0)  # sgd only


@dataclass
class ScheduleConfig:
    name: str = "multistep"  # multistep | cosine | constant
    milestones: list[int] = _ints([], 1, INT_MAX, (0, 1000))
    gamma: float = _float(0.1, above=0.0)
    warmup: int = _int(0, 0, INT_MAX)  # iterations of linear warm-up


@dataclass
class TrainConfig:
    iterations: int = _int(80000, 1, INT_MAX)
    log_every: int = _int(100, 1, INT_MAX)
    checkpoint_every: int = _int(10000, 1, INT_MAX)
    amp: str = "auto"  # auto (CUDA: bf16 if supported, else fp16; CPU: none) | bf16 | fp16 | none
    deterministic: bool = False
    tf32: bool = (
        False  # TensorFloat-32 on Ampere+ GPUs: faster, ~10 mantissa bits; not with deterministic
    )
    grad_clip: float = _float(0.0, 0.0)  # 0 = no clipping
    # auto: channels_last on the CPU (its convolutions and max-pools are faster), contiguous
    # (PyTorch's default) on CUDA; the same arithmetic either way, up to summation order
    memory_format: str = "auto"  # auto | channels_last | contiguous
    compile: bool = False  # torch.compile the model (a one-off compilation, then faster steps)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=SetNetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=CenterRankedLossConfig)
    cross_entropy: CrossEntropyConfig = field(default_factory=CrossEntropyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = _int(0, 0, SEED_MAX)

    def to_dict(self) -> dict:
        """Plain data; the loss and model sections hold only the chosen loss's and model's
        keys."""
        return asdict(self)

    def validate(self) -> Config:
        """Check what the types and ranges alone do not (choices, keys that depend on each
        other); returns self."""
        choices = {
            "data.sampling": (self.data.sampling, ("unordered", "ordered")),
            "optim.name": (self.optim.name, ("adam", "sgd")),
            "schedule.name": (self.schedule.name, ("multistep", "cosine", "constant")),
            "train.amp": (self.train.amp, ("auto", "bf16", "fp16", "none")),
            "train.memory_format": (
                self.train.memory_format,
                ("auto", "channels_last", "contiguous"),
            ),
        }
        if isinstance(self.loss, CenterRankedLossConfig):
            choices["loss.anchor"] = (self.loss.anchor, ("center", "sample", "both"))
            choices["loss.centers"] = (self.loss.centers, ("batch", "memory"))
            if not self.loss.memory_momentum < 1:
                raise ConfigError(
                    f"loss.memory_momentum must be less than 1 (got {self.loss.memory_momentum:g})"
                    "; it is in [0, 1): 1 would never let a center move"
                )
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key} is {_show(value)}; use one of {', '.join(allowed)}")
        if not isinstance(self.loss, tuple(LOSSES.values())):
            raise ConfigError(f"loss is {_show(self.loss)}; use one of {', '.join(LOSSES)}")
        if not isinstance(self.model, tuple(MODELS.values())):
            raise ConfigError(f"model is {_show(self.model)}; use one of {', '.join(MODELS)}")
        erase = self.data.augment.erase
        if not erase.area_min <= erase.area_max:
            raise ConfigError(
                f"data.augment.erase.area_min {erase.area_min:g} is above area_max "
                f"{erase.area_max:g}; the erased area is drawn from [area_min, area_max]"
            )
        ranked = isinstance(self.loss, RankedListLossConfig)  # center_ranked is one too
        if ranked and not self.loss.margin < self.loss.alpha:
            raise ConfigError(
                f"loss.margin must be less than loss.alpha (the positive boundary is "
                f"alpha - margin); got margin {self.loss.margin}, alpha {self.loss.alpha}"
            )
        if self.train.tf32 and self.train.deterministic:
            raise ConfigError(
                "train.tf32 and train.deterministic exclude each other: TF32 rounds differently "
                "from float32; switch one off"
            )
        if not self.data.protocol.strip():
            raise ConfigError("data.protocol is empty; name a protocol (e.g. casia-b-lt)")
        _check_height(self.data.height, self.model)
        return self


def _check_height(height: int, model: Any) -> None:
    """The model reduces the height (setnet, gaitset: by 4), then cuts the rows into n strips
    for each n in bins."""
    bins = model.bins
    if isinstance(model, GaitBaseConfig):
        _check_gaitbase_height(height, model)
        return
    if height % POOLING == 0 and all((height // POOLING) % n == 0 for n in bins):
        return
    fix = _height_fix(POOLING * math.lcm(*bins))
    raise ConfigError(
        f"data.height {height} does not suit model.bins {bins}: the model pools the height by "
        f"{POOLING} ({height} -> {height / POOLING:g} rows) and cuts the rows into "
        f"{', '.join(map(str, bins))} strips; {fix}"
    )


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 4, 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 40


def _height_fix(step: int) -> str:
    """How to choose a height when the valid ones are the multiples of ``step``."""
    valid = [h for h in range(step, HEIGHT_MAX + 1, step) if h >= HEIGHT_MIN][:3]
    if not valid:
        return f"no height up to {HEIGHT_MAX} fits them; choose fewer or smaller bins"
    return f"use a multiple of {step} ({', '.join(map(str, valid))}, ...)"


def _check_gaitbase_height(height: int, model: GaitBaseConfig) -> None:
    """GaitBase's strides give ``model.rows(height)`` rows, which every bin must divide."""
    rows = model.rows(height)
    if all(rows % n == 0 for n in model.bins):
        return
    fix = _height_fix(math.prod(model.steps()) * math.lcm(*model.bins))
    raise ConfigError(
        f"data.height {height} does not suit model.bins {model.bins}: the backbone's strides "
        f"leave {rows} rows, cut into {', '.join(map(str, model.bins))} strips; {fix}"
    )


def _show(value: Any) -> str:
    """A short one-line repr, safe for huge or deeply nested values."""
    return " ".join(_REPR.repr(value).split())


def _strict(cls: type, data: Any, where: str, tag: str | None = None) -> Any:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys, wrong types, bad ranges.

    ``tag`` is set for a member of a tagged union (the loss): ``name`` is then already chosen.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(_unknown(path, key, known, where, tag))
        if not known[key].init:  # the tag of a union member, checked by _tagged
            continue
        kwargs[key] = _value(hints[key], value, path, known[key].metadata)
    return cls(**kwargs)


def _unknown(path: str, key: Any, known: dict, where: str, tag: str | None) -> str:
    text = f"unknown key {path!r}"
    if tag is not None:
        text += f" for {where} {tag!r}"
        union = UNIONS.get(where, {})
        owners = [name for name, c in union.items() if key in {f.name for f in fields(c)}]
        if owners:
            return f"{text} ({key} belongs to {', '.join(owners)}); known: {', '.join(known)}"
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{text}{hint}; known: {', '.join(known)}"


def _tagged(options: tuple[type, ...], data: Any, path: str) -> Any:
    """A member of a union of dataclasses, picked by ``data['name']`` (default: the first)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping, got {type(data).__name__}")
    tags = {c.name: c for c in options}
    name = data.get("name", options[0].name)
    if not isinstance(name, str) or name not in tags:
        raise ConfigError(f"{path}.name is {_show(name)}; use one of {', '.join(tags)}")
    return _strict(tags[name], data, path, tag=name)


def _value(hint: Any, value: Any, path: str, meta: Any = None) -> Any:
    meta = meta or {}
    if is_dataclass(hint):
        return _strict(hint, value, path)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if all(is_dataclass(o) for o in options):
            return _tagged(options, value, path)
        raise ConfigError(f"{path}: unsupported type")  # not used by the schema
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {_show(value)}")
        lo, hi = meta.get("length", (0, None))
        if len(value) < lo or (hi is not None and len(value) > hi):
            count = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise ConfigError(f"{path} must hold {count} values, got {len(value)}")
        return [_value(item, v, f"{path}[{i}]", meta) for i, v in enumerate(value)]
    if hint is float:
        return _check_float(_to_float(value, path), path, meta)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{path} must be true or false, got {_show(value)}")
    if hint in (int, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        if hint is int and _is_number(value):  # 1e20, 30.0: a float where a count belongs
            number = _show(value).strip("'")
            raise ConfigError(f"{path} must be int (a whole number), got {number}")
        raise ConfigError(f"{path} must be {hint.__name__}, got {_show(value)}")
    if hint is int and "range" in meta:
        lo, hi = meta["range"]
        if value < lo:
            raise ConfigError(f"{path} must be at least {lo} (got {_show(value)})")
        if value > hi:
            raise ConfigError(f"{path} must be at most {hi} (got {_show(value)})")
    return value


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return not isinstance(value, bool)


def _to_float(value: Any, path: str) -> float:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # PyYAML reads 1e-4 (no dot) as a string
            return float(value)
        except OverflowError:
            raise ConfigError(f"{path} must be a finite number, got {_show(value)}") from None
        except ValueError:
            pass
    raise ConfigError(f"{path} must be float, got {_show(value)}")


def _check_float(value: float, path: str, meta: dict) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number, got {value}")
    lo, hi = meta.get("range", (None, None))
    above = meta.get("above")
    if above is not None and not value > above:
        raise ConfigError(f"{path} must be greater than {above:g} (got {value:g})")
    if lo is not None and value < lo:
        raise ConfigError(f"{path} must be at least {lo:g} (got {value:g})")
    if hi is not None and value > hi:
        raise ConfigError(f"{path} must be at most {hi:g} (got {value:g})")
    return value


def _set(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        if k not in node:
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[: i + 1])} is not a section")
    if keys[-1:] == ["name"] and len(keys) == 2 and keys[0] in UNIONS:
        _check_union_switch(keys[0], node, value)
    node[keys[-1]] = value


def _check_union_switch(where: str, section: dict, name: Any) -> None:
    """``--set loss.name=NEW`` may not keep the keys given for another loss; ``--set
    model.name=NEW`` may not keep keys that the new model does not have."""
    union = UNIONS[where]
    old = section.get("name", next(iter(union)))
    given = [str(k) for k in section if k != "name"]
    if not isinstance(name, str) or name == old or name not in union or not given:
        return  # a name that is no member is refused, with the list of members, by the schema
    own = [f.name for f in fields(union[name]) if f.init]
    if where == "model" and old in union and own == [f.name for f in fields(union[old]) if f.init]:
        return  # setnet <-> gaitset: the same keys, meaning the same things
    raise ConfigError(
        f"--set {where}.name={name}: the {where} section holds keys given for {old} "
        f"({', '.join(given)}); drop them by replacing the whole section, e.g. "
        f"--set '{where}={{name: {name}}}' (its keys: {', '.join(own)})"
    )


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``KEY=VALUE`` overrides (``--set``; VALUE read as YAML) to a plain config mapping, in
    place; returns it."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not KEY=VALUE (e.g. optim.lr=0.001)")
        _set(data, key.strip(), load_yaml(text, f"--set {key.strip()}", ConfigError))
    return data


def load_config(path: Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (None: all defaults), apply ``key=value`` overrides, validate.

    Everything is checked here, before a run writes anything; every problem is a one-line
    :class:`ConfigError`.
    """
    data: Any = {}
    if path is not None:
        data = load_yaml_file(path, ConfigError) or {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: the config must be a mapping of sections (model:, data:, ...), "
                f"got {type(data).__name__}"
            )
    apply_overrides(data, list(overrides))
    return _strict(Config, data, "").validate()


# Runs made before the loss became a tagged union stored every loss key whatever the name.
_LEGACY_LOSS_KEYS = {"name", "alpha", "margin", "t_n", "t_p", "lam", "anchor", "detach_center"}


def config_from_dict(data: dict) -> Config:
    """A validated Config from a plain mapping (e.g. the copy stored in a checkpoint).

    A checkpoint written before the loss section became a tagged union holds all eight loss keys
    whatever the loss: only the chosen loss's keys are kept from it.
    """
    loss = data.get("loss") if isinstance(data, dict) else None
    if isinstance(loss, dict) and set(loss) == _LEGACY_LOSS_KEYS and loss["name"] in LOSSES:
        own = {f.name for f in fields(LOSSES[loss["name"]])}
        data = {**data, "loss": {k: v for k, v in loss.items() if k in own}}
    return _strict(Config, data, "").validate()


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
