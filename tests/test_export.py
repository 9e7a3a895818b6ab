"""`gait export`: ONNX with a dynamic number of frames, equal to PyTorch's embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gaittrain.data.dataset import PackDataset
from gaittrain.trained_model import load_model
from tests.cli import assert_one_line_error, copy_run, gait

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

#: every test here evaluates the session's 1,500-iteration tiny run (trained once, ~30 s)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_pack, trained_run) -> dict:
    base = tmp_path_factory.mktemp("export")
    return {"pack": sample_pack, "run": copy_run(trained_run, base / "run"), "base": base}


@pytest.mark.slow
def test_export_equals_pytorch_on_every_sample_sequence(run) -> None:
    model = run["base"] / "model.onnx"
    r = gait("export", run["run"], model, "--pack", run["pack"])
    assert r.exit_code == 0, r.output
    assert "max difference" in r.output
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    trained = load_model(run["run"], torch.device("cpu"))
    cfg = trained.cfg
    data = PackDataset([run["pack"]], None, frames=None, height=cfg.data.height, cut=cfg.data.cut)
    lengths, worst = set(), 0.0
    try:
        for i in range(len(data)):  # every sequence: lengths vary, the graph's T is dynamic
            frames, _ = data[i]
            got = session.run(None, {"frames": frames.numpy()})[0]
            with torch.no_grad():
                want = trained.model(frames.float().div(255)[None])[:, 0].numpy()
            assert got.shape == want.shape
            worst = max(worst, float(np.abs(got - want).max()))
            lengths.add(len(frames))
    finally:
        data.close()
    assert len(lengths) > 1 and worst <= 1e-4
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert meta["gait.model"] == cfg.model.name
    assert meta["gait.height"] == str(cfg.data.height or 64)
    assert json.loads(meta["gait.normalization.size"]) == 64
    for key in ("min_sum", "binarize", "largest_blob"):
        assert f"gait.normalization.{key}" in meta


def test_export_of_a_missing_run_or_a_bad_pack_is_one_line(run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not a pack")
    r = gait("export", run["run"], tmp_path / "m.onnx", "--pack", bad)
    assert_one_line_error(r)
    assert not (tmp_path / "m.onnx").exists()
