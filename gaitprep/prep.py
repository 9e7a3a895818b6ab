"""``gait prep``: a raw silhouette tree in, one gait pack and its manifest out.

Sequences are normalized in parallel worker processes and written by this (single) process in
sorted key order, so the pack does not depend on the number of workers. One run at a time writes
an output: the run holds :class:`~gaitprep.files.OutputLock` on ``PACKED`` from before it touches
anything until it is done, and a second run is refused with a line naming the first. The run is
resumable:

* the pack grows as ``PACKED.partial``; every couple of seconds the writer writes the frames that
  fill whole chunks, flushes and fsyncs the file, appends the finished sequences to
  ``PACKED.partial.jsonl`` (fsync) and then records the committed position (the sequences whose
  frames are all on the disk) in ``PACKED.partial.json`` (written atomically);
* a run that finds a journal of the same job reopens the partial pack, checks every committed
  sequence against its CRC-32, truncates whatever came after the last commit and goes on; if the
  partial file cannot be trusted it starts over;
* a failed write (full disk, file size limit) ends the run with one line naming the file; the
  partial pack and the journal stay, so the same command resumes once there is space;
* only a complete pack is renamed to ``PACKED``; ``PACKED.manifest.json`` follows.

Workers also compress the frames they make, each frame on its own (:func:`read_encoded`,
:mod:`gaitprep.chunks`), so that the writer only joins the pieces into chunks and appends them
with h5py's direct chunk write; with ``--compression lzf`` the writer compresses through h5py.

A job's ``reader`` says what its raw files are: ``images`` (frames that gait normalizes, see
:mod:`gaitprep.process`), ``area`` and ``as-they-are`` (CCPG's and GREW's frames, made as
OpenGait's pretreatment makes them, see :mod:`gaitprep.wild_frames`) or ``opengait`` (OpenGait's
pickles, one per sequence, whose frames are stored as they are, see :mod:`gaitprep.opengait`).
Everything else is the same for all. The sequences of Gait3D, GREW and CCPG (a job's ``dataset``)
are found and keyed by :mod:`gaitprep.wild`, those of any other dataset by the job's layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from joblib import Parallel, delayed
from tqdm import tqdm

from gaitprep import __version__
from gaitprep.chunks import encode_frames
from gaitprep.errors import GaitError, OutputError, describe_os_error
from gaitprep.files import OutputLock, atomic_write, fsync_path, output_target
from gaitprep.layout import RawSequence, discover
from gaitprep.opengait import IMPORTED_FROM, PICKLE_EXTENSIONS, read_pickle_sequence
from gaitprep.pack import VERSION, PackWriter, created_timestamp, frames_crc
from gaitprep.process import Params, Processed, process_sequence
from gaitprep.wild import DATASETS as WILD_DATASETS
from gaitprep.wild import find_sequences
from gaitprep.wild_frames import AREA, GREW_FRAMES, read_as_they_are, read_by_area

COMMIT_SECONDS = 2.0


class PrepError(GaitError):
    """A problem with the arguments, the input tree or the output path, in one line."""


class PrepInterrupted(PrepError):
    """The run was interrupted after a commit; running the same command resumes it."""


@dataclass(frozen=True)
class PrepJob:
    """Everything that determines a pack."""

    raw: Path
    out: Path
    dataset: str  # casia-b, ou-mvlp, gait3d, grew, ccpg, folder or opengait
    layout: str
    params: Params = field(default_factory=Params)
    min_frames: int = 5
    compression: str = "gzip"
    shard: tuple[int, int] = (1, 1)  # K-th of N, K from 1
    reader: str = "images"  # images, area, as-they-are (normalized by gait) or opengait (pickles)

    def __post_init__(self) -> None:
        if self.reader not in READERS:
            raise ValueError(f"reader must be one of {', '.join(READERS)}, not {self.reader!r}")

    def paths(self) -> dict[str, Path]:
        o = self.out
        return {
            "partial": o.with_name(o.name + ".partial"),
            "journal": o.with_name(o.name + ".partial.json"),
            "log": o.with_name(o.name + ".partial.jsonl"),
            "manifest": o.with_name(o.name + ".manifest.json"),
        }

    def select(self, sequences: list[RawSequence]) -> list[RawSequence]:
        k, n = self.shard
        return [s for i, s in enumerate(sequences) if i % n == k - 1]

    def identity(self, sequences: list[RawSequence]) -> dict:
        """What a journal must match to be resumed: the arguments and the exact input files."""
        digest = hashlib.sha1()
        for s in sequences:
            digest.update(json.dumps([s.key, s.folder, s.files]).encode())
        return {
            "pack_version": VERSION,
            "raw": str(self.raw.resolve()),
            "dataset": self.dataset,
            "layout": self.layout,
            "params": self.params.as_dict(),
            "min_frames": self.min_frames,
            "compression": self.compression,
            "shard": list(self.shard),
            "inputs": digest.hexdigest(),
            **({} if self.reader == "images" else {"reader": self.reader}),
        }

    def attrs(self) -> dict:
        return {
            "dataset": self.dataset,
            "layout": self.layout,
            **self.params.as_dict(),
            "min_frames": self.min_frames,
            "compression": self.compression,
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            "gait_version": __version__,
            "created": created_timestamp(),
            **({"imported_from": IMPORTED[self.reader]} if self.reader in IMPORTED else {}),
            # CCPG's frames are resized by area, whether gait or OpenGait made them
            **({"interpolation": AREA} if self.dataset == "ccpg" else {}),
        }


#: What a job's raw files are.
READERS = ("images", "area", "as-they-are", "opengait")
#: The ``imported_from`` attribute of a pack whose frames gait stores as another tool made them.
IMPORTED = {"opengait": IMPORTED_FROM, "as-they-are": GREW_FRAMES}


def _source(job: PrepJob) -> tuple:
    """How ``job``'s raw files are read: the function that reads one sequence (looked up when
    called), :func:`discover`'s file options and the progress bar's unit (one per file)."""
    if job.reader == "opengait":
        files = {"extensions": PICKLE_EXTENSIONS, "what": "pickles (*.pkl)"}
        return read_pickle_sequence, files, "pickle"
    read = {"images": process_sequence, "area": read_by_area, "as-they-are": read_as_they_are}
    return read[job.reader], {}, "frame"


def find_job_sequences(job: PrepJob) -> list[RawSequence]:
    """Every sequence of ``job``'s raw tree, sorted by key (before its shard is taken)."""
    if job.dataset in WILD_DATASETS:
        return find_sequences(job.dataset, job.raw, pickles=job.reader == "opengait")
    _, files, _ = _source(job)
    return discover(job.raw, job.layout, {"condition": "nm"}, **files)


def read_encoded(
    read_sequence, encoding: str | None, root: Path, seq: RawSequence, params: Params
) -> Processed:
    """What a worker hands the writer: ``read_sequence(root, seq, params)``, its frames
    compressed for direct chunk writes when ``encoding`` is set (the writer's
    :attr:`~gaitprep.pack.PackWriter.encoding`; None leaves them as arrays).

    Parameters
    ----------
    read_sequence : callable
        :func:`~gaitprep.process.process_sequence` or another reader with its signature.
    encoding : str or None
        ``gzip``, ``none`` or None.
    root, seq, params
        Passed to ``read_sequence``.

    Returns
    -------
    Processed
        Its ``frames`` an :class:`~gaitprep.chunks.EncodedFrames` when ``encoding`` is set.
    """
    res = read_sequence(root, seq, params)
    if encoding is None:
        return res
    return replace(res, frames=encode_frames(res.frames, encoding))


def sequence_meta(seq: RawSequence) -> dict:
    """The columns of ``seq``'s row in the pack's table: its strings and ``labelled``."""
    return {
        "subject": seq.subject,
        "condition": seq.condition,
        "seq": seq.seq,
        "view": seq.view,
        "source": seq.folder,
        "labelled": seq.labelled,
    }


def journal_entry(i: int, seq: RawSequence, res: Processed, row: dict | None) -> dict:
    """The line of ``PACKED.partial.jsonl`` for the ``i``-th sequence: its table row (None when
    it kept no frame), CRC-32 and manifest entries."""
    return {
        "i": i,
        "row": row,
        "folder": seq.folder,
        "crc": res.crc,
        "read": res.read,
        "kept": len(res.frames),
        "dropped": res.dropped,
        "unreadable": res.unreadable,
    }


def _json(data: dict) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def _line(entry: dict) -> str:
    return json.dumps(entry, ensure_ascii=False) + "\n"


def _check_output(job: PrepJob, overwrite: bool) -> None:
    """Refuse an existing pack (without ``overwrite``), a folder and an unwritable location."""
    out = job.out
    if out.exists() and not overwrite:
        raise PrepError(f"{out} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise PrepError(f"{out} is a folder; PACKED is the pack file to write, e.g. casia-b.h5")
    try:
        probe = out.with_name(out.name + ".probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(describe_os_error(e, out)) from None


def _resume(
    job: PrepJob, identity: dict, direct: bool = True
) -> tuple[list[dict], PackWriter] | None:
    """Reopen a partial run of the same job, or None when there is nothing trustworthy."""
    p = job.paths()
    try:
        journal = json.loads(p["journal"].read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(journal, dict) or journal.get("job") != identity:
        return None
    position, frames = journal.get("position"), journal.get("frames")
    if not (isinstance(position, int) and isinstance(frames, int)) or not p["partial"].is_file():
        return None
    entries = []
    with suppress(OSError), p["log"].open(encoding="utf-8") as log:
        for line in log:
            with suppress(ValueError):
                entry = json.loads(line)
                if entry["i"] < position:
                    entries.append(entry)
    if [e["i"] for e in entries] != list(range(position)):
        return None
    rows = [e["row"] for e in entries if e["row"] is not None]
    try:
        writer = PackWriter(
            p["partial"],
            job.params.size,
            job.compression,
            reopen=True,
            frames=frames,
            rows=rows,
            direct=direct,
        )
    except (OSError, KeyError, ValueError):
        return None
    try:
        data = writer.file["frames"]
        for e in entries:
            r = e["row"]
            if r is None:
                continue
            if frames_crc(data[r["start"] : r["start"] + r["length"]]) != e["crc"]:
                writer.abort()
                return None
    except (OSError, KeyError, ValueError):
        writer.abort()
        return None
    return entries, writer


def _start(job: PrepJob, direct: bool = True) -> PackWriter:
    p = job.paths()
    for k in ("journal", "log", "partial"):
        p[k].unlink(missing_ok=True)
    return PackWriter(p["partial"], job.params.size, job.compression, direct=direct)


def _committed(entries: list[dict], written: int) -> tuple[int, int]:
    """``(position, frames)``: how many leading entries have all their frames among the first
    ``written`` frames of the file, and how many frames those entries hold."""
    position, frames = len(entries), None
    for i in range(len(entries) - 1, -1, -1):
        r = entries[i]["row"]
        if r is None:
            continue
        end = r["start"] + r["length"]
        if end <= written:
            return position, end if frames is None else frames
        position, frames = i, r["start"]
    return position, 0 if frames is None else frames


def run_prep(
    job: PrepJob,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    direct: bool = True,
) -> dict:
    """Make the pack of ``job``; returns its manifest. Resumes an interrupted run of the same job.

    Holds the output's lock for the whole run (OutputBusy when another process has it). Raises
    PrepError for bad input or output, PrepInterrupted on Ctrl-C (after committing), OutputError
    when a write fails (the partial pack is kept for a resume). ``direct=False`` has the writer
    compress through h5py instead of the workers (the same frames; for tests and benchmarks).
    """
    out = job.out
    if out.parent.exists() and not out.parent.is_dir():
        raise PrepError(f"cannot write {out}: {out.parent} is not a folder")
    with OutputLock(out):
        # a linked pack is written through: the partial pack, its journal and its manifest
        # grow beside the link's target, which the finished pack replaces
        job = replace(job, out=output_target(out))
        return _run_locked(job, workers, overwrite, progress, direct)


def _run_locked(job: PrepJob, workers: int, overwrite: bool, progress: bool, direct: bool) -> dict:
    _check_output(job, overwrite)
    read_sequence, _, unit = _source(job)
    sequences = job.select(find_job_sequences(job))
    identity = job.identity(sequences)
    p = job.paths()
    resumed = _resume(job, identity, direct)
    if resumed is None:
        entries, writer = [], _start(job, direct)
    else:
        entries, writer = resumed
    try:
        if resumed is not None:  # drop uncommitted lines
            atomic_write(p["log"], "".join(_line(e) for e in entries))
        log = p["log"].open("a", encoding="utf-8")
    except BaseException:
        writer.abort()
        raise
    todo = sequences[len(entries) :]
    start = time.perf_counter()
    bar = tqdm(
        total=sum(len(s.files) for s in todo),
        unit=unit,
        unit_scale=True,
        desc="prep",
        disable=not progress,
        mininterval=0.5,
    )
    done_frames = 0

    def commit(everything: bool = False) -> None:
        """Make the finished sequences durable: frames, then the log, then the journal.

        Periodic commits write only whole chunks, so a chunk that is on the disk at a commit is
        never rewritten (and never moved, when compressed) before the next one."""
        writer.flush(whole_chunks=not everything)
        try:
            if not log.closed:  # (closed: all of it is on the disk)
                log.flush()
                os.fsync(log.fileno())
        except OSError as e:
            raise OutputError(describe_os_error(e, p["log"])) from e
        position, frames = _committed(entries, writer.written)
        atomic_write(p["journal"], _json({"job": identity, "position": position, "frames": frames}))

    encoding = writer.encoding
    if workers > 1:
        results = Parallel(n_jobs=workers, return_as="generator")(
            delayed(read_encoded)(read_sequence, encoding, job.raw, s, job.params) for s in todo
        )
    else:
        results = (read_encoded(read_sequence, encoding, job.raw, s, job.params) for s in todo)
    last = time.perf_counter()
    try:
        for seq, res in zip(todo, results, strict=True):
            row = (
                writer.append(sequence_meta(seq), res.frames, res.frame_source, crc=res.crc)
                if len(res.frames)
                else None
            )
            entry = journal_entry(len(entries), seq, res, row)
            try:
                log.write(_line(entry))
            except OSError as e:
                raise OutputError(describe_os_error(e, p["log"])) from e
            entries.append(entry)
            done_frames += res.read
            bar.update(len(seq.files))
            if time.perf_counter() - last > COMMIT_SECONDS:
                commit()
                last = time.perf_counter()
        bar.close()
        try:
            log.close()
        except OSError as e:
            raise OutputError(describe_os_error(e, p["log"])) from e
        writer.attrs = job.attrs()
        writer.close()
    except KeyboardInterrupt:
        _cancel(results, bar)
        if not writer.closed:
            commit(everything=True)
            writer.close_partial()
        with suppress(OSError):
            log.close()
        raise PrepInterrupted(
            f"interrupted after {len(entries)} of {len(sequences)} sequences; "
            "run the same command again to resume"
        ) from None
    except BaseException:
        # What is on the disk up to the last commit stays for a resume. Nothing more is written
        # to the pack, and it is closed now so that HDF5 cannot fail again (or crash) later.
        writer.abort()
        _cancel(results, bar)
        with suppress(OSError):
            log.close()
        raise
    seconds = time.perf_counter() - start
    manifest = build_manifest(job, sequences, entries, seconds, done_frames, resumed is not None)
    try:
        os.replace(p["partial"], job.out)
        with suppress(OSError):
            fsync_path(job.out.parent)
    except OSError as e:
        raise OutputError(describe_os_error(e, job.out)) from e
    atomic_write(p["manifest"], _json({k: v for k, v in manifest.items() if k not in RUN_ONLY}))
    p["journal"].unlink(missing_ok=True)
    p["log"].unlink(missing_ok=True)
    return manifest


def _cancel(results, bar) -> None:
    """Cancel the remaining work and close the progress bar, quietly."""
    with suppress(Exception):
        results.close()
    with suppress(Exception):
        bar.close()


#: What describes this run rather than the pack: returned, printed, kept out of the manifest file
#: (two runs that make the same pack write the same manifest).
RUN_ONLY = ("seconds", "frames_per_second", "resumed")


def build_manifest(
    job: PrepJob,
    sequences,
    entries: list[dict],
    seconds: float,
    frames_this_run: int,
    resumed: bool,
) -> dict:
    """Counts and every dropped or unreadable frame, with its reason."""
    read = sum(e["read"] for e in entries)
    kept = sum(e["kept"] for e in entries)
    unreadable = [{"file": f, "reason": r} for e in entries for f, r in e["unreadable"]]
    dropped = [{"file": f, "reason": r} for e in entries for f, r in e["dropped"]]
    return {
        "pack": job.out.name,
        "dataset": job.dataset,
        "raw": str(job.raw.resolve()),
        "layout": job.layout,
        "params": job.params.as_dict()
        | {"min_frames": job.min_frames, "compression": job.compression},
        "shard": f"{job.shard[0]}/{job.shard[1]}",
        "sequences": {
            "found": len(sequences),
            "written": sum(1 for e in entries if e["row"] is not None),
            "empty": [e["folder"] for e in entries if e["row"] is None],
            "short": [
                {"sequence": e["folder"], "frames": e["kept"]}
                for e in entries
                if 0 < e["kept"] < job.min_frames
            ],
        },
        "frames": {
            "read": read,
            "kept": kept,
            "dropped": len(dropped),
            "unreadable": len(unreadable),
        },
        "dropped_frames": dropped,
        "unreadable": unreadable,
        "resumed": resumed,
        "seconds": round(seconds, 3),
        "frames_per_second": round(frames_this_run / seconds, 1) if seconds > 0 else None,
        "gait_version": __version__,
    }
