"""Protocols and metrics on hand-built embeddings whose answers are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gaittrain.evaluation.metrics import distance_blocks, retrieve
from gaittrain.evaluation.protocol import evaluate, load_eval_protocol

SUBJECTS = ["001", "002", "003"]
VIEWS = ["000", "090", "180"]


def onehot(i: int, parts: int = 2) -> np.ndarray:
    v = np.zeros((parts, 4), np.float32)
    v[:, i] = 10.0
    return v


@pytest.fixture()
def protocol_file(tmp_path: Path) -> str:
    p = tmp_path / "toy.yaml"
    p.write_text(
        "name: toy\ntrain: '900'\ntest: '001-003'\nevaluation:\n"
        "  gallery: [nm-01]\n  probes: {NM: [nm-05], CL: [cl-01]}\n"
        "  exclude_identical_views: true\n"
    )
    return str(p)


def embeddings(wrong: dict[tuple[str, str, str], str]) -> dict:
    """Gallery nm-01 of every subject and view at its subject's corner; each probe at the corner
    of the subject it should be matched to (its own unless listed in ``wrong``)."""
    out = {}
    for s in SUBJECTS:
        for v in VIEWS:
            out[(s, "nm", "01", v)] = onehot(SUBJECTS.index(s))
            for cond, seq in (("nm", "05"), ("cl", "01")):
                target = wrong.get((s, cond, v), s)
                out[(s, cond, seq, v)] = onehot(SUBJECTS.index(target))
    return out


def test_per_view_table_excludes_identical_views(protocol_file: str) -> None:
    emb = embeddings({("003", "nm", "090"): "001", ("002", "cl", "000"): "003"})
    r = evaluate(emb, load_eval_protocol(protocol_file))
    nm = r["conditions"]["NM"]
    assert nm["per_view"] == pytest.approx({"000": 1.0, "090": 2 / 3, "180": 1.0})
    assert nm["rank1"] == pytest.approx(8 / 9)
    assert set(nm["cells"]["000"]) == {"090", "180"}  # no identical view
    cl = r["conditions"]["CL"]
    assert cl["per_view"] == pytest.approx({"000": 2 / 3, "090": 1.0, "180": 1.0})
    assert nm["coverage"] == {"probe_sequences": 9, "expected_probe_sequences": 9}
    included = evaluate(emb, load_eval_protocol(protocol_file), include_identical=True)
    assert set(included["conditions"]["NM"]["cells"]["000"]) == {"000", "090", "180"}
    assert included["conditions"]["NM"]["rank1"] == pytest.approx(8 / 9)


def test_missing_sequences_are_tolerated_and_reported(protocol_file: str) -> None:
    emb = embeddings({("003", "nm", "090"): "001"})
    del emb[("002", "nm", "01", "180")]  # a gallery sequence is missing
    del emb[("001", "nm", "05", "180")]  # and a probe
    r = evaluate(emb, load_eval_protocol(protocol_file))["conditions"]["NM"]
    # pv 000: gallery 090 -> 1, gallery 180 (no 002) -> 2/3; pv 090: 000 -> 2/3, 180 -> 1/3;
    # pv 180: probes 002, 003 only, both right -> 1
    assert r["per_view"] == pytest.approx({"000": 5 / 6, "090": 1 / 2, "180": 1.0})
    assert r["rank1"] == pytest.approx((5 / 6 + 1 / 2 + 1) / 3)
    assert r["coverage"] == {"probe_sequences": 8, "expected_probe_sequences": 9}


def test_ou_mvlp_rule_for_probes_without_gallery(tmp_path: Path) -> None:
    p = tmp_path / "ou.yaml"
    p.write_text(
        "name: ou\ntrain: odd\ntest: '001-003'\nevaluation:\n  gallery: [nm-01]\n"
        "  probes: {NM: [nm-00]}\n  report_unmatched_removed: true\n"
    )
    emb = {}
    for s in SUBJECTS:
        for v in ("000", "090"):
            if s != "003":  # subject 003 has no gallery at all
                emb[(s, "nm", "01", v)] = onehot(SUBJECTS.index(s))
            emb[(s, "nm", "00", v)] = onehot(SUBJECTS.index(s))
    r = evaluate(emb, load_eval_protocol(str(p)))["conditions"]["NM"]
    assert r["rank1"] == pytest.approx(2 / 3)
    assert r["rank1_unmatched_removed"] == pytest.approx(1.0)


def test_shipped_protocols() -> None:
    cb = load_eval_protocol("casia-b-lt")
    assert cb.gallery == ["nm-01", "nm-02", "nm-03", "nm-04"]
    assert cb.probes == {
        "NM": ["nm-05", "nm-06"],
        "BG": ["bg-01", "bg-02"],
        "CL": ["cl-01", "cl-02"],
    }
    ou = load_eval_protocol("ou-mvlp")
    assert ou.gallery == ["nm-01"] and ou.report_unmatched_removed
    assert load_eval_protocol("casia-b-lt-multiview").gallery_views == "others"


def test_cross_view_gallery_variant(protocol_file: str, tmp_path: Path) -> None:
    text = (
        Path(protocol_file)
        .read_text()
        .replace("exclude_identical_views: true", "gallery_views: others")
    )
    p = tmp_path / "multi.yaml"
    p.write_text(text)
    emb = embeddings({("003", "nm", "090"): "001"})
    r = evaluate(emb, load_eval_protocol(str(p)))["conditions"]["NM"]
    assert r["cells"]["090"] == {"others": pytest.approx(2 / 3)}
    assert r["rank1"] == pytest.approx(8 / 9)


def test_ap_inp_and_cmc_by_hand() -> None:
    # One probe; gallery distances in order: A (match), B, A (match), C.
    gallery = torch.tensor([[[1.0]], [[2.0]], [[3.0]], [[4.0]]])
    probe = torch.tensor([[[0.0]]])
    r = retrieve(probe, np.array(["A"]), gallery, np.array(["A", "B", "A", "C"]))
    assert r.first.tolist() == [0]
    assert r.ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert r.inp[0] == pytest.approx(2 / 3)
    r = retrieve(probe, np.array(["C"]), gallery, np.array(["A", "B", "A", "C"]))
    assert r.cmc(4).tolist() == [0.0, 0.0, 0.0, 1.0]
    assert r.ap[0] == pytest.approx(1 / 4) and r.inp[0] == pytest.approx(1 / 4)


@pytest.mark.parametrize("metric", ["euclidean", "cosine-flat"])
def test_blocked_distances_equal_the_direct_matrix(metric: str) -> None:
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(37, 5, 8, generator=g), torch.randn(23, 5, 8, generator=g)
    if metric == "euclidean":
        direct = torch.cdist(p.transpose(0, 1), q.transpose(0, 1)).mean(0)
    else:
        direct = (
            1
            - torch.nn.functional.normalize(p.flatten(1), dim=1)
            @ torch.nn.functional.normalize(q.flatten(1), dim=1).T
        )
    blocks = list(distance_blocks(p, q, metric, max_memory=2000))
    assert len(blocks) > 1  # the cap forced several blocks
    got = torch.cat([d for _, d in blocks])
    torch.testing.assert_close(got, direct, atol=1e-4, rtol=1e-4)
