"""`--precision auto` (gaittrain.evaluation.cost): the path predicted fastest from a calibration
measured once per machine and width and kept in $GAIT_CACHE; small retrievals and the cosine
metrics take fp32 without measuring anything."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
import torch

from gaittrain.evaluation import cost, lowrank
from gaittrain.evaluation.protocol import EvalProtocol, evaluate

#: Rates (seconds per pair and part) of a machine where the low-rank path is cheapest.
RATES = {"fp32": 20e-9, "lowrank": [1e-9, 0.05e-9], "recheck": 2e-7}
OU_CELL = (5154, 5154, (62, 256))  # probes, gallery sequences, (parts, dim)


@pytest.fixture
def measured(monkeypatch, tmp_path) -> list:
    """A calibration cache of the test's own, whose measurements return :data:`RATES` and are
    listed (their keys) instead of timed."""
    monkeypatch.setenv("GAIT_CACHE", str(tmp_path))
    cost._calibration.cache_clear()
    found = []
    monkeypatch.setattr(cost, "_measure", lambda key: found.append(key) or json.loads(RATES_JSON))
    yield found
    cost._calibration.cache_clear()


RATES_JSON = json.dumps(RATES)


def test_examples() -> None:
    found = doctest.testmod(cost)
    assert found.failed == 0 and found.attempted >= 2


def test_small_retrievals_and_cosine_take_fp32_without_measuring(measured) -> None:
    resolve = cost.resolve_precision
    assert resolve("auto", "euclidean", "cpu", 100, 100, (62, 256), 32) == "fp32"
    assert resolve("auto", "cosine", "cpu", *OU_CELL, 32) == "fp32"
    assert resolve("lowrank", "euclidean", "cpu", 1, 1, (62, 256)) == "lowrank"
    assert measured == []
    with pytest.raises(ValueError, match="lowrank computes the euclidean metric only"):
        resolve("lowrank", "cosine", "cpu", 1, 1, (62, 256))
    with pytest.raises(ValueError, match="one of fp32, int8, lowrank, auto"):
        resolve("bf16", "euclidean", "cpu", 1, 1, (62, 256))


def test_auto_takes_the_path_predicted_fastest(measured, monkeypatch) -> None:
    resolve = cost.resolve_precision
    assert resolve("auto", "euclidean", "cpu", *OU_CELL, 32) == "lowrank"
    assert resolve("auto", "euclidean", "cpu", *OU_CELL, None) == "fp32"  # spectrum too flat
    assert len(measured) == 1  # once for this machine and width
    rates = cost.calibration("cpu", 256)  # as kept for this process
    monkeypatch.setitem(rates, "int8", 0.5e-9)  # where int8 is fast
    assert resolve("auto", "euclidean", "cpu", *OU_CELL, 32) == "int8"
    monkeypatch.setitem(rates, "lowrank", [30e-9, 1e-9])  # where low-rank products are slow
    monkeypatch.delitem(rates, "int8")
    assert resolve("auto", "euclidean", "cpu", *OU_CELL, 32) == "fp32"
    seconds = cost.predict(RATES, 5154, 5154, 62, 32)
    assert seconds["lowrank"] < seconds["fp32"] / 5


def test_a_calibration_is_kept_per_machine_and_width(measured) -> None:
    assert cost.calibration("cpu", 256) == cost.calibration("cpu", 256) == RATES
    assert len(measured) == 1
    cost._calibration.cache_clear()  # as a new process
    assert cost.calibration("cpu", 256) == RATES and len(measured) == 1  # read from the file
    kept = json.loads(cost.calibration_file().read_text())
    (key,) = kept
    assert json.loads(key)["dim"] == 256 and json.loads(key)["device"] == "cpu"
    assert json.loads(key)["model"] == cost._cpu_model() and kept[key] == RATES
    cost.calibration("cpu", 128)  # another width: measured too, both kept
    assert len(measured) == 2 and len(json.loads(cost.calibration_file().read_text())) == 2
    cost.calibration_file().write_text("{")  # damaged: measured again
    cost._calibration.cache_clear()
    assert cost.calibration("cpu", 256) == RATES and len(measured) == 3


@pytest.mark.slow
def test_a_real_calibration_times_every_path_there_is(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("GAIT_CACHE", str(tmp_path))
    cost._calibration.cache_clear()
    try:
        rates = cost.calibration("cpu", 32)
    finally:
        cost._calibration.cache_clear()
    assert ("int8" in rates) == cost.fast_int8(torch.device("cpu"))
    assert rates["fp32"] > 0 and rates["recheck"] > 0 and rates["lowrank"][0] >= 0
    assert rates["lowrank"][1] >= 0 and sum(rates["lowrank"]) > 0
    assert cost.calibration_file().exists()


def test_auto_ranks_a_large_cell_with_the_low_rank_path(measured, monkeypatch) -> None:
    """Two cells of 2,048 x 2,048 sequences (4.2 million pairs each) of embeddings of rank 4
    per part: auto fits the gallery's directions, takes the low-rank path where the
    calibration says it is fastest, and gives the figures of fp32 (the same rank-1 table and
    CMC; mAP to float32 rounding)."""
    g = torch.Generator().manual_seed(0)
    subjects = [f"{s:04d}" for s in range(2048)]
    directions = torch.linalg.qr(torch.randn(2, 16, 4, generator=g))[0]
    means = torch.randn(2048, 2, 4, generator=g)
    embeddings = {}
    for view in ("000", "090"):
        for seq in ("01", "02"):
            x = means + 0.3 * torch.randn(2048, 2, 4, generator=g)
            x = torch.einsum("npr,pdr->npd", x, directions).numpy()
            embeddings.update({(s, "nm", seq, view): x[i] for i, s in enumerate(subjects)})
    protocol = EvalProtocol("two views", "all", ["nm-01"], {"NM": ["nm-02"]})
    used = []
    interval = lowrank.interval
    monkeypatch.setattr(lowrank, "interval", lambda p, q: used.append(1) or interval(p, q))
    auto = evaluate(embeddings, protocol, subjects, precision="auto")
    assert len(used) == 2  # one block of probes a cell
    used.clear()
    fp32 = evaluate(embeddings, protocol, subjects, precision="fp32")
    assert not used
    a, b = auto["conditions"]["NM"], fp32["conditions"]["NM"]
    assert a["cells"] == b["cells"] and a["cmc"] == b["cmc"] and 0.2 < a["rank1"] < 0.95
    assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-6)
    assert auto["failures"] == fp32["failures"]
    assert np.isclose(a["mINP"], b["mINP"], atol=1e-6)
