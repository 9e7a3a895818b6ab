"""The evaluation results of one study run, kept in a small JSON file (``DIR/evals/RUN.json``).

Results are keyed by split (``validation`` or ``test``) and checkpoint iteration, and each
records what made it: the checkpoint's identity (its SHA-256, with the size and modification
time that let an unchanged file skip hashing) and the context (the pack's content fingerprint,
the subjects, the protocol and the metric). A result is reused only while all of it is
unchanged. A result whose checkpoint file was deleted afterwards (to save disk) is kept: it was
computed from that file, and nothing can have changed it since.

Examples
--------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> ckpt = folder / "iter-000002.pt"
>>> _ = ckpt.write_bytes(b"weights")
>>> cache = EvalCache.read(folder / "run.json")
>>> context = {"pack": "ab12", "subjects": ["004"], "protocol": "casia-b-lt"}
>>> cache.lookup("validation", 2, ckpt, context) is None
True
>>> cache.store("validation", 2, identity(ckpt), context, {"NM": {"rank1": 0.5, "mAP": 0.4}})
>>> cache.write()
>>> EvalCache.read(folder / "run.json").lookup("validation", 2, ckpt, context)
{'NM': {'rank1': 0.5, 'mAP': 0.4}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from gaitprep.files import atomic_write

FORMAT = "gait-study-eval v1"
SPLITS = ("validation", "test")


def identity(path: Path, known: dict | None = None) -> dict:
    """A checkpoint file's identity: name, size, modification time and SHA-256. The hash of
    ``known`` (an earlier identity of the same file) is reused when size and time are equal."""
    path = Path(path)
    st = path.stat()
    same = (
        isinstance(known, dict)
        and known.get("size") == st.st_size
        and known.get("mtime_ns") == st.st_mtime_ns
        and isinstance(known.get("sha256"), str)
    )
    if same:
        sha = known["sha256"]
    else:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        sha = h.hexdigest()
    return {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}


@dataclass
class EvalCache:
    """The results of one run: ``results[split][str(iteration)]`` holds ``checkpoint``
    (:func:`identity`), ``context`` and ``conditions`` (group -> rank1, mAP, as fractions)."""

    path: Path
    results: dict = field(default_factory=lambda: {s: {} for s in SPLITS})
    dirty: bool = False

    @classmethod
    def read(cls, path: Path) -> EvalCache:
        """The cache at ``path``; an absent, unreadable or foreign file is an empty cache (its
        results are computed again and the file replaced)."""
        cache = cls(Path(path))
        try:
            data = json.loads(cache.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cache
        if isinstance(data, dict) and data.get("format") == FORMAT:
            for split in SPLITS:
                entries = data.get(split)
                if isinstance(entries, dict):
                    cache.results[split] = {k: v for k, v in entries.items() if isinstance(v, dict)}
        return cache

    def lookup(self, split: str, iteration: int, ckpt: Path, context: dict) -> dict | None:
        """The stored ``conditions`` of ``split`` at ``iteration``, if made by the checkpoint
        file ``ckpt`` as it is now (or by a file since deleted) in ``context``; else None."""
        entry = self.results[split].get(str(iteration))
        if not entry or entry.get("context") != context or "conditions" not in entry:
            return None
        if not Path(ckpt).exists():
            return entry["conditions"]
        old = entry.get("checkpoint")
        now = identity(ckpt, old)
        if not isinstance(old, dict) or now["sha256"] != old.get("sha256"):
            return None
        if now != old:  # copied or touched, same bytes: remember the new size and time
            entry["checkpoint"] = now
            self.dirty = True
        return entry["conditions"]

    def store(
        self, split: str, iteration: int, checkpoint: dict, context: dict, conditions: dict
    ) -> None:
        self.results[split][str(iteration)] = {
            "checkpoint": checkpoint,
            "context": context,
            "conditions": conditions,
        }
        self.dirty = True

    def write(self) -> None:
        """Write the file atomically (when something changed)."""
        if not self.dirty:
            return
        data = {"format": FORMAT, **self.results}
        atomic_write(self.path, json.dumps(data, indent=1) + "\n")
        self.dirty = False
