"""Numbers you can trust (issue 8): the field's cosine, failed probes from the table's own
retrievals, and the ``casia-b`` protocol name.

Hand-built embeddings with hand-computed answers, and `gait eval` on a tiny real run checked
against slow references written here from the definitions.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from gaitprep.layout import CASIA_B
from gaitprep.prep import PrepJob, run_prep
from gaittrain.evaluation.embeddings_file import read_embeddings
from gaittrain.evaluation.metrics import distance_blocks
from gaittrain.evaluation.protocol import evaluate, load_eval_protocol
from tests.cli import gait, train_tiny

ROOT = Path(__file__).resolve().parents[1]


# --- slow references, written from the definitions -------------------------------------------


def ref_distance(p: np.ndarray, g: np.ndarray, metric: str) -> float:
    """The cosine distance of one probe [parts, dim] to one gallery sequence, in float64."""
    p, g = p.astype(np.float64), g.astype(np.float64)
    if metric == "cosine":  # OpenGait's: 1 - mean over parts of cos(p_k, g_k)
        cos = [
            pk @ gk / (np.linalg.norm(pk) * np.linalg.norm(gk)) for pk, gk in zip(p, g, strict=True)
        ]
        return 1.0 - float(np.mean(cos))
    assert metric == "cosine-flat"
    a, b = p.ravel(), g.ravel()
    return 1.0 - float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_matrix(p: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    return np.array([[ref_distance(x, y, metric) for y in g] for x in p])


def ref_protocol(emb: dict, protocol, test: set, metric: str, include_identical: bool):
    """The standard (one gallery view at a time) protocol by brute force: per group, the cells'
    rank-1 and the failure rows (the first six missed probes in key order, each in its first
    missing cell, with the nearest gallery sequence and the nearest of the probe's subject)."""
    keys = [k for k in emb if k[0] in test]
    views = sorted({k[3] for k in keys}, key=int)
    gallery = [k for k in keys if f"{k[1]}-{k[2]}" in protocol.gallery]
    cells, fails = {}, {}
    for group, recordings in protocol.probes.items():
        probes = sorted(k for k in keys if f"{k[1]}-{k[2]}" in recordings)
        cells[group], missed = {}, {}
        for pv in views:
            for gv in views:
                if gv == pv and not include_identical:
                    continue
                g = [k for k in gallery if k[3] == gv]
                hits = []
                for p in (k for k in probes if k[3] == pv):
                    d = [ref_distance(emb[p], emb[x], metric) for x in g]
                    nearest = g[int(np.argmin(d))]
                    hits.append(nearest[0] == p[0])
                    if nearest[0] != p[0] and p not in missed:
                        own = [(dist, x) for dist, x in zip(d, g, strict=True) if x[0] == p[0]]
                        right = min(own)[1] if own else None
                        missed[p] = (group, p, f"{pv} / {gv}", nearest, right)
                cells[group].setdefault(pv, {})[gv] = float(np.mean(hits))
        fails[group] = [missed[p] for p in sorted(missed)[:6]]
    return cells, fails


# --- hand-built embeddings --------------------------------------------------------------------


def vec(*terms: tuple[int, float], dim: int = 6, parts: int = 2) -> np.ndarray:
    """Every part equal to sum of amplitude * e_index."""
    v = np.zeros((parts, dim), np.float32)
    for i, a in terms:
        v[:, i] += a
    return v


def toy_protocol(tmp_path: Path, test: str = "001-004", extra: str = "") -> str:
    p = tmp_path / "toy.yaml"
    p.write_text(
        f"name: toy\ntrain: '900'\ntest: '{test}'\nevaluation:\n"
        f"  gallery: [nm-01]\n  probes: {{NM: [nm-05], CL: [cl-01]}}\n{extra}"
    )
    return str(p)


def corners(subjects, views, targets=None) -> dict:
    """Gallery nm-01 of every subject and view at its subject's corner (10 e_i); probes nm-05 and
    cl-01 at the corner of the subject ``targets`` names for them (their own by default)."""
    targets = targets or {}
    out = {}
    for i, s in enumerate(subjects):
        for v in views:
            out[(s, "nm", "01", v)] = vec((i, 10.0))
            for cond, seq in (("nm", "05"), ("cl", "01")):
                out[(s, cond, seq, v)] = vec((subjects.index(targets.get((s, cond, v), s)), 10.0))
    return out


def assert_failures_agree_with_table(result: dict, test: set[str]) -> None:
    """Every failure is a test subject's probe that the table counts as a miss in its cell, its
    matches come from that cell's gallery, and a group at 100 % lists none."""
    exclude = result["exclude_identical_views"]
    for f in result["failures"]:
        c = result["conditions"][f["group"]]
        assert f["probe"][0] in test and f["probe"][3] == f["probe_view"]
        assert c["cells"][f["probe_view"]][f["gallery_view"]] < 1.0
        assert f["wrong"][0] != f["probe"][0] and f["wrong"][0] in test
        assert f["right"] is None or f["right"][0] == f["probe"][0]
        if f["gallery_view"] != "others":
            assert f["wrong"][3] == f["gallery_view"]
            assert f["right"] is None or f["right"][3] == f["gallery_view"]
        if exclude:
            assert f["wrong"][3] != f["probe_view"] and f["gallery_view"] != f["probe_view"]
    for name, c in result["conditions"].items():
        if c["rank1"] == 1.0:
            assert not [f for f in result["failures"] if f["group"] == name]
    assert json.loads(json.dumps(result["failures"])) == result["failures"]  # JSON-able


def failure(group, probe, cell, wrong, right) -> dict:
    pv, gv = cell.split("/")
    return {
        "group": group,
        "probe": probe.split("-"),
        "probe_view": pv,
        "gallery_view": gv,
        "wrong": wrong.split("-"),
        "right": right.split("-") if right else None,
    }


# --- item 9: the field's cosine -----------------------------------------------------------------


def test_cosine_is_the_mean_of_per_part_cosine_distances() -> None:
    rng = np.random.default_rng(3)
    scale = rng.uniform(0.1, 10.0, size=(20, 4, 1))  # part norms differ widely
    x = (rng.standard_normal((20, 4, 3)) * scale).astype(np.float32)
    p, g = x[:13], x[13:]
    blocks = list(distance_blocks(torch.from_numpy(p), torch.from_numpy(g), "cosine", 700))
    assert len(blocks) > 1  # the memory cap forced several blocks
    assert [s for s, _ in blocks] == sorted(s for s, _ in blocks)
    got = torch.cat([d for _, d in blocks]).double().numpy()
    want = ref_matrix(p, g, "cosine")
    assert np.abs(got - want).max() < 1e-6
    assert np.abs(want - ref_matrix(p, g, "cosine-flat")).max() > 0.05  # a different definition


def test_cosine_flat_is_one_cosine_of_the_flattened_embeddings() -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((20, 4, 3)) * rng.uniform(0.1, 10.0, (20, 4, 1))).astype(np.float32)
    p, g = x[:13], x[13:]
    blocks = list(distance_blocks(torch.from_numpy(p), torch.from_numpy(g), "cosine-flat", 700))
    assert len(blocks) > 1
    got = torch.cat([d for _, d in blocks]).double().numpy()
    assert np.abs(got - ref_matrix(p, g, "cosine-flat")).max() < 1e-6


# Probe P, gallery A (P's subject) and B, two parts of two dimensions. Per part, A agrees with P
# on the small second part and nearly on the big first one; B agrees exactly on the big part only.
P = np.array([[10.0, 0.0], [0.0, 1.0]], np.float32)
A = np.array([[10.0, 5.0], [0.0, 1.0]], np.float32)
B = np.array([[10.0, 0.0], [1.0, 0.0]], np.float32)


def test_cosine_and_cosine_flat_rank_the_gallery_differently() -> None:
    probe, gallery = torch.from_numpy(P[None]), torch.from_numpy(np.stack([A, B]))
    ((_, cos),) = distance_blocks(probe, gallery, "cosine")
    # cosine: 1 - (cos(part 1) + cos(part 2)) / 2 = 1 - (10/sqrt(125) + 1) / 2 for A, 1 - 1/2 for B
    assert cos[0].tolist() == pytest.approx([1 - (10 / np.sqrt(125) + 1) / 2, 0.5], abs=1e-6)
    ((_, flat),) = distance_blocks(probe, gallery, "cosine-flat")
    # flat: 1 - (100 + 1) / sqrt(101 * 126) for A, 1 - 100 / 101 for B
    assert flat[0].tolist() == pytest.approx(
        [1 - 101 / np.sqrt(101 * 126), 1 - 100 / 101], abs=1e-6
    )
    assert cos[0, 0] < cos[0, 1] and flat[0, 1] < flat[0, 0]  # A first, then B first


def test_evaluate_rank1_differs_between_cosine_and_cosine_flat(tmp_path: Path) -> None:
    # Subject 001 walks like A (probe P), 002 like B (probe B itself) in both views.
    emb = {}
    for v in ("000", "090"):
        emb.update({("001", "nm", "01", v): A, ("002", "nm", "01", v): B})
        emb.update({("001", "nm", "05", v): P, ("002", "nm", "05", v): B})
        emb.update({("001", "cl", "01", v): A, ("002", "cl", "01", v): B})
    proto = load_eval_protocol(toy_protocol(tmp_path, test="001-002"))
    cos = evaluate(emb, proto, metric="cosine")
    assert cos["conditions"]["NM"]["rank1"] == pytest.approx(1.0)
    flat = evaluate(emb, proto, metric="cosine-flat")
    assert flat["conditions"]["NM"]["rank1"] == pytest.approx(0.5)  # P goes to B's subject
    assert cos["metric"] == "cosine" and cos["failures"] == []
    assert flat["failures"] == [
        failure("NM", "001-nm-05-000", "000/090", "002-nm-01-090", "001-nm-01-090"),
        failure("NM", "001-nm-05-090", "090/000", "002-nm-01-000", "001-nm-01-000"),
    ]


# --- item 7: failed probes are the table's misses ---------------------------------------------


SUBJECTS = ["001", "002", "003", "004"]
VIEWS = ["000", "090", "180"]


def test_failures_obey_include_identical(tmp_path: Path) -> None:
    # Probe 002-nm-05-090 carries a marker (e_5, amplitude 20) that gallery 003-nm-01-090 shares
    # (amplitude 10): against gallery view 090 it lies sqrt(200 + 100) from 003 and 20 from its
    # own subject, a miss; against any other view it lies 20 from its own, sqrt(600) from others.
    emb = corners(SUBJECTS, VIEWS)
    emb[("002", "nm", "05", "090")] = vec((1, 10.0), (5, 20.0))
    emb[("003", "nm", "01", "090")] = vec((2, 10.0), (5, 10.0))
    proto = load_eval_protocol(toy_protocol(tmp_path))
    excluded = evaluate(emb, proto)
    assert excluded["conditions"]["NM"]["rank1"] == 1.0 and excluded["failures"] == []
    included = evaluate(emb, proto, include_identical=True)
    assert included["conditions"]["NM"]["cells"]["090"]["090"] == pytest.approx(3 / 4)
    assert included["failures"] == [
        failure("NM", "002-nm-05-090", "090/090", "003-nm-01-090", "002-nm-01-090")
    ]
    assert_failures_agree_with_table(included, set(SUBJECTS))


def test_failures_obey_the_cross_view_gallery_and_the_protocols_test_subjects() -> None:
    # casia-b-lt-multiview tests 075-124; 001 is a training subject whose probe fails and whose
    # gallery would steal 075's CL probe (5 from 001's corner, sqrt(125) from its own).
    subjects = ["001", "075", "076", "077"]
    emb = corners(subjects, VIEWS, {("076", "nm", "090"): "077", ("001", "nm", "000"): "075"})
    emb[("075", "cl", "01", "180")] = vec((0, 10.0), (1, 5.0))
    result = evaluate(emb, load_eval_protocol("casia-b-lt-multiview"))
    nm, cl = result["conditions"]["NM"], result["conditions"]["CL"]
    assert nm["cells"]["090"] == {"others": pytest.approx(2 / 3)}
    assert cl["rank1"] == 1.0 and result["test_subjects"] == 3
    # The gallery of probe view 090 is views 000 and 180 at once; 077's two are equally near, and
    # ties go to gallery order (000 first).
    assert result["failures"] == [
        failure("NM", "076-nm-05-090", "090/others", "077-nm-01-000", "076-nm-01-000")
    ]
    assert_failures_agree_with_table(result, {"075", "076", "077"})


def test_failures_are_the_given_test_subjects_probes_only(tmp_path: Path) -> None:
    wrong = {("001", "nm", "000"): "002", ("004", "cl", "090"): "003", ("003", "nm", "180"): "002"}
    emb = corners(SUBJECTS, VIEWS, wrong)
    result = evaluate(emb, load_eval_protocol(toy_protocol(tmp_path)), test_subjects=["002", "003"])
    assert result["conditions"]["NM"]["per_view"]["180"] == pytest.approx(1 / 2)
    assert result["conditions"]["CL"]["rank1"] == 1.0
    assert result["failures"] == [
        failure("NM", "003-nm-05-180", "180/000", "002-nm-01-000", "003-nm-01-000"),
    ]
    assert_failures_agree_with_table(result, {"002", "003"})


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_failures_follow_the_metric(tmp_path: Path, metric: str) -> None:
    # Gallery: 001 at (10, 0), 002 at (3, 3). Probe 001 = (2, 0.5) points like 001 but lies
    # nearer 002 (2.69 against 8.02); probe 002 = (4, 1.5) lies nearer 002 (1.80 against 6.18)
    # but points like 001 (cosines 0.936 against 0.910).
    emb = {}
    for v in ("000", "090"):
        g1, g2 = vec((0, 10.0), dim=2), vec((0, 3.0), (1, 3.0), dim=2)
        emb.update({("001", "nm", "01", v): g1, ("002", "nm", "01", v): g2})
        emb.update({("001", "cl", "01", v): g1, ("002", "cl", "01", v): g2})
        emb[("001", "nm", "05", v)] = vec((0, 2.0), (1, 0.5), dim=2)
        emb[("002", "nm", "05", v)] = vec((0, 4.0), (1, 1.5), dim=2)
    result = evaluate(
        emb, load_eval_protocol(toy_protocol(tmp_path, test="001-002")), metric=metric
    )
    missed, other = ("001", "002") if metric == "euclidean" else ("002", "001")
    assert result["conditions"]["NM"]["rank1"] == pytest.approx(0.5)
    assert result["conditions"]["CL"]["rank1"] == 1.0
    assert result["failures"] == [
        failure(
            "NM", f"{missed}-nm-05-000", "000/090", f"{other}-nm-01-090", f"{missed}-nm-01-090"
        ),
        failure(
            "NM", f"{missed}-nm-05-090", "090/000", f"{other}-nm-01-000", f"{missed}-nm-01-000"
        ),
    ]
    assert_failures_agree_with_table(result, {"001", "002"})


def test_failures_are_the_first_probes_in_key_order_each_in_its_first_cell(tmp_path: Path) -> None:
    # Every probe points at the next subject, so every probe misses in every cell; the
    # embeddings are given in reverse key order.
    subjects = ["001", "002", "003"]
    wrong = {
        (s, c, v): subjects[(i + 1) % 3]
        for i, s in enumerate(subjects)
        for c in ("nm", "cl")
        for v in VIEWS
    }
    emb = dict(reversed(corners(subjects, VIEWS, wrong).items()))
    result = evaluate(
        emb, load_eval_protocol(toy_protocol(tmp_path, test="001-003")), failures_per_group=2
    )
    assert [(f["group"], "-".join(f["probe"]), f["gallery_view"]) for f in result["failures"]] == [
        ("NM", "001-nm-05-000", "090"),  # gallery views in order, the identical one left out
        ("NM", "001-nm-05-090", "000"),
        ("CL", "001-cl-01-000", "090"),
        ("CL", "001-cl-01-090", "000"),
    ]
    assert result["failures"][0]["wrong"] == ["002", "nm", "01", "090"]
    assert_failures_agree_with_table(result, set(subjects))


# --- protocol alias ----------------------------------------------------------------------------


def test_casia_b_names_the_standard_protocol() -> None:
    assert load_eval_protocol("casia-b") == load_eval_protocol("casia-b-lt")


# --- gait eval on a tiny real run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A 4-iteration run on subjects 001-003 of the sample pack, and the embeddings of the test
    subjects 004-006 from `gait embed`."""
    base = tmp_path_factory.mktemp("trust")
    pack = base / "sample.h5"
    run_prep(
        PrepJob(raw=ROOT / "sample_data" / "casia-b", out=pack, dataset="casia-b", layout=CASIA_B),
        workers=1,
    )
    run = base / "run"
    r = train_tiny(pack, run, "--iterations", "4", "--train-subjects", "001-003",
                   "--set", "data.batch.p=3")  # fmt: skip
    assert r.exit_code == 0, r.output
    out = base / "emb.h5"
    assert gait("embed", run, pack, "--out", out, "--subjects", "004-006").exit_code == 0
    return run, pack, read_embeddings(out)[0]


def eval_json(run: Path, pack: Path, out: Path, *args) -> dict:
    r = gait("eval", run, "--pack", pack, "--test-subjects", "004-006", "--out", out, *args)
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


def flat_cells(cells: dict) -> dict:
    return {(pv, gv): x for pv, row in cells.items() for gv, x in row.items()}


@pytest.mark.parametrize("metric", ["cosine", "cosine-flat"])
def test_gait_eval_metric_matches_the_reference(trained, tmp_path: Path, metric: str) -> None:
    run, pack, emb = trained
    data = eval_json(run, pack, tmp_path / "r.json", "--metric", metric)
    cells, _ = ref_protocol(
        emb, load_eval_protocol("casia-b-lt"), {"004", "005", "006"}, metric, False
    )
    assert data["metric"] == metric
    for group, c in data["conditions"].items():
        assert flat_cells(c["cells"]) == pytest.approx(flat_cells(cells[group]))


class FailTable(HTMLParser):
    """The rows of the page's failed-probe table as {header: text}."""

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.header, self.rows, self.cell = 0, [], [], None

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "table" and "fail" in (dict(attrs).get("class") or ""):
            self.depth = 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = ""

    def handle_data(self, data) -> None:
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag) -> None:
        if self.depth and tag in ("td", "th"):
            self.rows[-1].append(self.cell.strip())
            self.cell = None
        elif tag == "table":
            self.depth = 0

    def table(self) -> list[dict]:
        if not self.rows:
            return []
        header, *body = self.rows
        return [dict(zip(header, r, strict=True)) for r in body]


@pytest.mark.slow
def test_html_report_shows_the_failures_of_the_table(trained, tmp_path: Path) -> None:
    run, pack, emb = trained
    flags = ("--test-subjects", "004-006", "--include-identical", "--metric", "cosine")
    page = tmp_path / "report.html"
    r = gait("eval", run, "--pack", pack, *flags, "--report", "html", "--out", page)
    assert r.exit_code == 0, r.output
    parser = FailTable()
    parser.feed(page.read_text())
    rows = parser.table()
    test = {"004", "005", "006"}
    _, fails = ref_protocol(emb, load_eval_protocol("casia-b-lt"), test, "cosine", True)
    want = [f for group in ("NM", "BG", "CL") for f in fails[group]]
    assert want  # a 4-iteration model misses plenty
    shown = [
        (x["group"], x["probe"], x["matched (wrong)"], x["nearest of the right subject"])
        for x in rows
    ]
    assert shown == [(g, "-".join(p), "-".join(w), "-".join(r)) for g, p, _, w, r in want]
    assert [x["cell"] for x in rows] == [cell for _, _, cell, _, _ in want]
    assert page.read_text().count('alt="probe" src="data:image/png;base64,') == len(want)


def test_gait_eval_accepts_protocol_casia_b(trained, tmp_path: Path) -> None:
    run, pack, _ = trained
    alias = eval_json(run, pack, tmp_path / "a.json", "--protocol", "casia-b")
    standard = eval_json(run, pack, tmp_path / "s.json", "--protocol", "casia-b-lt")
    assert alias["protocol"] == "casia-b-lt"
    assert alias["conditions"] == standard["conditions"]
