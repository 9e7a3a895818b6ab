"""Combine the shards of a ``gait prep --shard K/N`` job array into one pack."""

from __future__ import annotations

import json
from pathlib import Path

from gaitprep.files import OutputLock, atomic_output, atomic_write
from gaitprep.layout import natural_key
from gaitprep.pack import Pack, PackError, PackWriter, created_timestamp

#: Attributes that must agree between shards (everything that shapes the frames).
SAME = (
    "dataset",
    "layout",
    "size",
    "min_sum",
    "binarize",
    "largest_blob",
    "min_frames",
    "compression",
)


def _shard_of(pack: Pack) -> tuple[int, int]:
    k, _, n = str(pack.attrs.get("shard", "1/1")).partition("/")
    return int(k), int(n)


def merge_packs(out: Path, shards: list[Path], overwrite: bool = False) -> dict:
    """Write the sequences of all ``shards`` to ``out`` in key order; returns a summary.

    Shards must be the complete set 1..N of one job (same normalization, disjoint sequences).
    Raises PackError naming what does not fit (or a damaged sequence of a shard), OutputBusy when
    another process writes ``out``, OutputError when it cannot be written.
    """
    out = Path(out)
    with OutputLock(out):
        if out.exists() and not overwrite:
            raise PackError(f"{out} exists; pass --overwrite to replace it")
        packs = [Pack(p) for p in shards]
        try:
            n, count = _merge(out, packs)
        finally:
            for p in packs:
                p.close()
        _merge_manifests(out, shards)
    return {"pack": str(out), "sequences": count, "shards": n}


def _merge(out: Path, packs: list[Pack]) -> tuple[int, int]:
    first = packs[0]
    for p in packs[1:]:
        diff = [a for a in SAME if p.attrs.get(a) != first.attrs.get(a)]
        if diff:
            raise PackError(
                f"{p.path} differs from {first.path} in {', '.join(diff)}; "
                "merge only shards of one job"
            )
    ids = [_shard_of(p) for p in packs]
    n = ids[0][1]
    missing = sorted(set(range(1, n + 1)) - {k for k, _ in ids})
    if any(m != n for _, m in ids) or missing or len(set(ids)) != len(ids):
        raise PackError(
            f"shards {', '.join(f'{k}/{m}' for k, m in ids)} are not one complete "
            f"set 1/{n}..{n}/{n}" + (f"; missing {missing}" if missing else "")
        )
    where = {}
    for p in packs:
        for i, key in enumerate(p.keys()):
            if key in where:
                raise PackError(
                    f"sequence {'-'.join(key)} is in both {where[key][0].path} and {p.path}"
                )
            where[key] = (p, i)
    attrs = {k: v for k, v in first.attrs.items() if k not in ("format", "version", "size")}
    attrs.update(shard="1/1", merged_from=n, created=created_timestamp())
    with atomic_output(out) as tmp:
        writer = PackWriter(tmp, first.size, first.attrs.get("compression", "gzip"), attrs)
        try:
            for key in sorted(where, key=natural_key):  # the order of one job's pack
                p, i = where[key]
                # Reading checks the sequence against its CRC-32, which the merged pack keeps.
                writer.append(p.meta(i), p[i], p.frame_source(i), crc=int(p.crc32[i]))
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return n, len(where)


def _merge_manifests(out: Path, shards: list[Path]) -> None:
    """Combine the shards' manifests, when they all have one."""
    paths = [s.with_name(s.name + ".manifest.json") for s in shards]
    if not all(p.is_file() for p in paths):
        return
    ms = [json.loads(p.read_text()) for p in paths]
    merged = dict(ms[0], pack=out.name, shard="1/1", merged_from=[p.name for p in shards])
    for part in ("sequences", "frames"):
        merged[part] = {
            k: (
                sum(m[part][k] for m in ms)
                if isinstance(v, int)
                else [x for m in ms for x in m[part][k]]
            )
            for k, v in ms[0][part].items()
        }
    for k in ("dropped_frames", "unreadable"):
        merged[k] = [x for m in ms for x in m[k]]
    text = json.dumps(merged, indent=1, ensure_ascii=False) + "\n"
    atomic_write(out.with_name(out.name + ".manifest.json"), text)
