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

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from gaittrain.losses import METRIC_LOSSES
from gaittrain.models import MODELS as MODEL_CLASSES
from gaittrain.schema import (
    ConfigError,
    build,
    float_field,
    int_field,
    ints_field,
    set_dotted,
    show,
)
from gaittrain.yaml_strict import load_yaml, load_yaml_file

INT_MAX = 10**9  # iteration counts and the like
SEED_MAX = 2**63 - 1
HEIGHT_MIN, HEIGHT_MAX = 8, 4096
POOLING = 4  # the model's two 2x2 max-pools divide the input height by 4


# The first is the default (also for a model section without ``name``).
MODELS: dict[str, type] = {name: model.Config for name, model in MODEL_CLASSES.items()}
ModelConfig = typing.Union[tuple(MODELS.values())]  # noqa: UP007 (built from the registry)


@dataclass
class BatchConfig:
    p: int = int_field(8, 1, 10**5)  # subjects per batch
    k: int = int_field(16, 1, 10**5)  # sequences per subject


@dataclass
class RotateConfig:
    """A random rotation of the whole sequence by one angle in [-degrees, degrees]."""

    prob: float = float_field(0.0, 0.0, 1.0)
    degrees: float = float_field(10.0, 0.0, 180.0)


@dataclass
class EraseConfig:
    """Random erasing: one rectangle, set to 0 in every frame, of a random area (a fraction of
    the frame in [area_min, area_max]) and aspect ratio (in [aspect_min, 1 / aspect_min])."""

    prob: float = float_field(0.0, 0.0, 1.0)
    area_min: float = float_field(0.05, hi=1.0, above=0.0)
    area_max: float = float_field(0.2, hi=1.0, above=0.0)
    aspect_min: float = float_field(0.3, hi=1.0, above=0.0)


@dataclass
class FlipConfig:
    """A horizontal flip of the whole sequence."""

    prob: float = float_field(0.0, 0.0, 1.0)


@dataclass
class PerspectiveConfig:
    """A random perspective warp (before the width cut): the top and bottom corners of each side
    move inwards by up to ``shift`` of the width, that quadrilateral stretched to the frame."""

    prob: float = float_field(0.0, 0.0, 1.0)
    shift: float = float_field(0.15625, hi=0.5, above=0.0)  # 10 of 64 columns, as OpenGait's


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
    frames: int = int_field(30, 1, 10000)  # frames per training sample
    sampling: str = "unordered"  # unordered | ordered
    # input height after resizing the pack's S x S frames (S if equal); must suit model.bins
    height: int = int_field(64, HEIGHT_MIN, HEIGHT_MAX)
    cut: bool = True  # the standard width cut (64 -> 44 at S=64)
    batch: BatchConfig = field(default_factory=BatchConfig)
    protocol: str = "casia-b-lt"  # protocol file with the subject split
    workers: int = int_field(2, 0, 1024)  # DataLoader worker processes
    cache: bool = False  # hold the training sequences in RAM
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# The first is the default (also for a loss section without ``name``).
LOSSES: dict[str, type] = {name: loss.Config for name, loss in METRIC_LOSSES.items()}
LossConfig = typing.Union[tuple(LOSSES.values())]  # noqa: UP007 (built from the registry)


#: The tagged unions, by section: their members by name.
UNIONS: dict[str, dict[str, type]] = {"loss": LOSSES, "model": MODELS}


@dataclass
class CrossEntropyConfig:
    weight: float = float_field(0.0, 0.0)  # 0 switches the per-part cross-entropy off
    label_smoothing: float = float_field(0.1, 0.0, 1.0)
    # logits are multiplied by it before the softmax; gaitbase's BNNeck logits are cosines
    # (OpenGait scales them by 16)
    scale: float = float_field(1.0, above=0.0)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: float = float_field(1e-4, above=0.0)
    weight_decay: float = float_field(0.0, 0.0)
    momentum: float = float_field(0.9, 0.0, 1.0)  # sgd only


@dataclass
class ScheduleConfig:
    name: str = "multistep"  # multistep | cosine | constant
    milestones: list[int] = ints_field([], 1, INT_MAX, (0, 1000))
    gamma: float = float_field(0.1, above=0.0)
    warmup: int = int_field(0, 0, INT_MAX)  # iterations of linear warm-up


@dataclass
class TrainConfig:
    iterations: int = int_field(80000, 1, INT_MAX)
    log_every: int = int_field(100, 1, INT_MAX)
    checkpoint_every: int = int_field(10000, 1, INT_MAX)
    amp: str = "auto"  # auto (CUDA: bf16 if supported, else fp16; CPU: none) | bf16 | fp16 | none
    deterministic: bool = False
    tf32: bool = (
        False  # TensorFloat-32 on Ampere+ GPUs: faster, ~10 mantissa bits; not with deterministic
    )
    grad_clip: float = float_field(0.0, 0.0)  # 0 = no clipping
    # auto: channels_last on the CPU (its convolutions and max-pools are faster), contiguous
    # (PyTorch's default) on CUDA; the same arithmetic either way, up to summation order
    memory_format: str = "auto"  # auto | channels_last | contiguous
    compile: bool = False  # torch.compile the model (a one-off compilation, then faster steps)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=next(iter(MODELS.values())))
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=next(iter(LOSSES.values())))
    cross_entropy: CrossEntropyConfig = field(default_factory=CrossEntropyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = int_field(0, 0, SEED_MAX)

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
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key} is {show(value)}; use one of {', '.join(allowed)}")
        if not isinstance(self.loss, tuple(LOSSES.values())):
            raise ConfigError(f"loss is {show(self.loss)}; use one of {', '.join(LOSSES)}")
        if not isinstance(self.model, tuple(MODELS.values())):
            raise ConfigError(f"model is {show(self.model)}; use one of {', '.join(MODELS)}")
        erase = self.data.augment.erase
        if not erase.area_min <= erase.area_max:
            raise ConfigError(
                f"data.augment.erase.area_min {erase.area_min:g} is above area_max "
                f"{erase.area_max:g}; the erased area is drawn from [area_min, area_max]"
            )
        if hasattr(self.loss, "check"):  # what the loss's own ranges alone do not check
            self.loss.check()
        if hasattr(self.model, "check"):  # and the model's (keys that depend on each other)
            self.model.check()
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
    """The model reduces the height (setnet, gaitset: by 4; a model config with ``rows``, such
    as gaitbase's, says by how much), then cuts the rows into n strips for each n in bins."""
    bins = model.bins
    if hasattr(model, "rows"):
        _check_strided_height(height, model)
        return
    if height % POOLING == 0 and all((height // POOLING) % n == 0 for n in bins):
        return
    fix = _height_fix(POOLING * math.lcm(*bins))
    raise ConfigError(
        f"data.height {height} does not suit model.bins {bins}: the model pools the height by "
        f"{POOLING} ({height} -> {height / POOLING:g} rows) and cuts the rows into "
        f"{', '.join(map(str, bins))} strips; {fix}"
    )


def _height_fix(step: int) -> str:
    """How to choose a height when the valid ones are the multiples of ``step``."""
    valid = [h for h in range(step, HEIGHT_MAX + 1, step) if h >= HEIGHT_MIN][:3]
    if not valid:
        return f"no height up to {HEIGHT_MAX} fits them; choose fewer or smaller bins"
    return f"use a multiple of {step} ({', '.join(map(str, valid))}, ...)"


def _check_strided_height(height: int, model: Any) -> None:
    """A backbone's strides give ``model.rows(height)`` rows (its ``steps()``: the strides that
    reduce the height), which every bin must divide."""
    rows = model.rows(height)
    if all(rows % n == 0 for n in model.bins):
        return
    fix = _height_fix(math.prod(model.steps()) * math.lcm(*model.bins))
    raise ConfigError(
        f"data.height {height} does not suit model.bins {model.bins}: the backbone's strides "
        f"leave {rows} rows, cut into {', '.join(map(str, model.bins))} strips; {fix}"
    )


def _set(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    section = data.get(keys[0])
    if keys[1:] == ["name"] and keys[0] in UNIONS and isinstance(section, dict):
        _check_union_switch(keys[0], section, value)
    set_dotted(data, dotted, value, f"--set {dotted}")


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


def _read_sections(path: Path) -> dict:
    """A config file's YAML, which must be a mapping of sections (one-line ConfigError)."""
    data = load_yaml_file(path, ConfigError) or {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the config must be a mapping of sections (model:, data:, ...), "
            f"got {type(data).__name__}"
        )
    return data


def load_config(path: Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (None: all defaults), apply ``key=value`` overrides, validate.

    Everything is checked here, before a run writes anything; every problem is a one-line
    :class:`ConfigError`.
    """
    data: Any = {} if path is None else _read_sections(path)
    apply_overrides(data, list(overrides))
    return build(Config, data, "").validate()


# Runs made before the loss became a tagged union stored every loss key whatever the name.
_LEGACY_LOSS_KEYS = {"name", "alpha", "margin", "t_n", "t_p", "lam", "anchor", "detach_center"}


def config_from_dict(data: dict, saved: bool = False) -> Config:
    """A validated Config from a plain mapping (e.g. the copy stored in a checkpoint: ``saved``).

    A checkpoint written before the loss section became a tagged union holds all eight loss keys
    whatever the loss: only the chosen loss's keys are kept from it. A ``saved`` center-ranked
    section without a reading was stored before the loss had readings: it is r0, the only one
    then (the default reading is another since; a saved config says what the run trained with).
    """
    loss = data.get("loss") if isinstance(data, dict) else None
    if isinstance(loss, dict) and set(loss) == _LEGACY_LOSS_KEYS and loss["name"] in LOSSES:
        own = {f.name for f in fields(LOSSES[loss["name"]])}
        data = {**data, "loss": (loss := {k: v for k, v in loss.items() if k in own})}
    if saved and isinstance(loss, dict) and loss.get("name") == "center_ranked":
        data = {**data, "loss": {"reading": "r0", **loss}}
    return build(Config, data, "").validate()


def saved_config(path: Path) -> Config:
    """The config a run folder saved (``config.yaml``), read as :func:`config_from_dict` reads a
    saved one; every problem is a one-line :class:`ConfigError` naming the file."""
    data = _read_sections(path)
    try:
        return config_from_dict(data, saved=True)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
