"""The study file: a grid of ordinary training runs declared in YAML, validated strictly.

A study names a base config (a path relative to the study file, or an inline mapping), optional
overrides (dotted config keys), the subjects (training, a validation split taken out of them,
test), the evaluation protocol, the checkpoints at which runs are evaluated (``eval_every``), an
optional target rank-1, a list of axes and an optional ``tune:`` section. The grid is the product
of the axes, in the order given, the last axis varying fastest; the ``seed`` axis (if any) holds
the replicates, all other axes define the variants. docs/study.md describes every key.

``tune:`` gives every variant the same number of trials of a seeded random search
(:mod:`gaittrain.study.tune`) over its own space, scored on the validation subjects only; the
runs then take the values of the best trial. Trials are per variant less the special axis
``key: tune`` (values ``default``, ``tuned``), whose ``default`` runs keep the config as it is.

Everything is checked by :func:`load_study` before anything is trained: an unknown key (named,
with the closest known one), a value of the wrong type or range, axes that overlap, and every
run's config, built as base + overrides + its axis values and validated by the normal config
validation (an error names the run and the key), and so is every trial's config (an error names
the variant, the trial and the key). Subject selectors need the pack's subjects and are resolved
by :func:`resolve_subjects`.

Examples
--------
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "s.yaml"
>>> _ = path.write_text('''
... base: {train: {iterations: 100}}
... train: first:20
... validation: last:4
... test: 021-040
... eval_every: 50
... axes:
...   - {key: loss, values: [center_ranked, triplet]}
...   - {key: seed, values: [0, 1]}
... ''')
>>> study = load_study(path)
>>> [r.name for r in study.runs]
['center_ranked-seed0', 'center_ranked-seed1', 'triplet-seed0', 'triplet-seed1']
>>> study.variants, study.reference, study.runs[3].config.train.checkpoint_every
(['center_ranked', 'triplet'], 'center_ranked', 50)
>>> _ = path.write_text(path.read_text() + '''
... tune: {trials: 3, seed: 0, space: {triplet: {loss.margin: [0.1, 0.4]},
...                                    center_ranked: {loss.alpha: [1.0, 1.6]}}}
... ''')
>>> study = load_study(path)
>>> [t.title for t in study.trials][:4]
['trial center_ranked:0', 'trial center_ranked:1', 'trial center_ranked:2', 'trial triplet:0']
>>> study.trial("triplet:0").values, study.runs[2].tuned
({'loss.margin': 0.2}, 'triplet')
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gaitprep.errors import GaitError
from gaittrain.config import INT_MAX, SEED_MAX, Config, ConfigError, config_from_dict
from gaittrain.data.splits import SplitError, select
from gaittrain.evaluation.protocol import load_eval_protocol
from gaittrain.schema import build, float_field, int_field, set_dotted, show
from gaittrain.study import tune
from gaittrain.yaml_strict import load_yaml, load_yaml_file

#: The study file's keys; the first six are required.
SEED = "seed"  #: the axis of replicates
TUNE = "tune"  #: the axis whose values pick a variant's default or tuned hyper-parameters
TUNE_VALUES = ("default", "tuned")
ALL = "all"  #: the tune.space entry of every variant
MAX_TRIALS = 1000
CHECKPOINT_KEY = "train.checkpoint_every"  #: set from eval_every, never by hand
MAX_RUNS = 10_000
DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")  #: a label: part of a folder name


class StudyError(GaitError, ValueError):
    """A study file that cannot be used, explained in one line."""


@dataclass
class StudyFile:
    """The keys of a study file, validated by :mod:`gaittrain.schema` (unknown keys, missing
    keys, the numbers' types and ranges); the values typed ``Any`` are checked by the reader,
    which knows what each means (docs/study.md, "The study file")."""

    base: Any
    train: Any
    validation: Any
    test: Any
    eval_every: int = field(metadata={"range": (1, INT_MAX)})
    axes: Any
    name: Any = None
    overrides: Any = None
    protocol: Any = "casia-b-lt"
    target: float | None = float_field(None, hi=100.0, above=0.0)  # a rank-1 in percent
    reference: Any = None
    tune: Any = None


@dataclass
class AxisEntry:
    """One entry of ``axes``: a dotted config key (or a list of them), its values, their
    labels."""

    key: Any
    values: Any
    labels: Any = None


@dataclass
class TuneSection:
    """The ``tune:`` section: the trials per variant, the search space, the search's seed and
    the trials' iterations (default: the runs')."""

    trials: int = field(metadata={"range": (1, MAX_TRIALS)})
    space: Any
    seed: int = int_field(0, 0, SEED_MAX)
    iterations: int | None = field(default=None, metadata={"range": (1, INT_MAX)})


@dataclass(frozen=True)
class Axis:
    """One axis of the grid: a dotted config key (or several, set together), its values and
    their labels. ``key`` names the axis: the key, or the keys joined by ``+``."""

    key: str
    values: tuple
    labels: tuple[str, ...]
    keys: tuple[str, ...] = ()  #: the config keys a value sets; () means ``(key,)``

    def settings(self, value: Any) -> dict:
        """The dotted config keys a value of this axis sets, and their values."""
        if not self.keys:
            return {self.key: value}
        return dict(zip(self.keys, value, strict=True))

    @property
    def config_keys(self) -> tuple[str, ...]:
        return self.keys or (self.key,)


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: its index, folder name, variant, axis values and validated config."""

    index: int
    name: str
    variant: str
    values: dict
    labels: dict
    config: Config
    #: the variant (less the tune axis) whose tuned values this run takes; None: none
    tuned: str | None = None

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def title(self) -> str:
        return f"run {self.index} ({self.name})"


@dataclass(frozen=True)
class Trial:
    """Trial ``index`` of the tuning of ``variant``: trial 0 holds the defaults, the others a
    random point of the variant's space; ``config`` is the variant's config with ``values``, the
    tuning's seed and (if given) its iterations."""

    variant: str
    index: int
    values: dict
    config: Config

    @property
    def name(self) -> str:
        return f"trial-{self.index:02d}"

    @property
    def title(self) -> str:
        return f"trial {self.variant}:{self.index}"


@dataclass(frozen=True)
class Tuning:
    """The ``tune:`` section: ``trials`` per variant, the search's ``seed``, the trials'
    ``iterations`` (None: the runs'), the space as written, and per tuned variant (the variant
    less the tune axis) its space and its trials."""

    trials: int
    seed: int
    iterations: int | None
    space: dict
    spaces: dict[str, dict[str, tune.Dimension]]
    searches: dict[str, tuple[Trial, ...]]

    def spec(self) -> dict:
        return {
            "trials": self.trials,
            "seed": self.seed,
            "iterations": self.iterations,
            "space": self.space,
        }


@dataclass(frozen=True)
class Subjects:
    """The subjects of a study: the runs train on ``train`` (the study's training subjects less
    ``validation``), are evaluated at every checkpoint on ``validation`` and at the end on
    ``test``."""

    train: list[str]
    validation: list[str]
    test: list[str]


@dataclass(frozen=True)
class Study:
    path: Path
    name: str
    base: str | None  # the base config's path as written; None when inline
    base_config: dict
    overrides: dict
    train: str
    validation: str
    test: str
    protocol: str
    eval_every: int
    target: float | None  # validation rank-1 in percent, of the protocol's first probe group
    reference: str  # a variant, or a label of an axis, or several joined by ", " (docs/study.md)
    axes: tuple[Axis, ...]
    runs: tuple[RunSpec, ...]
    tune: Tuning | None = None
    #: (variant, reference variant) for every comparison, from ``reference``
    pairs: tuple[tuple[str, str], ...] = ()

    def settings(self, values: dict) -> dict:
        """The dotted config keys and values that axis ``values`` (axis key -> value, as in
        :attr:`RunSpec.values`) set: an axis of several keys sets each."""
        return {
            k: v for a in self.axes if a.key in values for k, v in a.settings(values[a.key]).items()
        }

    @property
    def variants(self) -> list[str]:
        """The variant names in grid order."""
        return list(dict.fromkeys(r.variant for r in self.runs))

    @property
    def trials(self) -> list[Trial]:
        """Every trial, variant by variant (in grid order), trial 0 first."""
        if self.tune is None:
            return []
        return [t for trials in self.tune.searches.values() for t in trials]

    def trial(self, ref: str) -> Trial:
        """The trial named ``VARIANT:I`` (as ``--trial`` takes it)."""
        if self.tune is None:
            raise StudyError(f"--trial {ref}: {self.path} has no tune: section, so no trials")
        name, colon, index = ref.rpartition(":")
        searches = self.tune.searches
        if not colon or not index.isdigit():
            raise StudyError(f"--trial {ref!r}: use VARIANT:I, e.g. {next(iter(searches))}:0")
        if name not in searches:
            raise StudyError(
                f"--trial {ref}: {name!r} is not a tuned variant; they are {', '.join(searches)}"
            )
        n = self.tune.trials
        if int(index) >= n:
            raise StudyError(f"--trial {ref}: {name} has {n} trials, 0 to {n - 1}")
        return searches[name][int(index)]

    def spec(self) -> dict:
        """The study as plain data (for study.json)."""
        return {
            "file": str(self.path),
            "name": self.name,
            "base": self.base if self.base is not None else "inline",
            "base_config": self.base_config,
            "overrides": self.overrides,
            "train": self.train,
            "validation": self.validation,
            "test": self.test,
            "protocol": self.protocol,
            "eval_every": self.eval_every,
            "target": self.target,
            "reference": self.reference,
            "axes": [
                {
                    "key": list(a.keys) if a.keys else a.key,
                    "values": list(a.values),
                    "labels": list(a.labels),
                }
                for a in self.axes
            ],
            "tune": None if self.tune is None else self.tune.spec(),
        }


def load_study(path: Path) -> Study:
    """Read, check and expand a study file; every problem is a one-line :class:`StudyError`
    that starts with the file's path."""
    path = Path(path)
    data = load_yaml_file(path, StudyError)
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study must be a mapping (base:, train:, axes:, ...)")
    return _Reader(path).study(data)


class _Reader:
    """Checks one study file's data; ``fail`` prefixes every message with the file's path."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, message: str) -> StudyError:
        return StudyError(f"{self.path}: {message}")

    def checked(self, cls: type, data: Any, where: str = "") -> Any:
        """``data`` as dataclass ``cls`` (:func:`gaittrain.schema.build`), a one-line refusal
        naming the file otherwise."""
        try:
            return build(cls, data, where)
        except ConfigError as e:
            raise self.fail(str(e)) from None

    def study(self, data: dict) -> Study:
        given = {k: v for k, v in data.items() if v is not None}  # an empty key is left out
        f = self.checked(StudyFile, given)
        base, base_config = self.base(f.base)
        overrides = self.overrides({} if f.overrides is None else f.overrides)
        axes = self.axes(f.axes)
        self.no_overlap(overrides, axes)
        study = Study(
            path=self.path,
            name=self.text(self.path.stem if f.name is None else f.name, "name"),
            base=base,
            base_config=base_config,
            overrides=overrides,
            train=self.selector(f.train, "train"),
            validation=self.selector(f.validation, "validation"),
            test=self.selector(f.test, "test"),
            protocol=self.protocol(f.protocol),
            eval_every=f.eval_every,
            target=f.target,
            reference="",
            axes=axes,
            runs=(),
        )
        runs = self.expand(study)
        variants = list(dict.fromkeys(r.variant for r in runs))
        given = variants[0] if f.reference is None else f.reference
        entries = given if isinstance(given, list) and given else [given]
        found, shown = [], []
        for i, entry in enumerate(entries):
            where = f"reference[{i}]" if isinstance(given, list) else "reference"
            if isinstance(entry, dict) and entry:  # explicit pairs: variant -> its reference
                for v, r in entry.items():
                    for name in (v, r):
                        if name not in variants:
                            raise self.fail(
                                f"{where}: {name!r} is not a variant; the variants are "
                                f"{', '.join(variants)}"
                            )
                    found.append((v, r))
                    shown.append(f"{v} vs {r}")
                continue
            ref = self.text(entry, where)
            found += self.pairs(ref, variants, runs, axes)
            shown.append(ref)
        pairs = tuple(dict.fromkeys(p for p in found if p[0] != p[1]))
        study = replace(study, runs=tuple(runs), reference=", ".join(shown), pairs=pairs)
        if "tune" in data:
            return self.tuning(data["tune"], study)
        for i, a in enumerate(axes):
            if a.key == TUNE:
                raise self.fail(
                    f"axes[{i}].key tune picks default or tuned hyper-parameters, but there is "
                    "no tune: section (docs/study.md, Fair tuning)"
                )
        return study

    def pairs(self, reference: str, variants: list[str], runs, axes) -> tuple:
        """``(variant, its reference)`` for every variant compared: with a variant's name, every
        other variant against it; with a label of an axis, every variant against the one that
        differs only by carrying that label on that axis (``reference: center_ranked`` compares
        triplet-8x8 with center_ranked-8x8)."""
        if reference in variants:
            return tuple((v, reference) for v in variants if v != reference)
        axis = next((a for a in axes if a.key != SEED and reference in a.labels), None)
        if axis is None:
            raise self.fail(
                f"reference {reference!r} is neither a variant nor a label of an axis; the "
                f"variants are {', '.join(variants)}"
            )
        labels = {r.variant: {k: lab for k, lab in r.labels.items() if k != SEED} for r in runs}
        names = {tuple(ls.items()): v for v, ls in labels.items()}
        out = []
        for v in variants:
            if labels[v][axis.key] == reference:
                continue
            counterpart = tuple({**labels[v], axis.key: reference}.items())
            if counterpart in names:
                out.append((v, names[counterpart]))
        return tuple(out)

    # -- the values -------------------------------------------------------------------------

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key} must be a non-empty string, got {show(value)}")
        return value.strip()

    def selector(self, value: Any, key: str) -> str:
        whole = isinstance(value, int) and not isinstance(value, bool)
        sel = str(value) if whole else self.text(value, key)
        if sel.startswith("last:") and not sel[5:].isdigit():
            raise self.fail(f"{key} {sel!r}: use last:N with a whole number N")
        return sel

    def base(self, value: Any) -> tuple[str | None, dict]:
        if isinstance(value, dict):
            return None, copy.deepcopy(value)
        where = self.text(value, "base")
        file = self.path.parent / where
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as e:
            raise self.fail(
                f"cannot read the base config {where} ({file}): {e.strerror or e}; give a path "
                "relative to the study file, or an inline mapping"
            ) from None
        except UnicodeDecodeError:
            raise self.fail(f"the base config {file} is not a text file (not UTF-8)") from None
        data = load_yaml(text, str(file), StudyError) or {}
        if not isinstance(data, dict):
            raise self.fail(f"the base config {file} must be a mapping of sections")
        return where, data

    def overrides(self, value: Any) -> dict:
        if not isinstance(value, dict):
            raise self.fail(
                f"overrides must map dotted config keys to values (optim.lr: 0.001), "
                f"got {show(value)}"
            )
        for key in value:
            self.dotted(key, f"overrides key {key!r}")
        return copy.deepcopy(value)

    def dotted(self, key: Any, what: str) -> str:
        if not isinstance(key, str) or not DOTTED.fullmatch(key):
            raise self.fail(f"{what} is not a dotted config key like optim.lr")
        if key == CHECKPOINT_KEY:
            raise self.fail(
                f"{what}: {CHECKPOINT_KEY} is set from eval_every (runs keep a checkpoint at "
                "every evaluation); remove it"
            )
        return key

    def protocol(self, value: Any) -> str:
        name = self.text(value, "protocol")
        if name.endswith((".yaml", ".yml")) and not Path(name).is_absolute():
            name = str(self.path.parent / name)  # a protocol file beside the study
        try:
            load_eval_protocol(name)
        except GaitError as e:
            raise self.fail(f"protocol: {e}") from None
        return name

    def axes(self, value: Any) -> tuple[Axis, ...]:
        if not isinstance(value, list):
            raise self.fail(f"axes must be a list of {{key, values}} mappings, got {show(value)}")
        axes = [self.axis(item, f"axes[{i}]") for i, item in enumerate(value)]
        keys = [a.key for a in axes]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise self.fail(f"axes[{i}].key {key!r} is also axes[{keys.index(key)}]'s key")
        size = 1
        for a in axes:
            size *= len(a.values)
        if size > MAX_RUNS:
            raise self.fail(f"the grid has {size} runs; at most {MAX_RUNS}")
        return tuple(axes)

    def axis(self, item: Any, where: str) -> Axis:
        if not isinstance(item, dict):
            raise self.fail(f"{where} must be a mapping with key and values, got {show(item)}")
        entry = self.checked(AxisEntry, item, where)
        keys = self.axis_keys(entry.key, f"{where}.key")
        key = "+".join(keys)
        values = entry.values
        if not isinstance(values, list) or not values:
            raise self.fail(f"{where}.values must be a non-empty list, got {show(values)}")
        if len(keys) > 1:
            for i, v in enumerate(values):
                if not isinstance(v, list) or len(v) != len(keys):
                    raise self.fail(
                        f"{where}.values[{i}] is {show(v)}: with {len(keys)} keys, every value "
                        f"is a list of {len(keys)} values, one per key in order"
                    )
        if key == TUNE:
            for i, v in enumerate(values):
                if not isinstance(v, str) or v not in TUNE_VALUES:
                    raise self.fail(
                        f"{where}.values[{i}] is {show(v)}: the tune axis takes default (the "
                        "config as it is) and tuned (the values the tuning chose)"
                    )
        labels = entry.labels
        if labels is None:
            labels = [_label(key, v) for v in values]
        elif not isinstance(labels, list) or len(labels) != len(values):
            raise self.fail(f"{where}.labels must be a list of {len(values)} labels, one a value")
        for i, label in enumerate(labels):
            if not isinstance(label, str) or not SAFE.fullmatch(label):
                raise self.fail(
                    f"{where}.labels[{i}] is {show(label)}: labels name folders, so use letters, "
                    "digits, '.', '_' and '-' (not first)"
                )
            if label in labels[:i]:
                raise self.fail(f"{where}: two values have the label {label!r}; give labels:")
        return Axis(key, tuple(copy.deepcopy(values)), tuple(labels), keys if len(keys) > 1 else ())

    def axis_keys(self, value: Any, where: str) -> tuple[str, ...]:
        """An axis's ``key``: one dotted key, or a list of them whose values go together (each
        value a list, one entry per key); the special axes seed and tune stand alone."""
        if not isinstance(value, list):
            return (self.dotted(value, where),)
        if len(value) < 2:
            raise self.fail(
                f"{where} lists {len(value)} keys: give one key, or a list of two or more"
            )
        keys = tuple(self.dotted(k, f"{where}[{i}]") for i, k in enumerate(value))
        for i, k in enumerate(keys):
            if k in (SEED, TUNE):
                raise self.fail(f"{where}[{i}] is {k!r}, an axis of its own: give it alone")
            if k in keys[:i]:
                raise self.fail(f"{where} lists {k!r} twice")
        return keys

    def no_overlap(self, overrides: dict, axes: tuple[Axis, ...]) -> None:
        """An axis key may not lie inside another's, nor meet an override's: one would
        silently replace the other."""
        keys = [(f"axes[{i}].key {k!r}", k) for i, a in enumerate(axes) for k in a.config_keys]
        keys += [(f"overrides key {k!r}", k) for k in overrides]
        for (what, a), (other, b) in itertools.combinations(keys, 2):
            if a == b or a.startswith(b + ".") or b.startswith(a + "."):
                if what.startswith("overrides"):
                    continue  # two override keys: applied in order, like --set
                raise self.fail(
                    f"{what} overlaps {other}: one would replace the other in every run; "
                    "give each config key once"
                )

    # -- the grid ---------------------------------------------------------------------------

    def expand(self, study: Study) -> list[RunSpec]:
        """Every run of the grid, with its config validated."""
        runs: list[RunSpec] = []
        names: dict[str, int] = {}
        for index, combo in enumerate(
            itertools.product(*(range(len(a.values)) for a in study.axes))
        ):
            chosen = [(a, a.values[j], a.labels[j]) for a, j in zip(study.axes, combo, strict=True)]
            name = "-".join(label for _, _, label in chosen) or "base"
            variant = "-".join(label for a, _, label in chosen if a.key != SEED) or "base"
            if name in names:
                raise self.fail(
                    f"runs {names[name]} and {index} would both be named {name!r}; "
                    "give the axes distinct labels"
                )
            names[name] = index
            where = f"run {index} ({name})"
            settings = study.settings({a.key: value for a, value, _ in chosen})
            data = self.config_data(study, settings, where)
            try:
                config = config_from_dict(data)
            except ConfigError as e:
                raise self.fail(f"{where}: {e}") from None
            runs.append(
                RunSpec(
                    index=index,
                    name=name,
                    variant=variant,
                    values={a.key: copy.deepcopy(v) for a, v, _ in chosen},
                    labels={a.key: label for a, _, label in chosen},
                    config=config,
                )
            )
        return runs

    def config_data(self, study: Study, values: dict, where: str) -> dict:
        """The config of a run as data: base + overrides + the axis ``values`` (dotted key ->
        value; the tune axis is no config key) + a checkpoint at every evaluation."""
        data = copy.deepcopy(study.base_config)
        for key, value in study.overrides.items():
            _put(data, key, value, self.fail, f"{where}: overrides key {key!r}")
        for key, value in values.items():
            if key != TUNE:
                _put(data, key, value, self.fail, f"{where}: axis {key!r}")
        _put(data, CHECKPOINT_KEY, study.eval_every, self.fail, where)
        return data

    # -- fair tuning ------------------------------------------------------------------------

    def tuning(self, value: Any, study: Study) -> Study:
        """The tune: section checked, every trial's config built and validated, and the runs
        told whose tuned values they take."""
        if not isinstance(value, dict):
            raise self.fail(f"tune must be a mapping (trials, space, ...), got {show(value)}")
        value = {k: v for k, v in value.items() if v is not None}  # an empty key is left out
        t = self.checked(TuneSection, value, "tune")
        trials, seed, iterations = t.trials, t.seed, t.iterations
        # The tuned variants: the combinations of the axes other than seed and tune.
        found: dict[str, tuple[list[str], dict]] = {}
        for run in study.runs:
            name = tuned_name(run.labels)
            labels = [lab for k, lab in run.labels.items() if k not in (SEED, TUNE)]
            values = {k: v for k, v in run.values.items() if k not in (SEED, TUNE)}
            if name in found and found[name][1] != values:
                raise self.fail(
                    f"two variants would both be tuned as {name!r}; give the axes distinct labels"
                )
            found.setdefault(name, (labels, values))
        space = self.space(t.space, study, {lab for ls, _ in found.values() for lab in ls})
        if trials * len(found) > MAX_RUNS:
            raise self.fail(f"tune: {trials} trials x {len(found)} variants; at most {MAX_RUNS}")
        spaces, searches = {}, {}
        for name, (labels, values) in found.items():
            spaces[name], source = self.merged(name, labels, space)
            if trials > 1 and not spaces[name]:
                raise self.fail(
                    f"tune.space gives variant {name} nothing to tune; add an entry for one of "
                    f"its labels ({', '.join(labels) or 'none'}) or {ALL!r}"
                )
            data = self.config_data(study, study.settings(values), f"variant {name}")
            defaults = {}
            current = config_from_dict(data).to_dict()  # valid: the runs' configs were
            for key in spaces[name]:
                node = current
                for part in key.split("."):
                    if not isinstance(node, dict) or part not in node:
                        raise self.fail(
                            f"tune.space.{source[key]} key {key!r}: the config of variant "
                            f"{name} has no such key; tune it under one of that variant's labels"
                        )
                    node = node[part]
                defaults[key] = copy.deepcopy(node)
            searches[name] = tuple(
                self.trial(name, i, defaults, data, seed, iterations, spaces[name])
                for i in range(trials)
            )
        tuning = Tuning(trials, seed, iterations, copy.deepcopy(t.space), spaces, searches)
        runs = tuple(
            replace(
                r, tuned=tuned_name(r.labels) if r.values.get(TUNE, "tuned") == "tuned" else None
            )
            for r in study.runs
        )
        return replace(study, runs=runs, tune=tuning)

    def space(self, value: Any, study: Study, labels: set[str]) -> dict:
        """tune.space read: entry (all, or a variant label) -> dotted key -> Dimension."""
        if not isinstance(value, dict) or not value:
            raise self.fail(
                f"tune.space must map {ALL!r} or a variant's label to dotted config keys and their "
                f"ranges ({{all: {{optim.lr: {{log: [0.0003, 0.003]}}}}}}), got {show(value)}"
            )
        taken = [
            (f"axes[{i}].key {k!r}", k) for i, a in enumerate(study.axes) for k in a.config_keys
        ]
        taken += [(f"overrides key {k!r}", k) for k in study.overrides]
        out = {}
        for entry, keys in value.items():
            where = f"tune.space.{entry}"
            if entry != ALL and entry not in labels:
                known = ", ".join(sorted(labels)) or "none"
                raise self.fail(
                    f"{where}: {entry!r} is no label of any variant (the labels: {known}); "
                    f"use a label, or {ALL!r} for every variant"
                )
            if not isinstance(keys, dict) or not keys:
                raise self.fail(
                    f"{where} must map dotted config keys to ranges (loss.margin: [0.1, 0.4]), "
                    f"got {show(keys)}"
                )
            dims = {}
            for key, form in keys.items():
                what = f"{where} key {key!r}"
                self.dotted(key, what)
                if key in (SEED, "train", "train.iterations"):
                    raise self.fail(
                        f"{what}: the trials' seed is tune.seed and their iterations "
                        "tune.iterations, the same for every variant; do not tune them"
                    )
                for other, k in taken:
                    if key == k or k.startswith(key + "."):
                        raise self.fail(
                            f"{what} is also {other}: tuned and fixed at once would be "
                            "ambiguous; give the key in one place"
                        )
                try:
                    dims[key] = tune.parse(key, form)
                except tune.SpaceError as e:
                    raise self.fail(f"{what}: {e}") from None
            out[entry] = dims
        return out

    def merged(self, name: str, labels: list[str], space: dict) -> tuple[dict, dict]:
        """The space of variant ``name``: ``all`` and the entries of its labels, each key once
        (and no key inside another's section); with the entry each key comes from."""
        dims: dict[str, tune.Dimension] = {}
        source: dict[str, str] = {}
        for entry in dict.fromkeys([ALL, *labels]):
            for key, dim in space.get(entry, {}).items():
                for k, src in source.items():
                    if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                        raise self.fail(
                            f"tune.space: variant {name} gets {key!r} from {entry!r} and {k!r} "
                            f"from {src!r}; give each key once"
                        )
                dims[key], source[key] = dim, entry
        return dims, source

    def trial(
        self,
        name: str,
        index: int,
        defaults: dict,
        data: dict,
        seed: int,
        iterations: int | None,
        space: dict,
    ) -> Trial:
        """Trial ``index`` of variant ``name``, its config validated (an invalid point is an
        error naming the variant, the trial and the key)."""
        values = copy.deepcopy(defaults) if index == 0 else tune.point(space, seed, name, index)
        where = f"tune: trial {index} of variant {name}"
        data = copy.deepcopy(data)
        for key, value in values.items():
            _put(data, key, value, self.fail, where)
        _put(data, SEED, seed, self.fail, where)
        if iterations is not None:
            _put(data, "train.iterations", iterations, self.fail, where)
        try:
            config = config_from_dict(data)
        except ConfigError as e:
            shown = ", ".join(f"{k}={show(v)}" for k, v in values.items())
            raise self.fail(f"{where} ({shown}): {e}; narrow tune.space") from None
        return Trial(name, index, values, config)


def tuned_name(labels: dict) -> str:
    """The name under which a run's variant is tuned: its labels less the seed's and the tune
    axis's (``center_ranked-tuned-seed0`` -> ``center_ranked``)."""
    return "-".join(lab for k, lab in labels.items() if k not in (SEED, TUNE)) or "base"


def with_values(spec: RunSpec, values: dict) -> RunSpec:
    """``spec`` with ``values`` (dotted key -> value: its variant's tuned hyper-parameters) put
    into its config, after base, overrides and axis values."""
    data = spec.config.to_dict()

    def fail(message: str) -> StudyError:
        return StudyError(message)

    for key, value in values.items():
        _put(data, key, value, fail, spec.title)
    try:
        config = config_from_dict(data)
    except ConfigError as e:
        raise StudyError(f"{spec.title} with its tuned values: {e}") from None
    return replace(spec, config=config)


def _put(data: dict, dotted: str, value: Any, fail, where: str) -> None:
    """Set ``data[a][b] = value`` for ``a.b`` (creating sections), replacing what was there; a
    string given for the whole ``loss`` section is its name (``loss: triplet``)."""
    if dotted == "loss" and isinstance(value, str):
        value = {"name": value}
    try:
        set_dotted(data, dotted, copy.deepcopy(value), where)
    except ConfigError as e:
        raise fail(str(e)) from None


def _label(key: str, value: Any) -> str:
    """The default label of an axis value: a string as it is (``triplet``), a number after its
    key's last part (``seed3``, ``lr0.001``), a mapping as its entries (``p8-k8``)."""
    last = key.rsplit(".", 1)[-1]
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict):
        text = "-".join(str(v) if k == "name" else f"{k}{_flat(v)}" for k, v in value.items())
    else:
        text = f"{last}{_flat(value)}"
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".-")
    return text or last


def _flat(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "_".join(map(_flat, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def resolve_subjects(study: Study, pack_subjects: list[str]) -> Subjects:
    """The study's subjects among a pack's; a selection that is empty, a validation split that
    takes every training subject, or test subjects that are training subjects are refused."""

    def fail(message: str) -> StudyError:
        return StudyError(f"{study.path}: {message}")

    try:
        chosen = select(pack_subjects, study.train)
        validation = select(chosen, study.validation)
        test = select(pack_subjects, study.test)
    except SplitError as e:
        raise fail(str(e)) from None
    shown = ", ".join(pack_subjects[:5]) + (", ..." if len(pack_subjects) > 5 else "")
    if not chosen:
        raise fail(f"train {study.train!r} selects no subject of the pack ({shown})")
    if not validation:
        raise fail(f"validation {study.validation!r} selects none of the training subjects")
    train = [s for s in chosen if s not in set(validation)]
    if not train:
        raise fail(
            f"validation {study.validation!r} takes all {len(chosen)} training subjects; "
            "leave some to train on"
        )
    if not test:
        raise fail(f"test {study.test!r} selects no subject of the pack ({shown})")
    both = [s for s in test if s in set(chosen)]
    if both:
        raise fail(
            f"{len(both)} test subjects ({', '.join(both[:5])}) are training subjects; "
            "test on unseen people"
        )
    return Subjects(train, validation, test)
