"""YAML for files that people write (configs, protocols): safe, strict, one-line errors.

:func:`load_yaml` reads YAML with PyYAML's safe loader, except that

* a key given twice in one mapping is an error naming the key and both lines (the safe loader keeps
  the last value silently, so a forgotten earlier line would win or lose unnoticed);
* nesting deeper than :data:`MAX_DEPTH` levels is an error (the loader is recursive: a deeply
  nested document would otherwise end in a ``RecursionError``);
* every problem is one :class:`YamlError` line: ``SOURCE: PROBLEM (line N, column M)``.

Merge keys (``<<: *base``) keep their meaning: the keys they bring in may be overridden.

Examples
--------
>>> load_yaml("a: 1\\nb: [2, 3]\\n", "c.yaml")
{'a': 1, 'b': [2, 3]}
>>> load_yaml("a: 1\\na: 2\\n", "c.yaml")
Traceback (most recent call last):
...
gaittrain.yaml_strict.YamlError: c.yaml: duplicate key 'a' on line 2 (first on line 1); keep one
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from gaitprep.errors import GaitError

MAX_DEPTH = 100  # far beyond any config or protocol; far below Python's recursion limit

_MERGE = "tag:yaml.org,2002:merge"


class YamlError(GaitError, ValueError):
    """A YAML document that cannot be used, explained in one line."""


class _DuplicateKey(ConstructorError):
    pass


class _TooDeep(ComposerError):
    pass


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and documents nested too deeply."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _TooDeep(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.get(key)
                except TypeError:  # an unhashable key: the safe loader explains it
                    continue
                if earlier is not None:
                    raise _DuplicateKey(
                        None,
                        None,
                        f"duplicate key {key!r} on line {key_node.start_mark.line + 1} "
                        f"(first on line {earlier.start_mark.line + 1}); keep one",
                        None,
                    )
                first[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _describe(e: yaml.YAMLError) -> str:
    if isinstance(e, _DuplicateKey):
        return e.problem
    if isinstance(e, _TooDeep):
        return f"{e.problem} (line {e.problem_mark.line + 1})"
    if isinstance(e, yaml.MarkedYAMLError):
        problem = e.problem or e.context or "not valid YAML"
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"not valid YAML: {problem}{where}"
    return "not valid YAML: " + " ".join(str(e).split())


def load_yaml(text: str, source: str, error: type[Exception] = YamlError) -> Any:
    """The data of the YAML document ``text``; ``source`` names it in errors (a path, ``--set``).

    Raises ``error`` (default :class:`YamlError`; a caller may pass its own one-line error class)
    for invalid YAML, a duplicate key or excessive nesting.
    """
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise error(f"{source}: {_describe(e)}") from None
    except RecursionError:  # a safety net: MAX_DEPTH stops the composer long before
        raise error(f"{source}: nested too deeply") from None


def load_yaml_file(path: Path, error: type[Exception] = YamlError) -> Any:
    """:func:`load_yaml` of the file at ``path``; a file that cannot be read or is not UTF-8
    text is one ``error`` line naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not a text file (not UTF-8)") from None
    return load_yaml(text, str(path), error)
