"""Issue 21 A: embeddings are stored as the model computed them (float32) unless float16 is asked.

`gait eval`'s figures are then the model's own: NM/BG/CL rank-1 and mAP equal, exactly, those of
the model's float32 embeddings scored directly, by gait's evaluator on the arrays in memory and
by a plain float64 evaluator written out here. float16 stays an explicit choice (``--storage
float16``), a file in the other storage is embedded again, every report names the storage, and
the int8 path is exact relative to whichever values are stored (native kernels and PyTorch).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from gaittrain.data.dataset import pack_subjects
from gaittrain.data.splits import select
from gaittrain.evaluation import native
from gaittrain.evaluation.embed import embed_dataset, open_model_and_pack
from gaittrain.evaluation.embeddings_file import (
    EmbeddingStore,
    open_embeddings,
    write_embeddings_file,
)
from gaittrain.evaluation.protocol import EvalProtocol, evaluate, load_eval_protocol
from tests.cli import gait, train_tiny

TEST = "001-006"  # every subject of the sample: the most probes (three are training subjects)
GROUPS = ("NM", "BG", "CL")


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_pack) -> dict:
    """A tiny run trained 4 iterations on the sample's first three subjects, and the model's own
    float32 embeddings of the test sequences, computed here as `gait eval` embeds them."""
    base = tmp_path_factory.mktemp("storage")
    pack = sample_pack
    out = base / "run"
    r = train_tiny(
        pack, out, "--train-subjects", "first:3", "--iterations", "4", "--set", "data.batch.p=3"
    )
    assert r.exit_code == 0, r.output
    test = select(pack_subjects([pack]), TEST)
    trained, data = open_model_and_pack(out, pack, test, torch.device("cpu"))
    try:
        emb = embed_dataset(trained.model, data, torch.device("cpu"))
        keys = [data.key(j) for j in range(len(data))]
    finally:
        data.close()
    assert emb.dtype == np.float32
    return {"pack": pack, "run": out, "test": test, "model": dict(zip(keys, emb, strict=True))}


def gait_eval(run: dict, *extra) -> tuple[dict, object]:
    """`gait eval` of the run on the sample as a JSON report, and the result."""
    out = run["run"] / "storage-report.json"
    r = gait("eval", run["run"], "--pack", run["pack"], "--test-subjects", TEST, "--device",
             "cpu", "--report", "json", "--out", out, *extra)  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text()), r


def plain_reference(emb: dict, gallery: list[str], probes: dict[str, list[str]]) -> dict:
    """The casia-b-lt figures of ``emb`` written out plainly, in float64: for every probe view
    and every other gallery view, each probe's Euclidean distance to each gallery sequence
    (the mean over parts of the parts' distances), the gallery sorted by it; rank-1 is the
    share of probes whose nearest sequence is of their subject, a probe view's figure the mean
    over gallery views and a group's the mean over probe views; a probe's AP is the mean of
    k / (rank of its k-th correct match), a cell's the mean over its probes, mAP the mean over
    cells."""
    keys = sorted(emb)
    views = sorted({k[3] for k in keys})
    out = {}
    for group, recordings in probes.items():
        per_view, cell_maps = [], []
        for pv in views:
            probe_keys = [k for k in keys if f"{k[1]}-{k[2]}" in recordings and k[3] == pv]
            cells = []
            for gv in views:
                gallery_keys = [k for k in keys if f"{k[1]}-{k[2]}" in gallery and k[3] == gv]
                if gv == pv or not probe_keys or not gallery_keys:
                    continue
                g = np.stack([emb[k] for k in gallery_keys]).astype(np.float64)
                hits, aps = [], []
                for key in probe_keys:
                    p = emb[key].astype(np.float64)
                    d = np.sqrt(((p[None] - g) ** 2).sum(-1)).mean(-1)
                    ranked = [gallery_keys[j][0] == key[0] for j in np.argsort(d, kind="stable")]
                    hits.append(ranked[0])
                    ranks = np.flatnonzero(ranked) + 1
                    if len(ranks):
                        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
                cells.append(np.mean(hits))
                cell_maps.append(np.mean(aps) if aps else np.nan)
            if cells:
                per_view.append(np.mean(cells))
        out[group] = {"rank1": float(np.mean(per_view)), "mAP": float(np.nanmean(cell_maps))}
    return out


@pytest.mark.slow
def test_eval_figures_are_those_of_the_models_float32_embeddings(run) -> None:
    """The issue's test: by default the file holds the model's float32 values, bit for bit, and
    `gait eval`'s NM/BG/CL rank-1 and mAP equal, exactly, gait's evaluator run on the model's
    float32 arrays in memory, and the plain float64 evaluator (rank-1 exactly; mAP up to the
    order in which a probe's AP terms are summed)."""
    report, _ = gait_eval(run)
    protocol = load_eval_protocol("casia-b-lt")
    direct = evaluate(run["model"], protocol, run["test"])
    plain = plain_reference(run["model"], protocol.gallery, protocol.probes)
    for group in GROUPS:
        got, want = report["conditions"][group], direct["conditions"][group]
        assert (got["rank1"], got["mAP"]) == (want["rank1"], want["mAP"]), group
        assert got["cells"] == want["cells"] and got["cmc"] == want["cmc"]
        assert got["rank1"] == plain[group]["rank1"], group
        assert got["mAP"] == pytest.approx(plain[group]["mAP"], rel=1e-12, abs=0), group
    assert report["storage"] == "float32"
    f, keys, attrs = open_embeddings(run["run"] / "embeddings-sample.h5")
    with f:
        stored = f["embeddings"][()]
    assert attrs["storage"] == "float32" and stored.dtype == np.float32
    np.testing.assert_array_equal(stored, np.stack([run["model"][k] for k in keys]))


@pytest.mark.slow
def test_float16_is_an_explicit_choice_embedded_again_either_way(run) -> None:
    """--storage float16 stores the model's values rounded to float16 and scores those, saying
    so; switching storage embeds again, saying why; the same storage again reuses the file."""
    gait_eval(run)  # float32 first
    half, r = gait_eval(run, "--storage", "float16")
    assert "embedded again: it was stored as float32 (now float16)" in r.output
    assert half["storage"] == "float16"
    f, keys, attrs = open_embeddings(run["run"] / "embeddings-sample.h5")
    with f:
        stored = f["embeddings"][()]
    assert attrs["storage"] == "float16" and stored.dtype == np.float16
    np.testing.assert_array_equal(stored, np.stack([run["model"][k] for k in keys]).astype("f2"))
    rounded = {k: v.astype(np.float16) for k, v in run["model"].items()}
    direct = evaluate(rounded, load_eval_protocol("casia-b-lt"), run["test"])
    for group in GROUPS:
        got, want = half["conditions"][group], direct["conditions"][group]
        assert (got["rank1"], got["mAP"]) == (want["rank1"], want["mAP"]), group
    _, r = gait_eval(run, "--storage", "float16")
    assert "embedded again" not in r.output
    full, r = gait_eval(run)
    assert "embedded again: it was stored as float16 (now float32)" in r.output
    assert full["storage"] == "float32"
    r = gait("embed", run["run"], run["pack"], "--subjects", TEST, "--storage", "float16")
    assert r.exit_code == 0 and "wrote" in r.output  # gait embed: the same rule
    with h5py.File(run["run"] / "embeddings-sample.h5") as f:
        assert f.attrs["storage"] == "float16" and f["embeddings"].dtype == np.float16


@pytest.mark.slow
def test_every_report_format_names_the_storage(run) -> None:
    r = gait("eval", run["run"], "--pack", run["pack"], "--test-subjects", TEST, "--device",
             "cpu", "--report", "csv", "--out", "-", "--storage", "float16")  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 3 * 4 and {row["storage"] for row in rows} == {"float16"}
    out = run["run"] / "storage-report.html"
    r = gait("eval", run["run"], "--pack", run["pack"], "--test-subjects", TEST, "--device",
             "cpu", "--report", "html", "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert '<th>embeddings storage</th>\n<td style="text-align:left">float32</td>' in (
        out.read_text()
    )


@pytest.fixture(params=["native", "torch"])
def path(request, monkeypatch):
    """Through the native kernels (where this CPU can build them) and through PyTorch."""
    if request.param == "native":
        request.getfixturevalue("kernels")  # built into the session's cache, or skipped
    if request.param == "torch":
        monkeypatch.setattr(native, "kernels", lambda: None)
    return request.param


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_int8_is_exact_for_the_values_stored(storage, path, tmp_path: Path, monkeypatch) -> None:
    """An embeddings file in either storage, 300 subjects x 2 recordings x 2 views of model-like
    embeddings: int8 ranks as float32 products do, and the pairs it re-checks are read as stored
    (the native kernels' exact_f32 or exact_f16, by the rows' dtype)."""
    g = torch.Generator().manual_seed(3)
    subjects, parts, dim = 300, 4, 32
    means = torch.randn(subjects, parts, dim, generator=g)
    keys = [
        (f"{s:03d}", "nm", f"{q:02d}", v)
        for s in range(subjects)
        for q in (1, 2)
        for v in ("000", "090")
    ]
    rows = means[[int(k[0]) for k in keys]] + 1.2 * torch.randn(len(keys), parts, dim, generator=g)
    path_h5 = tmp_path / "emb.h5"
    write_embeddings_file(path_h5, keys, (parts, dim), [rows.numpy()], {"storage": storage})
    protocol = EvalProtocol("pairs", "000-299", ["nm-01"], {"NM": ["nm-02"]})
    everyone = sorted({k[0] for k in keys})
    seen = []
    exact_pairs = native.exact_pairs

    def spy(probe, gallery, i, j):
        seen.append((probe.dtype, gallery.dtype))
        return exact_pairs(probe, gallery, i, j)

    monkeypatch.setattr(native, "exact_pairs", spy)
    figures = {}
    for precision in ("fp32", "int8"):
        f, found, _ = open_embeddings(path_h5)
        with EmbeddingStore.from_file(f, found) as store:
            assert store.itemsize == np.dtype(storage).itemsize
            figures[precision] = evaluate(store, protocol, everyone, precision=precision)
    a, b = figures["fp32"]["conditions"]["NM"], figures["int8"]["conditions"]["NM"]
    assert a["cells"] == b["cells"] and a["cmc"] == b["cmc"] and a["rank1"] < 1.0
    assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-6)  # float32 vs float64 rounding
    assert figures["fp32"]["failures"] == figures["int8"]["failures"]
    stored = getattr(torch, storage)
    if path == "native":
        assert seen and set(seen) == {(stored, stored)}
    else:
        assert not seen
    # and the figures are those of the stored values, held in memory
    values = dict(zip(keys, rows.numpy().astype(storage), strict=True))
    assert evaluate(values, protocol, everyone)["conditions"]["NM"]["cells"] == a["cells"]
