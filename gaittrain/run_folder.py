"""A run folder: what it holds, what it records, and whether it is the run that is asked for.

``gait train --out RUN`` writes, and everything else reads::

    RUN/config.yaml          the config the run trains with
    RUN/data.json            the data record: each pack's path, fingerprint and dataset, and the
                             training subjects (:func:`data_record`)
    RUN/log.jsonl            one JSON record per logged iteration (:func:`read_log`)
    RUN/tensorboard/         the same numbers for TensorBoard
    RUN/checkpoints/iter-N.pt
    RUN/embeddings-PACK.h5   made by ``gait eval`` / ``gait embed`` (:func:`default_embeddings`)

This module is the one owner of that layout and of the checks made against it: a resumed run and a
study's run are compared with what is asked by :func:`config_difference` and
:func:`data_difference`, each caller adding its own advice to the one clause they return.

Examples
--------
>>> config_difference({"optim": {"lr": 0.001}, "seed": 0}, {"optim": {"lr": 0.002}, "seed": 0})
('optim.lr', 0.001, 0.002, 1)
>>> run_folder(Path("runs/a/checkpoints/iter-100.pt"))
PosixPath('runs/a')
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from gaitprep.errors import GaitError
from gaitprep.files import atomic_write
from gaitprep.pack import Pack
from gaittrain import checkpoint
from gaittrain.checkpoint import CheckpointError


class RunFolderError(GaitError, RuntimeError):
    """A run folder that is not what is asked for, explained in one line."""


#: What a gait run folder holds; a folder with anything else is not ours to clear.
RUN_ENTRIES = {"config.yaml", "data.json", "log.jsonl", "tensorboard", "checkpoints"}


@dataclass
class RunPaths:
    """The files of the run folder ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def data(self) -> Path:
        return self.root / "data.json"


def run_folder(run: Path) -> Path:
    """The run folder of a run folder or of one of its checkpoint files."""
    run = Path(run)
    if run.is_dir():
        return run
    return run.parent.parent if run.parent.name == "checkpoints" else run.parent


def resolve_checkpoint(ckpt: Path) -> Path:
    """A checkpoint file as given, or a run folder's latest checkpoint."""
    path = Path(ckpt)
    if not path.is_dir():
        return path
    found = checkpoint.latest(path)
    if found is None:
        raise CheckpointError(
            f"{path} holds no checkpoint (checkpoints/iter-*.pt); train it first or give a .pt file"
        )
    return found


def default_embeddings(run: Path, pack: Path) -> Path:
    """Where a run keeps its embeddings of a pack: RUN/embeddings-PACKNAME.h5."""
    return run_folder(run) / f"embeddings-{Path(pack).stem}.h5"


# --- the data record ---------------------------------------------------------------------------


def data_record(packs: list[Pack], subjects: list[str]) -> dict:
    """What a run trains on: each (open) pack's path, content fingerprint and dataset, and the
    subjects."""
    entries = [
        {"path": str(p.path), "fingerprint": p.fingerprint, "dataset": p.attrs.get("dataset")}
        for p in packs
    ]
    return {"packs": entries, "train_subjects": list(subjects)}


def is_data_record(d) -> bool:
    """Whether ``d`` has the shape :func:`data_record` writes."""
    return (
        isinstance(d, dict)
        and isinstance(d.get("packs"), list)
        and all(isinstance(p, dict) and isinstance(p.get("fingerprint"), str) for p in d["packs"])
        and isinstance(d.get("train_subjects"), list)
    )


def read_data_record(run: Path) -> dict | None:
    """The data record in ``run``'s folder as it was written (an imported run's included); None
    when there is none or it is not JSON."""
    try:
        return json.loads(RunPaths(run_folder(run)).data.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe_subjects(subjects: list[str]) -> str:
    """``4 (001..004)``: how many, and the first and the last."""
    return f"{len(subjects)} ({subjects[0]}..{subjects[-1]})" if subjects else "none"


def data_difference(saved: dict, now: dict) -> str | None:
    """How the data record ``now`` differs from the run's ``saved`` one, as a clause (``it
    trained on ..., not ...``), or None when it trains on the same pack contents and subjects."""
    if not is_data_record(saved):
        return "it does not record the data it trained on (an older gait or a damaged file)"
    old_prints = [p["fingerprint"] for p in saved["packs"]]
    new_prints = [p["fingerprint"] for p in now["packs"]]
    if old_prints != new_prints:
        then = ", ".join(f"{p['path']} ({p['fingerprint'][:12]})" for p in saved["packs"])
        now_ = ", ".join(f"{p['path']} ({p['fingerprint'][:12]})" for p in now["packs"])
        return f"it trained on {then}, not {now_} (pack content differs)"
    if list(saved["train_subjects"]) != list(now["train_subjects"]):
        return (
            f"it trained on subjects {describe_subjects(list(saved['train_subjects']))}, "
            f"now {describe_subjects(list(now['train_subjects']))}"
        )
    return None


def trained_test_subjects(run: Path, attrs: dict, test: list[str]) -> tuple[list[str], bool]:
    """Test subjects among the run's training subjects, and whether the run trained on this very
    pack (same content fingerprint) rather than on another pack of the same dataset (the same
    people, re-prepared, merged or normalized otherwise, or another synthetic population).
    ``attrs`` are the embeddings file's (``gaittrain.evaluation.embed.provenance``)."""
    record = read_data_record(run)
    if not is_data_record(record):
        return [], False
    same_pack = any(e["fingerprint"] == attrs.get("pack_fingerprint") for e in record["packs"])
    same_dataset = any(e.get("dataset") == attrs.get("pack_dataset") for e in record["packs"])
    if not (same_pack or same_dataset):
        return [], False
    trained = set(record["train_subjects"])
    return [s for s in test if s in trained], same_pack


def imported_note(run: Path) -> str | None:
    """For a run imported from another toolkit (``gait import-checkpoint``), a warning that its
    training subjects are not recorded; None for a run gait trained."""
    record = read_data_record(run)
    source = record.get("imported") if isinstance(record, dict) else None
    if not isinstance(source, dict):
        return None
    return (
        f"this run was imported from {source.get('from', 'another toolkit')} "
        f"({source.get('checkpoint', 'a checkpoint')}): the subjects it trained on are not "
        "recorded, so gait cannot check them against the test subjects; make sure they were "
        "not among them (OpenGait's CASIA-B split trains on 001-074)"
    )


# --- the config --------------------------------------------------------------------------------


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested dict as one level of dotted keys: ``{"optim.lr": 0.001, ...}``."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_difference(saved: dict, now: dict) -> tuple[str, object, object, int] | None:
    """The first dotted key (in sorted order) whose value differs between two configs (as
    dicts), its two values and how many keys differ; None when they are the same."""
    before, after = flatten(saved), flatten(now)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if not changed:
        return None
    k = changed[0]
    return k, before.get(k), after.get(k), len(changed)


# --- the folder and its log --------------------------------------------------------------------


def prepare(paths: RunPaths, resume: bool) -> Path | None:
    """Check the run folder; on resume return the checkpoint to continue from.

    A run that died before its first checkpoint left nothing worth keeping: a new start or
    --resume clears its files and starts at 0. A non-empty folder that is not a gait run is
    refused, never cleared.
    """
    last = checkpoint.latest(paths.root)
    if resume:
        if not paths.config.is_file():
            raise RunFolderError(f"--resume: {paths.root} holds no run (no config.yaml)")
        if last is not None:
            return last
    elif last is not None:
        raise RunFolderError(
            f"{paths.root} already holds a run; pass --resume to continue it "
            "or choose another --out"
        )
    _clear_leftovers(paths)
    paths.root.mkdir(parents=True, exist_ok=True)
    return None


def _clear_leftovers(paths: RunPaths) -> None:
    """Remove the files of a gait run that wrote no checkpoint; refuse a folder of other files."""
    if not paths.root.is_dir():
        return
    entries = sorted(e.name for e in paths.root.iterdir())
    if not entries:
        return
    foreign = [n for n in entries if n not in RUN_ENTRIES]
    ours = paths.data.exists() or paths.log.exists()
    if foreign or not ours:
        shown = ", ".join((foreign or entries)[:3])
        raise RunFolderError(
            f"{paths.root} is not empty and holds no gait run ({shown}); "
            "choose an empty or new --out"
        )
    for f in (paths.config, paths.log, paths.data):
        f.unlink(missing_ok=True)
    shutil.rmtree(paths.tensorboard, ignore_errors=True)
    for tmp in (paths.root / "checkpoints").glob("*.tmp"):
        tmp.unlink(missing_ok=True)


def read_log(path: Path, lenient: bool = False) -> list[dict]:
    """The records of log.jsonl. A torn last line (a crash mid-write) is dropped; another line that
    is not a JSON record is an error, or skipped when ``lenient`` (for reports, which only plot)."""
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    records = []
    for n, ln in enumerate(lines, start=1):
        try:
            record = json.loads(ln)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("iteration"), int):
            records.append(record)
        elif not (lenient or n == len(lines)):
            raise RunFolderError(
                f"{path}: line {n} is not a log record; the log is damaged "
                "(remove that line to resume)"
            )
    return records


def truncate_log(path: Path, start: int) -> None:
    """Drop log lines of iterations >= ``start`` (written after the checkpoint we resume)."""
    keep = [r for r in read_log(path) if r["iteration"] < start]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep))
