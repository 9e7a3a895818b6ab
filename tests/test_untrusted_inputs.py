"""Untrusted inputs (issue 21): OpenGait pickles that ask numpy for memory they do not hold, and
checkpoints whose entries have another structure than gait writes.

Item 1: `gait prep opengait` reads pickles with a restricted unpickler. A pickle that calls
``numpy.ndarray(shape)`` (or ``_reconstruct`` with a shape, and no data) made an array of the
process's uninitialised memory, and a 50-byte file an 82 MB one; an array must be made of data the
pickle holds, exactly its size, and all of them no more than twice the file's size. The pickles
below are written opcode by opcode (protocol 2), the way numpy's own pickles are, with one thing
changed each.

Item 2: a checkpoint whose model has a key that is not a name, is a list, or holds something else
than tensors (and the like for its other entries) is one line naming the file, in every command
that reads it: `gait embed`, `eval`, `train --resume`, `import-checkpoint`.
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gaitprep.opengait import PickleRefused, load_array
from gaitprep.pack import Pack
from tests.cli import FAST, TINY, assert_one_line_error, gait, make_pack, subprocess_env

# --- item 1: pickles ------------------------------------------------------------------------------

NDARRAY = b"cnumpy\nndarray\n"
DTYPE = b"cnumpy\ndtype\n"
RECONSTRUCT = b"cnumpy._core.multiarray\n_reconstruct\n"
FROMBUFFER = b"cnumpy._core.numeric\n_frombuffer\n"
ENCODE = b"c_codecs\nencode\n"
FALSE, TRUE, NONE = b"\x89", b"\x88", b"N"


def text(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def raw(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def num(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def call(fn: bytes, *args: bytes) -> bytes:
    return fn + tup(*args) + b"R"


def build(obj: bytes, state: bytes) -> bytes:
    return obj + state + b"b"


def pickled(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def dtype_state(flags: int = 0) -> bytes:
    """The state of a one-byte dtype: numpy writes (3, '|', None, None, None, -1, -1, 0)."""
    return tup(num(3), text("|"), NONE, NONE, NONE, num(-1), num(-1), num(flags))


def dtype(code: str = "u1", state: bytes | None = None) -> bytes:
    """``numpy.dtype(code, False, True)`` and BUILD with ``state``, as numpy pickles a dtype."""
    return build(call(DTYPE, text(code), FALSE, TRUE), state or dtype_state())


def empty() -> bytes:
    """``_reconstruct(ndarray, (0,), b'b')``: the empty array numpy's pickles start from."""
    return call(RECONSTRUCT, NDARRAY, tup(num(0)), b"C\x01b")


def array(shape: tuple, data: bytes, dt: bytes | None = None) -> bytes:
    """An array as numpy pickles it: an empty one, BUILD with (1, shape, dtype, False, data)."""
    return build(empty(), tup(num(1), tup(*map(num, shape)), dt or dtype(), FALSE, data))


FRAME = (64, 64)


NOT_IN_THE_FILE = {
    # numpy.ndarray(shape, dtype): 5 frames, or 20,000 (82 MB) of memory no file held
    "ndarray": (
        call(NDARRAY, tup(num(5), num(64), num(64)), call(DTYPE, text("u1"))),
        "calls numpy.ndarray",
    ),
    "ndarray-82MB": (
        call(NDARRAY, tup(num(20000), num(64), num(64)), call(DTYPE, text("u1"))),
        "calls numpy.ndarray",
    ),
    # ndarray.__new__(ndarray, shape, dtype) by the NEWOBJ opcode
    "newobj": (NDARRAY + tup(tup(num(5), num(64), num(64)), call(DTYPE, text("u1"))) + b"\x81", ""),
    # _reconstruct with a shape and a uint8 typecode, never given its data
    "reconstruct-shape": (
        call(RECONSTRUCT, NDARRAY, tup(num(5), num(64), num(64)), b"C\x01B"),
        "calls _reconstruct with (5, 64, 64)",
    ),
    "reconstruct-no-state": (empty(), "gives it no data"),
    # a state whose shape is larger than the bytes it gives
    "setstate-short": (
        array((5, *FRAME), raw(b"\x01")),
        "1 bytes of data, not the 20480 it needs",
    ),
    "frombuffer-short": (
        call(FROMBUFFER, raw(b"\x01"), dtype(), tup(num(5), num(64), num(64)), text("C")),
        "1 bytes of data, not the 20480 it needs",
    ),
    # Python objects, and a uint8 dtype whose flags say it holds them
    "object-dtype": (
        array((1,), b"]" + NONE + b"a", dtype("O8", dtype_state(flags=63))),
        "the dtype 'O8'",
    ),
    "dtype-flags": (
        array(
            (1, *FRAME),
            raw(bytes(64 * 64)),
            dtype(state=dtype_state(flags=63)),
        ),
        "the dtype uint8 another state",
    ),
}


@pytest.mark.parametrize("case", list(NOT_IN_THE_FILE))
def test_an_array_is_made_only_of_data_in_the_pickle(case: str) -> None:
    # the baseline each case changes one thing of: numpy's form, with its data, is read
    want = np.arange(5 * 64 * 64, dtype=np.uint32).astype(np.uint8).reshape(5, *FRAME)
    data = pickled(array(want.shape, raw(want.tobytes())))
    assert np.array_equal(pickle.loads(data), want)
    assert np.array_equal(load_array(data), want)
    body, needle = NOT_IN_THE_FILE[case]
    with pytest.raises(PickleRefused, match="refused|not a readable pickle") as e:
        load_array(pickled(body))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_data_used_again_and_again_is_refused() -> None:
    """1,000 arrays of the same 20 kB (and dtype) in the memo: 20 MB from a 110 kB file."""
    data = bytes(range(256)) * 80  # 20480 bytes: 5 frames of 64 x 64
    shared = raw(data) + b"q\x01" + b"0" + dtype() + b"q\x02" + b"0"  # BINPUT 1 and 2, POP
    arrays = b"".join(array((5, *FRAME), b"h\x01", b"h\x02") for _ in range(1000))  # BINGET
    evil = pickled(shared + b"](" + arrays + b"e")
    assert len(evil) < 120_000
    assert sum(a.nbytes for a in pickle.loads(evil)) == 1000 * len(data)  # what numpy makes of it
    with pytest.raises(PickleRefused, match="makes more data than twice its own size"):
        load_array(evil)
    # numpy's own pickles of any protocol stay within it
    frames = np.frombuffer(data, np.uint8).reshape(5, *FRAME)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert np.array_equal(load_array(pickle.dumps(frames, protocol)), frames)


def test_a_pickle_cannot_change_what_it_is_allowed_to_call() -> None:
    """BUILD on an allowed global (here: _codecs.encode's defaults) is refused, so one file
    cannot change how the files read after it are read."""
    state = b"}" + text("__defaults__") + tup(text("latin1"), text("ignore")) + b"s"
    with pytest.raises(PickleRefused, match="sets the state of _codecs.encode"):
        load_array(pickled(build(ENCODE, tup(NONE, state))))
    frames = np.full((2, *FRAME), 255, np.uint8)
    assert np.array_equal(load_array(pickle.dumps(frames, 2)), frames)


def test_prep_opengait_names_the_pickles_that_ask_for_memory(tmp_path: Path) -> None:
    root = tmp_path / "pkl"
    good = np.zeros((3, *FRAME), np.uint8)
    good[:, 8:56, 24:40] = 255
    files = {
        "001/nm-01/090/090.pkl": pickle.dumps(good),
        "001/nm-02/090/090.pkl": pickled(NOT_IN_THE_FILE["ndarray"][0]),
        "001/nm-03/090/090.pkl": pickled(NOT_IN_THE_FILE["reconstruct-shape"][0]),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(data)
    out = tmp_path / "o.h5"
    r = gait("prep", "opengait", root, out, "--workers", "1")
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    m = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    reasons = {u["file"]: u["reason"] for u in m["unreadable"]}
    assert set(reasons) == {"001/nm-02/090/090.pkl", "001/nm-03/090/090.pkl"}
    assert "calls numpy.ndarray" in reasons["001/nm-02/090/090.pkl"]
    assert "calls _reconstruct with (5, 64, 64)" in reasons["001/nm-03/090/090.pkl"]
    assert "not written: 001/nm-02/090/090.pkl: refused: the pickle calls numpy.ndarray" in r.output
    with Pack(out) as p:
        assert p.keys() == [("001", "nm", "01", "090")]
        assert np.array_equal(p[0], good)


# --- item 2: checkpoints -------------------------------------------------------------------------

SHORT = (*FAST, "--train-subjects", "first:4")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("untrusted")
    pack = make_pack(base / "sample.h5")
    out = base / "run"
    r = gait("train", TINY, "--pack", pack, "--out", out, *SHORT, "--iterations", "2")
    assert r.exit_code == 0, r.output
    return {"pack": pack, "run": out}


def _set(path: list, value):
    def edit(state: dict) -> None:
        *parents, last = path
        for key in parents:
            state = state[key]
        state[last] = value

    return edit


def _int_key(entry: str, value=None):
    def edit(state: dict) -> None:
        key = next(iter(state[entry]), None)
        state[entry][0] = state[entry].pop(key) if value is None else value

    return edit


MALFORMED = {
    "model-key": (_int_key("model"), "its model has the key 0, not a name"),
    "model-list": (lambda s: s.update(model=list(s["model"].values())), "its model is a list"),
    "model-value": (_set(["model", "fc"], [1, 2, 3]), "its model fc is a list, not a tensor"),
    "objective-key": (_int_key("objective", torch.zeros(1)), "its objective has the key 0"),
    "iteration": (_set(["iteration"], "2"), "its iteration is '2', not a count"),
    "optimizer-state": (_set(["optimizer", "state"], [1]), "its optimizer state has no dict"),
    "rng-tensor": (_set(["rng", "numpy", "keys"], 5), "numpy keys is an int, not a tensor"),
    "entry-key": (_set([5], 1), "it has the key 5, not a name"),
}


def _malformed(run: dict, case: str, dest: Path) -> Path:
    """A copy of the run whose checkpoint has the ``case`` change; its checkpoint's path."""
    shutil.copytree(run["run"], dest, ignore=shutil.ignore_patterns("tensorboard", "embeddings-*"))
    ckpt = next((dest / "checkpoints").glob("iter-*.pt"))
    state = copy.deepcopy(torch.load(ckpt, weights_only=True))
    MALFORMED[case][0](state)
    torch.save(state, ckpt)
    return ckpt


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_checkpoint_is_one_line_in_every_command(run, tmp_path: Path, case) -> None:
    dest = tmp_path / "run"
    ckpt = _malformed(run, case, dest)
    pack, needle = run["pack"], MALFORMED[case][1]
    for r in (
        gait("embed", ckpt, pack, "--out", tmp_path / "e.h5"),
        gait("eval", dest, "--pack", pack, "--test-subjects", "005-006"),
        gait("train", TINY, "--pack", pack, "--out", dest, "--resume", *SHORT, "--iterations", "3"),
    ):
        assert_one_line_error(r, str(ckpt), "damaged or not a gait checkpoint", needle)


@pytest.mark.slow
def test_the_gait_command_prints_one_line_for_a_malformed_checkpoint(run, tmp_path: Path) -> None:
    ckpt = _malformed(run, "model-key", tmp_path / "run")
    done = subprocess.run(
        [sys.executable, "-m", "gaitcli", "embed", str(ckpt), str(run["pack"])],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        f"Error: {ckpt} is damaged or not a gait checkpoint (its model has the key 0, not a name); "
        "use a checkpoints/iter-*.pt file of a gait run"
    ]


OPENGAIT = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "opengait"


@pytest.mark.skipif(not OPENGAIT.is_dir(), reason=f"the OpenGait fixtures are not at {OPENGAIT}")
@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_int_key("model"), "its model has the key 0, not a name"),
        (_int_key("model", torch.zeros(1)), "its model has the key 0, not a name"),
        (_set(["model", "Head.fc_bin"], 3), "its model Head.fc_bin is an int, not a tensor"),
        (_set(["model", "extra"], "x"), "its model extra is a str, not a tensor"),
    ],
    ids=["key", "key-in-addition", "value", "value-in-addition"],
)
def test_a_malformed_opengait_checkpoint_is_one_line(edit, needle, tmp_path: Path) -> None:
    state = torch.load(OPENGAIT / "gaitset" / "checkpoint.pt", weights_only=True)
    edit(state)
    ckpt = tmp_path / "bad.pt"
    torch.save(state, ckpt)
    config = OPENGAIT / "gaitset" / "config.yaml"
    r = gait("import-checkpoint", ckpt, "--config", config, "--out", tmp_path / "run")
    assert_one_line_error(r, str(ckpt), "damaged or not an OpenGait checkpoint", needle)
    assert not (tmp_path / "run").exists()
