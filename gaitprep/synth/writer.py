"""Write a synthetic raw dataset tree: many sequences, in parallel, resumable, atomic per sequence.

Each sequence is rendered and written into a hidden temporary folder, then renamed into place,
so a folder that exists is complete. The tree's root holds ``.gait-synth.json`` with the exact
arguments and whether the tree is complete, and nothing else (no timings, no counts of this run):
two runs of the same command give byte-identical trees, marker included, whether fresh or resumed.
Running the same command again after a crash skips the sequences already written, while different
arguments are refused unless ``overwrite`` is set. One process writes a tree at a time: a run
holds an :class:`~gaitprep.files.OutputLock` on the root (a hidden ``.ROOT.lock`` beside it) from
before the root is checked or replaced until the marker says complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
from joblib import Parallel, delayed

from gaitprep.errors import GaitError
from gaitprep.files import OutputLock, atomic_write, encode_png
from gaitprep.synth.artifacts import Artifacts
from gaitprep.synth.layouts import Layout
from gaitprep.synth.sequence import GENERATOR, SequenceSpec, render_sequence

MARKER = ".gait-synth.json"
# How every synth writer encodes its PNGs (fast, lossless).
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10: skipping filters is 5x faster
    PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


class SynthError(GaitError):
    """A problem with the arguments or the output folder, explained in one line."""


@dataclass(frozen=True)
class SynthJob:
    """Everything that defines a synthetic tree."""

    layout: Layout
    subjects: tuple[int, ...]
    recordings: tuple[tuple[str, int], ...]
    views: tuple[int, ...]
    frames: int
    size: tuple[int, int]
    seed: int
    artifacts: Artifacts

    def specs(self) -> list[SequenceSpec]:
        w, h = self.size
        return [
            SequenceSpec(
                self.layout.name, sid, cond, seq, view, self.frames, w, h, self.seed, self.artifacts
            )
            for sid in self.subjects
            for cond, seq in self.recordings
            for view in self.views
        ]

    def describe(self) -> dict:
        """The arguments as JSON-able data (what the marker file records)."""
        return {
            "generator": GENERATOR,
            "dataset": self.layout.name,
            "subjects": list(self.subjects),
            "recordings": [f"{c}-{s:02d}" for c, s in self.recordings],
            "views": list(self.views),
            "frames": self.frames,
            "size": list(self.size),
            "seed": self.seed,
            "artifacts": self.artifacts.as_dict(),
        }


def write_sequence(root: Path, layout: Layout, spec: SequenceSpec) -> dict:
    """Render ``spec`` and write its frames under ``root``; returns counts for the summary."""
    final = root / layout.sequence_dir(spec.subject, spec.condition, spec.seq, spec.view)
    if final.is_dir():
        return {"frames": 0, "empty": 0, "skipped": 1}
    frames = render_sequence(spec)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for i, img in enumerate(frames, start=1):
        name = layout.frame_name(spec.subject, spec.condition, spec.seq, spec.view, i)
        (tmp / name).write_bytes(encode_png(img, PNG_PARAMS))
    os.replace(tmp, final)
    empty = int((~frames.reshape(len(frames), -1).any(1)).sum())
    return {"frames": len(frames), "empty": empty, "skipped": 0}


def write_marker(root: Path, job: SynthJob, complete: bool) -> None:
    """The tree's marker: the job and whether the tree is complete, nothing run-specific."""
    data = {"job": job.describe(), "complete": complete}
    atomic_write(root / MARKER, json.dumps(data, indent=2) + "\n")


def read_marker(root: Path) -> dict | None:
    """The marker of the tree at ``root``; None when it is missing or unreadable."""
    try:
        data = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def prepare_root(root: Path, job: SynthJob, overwrite: bool) -> None:
    """Create ``root`` or check that it holds a resumable run of the same job.

    The caller holds the root's lock (:func:`synthesize` does).
    """
    marker = root / MARKER
    if root.exists() and not root.is_dir():
        raise SynthError(f"{root} exists and is not a folder; choose another output path")
    if root.is_dir() and any(root.iterdir()):
        if not marker.is_file():
            raise SynthError(
                f"{root} is not empty and is not a gait synth tree; choose an empty or new folder"
            )
        previous = (read_marker(root) or {}).get("job")
        wanted = job.describe()
        if previous != wanted and overwrite:
            shutil.rmtree(root)
        elif previous != wanted:
            changed = _changed(previous, wanted)
            raise SynthError(
                f"{root} holds a gait synth tree made with other {changed}; "
                "pass --overwrite to replace it, or choose another folder"
            )
    root.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        write_marker(root, job, complete=False)


def _changed(previous, wanted: dict) -> str:
    """Which of the job's fields differ, in words, e.g. ``"seed, frames"``."""
    if not isinstance(previous, dict):
        return "arguments (its record is unreadable)"
    keys = [k for k in wanted if previous.get(k) != wanted[k]]
    keys += [k for k in previous if k not in wanted]
    if "generator" in keys:
        return f"generator (version {previous.get('generator', 1)}; this gait writes {GENERATOR})"
    return "arguments (" + ", ".join(keys) + ")"


def synthesize(
    root: Path,
    job: SynthJob,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[Iterator[dict], int], Iterator[dict]] | None = None,
) -> dict:
    """Write the whole tree of ``job`` under ``root``; returns the run's statistics.

    ``progress`` wraps the stream of per-sequence results (e.g. with a progress bar); it is called
    once the root is locked and checked. The output is byte-identical for any number of
    ``workers``, and for a fresh or a resumed run. The statistics (frames written, sequences
    skipped, seconds, frames per second) are this run's: they are returned, not written.

    Raises :class:`~gaitprep.files.OutputBusy` while another process writes ``root``.
    """
    root = Path(root)
    with OutputLock(root):
        prepare_root(root, job, overwrite)
        return _write_tree(root, job, workers, progress)


def _write_tree(root: Path, job: SynthJob, workers: int, progress) -> dict:
    specs = job.specs()
    start = time.perf_counter()
    if workers <= 1:
        results: Iterator[dict] = (write_sequence(root, job.layout, s) for s in specs)
    else:
        results = Parallel(n_jobs=workers, return_as="generator_unordered")(
            delayed(write_sequence)(root, job.layout, s) for s in specs
        )
    if progress is not None:
        results = progress(results, len(specs))
    totals = {"sequences": len(specs), "frames": 0, "empty": 0, "skipped": 0}
    for r in results:
        for k in ("frames", "empty", "skipped"):
            totals[k] += r[k]
    wall = time.perf_counter() - start
    totals["seconds"] = round(wall, 3)
    totals["frames_per_second"] = round(totals["frames"] / wall, 1) if wall > 0 else 0.0
    write_marker(root, job, complete=True)
    return totals


def summarize(root: Path) -> dict:
    """Count what a raw tree holds: sequences (folders with frames), frames and bytes."""
    root = Path(root)
    if not root.is_dir():
        raise SynthError(f"{root} is not a folder")
    sequences = frames = size = 0
    for folder, _dirs, files in os.walk(root):
        pngs = [f for f in files if f.endswith(".png")]
        if pngs and not Path(folder).name.startswith(".tmp-"):
            sequences += 1
            frames += len(pngs)
            size += sum(os.path.getsize(os.path.join(folder, f)) for f in pngs)
    info = read_marker(root) or {}
    return {
        "root": str(root),
        "sequences": sequences,
        "frames": frames,
        "megabytes": round(size / 1e6, 2),
        "complete": info.get("complete"),
        "job": info.get("job"),
    }
