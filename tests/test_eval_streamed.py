"""Embeddings stored in float32 (or float16 where asked) and read a view at a time; `gait eval
--precision`."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from gaittrain.evaluation import lowrank, native
from gaittrain.evaluation.embed import stale_reason
from gaittrain.evaluation.embeddings_file import (
    EmbeddingStore,
    open_embeddings,
    read_embeddings,
    write_embeddings_file,
)
from gaittrain.evaluation.protocol import evaluate, load_eval_protocol
from tests.cli import copy_run, gait

#: every test here evaluates the session's 1,500-iteration tiny run (trained once, ~30 s)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_pack, trained_run) -> dict:
    out = copy_run(trained_run, tmp_path_factory.mktemp("streamed") / "run")
    return {"pack": sample_pack, "run": out}


TEST = ("--test-subjects", "last:4")


def report(run: Path, pack: Path, out: Path, *extra) -> dict:
    r = gait("eval", run, "--pack", pack, "--report", "json", "--out", out, *TEST, *extra)
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_embeddings_are_stored_as_asked_with_float64_norms(run, storage) -> None:
    report(run["run"], run["pack"], run["run"] / "a.json", "--storage", storage)
    path = run["run"] / "embeddings-sample.h5"
    with h5py.File(path) as f:
        emb, norms = f["embeddings"][()], f["sq_norms"][()]
        assert emb.dtype == np.dtype(storage) and norms.dtype == np.float32
        assert f.attrs["storage"] == storage
    want = (emb.astype(np.float64) ** 2).sum(-1)
    np.testing.assert_allclose(norms, want, rtol=2**-23)
    dense, _ = read_embeddings(path)
    f, keys, _ = open_embeddings(path)
    with EmbeddingStore.from_file(f, keys) as store:
        assert store.itemsize == np.dtype(storage).itemsize
        idx = np.array([5, 1, 3])  # any order
        rows = store.rows(idx).numpy()
        assert rows.dtype == np.dtype(storage)  # as stored
        np.testing.assert_array_equal(rows, np.stack([dense[keys[i]] for i in idx]))


def test_a_float32_file_of_an_older_gait_is_embedded_again_for_float16(run, tmp_path: Path) -> None:
    """A file of an older gait, float32 without a ``storage`` attribute, stands for float32
    storage and is embedded again for float16, and a file in either storage for the other."""
    report(run["run"], run["pack"], run["run"] / "b.json", "--storage", "float16")
    path = run["run"] / "embeddings-sample.h5"
    _, keys, attrs = open_embeddings(path)
    assert attrs["storage"] == "float16"
    old = tmp_path / "old.h5"
    with h5py.File(path) as f, h5py.File(old, "w") as g:
        g["embeddings"] = f["embeddings"][()].astype(np.float32)
        for name in f["sequences"]:
            f.copy(f[f"sequences/{name}"], g, f"sequences/{name}")
        g.attrs.update({k: v for k, v in attrs.items() if k != "storage"})
    assert stale_reason(old, attrs, keys) == "it was stored as float32 (now float16)"
    assert stale_reason(path, attrs, keys) is None
    as_float32 = {**attrs, "storage": "float32"}
    assert stale_reason(old, as_float32, keys) is None
    assert stale_reason(path, as_float32, keys) == "it was stored as float16 (now float32)"


def test_an_embedding_out_of_float16_range_is_refused(tmp_path: Path) -> None:
    """In float16 storage only: float32 stores the model's value."""
    from gaittrain.evaluation.embeddings_file import EmbeddingsError

    keys = [("001", "nm", "01", "000"), ("002", "nm", "01", "000")]
    emb = np.ones((2, 3, 4), np.float32)
    emb[1, 2, 3] = 1e6
    with pytest.raises(EmbeddingsError, match="not finite in float16"):
        write_embeddings_file(tmp_path / "e.h5", keys, (3, 4), [emb], {"storage": "float16"})
    assert not (tmp_path / "e.h5").exists()
    write_embeddings_file(tmp_path / "e.h5", keys, (3, 4), [emb], {})
    stored, attrs = read_embeddings(tmp_path / "e.h5")
    assert attrs["storage"] == "float32" and stored[keys[1]][2, 3] == 1e6


def test_a_store_evaluates_as_the_dict_it_holds(run) -> None:
    report(run["run"], run["pack"], run["run"] / "c.json")
    path = run["run"] / "embeddings-sample.h5"
    dense, _ = read_embeddings(path)
    protocol = load_eval_protocol("casia-b-lt")
    subjects = sorted({k[0] for k in dense})
    want = evaluate(dense, protocol, subjects)
    f, keys, _ = open_embeddings(path)
    with EmbeddingStore.from_file(f, keys) as store:
        # blocks of one probe and a gallery kept for one cell only
        got = evaluate(store, protocol, subjects, max_memory=1)
    assert got == want


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_precisions_give_the_same_report(run, storage, built, monkeypatch) -> None:
    """int8 through the native kernels where this machine builds them, else through PyTorch;
    lowrank through PyTorch's products (its re-checks through the kernels where built)."""
    bounds, calls = native.bounds, []
    monkeypatch.setattr(native, "bounds", lambda *args: calls.append(1) or bounds(*args))
    interval, projected = lowrank.interval, []
    monkeypatch.setattr(lowrank, "interval", lambda p, g: projected.append(1) or interval(p, g))
    stored = ("--storage", storage)
    a = report(run["run"], run["pack"], run["run"] / "fp32.json", "--precision", "fp32", *stored)
    b = report(run["run"], run["pack"], run["run"] / "int8.json", "--precision", "int8", *stored)
    assert bool(calls) == (built[0] is not None) and not projected
    c = report(run["run"], run["pack"], run["run"] / "low.json", "--precision", "lowrank", *stored)
    assert projected
    assert a["storage"] == b["storage"] == c["storage"] == storage
    for other in (b, c):
        for group in a["conditions"]:
            x, y = a["conditions"][group], other["conditions"][group]
            assert x["cells"] == y["cells"] and x["cmc"] == y["cmc"]
            assert x["mAP"] == pytest.approx(y["mAP"], abs=1e-6)  # float32 vs float64 rounding
        assert a["failures"] == other["failures"]


@pytest.mark.parametrize("precision", ["int8", "lowrank"])
def test_certified_paths_with_a_cosine_metric_are_refused(run, precision) -> None:
    r = gait(
        "eval", run["run"], "--pack", run["pack"], "--metric", "cosine", "--precision", precision
    )
    assert r.exit_code == 2, r.output  # a usage error, before any work
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error:") and "--precision" in line and "euclidean" in line
    assert precision in line


def test_rows_read_from_the_file_equal_hdf5_selections(run, tmp_path: Path) -> None:
    """A contiguous embeddings file (as gait embed writes it) is read with one pread per run of
    rows; a chunked, compressed copy through HDF5's selections: the same rows, in any order,
    repeated or not, and the same evaluation."""
    report(run["run"], run["pack"], run["run"] / "d.json")
    path = run["run"] / "embeddings-sample.h5"
    chunked = tmp_path / "chunked.h5"
    with h5py.File(path) as f, h5py.File(chunked, "w") as g:
        g.create_dataset("embeddings", data=f["embeddings"][()], chunks=True, compression="gzip")
        for name in ("sequences", "sq_norms"):
            f.copy(f[name], g, name)
    idx = np.array([7, 0, 7, 3, 2, 1, 30, 29])  # shuffled, repeated, runs of consecutive rows
    f1, keys, _ = open_embeddings(path)
    f2, _, _ = open_embeddings(chunked)
    with EmbeddingStore.from_file(f1, keys) as direct, EmbeddingStore.from_file(f2, keys) as hdf:
        assert direct.itemsize == hdf.itemsize == 4  # float32, the default storage
        np.testing.assert_array_equal(direct.rows(idx).numpy(), hdf.rows(idx).numpy())
        protocol = load_eval_protocol("casia-b-lt")
        subjects = sorted({k[0] for k in keys})
        assert evaluate(direct, protocol, subjects) == evaluate(hdf, protocol, subjects)
