"""Subject splits from protocol files (``gaittrain/protocols/*.yaml``) or explicit lists.

A selector is a string: ranges and lists of numeric ids (``001-074``, ``1-10,15``), ``odd`` or
``even``, ``first:N`` or ``last:N`` (the first or last N subjects in natural order). Subjects are
matched by numeric value, so ``1`` and ``001`` name the same subject; non-numeric ids match as
text, and a token with ``*``, ``?`` or ``[`` as a pattern (``*train``: GREW's training ids).

:func:`partition_protocol` writes OpenGait's partition file of a dataset (``TRAIN_SET`` and
``TEST_SET``, lists of ids, e.g. Gait3D's, whose 3,000 training ids are not a range) as a
protocol file of such selectors (``gait import-partition``).
"""

from __future__ import annotations

import hashlib
import json
from fnmatch import fnmatchcase
from pathlib import Path

from gaitprep.errors import GaitError
from gaitprep.files import OutputLock, atomic_write
from gaittrain.yaml_strict import load_yaml

PROTOCOLS = Path(__file__).resolve().parents[1] / "protocols"
ALIASES = {"casia-b": "casia-b-lt"}  # the split most papers report under the dataset's name


class SplitError(GaitError, ValueError):
    """A protocol or subject selector that cannot be used."""


def load_protocol(name: str) -> dict:
    """A protocol by name (``casia-b-lt``, or an alias of ``ALIASES``) or by path to a YAML file."""
    name = ALIASES.get(name, name)
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROTOCOLS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted([*(p.stem for p in PROTOCOLS.glob("*.yaml")), *ALIASES]))
        raise SplitError(f"unknown protocol {name!r}; known: {known} (or a path to a .yaml)")
    data = load_yaml(path.read_text(), str(path), SplitError)
    if not isinstance(data, dict):
        raise SplitError(f"protocol {path} must be a mapping with name, train and test")
    missing = {"name", "train", "test"} - set(data)
    if missing:
        raise SplitError(f"protocol {path} lacks {', '.join(sorted(missing))}")
    return data


def _number(subject: str) -> int | None:
    return int(subject) if subject.isdigit() else None


def select(subjects: list[str], selector: str) -> list[str]:
    """The members of ``subjects`` named by ``selector``, in natural order."""
    ordered = sorted(set(subjects), key=lambda s: (_number(s) is None, _number(s) or 0, s))
    sel = str(selector).strip()
    if sel in ("odd", "even"):
        parity = 1 if sel == "odd" else 0
        return [s for s in ordered if _number(s) is not None and _number(s) % 2 == parity]
    for end in ("first", "last"):
        if sel.startswith(f"{end}:"):
            n = sel.split(":", 1)[1]
            if not n.isdigit():
                raise SplitError(f"{selector!r}: use {end}:N with a whole number N")
            if end == "first":
                return ordered[: int(n)]
            return ordered[len(ordered) - int(n) :] if int(n) else []
    wanted_numbers: set[int] = set()
    wanted_text: set[str] = set()
    patterns: list[str] = []
    for token in (t.strip() for t in sel.split(",") if t.strip()):
        lo, dash, hi = token.partition("-")
        if any(c in token for c in "*?["):
            patterns.append(token)
        elif dash and lo.isdigit() and hi.isdigit():
            if int(hi) < int(lo):
                raise SplitError(f"{token!r} is an empty range")
            wanted_numbers.update(range(int(lo), int(hi) + 1))
        elif token.isdigit():
            wanted_numbers.add(int(token))
        else:
            wanted_text.add(token)
    return [
        s
        for s in ordered
        if _number(s) in wanted_numbers
        or s in wanted_text
        or any(fnmatchcase(s, p) for p in patterns)
    ]


def train_subjects(subjects: list[str], protocol: str, override: str | None = None) -> list[str]:
    """Training subjects: ``override`` (e.g. ``--train-subjects``) or the protocol's split.

    Raises SplitError when the selection is empty.
    """
    selector = override if override else load_protocol(protocol)["train"]
    chosen = select(subjects, selector)
    if not chosen:
        raise SplitError(
            f"no subject of the pack matches the training split {selector!r} "
            f"(pack subjects: {', '.join(sorted(set(subjects))[:5])}...)"
        )
    return chosen


#: OpenGait's partition keys that become a protocol's ``train`` and ``test``.
PARTITION_SETS = {"train": "TRAIN_SET", "test": "TEST_SET"}


def compact_selector(ids: list[str]) -> str:
    """A selector naming exactly ``ids``: runs of consecutive numbers as ranges (written with the
    first id's digits), other ids as they are, in natural order. SplitError for an id a selector
    cannot name (a comma, a pattern character, surrounding space, ``odd``, ``first:N`` ...).

    Examples
    --------
    >>> compact_selector(["0003", "0001", "0002", "0007", "00001train"])
    '0001-0003,0007,00001train'
    """
    numbers, text = [], []
    for i in ids:
        plain = i == i.strip() and i and not any(c in i for c in ",*?[:")
        lo, dash, hi = i.partition("-")
        if not plain or i in ("odd", "even") or (dash and lo.isdigit() and hi.isdigit()):
            raise SplitError(f"subject id {i!r} cannot be written in a selector")
        (numbers if i.isdigit() else text).append(i)
    tokens, run = [], []
    for i in sorted(set(numbers), key=int):
        if run and int(i) != int(run[-1]) + 1:
            tokens.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
            run = []
        run.append(i)
    if run:
        tokens.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(tokens + sorted(set(text)))


def _folded(selector: str, width: int = 96) -> str:
    """A YAML folded scalar of ``selector``, cut after commas (folding adds a space, which
    :func:`select` strips)."""
    lines, line = [], ""
    for token in selector.split(","):
        piece = token + ","
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    lines.append(line.rstrip(","))
    return ">-\n" + "".join(f"  {x}\n" for x in lines)


def partition_protocol(partition: Path, name: str, dataset: str) -> str:
    """The text of a protocol file whose ``train`` and ``test`` name exactly the ids of
    ``TRAIN_SET`` and ``TEST_SET`` of OpenGait's partition file ``partition`` (checked by
    selecting them back from their union). SplitError, in one line, for a file without them."""
    partition = Path(partition)
    fix = "give OpenGait's partition file (datasets/DATASET/DATASET.json)"
    try:
        raw = partition.read_bytes()
        data = json.loads(raw.decode("utf-8"))
        sets = {k: data[v] for k, v in PARTITION_SETS.items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SplitError(
            f"cannot read TRAIN_SET and TEST_SET from {partition} ({type(e).__name__}: {e}); {fix}"
        ) from None
    for k, ids in sets.items():
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise SplitError(f"{partition}: {PARTITION_SETS[k]} is not a list of ids; {fix}")
    everyone = sorted({i for ids in sets.values() for i in ids})
    selectors = {k: compact_selector(ids) for k, ids in sets.items()}
    for k, ids in sets.items():
        if select(everyone, selectors[k]) != select(everyone, ",".join(ids)):
            raise SplitError(f"{partition}: {PARTITION_SETS[k]} cannot be written as a selector")
    sha = hashlib.sha256(raw).hexdigest()
    head = (
        f"# OpenGait's partition file {partition.name} as a protocol, by `gait import-partition`:\n"
        f"# train is its TRAIN_SET ({len(sets['train'])} ids), test its TEST_SET "
        f"({len(sets['test'])} ids).\n# sha256 of {partition.name}: {sha}\n"
    )
    body = f"name: {json.dumps(name)}\ndataset: {json.dumps(dataset)}\n"
    return head + body + "".join(f"{k}: {_folded(selectors[k])}" for k in PARTITION_SETS)


def write_partition_protocol(
    partition: Path, out: Path, name: str | None = None, dataset: str | None = None
) -> dict:
    """Write :func:`partition_protocol` of ``partition`` to ``out`` (a ``.yaml`` file, as a
    protocol path must be; atomically, locked), named ``name`` (default: ``out``'s stem), of
    ``dataset`` (default: the name); returns the protocol as :func:`load_protocol` reads it."""
    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise SplitError(f"{out}: a protocol file ends in .yaml; give a name like gait3d.yaml")
    name = name or out.stem
    text = partition_protocol(partition, name, dataset or name)
    with OutputLock(out):
        atomic_write(out, text)
    return load_protocol(str(out))
