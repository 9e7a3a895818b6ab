"""Training configuration: YAML in, typed dataclasses out, validated strictly.

Every section is a dataclass; a key that no field names is an error that names it (with the
closest known key), so a typo never silently falls back to a default. ``--set a.b=value`` overrides
any field, with ``value`` parsed as YAML.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from gaitprep.errors import GaitError


class ConfigError(GaitError, ValueError):
    """A configuration that cannot be used, explained in one line."""


@dataclass
class ModelConfig:
    """The set-based model (gaittrain.models.SetModel)."""

    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    bins: list[int] = field(default_factory=lambda: [16, 8, 4, 2, 1])
    dim: int = 256


@dataclass
class BatchConfig:
    p: int = 8  # subjects per batch
    k: int = 16  # sequences per subject


@dataclass
class DataConfig:
    frames: int = 30  # frames per training sample
    sampling: str = "unordered"  # unordered | ordered
    height: int = 64  # input height after resizing the pack's S x S frames (S if equal)
    cut: bool = True  # the standard width cut (64 -> 44 at S=64)
    batch: BatchConfig = field(default_factory=BatchConfig)
    protocol: str = "casia-b-lt"  # protocol file with the subject split
    workers: int = 2  # DataLoader worker processes
    cache: bool = False  # hold the training sequences in RAM


@dataclass
class LossConfig:
    """The metric loss; ``name`` picks the class, the other keys are its arguments."""

    name: str = "center_ranked"  # center_ranked | triplet | ranked_list
    alpha: float = 1.2
    margin: float = 0.4  # 0.2 when name is triplet and margin is not given
    t_n: float = 10.0
    t_p: float = 0.0
    lam: float = 1.0
    anchor: str = "center"
    detach_center: bool = False


@dataclass
class CrossEntropyConfig:
    weight: float = 0.0  # 0 switches the per-part cross-entropy off
    label_smoothing: float = 0.1


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only


@dataclass
class ScheduleConfig:
    name: str = "multistep"  # multistep | cosine | constant
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup: int = 0  # iterations of linear warm-up


@dataclass
class TrainConfig:
    iterations: int = 80000
    log_every: int = 100
    checkpoint_every: int = 10000
    amp: str = "auto"  # auto (CUDA: bf16 if supported, else fp16; CPU: none) | bf16 | fp16 | none
    deterministic: bool = False
    grad_clip: float = 0.0  # 0 = no clipping


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    cross_entropy: CrossEntropyConfig = field(default_factory=CrossEntropyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> Config:
        """Check values that the types alone do not; returns self."""
        choices = {
            "data.sampling": (self.data.sampling, ("unordered", "ordered")),
            "loss.name": (self.loss.name, ("center_ranked", "triplet", "ranked_list")),
            "loss.anchor": (self.loss.anchor, ("center", "sample")),
            "optim.name": (self.optim.name, ("adam", "sgd")),
            "schedule.name": (self.schedule.name, ("multistep", "cosine", "constant")),
            "train.amp": (self.train.amp, ("auto", "bf16", "fp16", "none")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key} is {value!r}; use one of {', '.join(allowed)}")
        positive = {
            "data.frames": self.data.frames,
            "data.batch.p": self.data.batch.p,
            "data.batch.k": self.data.batch.k,
            "model.dim": self.model.dim,
            "train.iterations": self.train.iterations,
            "train.log_every": self.train.log_every,
            "train.checkpoint_every": self.train.checkpoint_every,
            "data.height": self.data.height,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be at least 1 (got {value})")
        if len(self.model.channels) != 3 or not self.model.bins:
            raise ConfigError("model.channels needs three widths and model.bins at least one bin")
        return self


def _strict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {path!r}{hint}; known: {', '.join(known)}")
        kwargs[key] = _value(hints[key], value, path)
    return cls(**kwargs)


def _value(hint: Any, value: Any, path: str) -> Any:
    if is_dataclass(hint):
        return _strict(hint, value, path)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return [_value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{path}: unsupported type")  # not used by the schema
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if hint in (int, float, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        raise ConfigError(f"{path} must be {hint.__name__}, got {value!r}")
    return value


def _set(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
    node[keys[-1]] = value


def load_config(path: Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (None: all defaults), apply ``key=value`` overrides, validate."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE (e.g. optim.lr=0.001)")
        _set(data, key.strip(), yaml.safe_load(text))
    loss = data.get("loss") if isinstance(data, dict) else None
    if isinstance(loss, dict) and loss.get("name") == "triplet" and "margin" not in loss:
        loss["margin"] = 0.2  # the triplet loss's own default (GaitSet), not the ranked losses'
    return _strict(Config, data, "").validate()


def config_from_dict(data: dict) -> Config:
    """A validated Config from a plain mapping (e.g. the copy stored in a checkpoint)."""
    return _strict(Config, data, "").validate()


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
