"""Find the sequences of a raw silhouette tree from a layout pattern.

A layout is a path pattern relative to the tree's root whose folder part names the fields of a
sequence and whose last part is a glob for its frames::

    {subject}/{condition}-{seq}/{view}/*          CASIA-B
    Silhouette_{view}-{seq}/{subject}/*           OU-MVLP (condition is "nm")

Fields are ``subject``, ``condition``, ``seq`` and ``view``; a field the layout does not name gets
a default (``subject`` must be named, or given a default by the caller). Frames are image files
(png, jpg, jpeg, bmp) matching the glob, in natural order of their names (another kind of file,
such as OpenGait's pickles, on request: see :func:`discover`). Hidden files and folders (names
starting with ".") are ignored. A layout whose first folders are plain names
(``test/probe/{seq}/*.png``) is looked for under those folders only.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from gaitprep.errors import GaitError

CASIA_B = "{subject}/{condition}-{seq}/{view}/*"
OU_MVLP = "Silhouette_{view}-{seq}/{subject}/*"
PRESETS = {"casia-b": CASIA_B, "ou-mvlp": OU_MVLP}
FIELDS = ("subject", "condition", "seq", "view")
DEFAULTS = {"condition": "nm", "seq": "00", "view": "000"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


class LayoutError(GaitError):
    """The tree does not fit the layout, or the layout itself is malformed."""


@dataclass(frozen=True)
class RawSequence:
    """One raw sequence: its fields, its folder (relative to the root) and its frame files."""

    subject: str
    condition: str
    seq: str
    view: str
    folder: str
    files: tuple[str, ...]
    labelled: bool = True  # False: nobody knows whose walk it is (GREW's test probes, distractors)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.subject, self.condition, self.seq, self.view)


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def natural_key(key: tuple[str, ...]) -> list:
    """The sort key of a sequence key: its fields in natural order (numbers compare as numbers),
    the order of a pack's rows."""
    return [_natural(x) for x in key]


def compile_layout(pattern: str, subject_default: bool = False) -> tuple[re.Pattern, str]:
    """The regex that a sequence folder must match, and the glob its frames must match.
    ``subject_default``: the caller gives ``subject`` a default, so the pattern need not name it."""
    parts = pattern.strip("/").split("/")
    if len(parts) < 2:
        raise LayoutError(
            f"layout {pattern!r} needs at least one folder and a frame glob, "
            "e.g. '{subject}/{view}/*.png'"
        )
    folder, glob = "/".join(parts[:-1]), parts[-1]
    names = re.findall(r"{(\w*)}", folder)
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise LayoutError(
            f"layout {pattern!r} names unknown field {{{unknown[0]}}}; "
            f"use {', '.join('{' + f + '}' for f in FIELDS)}"
        )
    if "subject" not in names and not subject_default:
        raise LayoutError(f"layout {pattern!r} must name {{subject}}")
    if len(set(names)) != len(names):
        raise LayoutError(f"layout {pattern!r} names a field twice")
    regex = ""
    for piece in re.split(r"({\w+})", folder):
        if piece.startswith("{") and piece.endswith("}"):
            regex += f"(?P<{piece[1:-1]}>[^/]+?)"
        else:
            regex += re.escape(piece)
    return re.compile(regex + r"\Z"), glob


def discover(
    root: Path,
    pattern: str,
    defaults: dict[str, str] | None = None,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    what: str = "image frames",
    ignore: tuple[str, ...] = (),
    hint: str = "choose the matching command or pass --layout",
) -> list[RawSequence]:
    """Every sequence under ``root`` that ``pattern`` describes, sorted by key.

    A sequence's files are those whose names end with one of ``extensions`` (any case), match
    the pattern's glob and match none of the globs ``ignore`` (e.g. ``*gei.png``: gait energy
    images beside the sequences); ``what`` names them in messages, ``hint`` says what to do when a
    folder does not fit. Only the pattern's leading plain folders are walked (``train`` for
    ``train/{subject}/{seq}/*.png``).

    Raises LayoutError naming the expected pattern and the first folder of frames that does not
    fit it, or when two folders give the same sequence key, or when no frame is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder")
    fill = {**DEFAULTS, **(defaults or {})}
    regex, glob = compile_layout(pattern, subject_default="subject" in fill)
    found: dict[tuple, RawSequence] = {}
    for folder, dirs, files in os.walk(root / _plain_folders(pattern)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        frames = sorted(
            (
                f
                for f in files
                if not f.startswith(".")
                and f.lower().endswith(extensions)
                and fnmatch.fnmatchcase(f, glob)
                and not any(fnmatch.fnmatchcase(f, g) for g in ignore)
            ),
            key=_natural,
        )
        if not frames:
            continue
        rel = Path(folder).relative_to(root).as_posix()
        m = regex.match(rel)
        if m is None:
            raise LayoutError(f"{rel}/{frames[0]} does not fit the layout {pattern!r}; {hint}")
        fields = {**fill, **m.groupdict()}
        seq = RawSequence(
            fields["subject"],
            fields["condition"],
            fields["seq"],
            fields["view"],
            rel,
            tuple(frames),
        )
        if seq.key in found:
            raise LayoutError(
                f"{rel} and {found[seq.key].folder} are the same sequence "
                f"{'-'.join(seq.key)} under the layout {pattern!r}"
            )
        found[seq.key] = seq
    if not found:
        raise LayoutError(f"no {what} under {root} fit the layout {pattern!r}")
    return [found[k] for k in sorted(found, key=natural_key)]


def _plain_folders(pattern: str) -> str:
    """The leading folders of ``pattern`` that name no field (``test/probe`` of
    ``test/probe/{seq}/*.png``; empty when the first folder names one)."""
    folders = pattern.strip("/").split("/")[:-1]
    plain = []
    for part in folders:
        if "{" in part or any(c in part for c in "*?["):
            break
        plain.append(part)
    return "/".join(plain)
