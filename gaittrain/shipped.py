"""The configs and studies shipped with gait, found by name wherever gait is installed.

The repository's ``configs/`` folder is installed as the package ``gaitconfigs`` (its YAML files
and ``studies/*.yaml``; pyproject.toml maps the one onto the other), so a wheel carries them and
an editable install reads the checkout's files. A shipped file's **name** is its path under that
folder without ``.yaml``: configs ``tiny``, ``casia-b``, ...; studies ``studies/loss-demo``, ...
(a study also answers to its bare name, ``loss-demo``). A study's ``base: ../tiny.yaml`` is
relative to the study file, so it finds the shipped ``tiny`` beside it.

:func:`resolve` turns a command's argument into a file: a file that exists wins (``gait train
my.yaml``, ``gait train configs/tiny.yaml`` in a checkout); otherwise the argument must name a
shipped file of the wanted kind (``gait train tiny``, ``gait study loss-demo``); anything else
is one :class:`ShippedError` line that lists the shipped names.

Examples
--------
>>> names("config")[:2]
['casia-b', 'deepgaitv2']
>>> find("loss-demo", "study").name
'studies/loss-demo'
>>> resolve("tiny", "config").name
'tiny.yaml'
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path

from gaitprep.errors import GaitError

#: The import package that holds the shipped YAML files (the repository's ``configs/``).
PACKAGE = "gaitconfigs"
#: The subfolder of the studies; their names start with it (``studies/loss-demo``).
STUDIES = "studies"
KINDS = ("config", "study")
PLURAL = {"config": "configs", "study": "studies"}
#: The command that uses each kind.
USE = {"config": "gait train", "study": "gait study"}
#: The longest description :func:`summary` gives.
SUMMARY_WIDTH = 78


class ShippedError(GaitError, LookupError):
    """A name that is neither a file nor a shipped config or study, in one line."""


@dataclass(frozen=True)
class Shipped:
    name: str  # "tiny", "studies/loss-demo"
    kind: str  # "config" or "study"
    path: Path

    def describe(self) -> str:
        """The first sentence of the file's opening comment (see :func:`summary`)."""
        return summary(self.path)


def folder() -> Path:
    """The folder of the shipped files (the checkout's ``configs/`` in an editable install)."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise ShippedError(
            f"the shipped configs (package {PACKAGE}) are not installed; reinstall gait-toolkit"
        ) from None
    if not isinstance(root, Path):  # e.g. a zip import: a study's base: ../x.yaml needs files
        raise ShippedError(f"the shipped configs are not files on disk ({root}); reinstall gait")
    return root


def shipped(kind: str | None = None) -> list[Shipped]:
    """Every shipped config (sorted by name), then every study; only ``kind``'s if given."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    root = folder()
    configs = sorted(root.glob("*.yaml"), key=lambda p: p.stem)
    found = [Shipped(p.stem, "config", p) for p in configs]
    studies = sorted(root.joinpath(STUDIES).glob("*.yaml"), key=lambda p: p.stem)
    found += [Shipped(f"{STUDIES}/{p.stem}", "study", p) for p in studies]
    return [s for s in found if kind in (None, s.kind)]


def names(kind: str | None = None) -> list[str]:
    return [s.name for s in shipped(kind)]


def _lookup(name: str, kind: str | None) -> Shipped | None:
    for s in shipped(kind):
        if name == s.name or (s.kind == "study" and name == s.path.stem):
            return s
    return None


def _known(kind: str | None) -> str:
    kinds = [k for k in KINDS if kind in (None, k)]
    listed = "; ".join(f"shipped {PLURAL[k]}: {', '.join(names(k))}" for k in kinds)
    return f"{listed} (gait configs list)"


def _wrong_kind(name: str, kind: str) -> ShippedError | None:
    """The error for a shipped file of another kind than ``kind`` (None: there is none)."""
    other = _lookup(name, None)
    if other is None or other.kind == kind:
        return None
    use = f"{USE[other.kind]} {other.name}"
    return ShippedError(f"{name} is a shipped {other.kind}, not a {kind}: use it with {use}")


def find(name: str, kind: str | None = None) -> Shipped:
    """The shipped file called ``name``, of ``kind`` if given; a :class:`ShippedError` that
    lists the shipped names otherwise."""
    found = _lookup(name, kind)
    if found is not None:
        return found
    error = _wrong_kind(name, kind) if kind is not None else None
    if error is not None:
        raise error
    what = "config or study" if kind is None else kind
    raise ShippedError(f"no shipped {what} is called {name}; {_known(kind)}")


def resolve(argument: str | Path, kind: str) -> Path:
    """The file a command's ``argument`` means: that file if it exists, else the shipped
    ``kind`` (``config`` or ``study``) of that name; else a :class:`ShippedError` line that
    lists the shipped names."""
    path = Path(argument)
    if path.is_file():
        return path
    text = str(argument)
    found = _lookup(text, kind)
    if found is not None:
        return found.path
    error = _wrong_kind(text, kind)
    if error is not None:
        raise error
    if path.is_dir():
        problem = f"{text} is a folder, not a {kind} file, nor a shipped {kind}'s name"
    else:
        problem = f"{text} is neither a {kind} file nor a shipped {kind}'s name"
    near = _lookup(path.stem, kind) if path.stem != text else None
    if near is not None:  # configs/tiny.yaml outside a checkout
        problem += f" (the shipped {near.name}?)"
    raise ShippedError(f"{problem}; {_known(kind)}")


def summary(path: Path, width: int = SUMMARY_WIDTH) -> str:
    """The first sentence of the comment a YAML file opens with, cut to ``width`` characters
    ("" without one).

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
    >>> _ = p.write_text("# A small model: 4 x 4.\\n# More.\\nseed: 0\\n")
    >>> summary(p)
    'A small model: 4 x 4.'
    """
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(" ".join(lines).split())
    text = re.split(r"(?<=[.?!])\s+(?=[A-Z0-9`(])", text, maxsplit=1)[0]
    if len(text) > width:
        text = text[: width - 4].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return text
