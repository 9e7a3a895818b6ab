"""Pack integrity (issue 8, item 13): a CRC-32 per sequence, checked on every read and by
`gait inspect --verify`; a damaged pack gives one line naming the pack and the sequence, in
`gait inspect`, `gait train` (also across a DataLoader worker), `gait eval` and `gait pack merge`.

The damage is one flipped byte inside the stored (compressed or raw) data of ``/frames``, found
with h5py's chunk index."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from gaitprep.layout import CASIA_B
from gaitprep.pack import Pack, PackError
from gaitprep.prep import PrepJob, run_prep
from tests.cli import gait

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "casia-b"
TINY = ROOT / "configs" / "tiny.yaml"
COMPRESSIONS = ("gzip", "lzf", "none")


def error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("Error:")]


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict[str, Path]:
    """The sample data packed with each compression."""
    folder = tmp_path_factory.mktemp("integrity")
    out = {}
    for c in COMPRESSIONS:
        out[c] = folder / f"sample-{c}.h5"
        job = PrepJob(raw=SAMPLE, out=out[c], dataset="casia-b", layout=CASIA_B, compression=c)
        run_prep(job, workers=1)
    return out


def table(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys, starts and lengths of a pack, read with plain h5py."""
    with h5py.File(path, "r") as f:
        t = f["sequences"]
        cols = [[s.decode() for s in t[c][()]] for c in ("subject", "condition", "seq", "view")]
        return ["-".join(k) for k in zip(*cols, strict=True)], t["start"][()], t["length"][()]


def read_raw(path: Path, lo: int, hi: int) -> np.ndarray | None:
    """``/frames[lo:hi]`` with plain h5py (no checksum), or None when HDF5 cannot read it."""
    with h5py.File(path, "r") as f:
        try:
            return f["frames"][lo:hi]
        except OSError:
            return None


def flip(path: Path, frame: int) -> set[int]:
    """Flip one stored byte of the ``/frames`` chunk that holds ``frame``; returns the frames
    whose content changed.

    Raw chunks: a pixel of ``frame``. Compressed chunks: the first byte from the middle of the
    stored chunk on whose flip HDF5 reads something else (or fails to read the chunk)."""
    with h5py.File(path, "r") as f:
        ds = f["frames"]
        rows, size = ds.chunks[0], ds.shape[1]
        lo = frame // rows * rows
        hi = min(lo + rows, ds.shape[0])
        info = ds.id.get_chunk_info_by_coord((lo, 0, 0))
        compressed = ds.compression is not None
    if not compressed:  # the stored bytes are the pixels
        offset = info.byte_offset + (frame - lo) * size * size + size * size // 2 + size // 2
        with path.open("r+b") as fh:
            fh.seek(offset)
            old = fh.read(1)[0]
            fh.seek(offset)
            fh.write(bytes([old ^ 0xFF]))
        return {frame}
    before = read_raw(path, lo, hi)
    candidates = [info.byte_offset + info.size // 2 + k for k in range(info.size // 2 - 8)]
    with path.open("r+b") as fh:
        for offset in candidates:
            fh.seek(offset)
            old = fh.read(1)[0]
            fh.seek(offset)
            fh.write(bytes([old ^ 0xFF]))
            fh.flush()
            after = read_raw(path, lo, hi)
            if after is None:
                return set(range(lo, hi))
            if not np.array_equal(after, before):
                return {lo + int(j) for j in np.flatnonzero((after != before).any(axis=(1, 2)))}
            fh.seek(offset)
            fh.write(bytes([old]))
    raise AssertionError("no byte of the chunk changes what is read")


def sequences_of(path: Path, frames: set[int]) -> set[str]:
    """The keys of the sequences that hold any of ``frames``."""
    keys, starts, lengths = table(path)
    return {
        k
        for k, s, n in zip(keys, starts, lengths, strict=True)
        if any(s <= frame < s + n for frame in frames)
    }


def flip_byte(path: Path, sequence: int) -> set[str]:
    """One flipped byte where the frames of ``sequence`` begin; returns the keys of the sequences
    whose frames it changed: the ones a checker must report."""
    return sequences_of(path, flip(path, int(table(path)[1][sequence])))


def damage_every_sequence(path: Path) -> None:
    keys, starts, _ = table(path)
    changed: set[int] = set()
    for s in starts:
        if int(s) not in changed:
            changed |= flip(path, int(s))
    assert sequences_of(path, changed) == set(keys)


def damaged_copy(packs: dict[str, Path], compression: str, tmp_path: Path, sequence: int = 7):
    path = tmp_path / f"damaged-{compression}.h5"
    shutil.copy(packs[compression], path)
    return path, flip_byte(path, sequence)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_verify_names_the_damaged_sequences(packs, tmp_path: Path, compression: str) -> None:
    path, expected = damaged_copy(packs, compression, tmp_path)
    assert expected, "the flip changed no sequence"
    if compression == "none":
        assert expected == {table(path)[0][7]}  # a raw pixel belongs to one sequence
    r = gait("inspect", path, "--verify")
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    reported = {ln.split()[1].rstrip(":") for ln in lines if ln.startswith("damaged")}
    assert reported == expected
    errors = error_lines(r.output)
    assert len(errors) == 1 and str(path) in errors[0]
    assert f"{len(expected)} of 180 sequences are damaged" in errors[0]
    assert "Traceback" not in r.output
    js = gait("inspect", path, "--verify", "--json")
    assert js.exit_code == 1
    assert {d["sequence"] for d in json.loads(js.stdout)["verify"]["damaged"]} == (expected)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_reading_a_damaged_sequence_names_the_pack_and_the_sequence(
    packs, tmp_path: Path, compression: str
) -> None:
    path, expected = damaged_copy(packs, compression, tmp_path)
    keys = table(path)[0]
    with Pack(packs[compression]) as good, Pack(path) as pack:
        for i, key in enumerate(keys):
            if key in expected:
                with pytest.raises(PackError) as e:
                    pack[key]
                text = str(e.value)
                assert f"{path}: sequence {key} is damaged" in text
                assert f"gait inspect --verify {path}" in text and "\n" not in text
            else:
                np.testing.assert_array_equal(pack[i], good[i])


def test_montage_of_a_damaged_pack_is_one_line(packs, tmp_path: Path) -> None:
    for compression in COMPRESSIONS:
        path, expected = damaged_copy(packs, compression, tmp_path)
        png = tmp_path / f"m-{compression}.png"
        r = gait("inspect", path, "--montage", png, "--sequences", 180)
        assert r.exit_code == 1, r.output
        assert "Traceback" not in r.output
        errors = error_lines(r.output)
        assert len(errors) == 1 and str(path) in errors[0] and "is damaged" in errors[0]
        assert any(f"sequence {k} " in errors[0] for k in expected)
        assert not png.exists()


@pytest.mark.slow
def test_an_intact_pack_verifies_clean_and_carries_its_checksums(packs, tmp_path: Path) -> None:
    for compression, path in packs.items():
        r = gait("inspect", path, "--verify")
        assert r.exit_code == 0, r.output
        assert "verified   180 sequences: every checksum matches" in r.output
        with h5py.File(path, "r") as f:
            assert f.attrs["version"] == 2
            t = f["sequences"]
            assert t["crc32"].dtype == np.uint32, compression
            for i, (s, n) in enumerate(zip(t["start"][()], t["length"][()], strict=True)):
                assert int(t["crc32"][i]) == zlib.crc32(f["frames"][s : s + n].tobytes())
    # A pack of the previous format is refused with the way out.
    old = tmp_path / "v1.h5"
    shutil.copy(packs["gzip"], old)
    with h5py.File(old, "r+") as f:
        f.attrs["version"] = 1
        del f["sequences/crc32"]
    r = gait("inspect", old)
    assert r.exit_code == 1 and "version 1" in r.output and "re-run `gait prep`" in r.output


@pytest.mark.slow
def test_merge_keeps_the_checksums_and_refuses_a_damaged_shard(packs, tmp_path: Path) -> None:
    shards = [tmp_path / f"part{k}.h5" for k in (1, 2)]
    for k, s in enumerate(shards, start=1):
        job = PrepJob(raw=SAMPLE, out=s, dataset="casia-b", layout=CASIA_B, shard=(k, 2))
        run_prep(job, workers=1)
    merged = tmp_path / "merged.h5"
    r = gait("pack", "merge", merged, *shards)
    assert r.exit_code == 0, r.output
    with h5py.File(merged, "r") as m, h5py.File(packs["gzip"], "r") as whole:
        np.testing.assert_array_equal(m["sequences/crc32"][()], whole["sequences/crc32"][()])
    assert gait("inspect", merged, "--verify").exit_code == 0
    expected = flip_byte(shards[1], 3)
    r = gait("pack", "merge", tmp_path / "again.h5", *shards)
    assert r.exit_code == 1 and "Traceback" not in r.output
    errors = error_lines(r.output)
    assert len(errors) == 1 and str(shards[1]) in errors[0]
    assert any(f"sequence {k} is damaged" in errors[0] for k in expected)
    assert not (tmp_path / "again.h5").exists() and not (tmp_path / "again.h5.partial").exists()


FAST = ["--iterations", "2", "--train-subjects", "first:4", "--device", "cpu"]
FAST += ["--set", "data.batch.p=4", "--set", "data.batch.k=2", "--set", "data.frames=8"]


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["gzip", "none"])
@pytest.mark.parametrize("workers", [0, 1])
def test_train_on_a_damaged_pack_is_one_line(
    packs, tmp_path: Path, workers: int, compression: str
) -> None:
    path = tmp_path / "damaged.h5"
    shutil.copy(packs[compression], path)
    damage_every_sequence(path)
    # workers=1 without the cache: the sequences are read in a DataLoader worker process.
    cache = "true" if workers == 0 else "false"
    r = gait(
        "train",
        TINY,
        "--pack",
        path,
        "--out",
        tmp_path / "run",
        *FAST,
        "--set",
        f"data.workers={workers}",
        "--set",
        f"data.cache={cache}",
    )
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    errors = error_lines(r.output)
    assert len(errors) == 1 and f"{path}: sequence " in errors[0] and "is damaged" in errors[0]


@pytest.mark.slow
def test_eval_on_a_damaged_pack_is_one_line(packs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = gait("train", TINY, "--pack", packs["none"], "--out", run, *FAST, "--set", "data.workers=0")
    assert r.exit_code == 0, r.output
    path = tmp_path / "damaged.h5"
    shutil.copy(packs["gzip"], path)
    damage_every_sequence(path)
    r = gait("eval", run, "--pack", path, "--test-subjects", "5-6", "--device", "cpu")
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    errors = error_lines(r.output)
    assert len(errors) == 1 and f"{path}: sequence " in errors[0] and "is damaged" in errors[0]
