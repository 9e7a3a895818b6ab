"""`gait eval RUN --pack PACK --protocol gait3d|grew|grew-submission|ccpg|hid` (issue 24, items
2 to 5): a run's embeddings of an in-the-wild pack scored as `gait score` scores them.

Tiny trees in each dataset's layout (drawn silhouettes, as tests/test_prep_wild.py draws them) are
packed by `gait prep gait3d|grew|ccpg`; a tiny run trained for 4 iterations embeds them. Each
figure of `gait eval` must equal `gait score`'s on the inputs .npz of the same embeddings
(`--save-inputs`), and wild.py's called directly on them; GREW's distractors are ranked a block at
a time, equal to ranking the whole gallery at once; re-ranking changes the figures and refuses to
run past --max-memory; what cannot be scored is refused in one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from gaitprep.wild import DISTRACTOR
from gaittrain.data.dataset import pack_subjects
from gaittrain.data.splits import load_protocol, select, train_subjects
from gaittrain.evaluation import wild
from gaittrain.evaluation.embeddings_file import (
    EmbeddingStore,
    open_embeddings,
    write_embeddings_file,
)
from gaittrain.evaluation.rerank import RerankMemoryError
from gaittrain.evaluation.score import load_inputs
from tests.cli import assert_one_line_error, copy_run, gait
from tests.test_prep_wild import write_sequence

# --- tiny trees ----------------------------------------------------------------------------------

GAIT3D_TEST = [f"{i:04d}" for i in range(1, 7)]
GAIT3D_TRAIN = ["0007", "0009"]


def gait3d_tree(raw: Path) -> dict:
    """Gait3D's 2D_Silhouettes: 6 test subjects with 3 sequences from 2 or 3 cameras, 2 training
    subjects; and its partition file (one probe per test subject)."""
    seed = 0
    for s in GAIT3D_TEST + GAIT3D_TRAIN:
        for n, cam in enumerate(("camid0_videoid1", "camid3_videoid2", "camid3_videoid2")):
            write_sequence(raw / s / cam / f"seq{n}", seed)
            seed += 1
    return {
        "TRAIN_SET": GAIT3D_TRAIN,
        "TEST_SET": GAIT3D_TEST,
        "PROBE_SET": [f"{s}-camid0_videoid1-seq0" for s in GAIT3D_TEST],
    }


def grew_tree(raw: Path) -> None:
    """GREW as it unpacks: 2 training subjects, 10 test subjects with 2 gallery sequences each
    (20: a submission lists 20), 4 test probes and 6 distractors, 64 x 64 frames."""
    seed = 100
    for part, n_seq in (("train/00001", 2), ("train/00002", 2)):
        for q in range(n_seq):
            write_sequence(raw / part / f"t{q}", seed, size=(64, 64))
            seed += 1
    for s in range(1, 11):
        for q in ("a", "b"):
            write_sequence(raw / f"test/gallery/{s:05d}/{q}{s}", seed, size=(64, 64))
            seed += 1
    for q in range(4):
        write_sequence(raw / f"test/probe/p{q}", seed, size=(64, 64))
        seed += 1
    for q in range(6):
        write_sequence(raw / f"distractor/d{q}", seed, size=(64, 64))
        seed += 1


CCPG_TYPES = ("U0_D0_BG", "U0_D0", "U1_D1", "U2_D2", "U3_D3", "U0_D3", "U1_D0")


def ccpg_tree(raw: Path) -> None:
    """CCPG's silhouettes: 3 test subjects (100-102) and one training subject (000), every type
    of CCPG's four groups from cameras 01 and 02."""
    seed = 200
    for s in ("000", "100", "101", "102"):
        for t in CCPG_TYPES:
            for cam in ("01", "02"):
                write_sequence(raw / s / t / f"{cam}_1", seed)
                seed += 1


def prep(dataset: str, raw: Path, out: Path) -> Path:
    r = gait("prep", dataset, raw, out, "--workers", "1")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wild")
    partition = gait3d_tree(root / "Gait3D")
    (root / "Gait3D.json").write_text(json.dumps(partition))
    grew_tree(root / "GREW")
    ccpg_tree(root / "CCPG")
    return {
        "gait3d": prep("gait3d", root / "Gait3D", root / "gait3d.h5"),
        "grew": prep("grew", root / "GREW", root / "grew.h5"),
        "ccpg": prep("ccpg", root / "CCPG", root / "ccpg.h5"),
        "partition": root / "Gait3D.json",
    }


@pytest.fixture(scope="module")
def run(quick_run, tmp_path_factory) -> Path:
    """A copy of the 4-iteration tiny run (its embeddings files are written here)."""
    return copy_run(quick_run, tmp_path_factory.mktemp("wild-run") / "run")


def eval_ok(run: Path, pack: Path, protocol: str, out: Path, *extra) -> dict:
    r = gait("eval", run, "--pack", pack, "--protocol", protocol, "--out", out, *extra)
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


def score_ok(npz: Path, protocol: str, out: Path, *extra) -> dict:
    r = gait("score", npz, "--protocol", protocol, "--out", out, *extra)
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


def figures(report: dict) -> dict:
    """What the protocol computed, less what names the inputs."""
    left_out = ("inputs", "run", "checkpoint", "pack", "storage", "warnings")
    return {k: v for k, v in report.items() if k not in left_out}


# --- gait eval = gait score = wild.py ------------------------------------------------------------

CASES = {  # protocol: (pack, extra options)
    "gait3d": ("gait3d", ("--partition", "PARTITION")),
    "gait3d-cosine": ("gait3d", ("--partition", "PARTITION", "--metric", "cosine")),
    "grew": ("grew", ()),
    "grew-submission": ("grew", ()),
    "ccpg": ("ccpg", ()),
    "hid": ("grew", ()),
}


def direct(protocol: str, arrays: dict, partition: Path, metric: str) -> dict:
    """wild.py called on the arrays, as the report holds its result."""
    e, labels, types, views = (arrays[k] for k in ("embeddings", "labels", "types", "views"))
    if protocol == "gait3d":
        probes = json.loads(partition.read_text())["PROBE_SET"]
        return wild.gait3d(e, labels, types, views, probes, metric)
    if protocol == "grew":
        return wild.grew(e, labels, types, metric)
    if protocol == "ccpg":
        return wild.ccpg(e, labels, types, views, metric)
    if protocol == "grew-submission":
        rows = wild.grew_submission(e, labels, types, views, metric)
        return {"submission": [{"videoId": v, "subjects": s} for v, s in rows]}
    rows = wild.hid(e, labels, views, metric)
    return {"submission": [{"videoID": v, "label": s} for v, s in rows]}


@pytest.mark.parametrize("case", list(CASES))
def test_gait_eval_equals_gait_score_and_wild(case, run, packs, tmp_path: Path) -> None:
    protocol = case.split("-cosine")[0]
    pack, extra = CASES[case]
    extra = [str(packs["partition"]) if x == "PARTITION" else x for x in extra]
    npz = tmp_path / "inputs.npz"
    mine = eval_ok(run, packs[pack], protocol, tmp_path / "e.json", *extra, "--save-inputs", npz)
    theirs = score_ok(npz, protocol, tmp_path / "s.json", *extra)
    assert figures(mine) == figures(theirs)
    assert mine["pack"] == str(packs[pack]) and mine["storage"] == "float32"
    assert mine["inputs"]["sequences"] == theirs["inputs"]["sequences"]
    arrays = load_inputs(npz)
    metric = "cosine" if case.endswith("cosine") else "euclidean"
    assert direct(protocol, arrays, packs["partition"], metric).items() <= mine.items()
    # only the test subjects' sequences, and of GREW's unlabelled only the probes a protocol ranks
    labels = set(arrays["labels"].tolist())
    expected = {
        "gait3d": set(GAIT3D_TEST),
        "grew": {f"{s:05d}" for s in range(1, 11)},
        "ccpg": {"100", "101", "102"},
    }[pack]
    if protocol in ("grew-submission", "hid"):
        expected |= {"probe"}
    assert labels == expected


def test_the_embeddings_are_the_models_own(run, packs, tmp_path: Path) -> None:
    """The inputs .npz holds the embeddings file's float32 values, transposed to [n, c, p]."""
    npz = tmp_path / "inputs.npz"
    eval_ok(run, packs["ccpg"], "ccpg", tmp_path / "r.json", "--save-inputs", npz)
    f, keys, _ = open_embeddings(run / "embeddings-ccpg.h5")
    with f:
        stored = f["embeddings"][()]
    arrays = load_inputs(npz)
    np.testing.assert_array_equal(arrays["embeddings"], stored.transpose(0, 2, 1))
    assert [v.split("_")[0] for v in arrays["views"]] == [k[3] for k in keys]


def test_the_grew_submission_from_a_pack_with_probes_and_distractors(
    run, packs, tmp_path: Path
) -> None:
    csv, npz = tmp_path / "grew.csv", tmp_path / "inputs.npz"
    extra = ("--distractors", "--submission", csv)
    page = tmp_path / "r.html"
    r = gait(
        *("eval", run, "--pack", packs["grew"], "--protocol", "grew-submission", "--out", page),
        *(*extra, "--report", "html"),
    )
    assert r.exit_code == 0, r.output
    assert f"wrote {csv}" in r.output and "grew-submission (euclidean): 4 probe videos" in r.output
    lines = csv.read_text().splitlines()
    assert lines[0] == "videoId," + ",".join(f"rank{k}" for k in range(1, 21))
    assert sorted(line.split(",")[0] for line in lines[1:]) == ["p0", "p1", "p2", "p3"]
    ids = {int(x) for line in lines[1:] for x in line.split(",")[1:]}
    assert ids <= set(range(0, 11))  # subjects 1-10; a distractor is 0
    page = page.read_text()
    assert "6 distractors in the gallery" in page and str(packs["grew"]) in page
    # the same through gait score, from the same embeddings
    eval_ok(
        run, packs["grew"], "grew-submission", tmp_path / "r.json", *extra, "--save-inputs", npz
    )
    assert (load_inputs(npz)["types"] == DISTRACTOR).sum() == 6
    score_ok(npz, "grew-submission", tmp_path / "s.json", "--distractors", "--submission", csv)
    assert csv.read_text().splitlines() == lines
    # the distractors move GREW's labelled figures, never up
    plain = eval_ok(run, packs["grew"], "grew", tmp_path / "g.json")
    mixed = eval_ok(run, packs["grew"], "grew", tmp_path / "d.json", "--distractors")
    assert (plain["distractors"], mixed["distractors"]) == (0, 6)
    assert mixed["gallery"] == plain["gallery"] + 6
    assert all(mixed[f"rank{k}"] <= plain[f"rank{k}"] for k in (1, 5, 10, 20))


# --- re-ranking ----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["gait3d", "grew-submission", "ccpg", "hid"])
def test_rerank_changes_the_figures_and_equals_gait_score(
    protocol, run, packs, tmp_path: Path
) -> None:
    pack = {"gait3d": "gait3d", "ccpg": "ccpg"}.get(protocol, "grew")
    extra = ("--partition", packs["partition"]) if protocol == "gait3d" else ()
    npz = tmp_path / "inputs.npz"
    plain = eval_ok(run, packs[pack], protocol, tmp_path / "p.json", *extra)
    mine = eval_ok(
        run, packs[pack], protocol, tmp_path / "r.json", *extra, "--rerank", "--save-inputs", npz
    )
    assert mine["rerank"] == {"precision": "opengait", "k1": 6, "k2": 6, "lam": 0.3}
    if protocol != "hid":  # HID's 4 probes keep their nearest (test_score.py: OpenGait's change)
        assert figures(mine) != {**figures(plain), "rerank": mine["rerank"]}
    assert figures(mine) == figures(
        score_ok(npz, protocol, tmp_path / "s.json", *extra, "--rerank")
    )


def test_rerank_refuses_past_max_memory(run, packs, tmp_path: Path) -> None:
    r = gait(
        *("eval", run, "--pack", packs["ccpg"], "--protocol", "ccpg", "--rerank"),
        *("--max-memory", "1MB", "--out", tmp_path / "r.json"),
    )
    line = assert_one_line_error(r, "re-ranking", "probes x", "--max-memory")
    assert "more than the 1.0 MB of --max-memory" in line
    assert not (tmp_path / "r.json").exists()


def test_rerank_memory_is_checked_before_anything_large() -> None:
    emb = np.random.default_rng(0).normal(size=(40, 8, 2))
    labels = np.repeat(np.arange(20).astype(str), 2)
    types = np.array(["01", "02"] * 20)
    need, dist = wild.rerank_bytes(40, 20, 16, wild.Rerank())
    assert dist == 4 * 40 * 40 and need > dist
    with pytest.raises(RerankMemoryError, match="needs about"):
        wild.grew(emb, labels, types, rerank=wild.Rerank(), max_memory=need - 1)
    wild.grew(emb, labels, types, rerank=wild.Rerank(), max_memory=need)
    f64 = wild.Rerank("float64")
    assert wild.rerank_bytes(40, 20, 16, f64)[1] == 8 * 40 * 40


# --- GREW's distractors, a block at a time --------------------------------------------------------


def _grew_arrays(rng, integer: bool) -> dict:
    """12 test subjects (01, 02), 9 probes (03), 40 distractors; integer-valued embeddings make
    exact ties (every product and sum is exact in float64)."""
    n_sub = 12
    labels = [f"{s:05d}" for s in range(1, n_sub + 1) for _ in (1, 2)]
    types = ["01", "02"] * n_sub
    labels += ["probe"] * 9 + [DISTRACTOR] * 40
    types += ["03"] * 9 + [DISTRACTOR] * 40
    shape = (len(labels), 6, 3)
    e = rng.integers(0, 3, shape).astype(float) if integer else rng.normal(size=shape)
    views = [f"v{i}" for i in range(len(labels))]
    return {"embeddings": e, "labels": np.array(labels), "types": np.array(types), "views": views}


def _reference_rows(a: dict) -> list:
    """GREW's submission with distractors from the whole probe x gallery matrix, a stable sort."""
    gallery = np.isin(a["types"], ("01", "02", DISTRACTOR))
    probes = a["types"] == "03"
    d = wild.distances(a["embeddings"][probes], a["embeddings"][gallery])
    labels, types = a["labels"][gallery], a["types"][gallery]
    ids = np.array([0 if t == DISTRACTOR else int(s) for s, t in zip(labels, types, strict=True)])
    order = np.argsort(d, axis=1, kind="stable")[:, :20]
    views = np.array(a["views"])[probes]
    return [(v, ids[row].tolist()) for v, row in zip(views, order, strict=True)]


@pytest.mark.parametrize("integer", [False, True], ids=["continuous", "ties"])
def test_streamed_distractors_equal_the_whole_gallery_at_once(integer, tmp_path: Path) -> None:
    a = _grew_arrays(np.random.default_rng(3), integer)
    args = (a["embeddings"], a["labels"], a["types"], a["views"])
    whole = wild.grew_submission(*args, distractors=True)
    assert whole == _reference_rows(a)
    # blocks of one probe and one gallery sequence
    assert wild.grew_submission(*args, distractors=True, max_memory=1000) == whole
    # gait's layout, read from an embeddings file a few rows at a time
    keys = [(s, t, v, "000") for s, t, v in zip(a["labels"], a["types"], a["views"], strict=True)]
    gait_layout = a["embeddings"].transpose(0, 2, 1).astype(np.float32)
    attrs = {"storage": "float32"}
    write_embeddings_file(tmp_path / "e.h5", keys, (3, 6), [gait_layout], attrs)
    f, stored_keys, _ = open_embeddings(tmp_path / "e.h5")
    with EmbeddingStore.from_file(f, stored_keys) as store:
        rows = wild.Embeddings.from_gait(store)
        assert wild.grew_submission(rows, *args[1:], distractors=True, max_memory=5000) == whole
    # the labelled split: Rank-k from the running 20 nearest equals ranking everything at once
    probes = a["types"] == "02"
    gallery = np.isin(a["types"], ("01", DISTRACTOR))
    d = wild.distances(a["embeddings"][probes], a["embeddings"][gallery])
    order = np.argsort(d, axis=1, kind="stable")
    hit = a["labels"][gallery][order] == a["labels"][probes][:, None]
    first = hit.argmax(axis=1)
    small = wild.grew(*args[:3], distractors=True, max_memory=1000)
    for k in (1, 5, 10, 20):
        assert small[f"rank{k}"] == pytest.approx(100 * np.mean(first < k), abs=1e-12)
    assert small == wild.grew(*args[:3], distractors=True)


# --- one-line errors -----------------------------------------------------------------------------


def test_a_pack_of_another_dataset_is_one_line(run, packs, sample_pack, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = gait("eval", run, "--pack", sample_pack, "--protocol", "gait3d", "--out", out)
    assert_one_line_error(r, "is a casia-b pack", "gait prep gait3d")
    r = gait("eval", run, "--pack", packs["ccpg"], "--protocol", "grew", "--out", out)
    assert_one_line_error(r, "is a ccpg pack", "gait prep grew")
    bare = tmp_path / "bare.h5"
    shutil.copy(packs["gait3d"], bare)
    with h5py.File(bare, "a") as f:
        del f.attrs["dataset"]
    extra = ("--partition", packs["partition"], "--out", out)
    r = gait("eval", run, "--pack", bare, "--protocol", "gait3d", *extra)
    assert_one_line_error(r, "records no dataset", "gait prep gait3d")
    assert not out.exists()


def test_bad_options_are_one_line(run, packs, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = gait("eval", run, "--pack", packs["gait3d"], "--protocol", "gait3d", "--out", out)
    assert_one_line_error(r, "--partition")
    r = gait(
        *("eval", run, "--pack", packs["gait3d"], "--protocol", "gait3d"),
        *("--partition", tmp_path / "none.json", "--out", out),
    )
    assert_one_line_error(r, "none.json not found")
    for extra, needle in (
        (("--distractors",), "--distractors is GREW's"),
        (("--report", "csv"), "unknown report format 'csv'"),
        (("--metric", "cosine-flat"), "unknown metric 'cosine-flat'"),
        (("--include-identical",), "--include-identical and --precision are CASIA-B's"),
        (("--submission", tmp_path / "s.csv"), "ccpg makes no submission"),
        (("--out", "-"), "--out - writes CASIA-B's"),
    ):
        r = gait("eval", run, "--pack", packs["ccpg"], "--protocol", "ccpg", "--out", out, *extra)
        assert_one_line_error(r, needle)
    r = gait("eval", run, "--pack", packs["ccpg"], "--protocol", "grew", "--distractors")
    assert_one_line_error(r, "is a ccpg pack")
    r = gait("eval", run, "--pack", packs["grew"], "--protocol", "ccpg", "--rerank", "--out", out)
    assert_one_line_error(r, "is a grew pack")
    assert not out.exists()


def test_wild_options_with_casia_protocols_are_refused(run, sample_pack, tmp_path: Path) -> None:
    r = gait("eval", run, "--pack", sample_pack, "--rerank", "--out", tmp_path / "r.json")
    assert r.exit_code == 2 and "are for the in-the-wild protocols" in r.output


# --- the training splits -------------------------------------------------------------------------


def test_shipped_and_imported_splits_select_the_datasets_subjects(packs, tmp_path: Path) -> None:
    grew = pack_subjects([packs["grew"]])
    assert train_subjects(grew, "grew") == ["00001train", "00002train"]
    assert select(grew, load_protocol("grew")["test"]) == [f"{s:05d}" for s in range(1, 11)]
    ccpg = pack_subjects([packs["ccpg"]])
    assert train_subjects(ccpg, "ccpg") == ["000"]
    assert select(ccpg, load_protocol("ccpg")["test"]) == ["100", "101", "102"]
    out = tmp_path / "gait3d.yaml"
    r = gait("import-partition", packs["partition"], out)
    assert r.exit_code == 0, r.output
    gait3d = pack_subjects([packs["gait3d"]])
    assert train_subjects(gait3d, str(out)) == GAIT3D_TRAIN
    assert select(gait3d, load_protocol(str(out))["test"]) == GAIT3D_TEST
    assert load_protocol(str(out))["test"] == "0001-0006"
    r = gait("import-partition", packs["partition"], tmp_path / "gait3d.txt")
    assert_one_line_error(r, "ends in .yaml")
    (tmp_path / "bad.json").write_text('{"TRAIN_SET": "0001"}')
    r = gait("import-partition", tmp_path / "bad.json", out)
    assert_one_line_error(r, "cannot read TRAIN_SET and TEST_SET")
