"""``gait prep``: a raw silhouette tree in, one gait pack and its manifest out.

Sequences are normalized in parallel worker processes and written by this (single) process in
sorted key order, so the pack does not depend on the number of workers. The run is resumable:

* the pack grows as ``PACKED.partial``; every couple of seconds the writer flushes it, appends the
  finished sequences to ``PACKED.partial.jsonl`` (fsync) and then records the committed position
  in ``PACKED.partial.json`` (written atomically);
* a run that finds a journal of the same job reopens the partial pack, checks every committed
  sequence against its CRC-32, truncates whatever came after the last commit and goes on; if the
  partial file cannot be trusted it starts over;
* only a complete pack is renamed to ``PACKED``; ``PACKED.manifest.json`` follows.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from joblib import Parallel, delayed
from tqdm import tqdm

from gaitprep import __version__
from gaitprep.errors import GaitError
from gaitprep.layout import RawSequence, discover
from gaitprep.pack import PackWriter, created_timestamp
from gaitprep.process import Params, frames_crc, process_sequence

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
    dataset: str  # casia-b, ou-mvlp or folder
    layout: str
    params: Params = field(default_factory=Params)
    min_frames: int = 5
    compression: str = "gzip"
    shard: tuple[int, int] = (1, 1)  # K-th of N, K from 1

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
            "raw": str(self.raw.resolve()),
            "dataset": self.dataset,
            "layout": self.layout,
            "params": self.params.as_dict(),
            "min_frames": self.min_frames,
            "compression": self.compression,
            "shard": list(self.shard),
            "inputs": digest.hexdigest(),
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
        }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _check_output(job: PrepJob, overwrite: bool) -> None:
    out = job.out
    if out.exists() and not overwrite:
        raise PrepError(f"{out} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise PrepError(f"{out} is a folder; PACKED is the pack file to write, e.g. casia-b.h5")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_name(out.name + ".probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PrepError(f"cannot write {out}: {e.strerror}; choose a writable location") from None


def _resume(job: PrepJob, identity: dict) -> tuple[int, list[dict], PackWriter] | None:
    """Reopen a partial run of the same job, or None when there is nothing trustworthy."""
    p = job.paths()
    try:
        journal = json.loads(p["journal"].read_text())
    except (OSError, ValueError):
        return None
    if journal.get("job") != identity:
        return None
    position, frames = journal["position"], journal["frames"]
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
            p["partial"], job.params.size, job.compression, reopen=True, frames=frames, rows=rows
        )
        data = writer.file["frames"]
        for e in entries:
            r = e["row"]
            if (
                r is not None
                and frames_crc(data[r["start"] : r["start"] + r["length"]]) != e["crc"]
            ):
                writer.file.close()
                return None
    except (OSError, KeyError, ValueError):
        return None
    return position, entries, writer


def _start(job: PrepJob) -> PackWriter:
    p = job.paths()
    for k in ("journal", "log", "partial"):
        p[k].unlink(missing_ok=True)
    return PackWriter(p["partial"], job.params.size, job.compression)


def run_prep(
    job: PrepJob, workers: int = 1, overwrite: bool = False, progress: bool = False
) -> dict:
    """Make the pack of ``job``; returns its manifest. Resumes an interrupted run of the same job.

    Raises PrepError for bad input or output, PrepInterrupted on Ctrl-C (after committing).
    """
    _check_output(job, overwrite)
    sequences = job.select(discover(job.raw, job.layout, {"condition": "nm"}))
    identity = job.identity(sequences)
    p = job.paths()
    resumed = _resume(job, identity)
    if resumed is None:
        position, entries, writer = 0, [], _start(job)
    else:
        position, entries, writer = resumed
        with p["log"].open("w", encoding="utf-8") as log:  # drop uncommitted lines
            log.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
    log = p["log"].open("a", encoding="utf-8")
    todo = sequences[position:]
    start = time.perf_counter()
    bar = tqdm(
        total=sum(len(s.files) for s in todo),
        unit="frame",
        unit_scale=True,
        desc="prep",
        disable=not progress,
        mininterval=0.5,
    )
    done_frames = 0

    def commit() -> None:
        writer.flush()
        log.flush()
        os.fsync(log.fileno())
        _write_json(p["journal"], {"job": identity, "position": position, "frames": writer.count})

    if workers > 1:
        results = Parallel(n_jobs=workers, return_as="generator")(
            delayed(process_sequence)(job.raw, s, job.params) for s in todo
        )
    else:
        results = (process_sequence(job.raw, s, job.params) for s in todo)
    last = time.perf_counter()
    try:
        for seq, res in zip(todo, results, strict=True):
            meta = {
                "subject": seq.subject,
                "condition": seq.condition,
                "seq": seq.seq,
                "view": seq.view,
                "source": seq.folder,
            }
            row = writer.append(meta, res.frames, res.frame_source) if len(res.frames) else None
            entry = {
                "i": position,
                "row": row,
                "folder": seq.folder,
                "crc": res.crc,
                "read": res.read,
                "kept": len(res.frames),
                "dropped": res.dropped,
                "unreadable": res.unreadable,
            }
            log.write(json.dumps(entry, ensure_ascii=False) + "\n")
            entries.append(entry)
            position += 1
            done_frames += res.read
            bar.update(res.read)
            if time.perf_counter() - last > COMMIT_SECONDS:
                commit()
                last = time.perf_counter()
    except KeyboardInterrupt:
        commit()
        log.close()
        writer.file.close()
        bar.close()
        raise PrepInterrupted(
            f"interrupted after {position} of {len(sequences)} sequences; "
            "run the same command again to resume"
        ) from None
    bar.close()
    log.close()
    writer.attrs = job.attrs()
    writer.close()
    seconds = time.perf_counter() - start
    manifest = build_manifest(job, sequences, entries, seconds, done_frames, resumed is not None)
    os.replace(p["partial"], job.out)
    _write_json(p["manifest"], manifest)
    p["journal"].unlink(missing_ok=True)
    p["log"].unlink(missing_ok=True)
    return manifest


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
