"""`gait prep` past one writer (issue 13, item 5): workers compress their frames, the writer joins
them into chunks and appends them with h5py's direct chunk write (gaitprep/chunks.py).

A pack written that way must read back as one written through h5py's filter pipeline (the same
frames, table, attributes and dataset properties, through `Pack` and through plain h5py), and its
stored chunks must be exactly the declared filter applied frame by frame, as docs/pack-format.md
describes it; `reference_chunk` below rebuilds them from plain zlib, so a worker that compresses
otherwise than the dataset declares fails these tests.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from gaitprep import prep
from gaitprep.chunks import (
    EncodedFrames,
    adler32_concat,
    chunk_bytes,
    direct_encoding,
    encode_frames,
)
from gaitprep.layout import CASIA_B
from gaitprep.merge import merge_packs
from gaitprep.pack import CHUNK_FRAMES, Pack, PackWriter
from gaitprep.prep import PrepInterrupted, PrepJob, run_prep
from tests.cli import SAMPLE, gait

#: Properties of /frames and /frame_source that readers may depend on.
PROPERTIES = ("shape", "dtype", "chunks", "maxshape", "compression", "compression_opts")


@pytest.fixture(scope="module")
def synth_raw(tmp_path_factory) -> Path:
    """A `gait synth` tree whose sequences are longer than a chunk (70 frames, some dropped by
    the synthetic artifacts), so that chunks lie inside one sequence as well as across two."""
    raw = tmp_path_factory.mktemp("synth") / "raw"
    r = gait(
        *("synth", "casia-b", raw, "--subjects", "2", "--frames", "70", "--views", "000,090"),
        *("--conditions", "nm-01,bg-01,cl-01", "--workers", "1"),
    )
    assert r.exit_code == 0, r.output
    return raw


@pytest.fixture(scope="module", params=["sample", "synth"])
def raw(request, synth_raw: Path) -> Path:
    """The sample data (12 frames a sequence, several sequences a chunk) or the synth tree."""
    return SAMPLE if request.param == "sample" else synth_raw


def make(raw: Path, out: Path, compression: str = "gzip", **run) -> Path:
    job = PrepJob(raw=raw, out=out, dataset="casia-b", layout=CASIA_B, compression=compression)
    run_prep(job, **run)
    return out


@pytest.fixture(scope="module")
def packs(raw: Path, tmp_path_factory) -> dict:
    """For each compression: the pack `gait prep` writes (2 workers, direct chunk writes) and the
    pack it writes when its writer compresses through h5py (`direct=False`), with the same
    creation time."""
    folder = tmp_path_factory.mktemp("direct")
    mp = pytest.MonkeyPatch()
    mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
    try:
        return {
            c: {
                "direct": make(raw, folder / f"{c}-direct.h5", c, workers=2),
                "h5py": make(raw, folder / f"{c}-h5py.h5", c, workers=1, direct=False),
            }
            for c in ("gzip", "none", "lzf")
        }
    finally:
        mp.undo()


def datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    """Every dataset of an open file, by name."""
    found = {}
    f.visititems(lambda name, obj: found.setdefault(name, obj))
    return {k: v for k, v in found.items() if isinstance(v, h5py.Dataset)}


def stored_chunks(path: Path) -> list[tuple[int, bytes, np.ndarray]]:
    """``(filter mask, stored bytes, frames)`` of every ``/frames`` chunk, in order; the frames
    of the chunk the pack ends in are completed with blank ones, as HDF5 stores it."""
    with h5py.File(path, "r") as f:
        ds = f["frames"]
        rows = ds.chunks[0]
        out = []
        for lo in range(0, ds.shape[0], rows):
            mask, data = ds.id.read_direct_chunk((lo, 0, 0))
            frames = np.zeros(ds.chunks, np.uint8)
            part = ds[lo : lo + rows]
            frames[: len(part)] = part
            out.append((mask, bytes(data), frames))
        return out


def reference_chunk(frames: np.ndarray, level: int | None) -> bytes:
    """A stored chunk as docs/pack-format.md describes it, from plain zlib: the frames' bytes
    (no filter), or the zlib header of ``level``, each frame deflated at ``level`` by a fresh
    compressor and flushed with Z_FULL_FLUSH, the empty final block and the chunk's Adler-32."""
    data = frames.tobytes()
    if level is None:
        return data
    blocks = []
    for f in frames:
        z = zlib.compressobj(level, zlib.DEFLATED, -15)
        blocks.append(z.compress(f.tobytes()) + z.flush(zlib.Z_FULL_FLUSH))
    header = zlib.compress(b"", level)[:2]
    return header + b"".join(blocks) + b"\x03\x00" + zlib.adler32(data).to_bytes(4, "big")


def assert_chunks_follow_the_filter(path: Path) -> None:
    """Every stored chunk of ``/frames`` is the dataset's declared filter applied frame by frame
    (:func:`reference_chunk`), applied in full (filter mask 0) and decoding to its frames."""
    with h5py.File(path, "r") as f:
        ds = f["frames"]
        assert ds.compression in ("gzip", None) and not ds.shuffle and not ds.fletcher32
        level = ds.compression_opts if ds.compression == "gzip" else None
    for i, (mask, data, frames) in enumerate(stored_chunks(path)):
        assert mask == 0, f"chunk {i}: filter mask {mask}"
        decoded = data if level is None else zlib.decompress(data)
        # compared first, asserted after: pytest would explain a failed `bytes == bytes` with a
        # diff of both reprs, which takes minutes under CI (it does not truncate there)
        same_frames = decoded == frames.tobytes()
        assert same_frames, f"chunk {i} does not decode to its frames"
        same_filter = data == reference_chunk(frames, level)
        assert same_filter, f"chunk {i} is not the declared filter"


# --- the same pack, read back -----------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "none", "lzf"])
def test_direct_chunk_pack_reads_back_as_the_h5py_written_pack(packs, compression: str) -> None:
    direct, h5 = packs[compression]["direct"], packs[compression]["h5py"]
    with Pack(direct) as a, Pack(h5) as b:
        assert len(a) == len(b) > 0 and a.keys() == b.keys()
        assert a.attrs == b.attrs and a.fingerprint == b.fingerprint
        np.testing.assert_array_equal(a.start, b.start)
        np.testing.assert_array_equal(a.length, b.length)
        np.testing.assert_array_equal(a.crc32, b.crc32)
        for i in range(len(a)):
            assert a.meta(i) == b.meta(i)
            np.testing.assert_array_equal(a[i], b[i])
            np.testing.assert_array_equal(a.frame_source(i), b.frame_source(i))
    manifests = [p.with_name(p.name + ".manifest.json").read_text() for p in (direct, h5)]
    assert manifests[0] == manifests[1].replace(h5.name, direct.name)


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_h5py_reads_direct_chunks_with_its_normal_api(packs, compression: str) -> None:
    direct, h5 = packs[compression]["direct"], packs[compression]["h5py"]
    with h5py.File(direct, "r") as a, h5py.File(h5, "r") as b:
        da, db = datasets(a), datasets(b)
        assert sorted(da) == sorted(db)
        for name in da:
            np.testing.assert_array_equal(da[name][()], db[name][()], err_msg=name)
            for prop in PROPERTIES:
                assert getattr(da[name], prop) == getattr(db[name], prop), (name, prop)
        assert dict(a.attrs) == dict(b.attrs)
        frames = a["frames"]
        assert frames.id.get_num_chunks() == b["frames"].id.get_num_chunks()
        t = a["sequences"]
        for s, n, crc in zip(t["start"][()], t["length"][()], t["crc32"][()], strict=True):
            assert zlib.crc32(frames[s : s + n]) == crc
        n = frames.shape[0]
        assert n % CHUNK_FRAMES, "the pack should end inside a chunk"
        for lo, hi in ((CHUNK_FRAMES - 3, CHUNK_FRAMES + 3), (n - n % CHUNK_FRAMES - 1, n)):
            np.testing.assert_array_equal(frames[lo:hi], b["frames"][lo:hi])
    # gzip through h5py compresses a whole chunk at once; the frame-by-frame stream is another
    if compression == "gzip":
        assert stored_chunks(direct)[0][1] != stored_chunks(h5)[0][1]


# --- the declared filter, exactly -------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_stored_chunks_are_the_declared_filter_applied_frame_by_frame(
    packs, compression: str
) -> None:
    assert_chunks_follow_the_filter(packs[compression]["direct"])
    if compression == "none":  # no filter: the stored bytes are the frames, as h5py writes them
        direct, h5 = (stored_chunks(packs["none"][k]) for k in ("direct", "h5py"))
        assert [d for _, d, _ in direct] == [d for _, d, _ in h5]


@pytest.mark.slow
def test_a_worker_that_compresses_otherwise_fails_the_check(tmp_path: Path, monkeypatch) -> None:
    """A worker deflating at level 6 while /frames declares level 1 writes a pack that reads
    back (inflate takes any level) but is not the declared filter: the check must say so."""
    real = prep.encode_frames

    def level_6(frames: np.ndarray, encoding: str) -> EncodedFrames:
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        blocks = tuple(z.compress(f) + z.flush(zlib.Z_FULL_FLUSH) for f in frames)
        return replace(real(frames, encoding), segments=blocks)

    monkeypatch.setattr(prep, "encode_frames", level_6)
    out = make(SAMPLE, tmp_path / "six.h5", workers=1)
    with Pack(out) as p:
        assert all(len(p[i]) for i in range(len(p)))  # readable ...
    with pytest.raises(AssertionError, match="is not the declared filter"):
        assert_chunks_follow_the_filter(out)  # ... but not what /frames declares


def test_the_writer_refuses_chunks_of_another_encoding(tmp_path: Path) -> None:
    frames = np.zeros((3, 64, 64), np.uint8)
    meta = dict.fromkeys(("subject", "condition", "seq", "view", "source"), "x")
    source = np.arange(3)
    w = PackWriter(tmp_path / "p.h5", 64, "gzip")
    try:
        assert w.encoding == "gzip"
        with pytest.raises(ValueError, match="encoded as none 64x64; this pack takes gzip"):
            w.append(meta, encode_frames(frames, "none"), source, crc=0)
        with pytest.raises(ValueError, match="encoded as gzip 128x128"):
            w.append(meta, encode_frames(np.zeros((3, 128, 128), np.uint8), "gzip"), source, 0)
        with pytest.raises(ValueError, match="need their CRC-32"):
            w.append(meta, encode_frames(frames, "gzip"), source)
    finally:
        w.abort()
    for compression, direct in (("lzf", True), ("gzip", False)):
        w = PackWriter(tmp_path / f"{compression}.h5", 64, compression, direct=direct)
        try:
            assert w.encoding is None
            with pytest.raises(ValueError, match="give it frames, not chunks"):
                w.append(meta, encode_frames(frames, "gzip"), source, crc=0)
        finally:
            w.abort()


def test_only_filters_that_can_be_reproduced_are_written_directly(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "f.h5", "w") as f:
        chunked = {"shape": (0, 8, 8), "maxshape": (None, 8, 8), "dtype": np.uint8}
        cases = {
            "gzip": ({"compression": "gzip", "compression_opts": 1}, 64),
            "none": ({}, 64),
            None: ({"compression": "gzip", "compression_opts": 4}, 64),
        }
        for i, (expected, (opts, rows)) in enumerate(cases.items()):
            ds = f.create_dataset(f"d{i}", chunks=(rows, 8, 8), **chunked, **opts)
            assert direct_encoding(ds, 64) == expected
        others = [
            {"compression": "lzf"},
            {"compression": "gzip", "compression_opts": 1, "shuffle": True},
            {"compression": "gzip", "compression_opts": 1, "fletcher32": True},
        ]
        for i, opts in enumerate(others):
            ds = f.create_dataset(f"o{i}", chunks=(64, 8, 8), **chunked, **opts)
            assert direct_encoding(ds, 64) is None
        ds = f.create_dataset("rows32", chunks=(32, 8, 8), **chunked)
        assert direct_encoding(ds, 64) is None


# --- the same chunks, whatever the run ---------------------------------------------------------


@pytest.mark.slow
def test_chunk_bytes_do_not_depend_on_workers_interruptions_or_merging(
    tmp_path: Path, monkeypatch
) -> None:
    """The stored chunks of one job are the same bytes with 1 or 2 workers, after a Ctrl-C and
    a resume (whose partly filled chunk is rewritten whole) and when shards are merged."""
    two = make(SAMPLE, tmp_path / "two.h5", workers=2)
    one = make(SAMPLE, tmp_path / "one.h5", workers=1)

    monkeypatch.setattr(prep, "COMMIT_SECONDS", 0.0)  # commit after every sequence
    calls = {"n": 0}
    real = prep.process_sequence

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 50:  # 49 sequences of about 12 frames: inside the 10th chunk
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(prep, "process_sequence", interrupted)
    resumed = tmp_path / "resumed.h5"
    with pytest.raises(PrepInterrupted):
        make(SAMPLE, resumed, workers=1)
    journal = json.loads((tmp_path / "resumed.h5.partial.json").read_text())
    assert journal["frames"] % CHUNK_FRAMES, "the interruption should fall inside a chunk"
    monkeypatch.setattr(prep, "process_sequence", real)
    job = PrepJob(raw=SAMPLE, out=resumed, dataset="casia-b", layout=CASIA_B)
    assert run_prep(job, workers=2)["resumed"]

    shards = []
    for k in (1, 2):
        shards.append(tmp_path / f"part{k}.h5")
        run_prep(replace(job, out=shards[-1], shard=(k, 2)), workers=1)
    merged = tmp_path / "merged.h5"
    merge_packs(merged, shards)

    expected = [data for _, data, _ in stored_chunks(two)]
    for other in (one, resumed, merged):
        assert [data for _, data, _ in stored_chunks(other)] == expected, other.name
    assert_chunks_follow_the_filter(two)


def test_a_resumed_pack_ends_in_a_chunk_rewritten_whole(tmp_path: Path, monkeypatch) -> None:
    """Interrupted twice within one chunk, resumed twice: the chunk is the same bytes."""
    raw = tmp_path / "raw"
    shutil.copytree(SAMPLE / "001", raw / "001")
    reference = make(raw, tmp_path / "ref.h5", workers=1)
    monkeypatch.setattr(prep, "COMMIT_SECONDS", 0.0)
    real = prep.process_sequence
    out = tmp_path / "p.h5"
    for stop in (3, 2):  # after 2 sequences (~24 frames), then after one more
        calls = {"n": 0}

        def interrupted(*args, stop=stop, calls=calls):
            calls["n"] += 1
            if calls["n"] == stop:
                raise KeyboardInterrupt
            return real(*args)

        monkeypatch.setattr(prep, "process_sequence", interrupted)
        with pytest.raises(PrepInterrupted):
            make(raw, out, workers=1)
        journal = json.loads((tmp_path / "p.h5.partial.json").read_text())
        assert 0 < journal["frames"] < CHUNK_FRAMES  # the first chunk, partly filled
    monkeypatch.setattr(prep, "process_sequence", real)
    make(raw, out, workers=1)
    assert [d for _, d, _ in stored_chunks(out)] == [d for _, d, _ in stored_chunks(reference)]


# --- the pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 7, 4096, 16384])
def test_adler32_concat_equals_zlib_on_the_joined_pieces(length: int) -> None:
    rng = np.random.default_rng(length)
    pieces = [rng.integers(0, 256, length, dtype=np.uint8).tobytes() for _ in range(5)]
    pieces += [bytes(length), b"\xff" * length]  # sums that wrap around the modulus
    for k in range(len(pieces) + 1):
        checks = [zlib.adler32(p) for p in pieces[:k]]
        assert adler32_concat(checks, length) == zlib.adler32(b"".join(pieces[:k]))


@pytest.mark.parametrize("encoding", ["gzip", "none"])
def test_a_chunk_is_its_frames_then_blank_ones(encoding: str) -> None:
    rng = np.random.default_rng(0)
    frames = (rng.random((5, 16, 16)) > 0.7).astype(np.uint8) * 255
    enc = encode_frames(frames, encoding)
    assert len(enc) == 5 and enc.checks == tuple(zlib.adler32(f.tobytes()) for f in frames)
    data = chunk_bytes(encoding, enc.segments, enc.checks, 16, 8)
    padded = np.concatenate([frames, np.zeros((3, 16, 16), np.uint8)])
    assert data == reference_chunk(padded, 1 if encoding == "gzip" else None)
    with pytest.raises(ValueError, match="at most 4 frames"):
        chunk_bytes(encoding, enc.segments, enc.checks, 16, 4)
