"""The native kernels' cache (:mod:`gaittrain.evaluation.native`): built only by the explicit
step, `gait build-kernels` (:func:`native.build`), never while deciding whether int8 can run; a
library is loaded only whole and of the interface the Python side calls, skipped otherwise (and
built again by `gait build-kernels`), never crashing the process; and `gait eval --precision
int8` says in one line when it ranks without the kernels.

Every test builds into a cache of its own (``$GAIT_CACHE`` in a temporary folder)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gaittrain.evaluation import cost, native
from gaittrain.evaluation.cost import fast_int8, resolve_precision
from tests.cli import assert_one_line_error, copy_run, gait, subprocess_env

COMPILER = os.environ.get("CC") or "cc"
CAN_BUILD = (
    native._cpu_has_vnni()
    and shutil.which(COMPILER) is not None
    and os.environ.get("GAIT_NATIVE", "1") != "0"
)
needs_kernels = pytest.mark.skipif(
    not CAN_BUILD, reason="no native kernels on this machine (needs a C compiler and AVX-512 VNNI)"
)
#: The kernels a library must export, as the C source names them.
KERNELS = ("bounds", "candidates", "pairs", "quantize_f16", "quantize_f32", "exact_f16")
KERNELS += ("exact_f32",)
#: The line of `gait build-kernels` where it builds nothing.
NOT_BUILT = (
    "native int8 kernels: not built: {} (int8 evaluation uses the PyTorch path, same figures)"
)


def forget() -> None:
    """Load the kernels afresh on the next call."""
    getattr(native, "_load", native.kernels).cache_clear()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    """A kernel cache of the test's own, read afresh (and forgotten after the test)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("GAIT_CACHE", str(folder))
    monkeypatch.delenv("GAIT_NATIVE", raising=False)
    forget()
    yield folder
    forget()


def build() -> Path:
    """The kernels built into the test's cache (where this machine can)."""
    library, outcome = native.build()
    assert library is not None, outcome
    return library


def matches_its_record(library: Path) -> bool:
    data = library.read_bytes()
    record = json.loads(library.with_suffix(".json").read_text())
    return record == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def compile_stub(folder: Path, interface: int | None) -> bytes:
    """A shared library that is not the kernels: with ``interface``, one exporting every
    kernel (doing nothing) and that interface; without, one exporting none of them."""
    source = folder / "stub.c"
    text = "int unrelated(void) { return 1; }\n"
    if interface is not None:
        text += f"int gait_native_interface(void) {{ return {interface}; }}\n"
        text += "int gait_native_row_tile(void) { return 8; }\n"
        text += "int gait_native_col_tile(void) { return 48; }\n"
        text += "".join(f"void {name}(void) {{}}\n" for name in KERNELS)
    source.write_text(text)
    subprocess.run(
        [COMPILER, "-shared", "-fPIC", str(source), "-o", str(folder / "stub.so")], check=True
    )
    return (folder / "stub.so").read_bytes()


LOAD = "from gaittrain.evaluation import native; print(native.kernels() is not None)"


def load_in_a_process(cache: Path) -> subprocess.CompletedProcess:
    """The kernels loaded from ``cache`` by a fresh process (one that may crash)."""
    return subprocess.run(
        [sys.executable, "-c", LOAD],
        capture_output=True,
        text=True,
        env=subprocess_env(GAIT_CACHE=str(cache)),
        timeout=300,
    )


# --- gait build-kernels ----------------------------------------------------------------------


@pytest.mark.slow
@needs_kernels
def test_build_kernels_builds_then_finds_the_build_up_to_date(cache: Path) -> None:
    """One line each time; the second run compiles nothing (the library is the same file)."""
    r = gait("build-kernels")
    assert r.exit_code == 0, r.output
    [library] = cache.glob("*.so")
    assert r.output == f"native int8 kernels: built {library}\n"
    stamp = library.stat().st_mtime_ns
    r = gait("build-kernels")
    assert r.exit_code == 0 and r.output == f"native int8 kernels: up to date: {library}\n"
    assert library.stat().st_mtime_ns == stamp
    assert native.kernels() is not None  # the build is what loads


@pytest.mark.parametrize(
    "cause, reason",
    [
        ("GAIT_NATIVE=0", "turned off by GAIT_NATIVE=0"),
        ("no VNNI", "no AVX-512 VNNI on this CPU"),
        ("no compiler", "no C compiler /nonexistent/cc found (set CC to one)"),
    ],
)
def test_build_kernels_where_this_machine_cannot_says_why_and_succeeds(
    cache: Path, monkeypatch, cause: str, reason: str
) -> None:
    """Not an error (int8 evaluation still works, through PyTorch): exit status 0, one line."""
    monkeypatch.setattr(native, "_cpu_has_vnni", lambda: cause != "no VNNI")
    if cause == "GAIT_NATIVE=0":
        monkeypatch.setenv("GAIT_NATIVE", "0")
    elif cause == "no compiler":
        monkeypatch.setenv("CC", "/nonexistent/cc")
    r = gait("build-kernels")
    assert r.exit_code == 0, r.output
    assert r.output == NOT_BUILT.format(reason) + "\n"
    assert not cache.exists()


def test_build_kernels_where_the_cache_cannot_be_written_fails_in_one_line(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    """A problem to fix, not a limit of the machine: exit status 1."""
    monkeypatch.setattr(native, "_cpu_has_vnni", lambda: True)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("GAIT_CACHE", str(tmp_path / "file" / "cache"))
    monkeypatch.setenv("CC", sys.executable)  # any program: it does not get to run
    assert_one_line_error(gait("build-kernels"), "cannot write", str(tmp_path / "file"))


def test_asking_whether_int8_can_run_never_compiles(cache: Path, monkeypatch) -> None:
    """Nothing built: every question `gait eval` asks is answered without the compiler, the
    kernels unavailable, "not built"; PyTorch's int8 path still ranks."""

    def no_compiler(*args, **kwargs):
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(native, "_cpu_has_vnni", lambda: True)
    monkeypatch.setattr(subprocess, "run", no_compiler)
    monkeypatch.setattr(subprocess, "Popen", no_compiler)
    assert native.kernels() is None and not fast_int8(torch.device("cpu"))
    assert native.unavailable() == native.NOT_BUILT == "not built: run `gait build-kernels`"
    assert "(not built: run `gait build-kernels`)" in native.fallback_note("cpu")
    assert '"int8": false' in cost._key(torch.device("cpu"), 256)  # auto never times int8
    assert resolve_precision("int8", "euclidean", "cpu", 1, 1, (62, 256)) == "int8"
    assert not cache.exists()


# --- the cache: records, checks, damaged libraries ---------------------------------------------


@pytest.mark.slow
@needs_kernels
def test_a_build_records_the_library_size_and_checksum(cache: Path) -> None:
    library, outcome = native.build()
    assert outcome == "built" and library is not None and matches_its_record(library)
    assert sorted(p.name for p in cache.iterdir()) == [
        library.with_suffix(".json").name,
        library.name,
    ]  # no temporary left


@pytest.mark.slow
@needs_kernels
def test_a_build_is_kept_by_source(cache: Path, tmp_path: Path, monkeypatch) -> None:
    """Built once under the source's hash: a changed source is a new library (not built until
    `gait build-kernels` runs), never the old one reused."""
    first = build()
    changed = tmp_path / "changed.c"
    changed.write_text(native.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(native, "SOURCE", changed)
    forget()
    assert native.kernels() is None and native.unavailable() == native.NOT_BUILT
    second, outcome = native.build()
    assert outcome == "built" and second not in (None, first) and native.kernels() is not None


@pytest.mark.slow
@needs_kernels
@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_library_is_skipped_at_load_and_built_again_by_build_kernels(
    cache: Path, tmp_path: Path, damage: str
) -> None:
    """Loaded as it was, half a library crashed the process (SIGBUS) and another library in
    the kernels' place failed with an uncaught 'undefined symbol'. At load it is skipped, with
    a warning naming the fix, and left as it is; `gait build-kernels` compiles it again."""
    library = build()
    whole = library.read_bytes()
    if damage == "truncated":
        library.write_bytes(whole[: len(whole) // 2])
    else:
        library.write_bytes(compile_stub(tmp_path, interface=None))
    bad = library.read_bytes()
    out = load_in_a_process(cache)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout.strip() == "False", out.stderr
    assert "no native kernels" in out.stderr and "`gait build-kernels`" in out.stderr
    assert library.read_bytes() == bad  # not compiled at load
    r = gait("build-kernels")
    assert r.exit_code == 0 and r.output == f"native int8 kernels: built {library}\n"
    assert matches_its_record(library) and len(library.read_bytes()) == len(whole)
    out = load_in_a_process(cache)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.slow
@needs_kernels
def test_a_library_of_another_interface_is_skipped_even_with_a_matching_record(
    cache: Path, tmp_path: Path
) -> None:
    """A library that exports every kernel and has a record of its own, but reports another
    interface, is unloaded and not used; built again, the kernels then loaded from the same
    path in the same process are the real ones (``pairs`` lists a mask's ones)."""
    library = build()
    stub = compile_stub(tmp_path, interface=0)
    library.write_bytes(stub)
    record = {"size": len(stub), "sha256": hashlib.sha256(stub).hexdigest()}
    library.with_suffix(".json").write_text(json.dumps(record))
    forget()
    with pytest.warns(UserWarning, match="interface 0"):
        assert native.kernels() is None
    assert library.read_bytes() == stub
    assert native.build() == (library, "built")
    lib = native.kernels()
    assert library.read_bytes() != stub and matches_its_record(library)
    assert lib is not None and lib.gait_native_interface() == native.INTERFACE
    mask = torch.rand(5, 40, generator=torch.Generator().manual_seed(0)) < 0.2
    i, j = native.pairs(mask, mask.sum(1))
    want_i, want_j = mask.nonzero(as_tuple=True)
    assert torch.equal(i, want_i) and torch.equal(j, want_j)


@needs_kernels
@pytest.mark.parametrize(
    "name, value, says",
    [("INTERFACE", 2, "interface 1"), ("ROW_TILE", 16, "8 x 48"), ("COL_TILE", 32, "8 x 48")],
)
@pytest.mark.slow
def test_kernels_of_another_interface_or_tile_are_refused_at_load(
    cache: Path, monkeypatch, name: str, value: int, says: str
) -> None:
    """A tile or interface other than the Python side lays operands out for would corrupt
    memory: the kernels are refused at load, with the reason, and PyTorch ranks instead; built
    again, they still fail, and `gait build-kernels` says so and fails (a source and a
    native.py that disagree are a problem to fix)."""
    build()
    monkeypatch.setattr(native, name, value, raising=False)
    forget()
    with pytest.warns(UserWarning, match="no native kernels") as caught:
        assert native.kernels() is None
    reason = native.unavailable()
    assert says in reason and str(value) in reason and reason in str(caught[0].message)
    assert_one_line_error(gait("build-kernels"), "just built", says)


@pytest.mark.slow
def test_a_hanging_compiler_is_given_up_after_the_timeout(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    compiler = tmp_path / "hanging-cc"
    compiler.write_text("#!/bin/sh\nexec sleep 10\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setattr(native, "_cpu_has_vnni", lambda: True)
    monkeypatch.setattr(native, "BUILD_TIMEOUT", 1, raising=False)
    start = time.monotonic()
    assert native.build() == (None, f"the C compiler {compiler} took over 1 s")
    assert time.monotonic() - start < 8
    assert native.kernels() is None and native.unavailable() == native.NOT_BUILT
    assert not any(cache.glob("*.so")) and not any(cache.glob("*.partial"))


# --- gait eval --precision int8 without the kernels ------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_pack, quick_run) -> dict:
    # a few steps: any weights will do, the figures are not what is tested
    run = copy_run(quick_run, tmp_path_factory.mktemp("native") / "run")
    return {"pack": sample_pack, "run": run}


def eval_notes(run: dict, out: Path, precision: str) -> list[str]:
    """The ``int8:`` lines `gait eval --precision PRECISION` writes to stderr."""
    r = gait(
        "eval",
        run["run"],
        "--pack",
        run["pack"],
        "--test-subjects",
        "last:4",
        "--device",
        "cpu",
        "--precision",
        precision,
        "--report",
        "json",
        "--out",
        out,
    )
    assert r.exit_code == 0, r.output
    return [line for line in r.stderr.splitlines() if line.startswith("int8:")]


@pytest.mark.parametrize(
    "cause, reason",
    [
        ("GAIT_NATIVE=0", "turned off by GAIT_NATIVE=0"),
        ("no VNNI", "no AVX-512 VNNI on this CPU"),
        ("not built", "not built: run `gait build-kernels`"),
    ],
)
@pytest.mark.slow
def test_explicit_int8_without_the_kernels_says_so_in_one_line(
    run: dict, cache: Path, tmp_path: Path, monkeypatch, cause: str, reason: str
) -> None:
    """Asked for, int8 without the kernels ranks through PyTorch, several times slower than
    float32: one line says so and why; auto takes float32 there without a word. Turned off or
    on a CPU without VNNI, a library already built is not used either."""
    if CAN_BUILD and cause != "not built":
        build()
    if cause == "GAIT_NATIVE=0":
        monkeypatch.setenv("GAIT_NATIVE", "0")
    else:
        monkeypatch.setattr(native, "_cpu_has_vnni", lambda: cause != "no VNNI")
    forget()
    assert eval_notes(run, tmp_path / "int8.json", "int8") == [
        f"int8: native kernels unavailable ({reason}); ranking with the PyTorch int8 path, "
        "slower than --precision fp32; figures identical"
    ]
    assert eval_notes(run, tmp_path / "auto.json", "auto") == []
    assert eval_notes(run, tmp_path / "fp32.json", "fp32") == []


@pytest.mark.slow
@needs_kernels
def test_int8_with_the_kernels_says_nothing(run: dict, cache: Path, tmp_path: Path) -> None:
    build()
    assert eval_notes(run, tmp_path / "int8.json", "int8") == []
