"""Subject splits from protocol files (``gaittrain/protocols/*.yaml``) or explicit lists.

A selector is a string: ranges and lists of numeric ids (``001-074``, ``1-10,15``), ``odd`` or
``even``, ``first:N`` or ``last:N`` (the first or last N subjects in natural order). Subjects are
matched by numeric value, so ``1`` and ``001`` name the same subject; non-numeric ids match as
text.
"""

from __future__ import annotations

from pathlib import Path

from gaitprep.errors import GaitError
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
    for token in (t.strip() for t in sel.split(",") if t.strip()):
        lo, dash, hi = token.partition("-")
        if dash and lo.isdigit() and hi.isdigit():
            if int(hi) < int(lo):
                raise SplitError(f"{token!r} is an empty range")
            wanted_numbers.update(range(int(lo), int(hi) + 1))
        elif token.isdigit():
            wanted_numbers.add(int(token))
        else:
            wanted_text.add(token)
    return [s for s in ordered if _number(s) in wanted_numbers or s in wanted_text]


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
