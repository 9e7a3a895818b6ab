"""`gait prep opengait`: OpenGait's pickles into a pack, safely (issue 12, item 1).

The proof is OpenGait's own pretreatment output (../shared/fixtures/opengait): the pack holds its
arrays exactly. The rest builds small pickle trees here: unsafe pickles are refused before any of
them runs, bad arrays and damaged files are named in the manifest, a run resumes.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from gaitprep import prep
from gaitprep.layout import CASIA_B, OU_MVLP, discover
from gaitprep.opengait import IMPORTED_FROM, PickleRefused, load_array, opengait_params
from gaitprep.pack import Pack, key_string
from gaitprep.prep import PrepInterrupted, PrepJob, run_prep
from tests.cli import SAMPLE, assert_one_line_error, gait

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "opengait"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"the OpenGait fixtures are not at {FIXTURES}"
)
PKL = FIXTURES / "pkl"


def contents(path: Path) -> list[tuple]:
    with Pack(path) as p:
        return [(k, p[i].tobytes(), p.frame_source(i).tobytes()) for i, k in enumerate(p.keys())]


def manifest(pack: Path) -> dict:
    return json.loads(pack.with_name(pack.name + ".manifest.json").read_text())


def walker(n: int = 5, size: int = 64, seed: int = 0) -> np.ndarray:
    """``n`` uint8 silhouette-like frames [n, size, size]."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        c = size // 2 + int(rng.integers(-3, 4))
        frames[i, size // 8 : -size // 8, c - size // 8 : c + size // 8] = 255
    return frames


def write(root: Path, rel: str, obj=None, raw: bytes | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj) if raw is None else raw)
    return path


# --- the fixture: OpenGait's own pretreatment output --------------------------------------------


@pytest.fixture(scope="module")
def fixture_pack(tmp_path_factory) -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"the OpenGait fixtures are not at {FIXTURES}")
    out = tmp_path_factory.mktemp("opengait") / "og.h5"
    r = gait("prep", "opengait", PKL, out, "--workers", "2")
    assert r.exit_code == 0, r.output
    return out


@needs_fixtures
def test_pack_holds_opengaits_arrays_exactly(fixture_pack: Path) -> None:
    inputs = np.load(FIXTURES / "inputs.npz")
    with Pack(fixture_pack) as pack:
        assert sorted(map(key_string, pack.keys())) == sorted(inputs.files)
        for key in inputs.files:
            want, got = inputs[key], pack[key]
            assert got.dtype == want.dtype == np.uint8
            assert got.shape == want.shape
            assert np.array_equal(got, want), key
            i = pack.index(key)
            assert np.array_equal(pack.frame_source(i), np.arange(len(want)))
            subject, condition, seq, view = key.split("-")
            assert pack.meta(i)["source"] == f"{subject}/{condition}-{seq}/{view}"
        a = pack.attrs
        assert a["imported_from"] == IMPORTED_FROM == "opengait-pickle"
        assert (a["dataset"], a["size"], a["min_sum"], a["binarize"], a["largest_blob"]) == (
            "opengait",
            64,
            10000,
            False,
            False,
        )
    m = manifest(fixture_pack)
    assert m["unreadable"] == [] and m["sequences"]["written"] == 6
    assert m["frames"]["read"] == m["frames"]["kept"] == sum(len(inputs[k]) for k in inputs)


@needs_fixtures
def test_keys_are_those_prep_casia_b_gives(fixture_pack: Path) -> None:
    images = {s.key: s.folder for s in discover(SAMPLE, CASIA_B)}
    with Pack(fixture_pack) as pack:
        for i, key in enumerate(pack.keys()):
            assert images[key] == pack.meta(i)["source"]


@needs_fixtures
def test_a_pack_from_pickles_works_for_evaluation(fixture_pack: Path) -> None:
    """`gait eval`/`identify` read the pack's normalization and embed its frames."""
    import torch

    from gaittrain.data.dataset import PackDataset
    from gaittrain.evaluation.embed import embed_dataset
    from gaittrain.models import SetModel
    from gaittrain.trained_model import pack_normalization, params_from

    data = PackDataset([fixture_pack], frames=None, height=32, cut=True)
    try:
        norm = pack_normalization(data.packs[0])
        assert params_from(norm) == opengait_params(64)
        torch.manual_seed(0)
        model = SetModel([16, 32, 64], [8, 4, 2, 1], 64).eval()
        emb = embed_dataset(model, data, torch.device("cpu"))
    finally:
        data.close()
    assert emb.shape == (6, 15, 64) and np.isfinite(emb).all()


@needs_fixtures
def test_interrupted_run_resumes_to_the_same_pack(fixture_pack, tmp_path, monkeypatch) -> None:
    raw = tmp_path / "pkl"
    shutil.copytree(PKL, raw)
    out = tmp_path / "r.h5"
    job = PrepJob(
        raw=raw,
        out=out,
        dataset="opengait",
        layout="{subject}/{condition}-{seq}/{view}/*.pkl",
        params=opengait_params(64),
        reader="opengait",
    )
    real, calls = prep.read_pickle_sequence, {"n": 0}

    def counted(*args):
        calls["n"] += 1
        if calls.get("stop") == calls["n"]:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(prep, "read_pickle_sequence", counted)
    calls["stop"] = 3
    with pytest.raises(PrepInterrupted, match="after 2 of 6 sequences"):
        run_prep(job, workers=1)
    assert not out.exists() and out.with_name("r.h5.partial.json").exists()
    calls.update(n=0, stop=None)
    m = run_prep(job, workers=1)
    assert calls["n"] == 4  # the two finished sequences are not read again
    assert m["resumed"]
    assert contents(out) == contents(fixture_pack)
    assert not out.with_name("r.h5.partial.json").exists()
    with Pack(out) as a, Pack(fixture_pack) as b:
        assert a.fingerprint == b.fingerprint  # same attributes (less time), same sequences


@needs_fixtures
def test_existing_pack_needs_overwrite(fixture_pack: Path) -> None:
    r = gait("prep", "opengait", PKL, fixture_pack)
    assert_one_line_error(r, str(fixture_pack), "--overwrite")


# --- safety --------------------------------------------------------------------------------------


class Touch:
    """Pickled, it asks the unpickler to call os.system, which would create ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


class Mine:
    """A class of this module: an unpickler would import it and build it."""

    def __reduce__(self):
        return (Mine, ())


def test_unsafe_pickles_are_refused_and_never_run(tmp_path: Path) -> None:
    raw, sentinel = tmp_path / "pkl", tmp_path / "it-ran"
    write(raw, "001/nm-01/090/090.pkl", walker())
    evil = write(raw, "001/nm-02/090/090.pkl", Touch(sentinel))
    write(raw, "001/nm-03/090/090.pkl", Mine())
    out = tmp_path / "o.h5"
    r = gait("prep", "opengait", raw, out, "--workers", "1")
    assert r.exit_code == 0, r.output
    assert not sentinel.exists()  # nothing of the pickle ran
    system = os.system.__module__ + ".system"  # posix.system
    reasons = {u["file"]: u["reason"] for u in manifest(out)["unreadable"]}
    assert set(reasons) == {"001/nm-02/090/090.pkl", "001/nm-03/090/090.pkl"}
    assert f"asks for {system}" in reasons["001/nm-02/090/090.pkl"]
    assert f"asks for {__name__}.Mine" in reasons["001/nm-03/090/090.pkl"]
    assert all("nothing of it was run" in v for v in reasons.values())
    assert f"not written: 001/nm-02/090/090.pkl: refused: the pickle asks for {system}" in r.output
    with Pack(out) as p:
        assert p.keys() == [("001", "nm", "01", "090")]
    assert sorted(manifest(out)["sequences"]["empty"]) == ["001/nm-02/090", "001/nm-03/090"]
    # the sentinel works: the same file loaded by plain pickle does run
    with pytest.raises(PickleRefused, match=f"asks for {system}"):
        load_array(evil.read_bytes())
    assert not sentinel.exists()
    pickle.loads(evil.read_bytes())
    assert sentinel.exists()


def test_codecs_encode_only_for_latin1() -> None:
    with pytest.raises(PickleRefused, match="_codecs.encode with 'rot13'"):
        load_array(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(PickleRefused, match="asks for builtins.eval"):
        load_array(b"cbuiltins\neval\n(V1\ntR.")


def numpy1(data: bytes) -> bytes:
    """``data`` with numpy 2's module names spelled as numpy 1.x writes them."""
    old = (b"numpy._core.multiarray", b"numpy._core.numeric")
    if data[:2] in (b"\x80\x04", b"\x80\x05"):  # one frame; names are length-prefixed
        assert data[2:3] == b"\x95"
        body = data[11:]
        for name in old:
            body = body.replace(
                bytes([0x8C, len(name)]) + name,
                bytes([0x8C, len(name) - 1]) + name.replace(b"._core", b".core"),
            )
        return data[:2] + b"\x95" + struct.pack("<Q", len(body)) + body
    for name in old:  # protocols 0-2: names are text lines
        data = data.replace(name, name.replace(b"._core", b".core"))
    return data


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_arrays_of_numpy_1_and_2_in_every_protocol(protocol: int) -> None:
    a = walker(3)
    for data in (pickle.dumps(a, protocol), numpy1(pickle.dumps(a, protocol))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert np.array_equal(pickle.loads(data), a)  # the test's pickle is a valid one
        got = load_array(data)
        assert got.dtype == np.uint8 and np.array_equal(got, a)
    old = numpy1(pickle.dumps(a, protocol))
    assert b"numpy._core" not in old and b"numpy.core." in old
    fortran = load_array(pickle.dumps(np.asfortranarray(a), protocol))
    assert fortran.flags.c_contiguous and np.array_equal(fortran, a)


def test_an_array_pickled_by_python_2() -> None:
    """Python 2 wrote byte strings as STRING; read as latin-1, numpy takes them back."""
    data = (
        b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR"
        b"(I1\n(I2\nI2\nI2\ntcnumpy\ndtype\n(S'u1'\nI0\nI1\ntR(I3\nS'|'\nNNNI-1\nI-1\nI0\ntb"
        b"I00\nS'\\x00\\x01\\x02\\xff\\x04\\x05\\x06\\x80'\ntb."
    )
    want = np.array([0, 1, 2, 255, 4, 5, 6, 128], np.uint8).reshape(2, 2, 2)
    assert np.array_equal(load_array(data), want)


# --- bad input -----------------------------------------------------------------------------------


def test_bad_arrays_and_damaged_files_are_named_in_the_manifest(tmp_path: Path) -> None:
    raw = tmp_path / "pkl"
    good = pickle.dumps(walker())
    write(raw, "001/nm-01/000/000.pkl", walker())
    cases = {
        "001/nm-02/000/000.pkl": (walker().astype(np.float32), "float32 values, not uint8"),
        "001/nm-03/000/000.pkl": (walker() > 0, "bool values, not uint8"),
        "001/nm-04/000/000.pkl": (walker()[0], "2-D array (64, 64)"),
        "001/nm-05/000/000.pkl": (walker()[:0], "no frames"),
        "001/nm-06/000/000.pkl": (walker()[:, :, :44], "64 x 44, not square"),
        "001/nm-07/000/000.pkl": (walker(size=128), "128 x 128, not 64 x 64 (pass --size 128)"),
        "001/nm-08/000/000.pkl": ([walker()], "holds a list, not a numpy array"),
        "001/nm-09/000/000.pkl": (walker() // 255, "holds only 0 and 1 (a mask)"),
        "001/bg-01/000/000.pkl": (good[: len(good) // 2], "truncated or corrupt"),
        "001/bg-02/000/000.pkl": (b"", "empty file (0 bytes)"),
        "001/bg-03/000/000.pkl": (b"\x89PNG not a pickle at all", "truncated or corrupt"),
    }
    for rel, (obj, _) in cases.items():
        if isinstance(obj, bytes):
            write(raw, rel, raw=obj)
        else:
            write(raw, rel, obj)
    write(raw, "001/cl-01/000/000.pkl", walker())
    write(raw, "001/cl-01/000/pose.pkl", walker())
    out = tmp_path / "bad.h5"
    r = gait("prep", "opengait", raw, out, "--workers", "1")
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    m = manifest(out)
    reasons = {u["file"]: u["reason"] for u in m["unreadable"]}
    for rel, (_, reason) in cases.items():
        assert reason in reasons.pop(rel), (rel, reasons.get(rel))
    for rel in ("001/cl-01/000/000.pkl", "001/cl-01/000/pose.pkl"):
        assert "one of 2 pickles in its sequence folder" in reasons.pop(rel)
    assert reasons == {}
    assert m["sequences"]["written"] == 1 and len(m["sequences"]["empty"]) == len(cases) + 1
    with Pack(out) as p:
        assert p.keys() == [("001", "nm", "01", "000")]
    assert f"... and {len(cases) + 2 - 5} more in the manifest" in r.output
    # the 128-px pickle is read with --size 128
    big = tmp_path / "big"
    write(big, "001/nm-07/000/000.pkl", walker(size=128))
    r = gait("prep", "opengait", big, tmp_path / "big.h5", "--size", "128", "--workers", "1")
    assert r.exit_code == 0, r.output
    with Pack(tmp_path / "big.h5") as p:
        assert p.size == 128 and np.array_equal(p[0], walker(size=128))


def test_ou_mvlp_layout_gives_the_keys_of_prep_ou_mvlp(tmp_path: Path) -> None:
    pkl, images = tmp_path / "pkl", tmp_path / "OUMVLP-raw"
    for subject, seq, view in [
        ("00001", "00", "000"),
        ("00001", "01", "090"),
        ("00002", "00", "180"),
    ]:
        write(pkl, f"{subject}/{seq}/{view}/{view}.pkl", walker(seed=int(subject)))
        png = images / f"Silhouette_{view}-{seq}" / subject / "0001.png"
        png.parent.mkdir(parents=True)
        png.write_bytes(b"")  # discovery looks at names only
    out = tmp_path / "ou.h5"
    r = gait("prep", "opengait", pkl, out, "--layout", "ou-mvlp", "--workers", "1")
    assert r.exit_code == 0, r.output
    with Pack(out) as p:
        assert p.keys() == [s.key for s in discover(images, OU_MVLP)]
        assert p.attrs["layout"] == "{subject}/{seq}/{view}/*.pkl"
    custom = tmp_path / "custom.h5"
    r = gait("prep", "opengait", pkl, custom, "--layout", "{subject}/{seq}/{view}/[0-9]*.pkl")
    assert r.exit_code == 0, r.output
    assert contents(custom) == contents(out)


def test_a_folder_without_pickles_is_one_line(tmp_path: Path) -> None:
    raw = tmp_path / "pngs"
    (raw / "001/nm-01/090").mkdir(parents=True)
    (raw / "001/nm-01/090/001.png").write_bytes(b"")
    r = gait("prep", "opengait", raw, tmp_path / "x.h5")
    assert_one_line_error(r, "no pickles (*.pkl) under", str(raw))
    assert not (tmp_path / "x.h5").exists()
    r = gait("prep", "opengait", tmp_path / "missing", tmp_path / "x.h5")
    assert_one_line_error(r, str(tmp_path / "missing"), "is not a folder")


def test_help_explains_the_command() -> None:
    r = gait("prep", "opengait", "--help")
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    for needle in (
        "PKL_ROOT",
        "{subject}/{type}-{seq}/{view}/{view}.pkl",
        "restricted unpickler",
        "refused before any of it runs",
        "--layout",
        "ou-mvlp",
        "--size",
        "docs/opengait.md",
    ):
        assert needle in text, needle
    assert "--min-sum" not in text and "--binarize" not in text
    assert "opengait" in gait("prep", "--help").output
