"""The native kernels' cache (:mod:`gaittrain.evaluation.native`): a library is loaded only
whole and of the interface the Python side calls, rebuilt once or given up otherwise, never
crashing the process; and `gait eval --precision int8` says in one line when it ranks without
the kernels.

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

from gaittrain.evaluation import native
from tests.cli import gait, make_pack, subprocess_env, train_tiny

COMPILER = os.environ.get("CC", "cc")
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


@needs_kernels
def test_a_build_records_the_library_size_and_checksum(cache: Path) -> None:
    library = native._build(COMPILER)
    assert matches_its_record(library)
    assert sorted(p.name for p in cache.iterdir()) == [
        library.with_suffix(".json").name,
        library.name,
    ]  # no temporary left


@needs_kernels
def test_a_truncated_library_is_rebuilt_not_loaded(cache: Path) -> None:
    """Loaded as it was, half a library crashed the process (SIGBUS) or was refused."""
    library = native._build(COMPILER)
    whole = library.read_bytes()
    library.write_bytes(whole[: len(whole) // 2])
    out = load_in_a_process(cache)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr}"
    assert out.stdout.strip() == "True", out.stderr
    assert matches_its_record(library) and len(library.read_bytes()) == len(whole)


@needs_kernels
def test_a_foreign_library_is_rebuilt_not_loaded(cache: Path, tmp_path: Path) -> None:
    """Another library in the kernels' place failed with an uncaught 'undefined symbol'."""
    library = native._build(COMPILER)
    library.write_bytes(compile_stub(tmp_path, interface=None))
    out = load_in_a_process(cache)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout.strip() == "True", out.stderr
    assert matches_its_record(library)


@needs_kernels
def test_a_library_of_another_interface_is_rebuilt_even_with_a_matching_record(
    cache: Path, tmp_path: Path
) -> None:
    """A library that exports every kernel and has a record of its own, but reports another
    interface, is unloaded and compiled again; the kernels then loaded from the same path are
    the real ones (``pairs`` lists a mask's ones)."""
    library = native._build(COMPILER)
    stub = compile_stub(tmp_path, interface=0)
    library.write_bytes(stub)
    record = {"size": len(stub), "sha256": hashlib.sha256(stub).hexdigest()}
    library.with_suffix(".json").write_text(json.dumps(record))
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
def test_kernels_of_another_interface_or_tile_are_refused_at_load(
    cache: Path, monkeypatch, name: str, value: int, says: str
) -> None:
    """A tile or interface other than the Python side lays operands out for would corrupt
    memory: the kernels are refused at load, with the reason, and PyTorch ranks instead."""
    monkeypatch.setattr(native, name, value, raising=False)
    with pytest.warns(UserWarning, match="no native kernels") as caught:
        assert native.kernels() is None
    reason = native.unavailable()
    assert says in reason and str(value) in reason and reason in str(caught[0].message)


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
    with pytest.warns(UserWarning, match="took over 1 s"):
        assert native.kernels() is None
    assert time.monotonic() - start < 8
    assert native.unavailable() == f"the C compiler {compiler} took over 1 s"
    assert not any(cache.glob("*.so")) and not any(cache.glob("*.partial"))


# --- gait eval --precision int8 without the kernels ------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("native")
    pack = make_pack(base / "sample.h5")
    # a few steps: any weights will do, the figures are not what is tested
    r = train_tiny(pack, base / "run", "--train-subjects", "first:4", "--set", "train.iterations=4")
    assert r.exit_code == 0, r.output
    return {"pack": pack, "run": base / "run"}


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
    [("GAIT_NATIVE=0", "turned off by GAIT_NATIVE=0"), ("no VNNI", "no AVX-512 VNNI on this CPU")],
)
def test_explicit_int8_without_the_kernels_says_so_in_one_line(
    run: dict, cache: Path, tmp_path: Path, monkeypatch, cause: str, reason: str
) -> None:
    """Asked for, int8 without the kernels ranks through PyTorch, several times slower than
    float32: one line says so and why; auto takes float32 there without a word."""
    if cause == "GAIT_NATIVE=0":
        monkeypatch.setenv("GAIT_NATIVE", "0")
    else:
        monkeypatch.setattr(native, "_cpu_has_vnni", lambda: False)
    forget()
    assert eval_notes(run, tmp_path / "int8.json", "int8") == [
        f"int8: native kernels unavailable ({reason}); ranking with the PyTorch int8 path, "
        "slower than --precision fp32; figures identical"
    ]
    assert eval_notes(run, tmp_path / "auto.json", "auto") == []
    assert eval_notes(run, tmp_path / "fp32.json", "fp32") == []


@needs_kernels
def test_int8_with_the_kernels_says_nothing(run: dict, cache: Path, tmp_path: Path) -> None:
    assert eval_notes(run, tmp_path / "int8.json", "int8") == []
