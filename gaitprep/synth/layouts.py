"""The raw directory layouts of CASIA-B and OU-MVLP, reproduced exactly.

CASIA-B::

    {sid:03d}/{cond}-{nn:02d}/{view:03d}/{sid:03d}-{cond}-{nn:02d}-{view:03d}-{frame:03d}.png

with conditions nm-01..06, bg-01..02, cl-01..02, views 000, 018, ..., 180, 320x240 frames.

OU-MVLP::

    Silhouette_{view:03d}-{seq:02d}/{sid:05d}/{frame:04d}.png

with views 000..090 and 180..270 in steps of 15 and sequences 00 and 01 (the real frames are
1280x980; the synthetic default is smaller). Frames are numbered from 1 in both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """A dataset's raw layout: its views, recordings (condition, number) and frame size."""

    name: str
    views: tuple[int, ...]
    recordings: tuple[tuple[str, int], ...]
    size: tuple[int, int]  # default (width, height)

    def sequence_dir(self, sid: int, condition: str, seq: int, view: int) -> str:
        """The folder, relative to the tree's root, that holds one sequence's frames."""
        if self.name == "casia-b":
            return f"{sid:03d}/{condition}-{seq:02d}/{view:03d}"
        return f"Silhouette_{view:03d}-{seq:02d}/{sid:05d}"

    def frame_name(self, sid: int, condition: str, seq: int, view: int, frame: int) -> str:
        """The file name of frame ``frame`` (numbered from 1) of a sequence."""
        if self.name == "casia-b":
            return f"{sid:03d}-{condition}-{seq:02d}-{view:03d}-{frame:03d}.png"
        return f"{frame:04d}.png"

    def parse_recordings(self, text: str | None) -> tuple[tuple[str, int], ...]:
        """Recordings named by ``text``: comma-separated ``nm`` (all nm), ``nm-01``, or ``00``.

        Raises ValueError naming the token that is not a recording of this dataset.
        """
        if not text:
            return self.recordings
        chosen: list[tuple[str, int]] = []
        for token in (t.strip() for t in text.split(",") if t.strip()):
            if self.name == "casia-b" and "-" not in token:
                match = [r for r in self.recordings if r[0] == token]
            elif self.name == "casia-b":
                cond, _, nn = token.partition("-")
                match = [r for r in self.recordings if r == (cond, _int(nn))]
            else:
                match = [r for r in self.recordings if r[1] == _int(token)]
            if not match:
                raise ValueError(
                    f"{token!r} is not a recording of {self.name}; {self.recording_help}"
                )
            chosen += [r for r in match if r not in chosen]
        return tuple(chosen)

    @property
    def recording_help(self) -> str:
        if self.name == "casia-b":
            return "use nm, bg, cl or nm-01..06, bg-01..02, cl-01..02"
        return "use 00 and/or 01"

    def parse_views(self, text: str | None) -> tuple[int, ...]:
        """Views named by ``text`` (comma-separated degrees, e.g. ``0,90`` or ``000,090``)."""
        if not text:
            return self.views
        views = []
        for token in (t.strip() for t in text.split(",") if t.strip()):
            v = _int(token)
            if v not in self.views:
                allowed = ", ".join(f"{x:03d}" for x in self.views)
                raise ValueError(f"view {token!r} is not a view of {self.name} ({allowed})")
            if v not in views:
                views.append(v)
        return tuple(views)


def _int(token: str) -> int:
    try:
        return int(token)
    except ValueError:
        return -1


CASIA_B = Layout(
    name="casia-b",
    views=tuple(range(0, 181, 18)),
    recordings=tuple(
        [("nm", i) for i in range(1, 7)] + [("bg", 1), ("bg", 2), ("cl", 1), ("cl", 2)]
    ),
    size=(320, 240),
)

OU_MVLP = Layout(
    name="ou-mvlp",
    views=tuple(list(range(0, 91, 15)) + list(range(180, 271, 15))),
    recordings=(("nm", 0), ("nm", 1)),
    size=(320, 245),
)

LAYOUTS = {layout.name: layout for layout in (CASIA_B, OU_MVLP)}


def parse_subjects(text: str) -> tuple[int, ...]:
    """Subject ids from ``24`` (ids 1..24) or a list of ids and ranges (``1-74,80``).

    Raises ValueError on anything else.
    """
    text = text.strip()
    if text.isdigit():
        n = int(text)
        if n < 1:
            raise ValueError("--subjects must be at least 1")
        return tuple(range(1, n + 1))
    ids: list[int] = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        lo, sep, hi = token.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{token!r} is not a subject id or range (e.g. 24, 1-74 or 1-74,80)")
        a, b = int(lo), int(hi) if sep else int(lo)
        if a < 1 or b < a:
            raise ValueError(f"{token!r} is not a valid range of subject ids (ids start at 1)")
        ids += [i for i in range(a, b + 1) if i not in ids]
    if not ids:
        raise ValueError("--subjects names no subject")
    return tuple(ids)
