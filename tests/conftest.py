"""What the whole test suite shares: fixtures built once per session, and its markers.

Markers (registered in pyproject.toml; `make test` runs everything, `make test-fast` leaves out
``slow``, ``ddp`` and ``browser``):

- ``slow``: takes more than a few seconds on 2 cores (trains many iterations, renders videos,
  builds a wheel, runs the pipeline end to end);
- ``ddp``: starts several processes (torchrun-style, gloo);
- ``native``: needs the native int8 kernels (skipped where this CPU or compiler cannot build them);
- ``browser``: needs Chromium (skipped where none is installed);
- ``cuda``: needs a GPU (skipped without one).

Session fixtures are built once and shared read-only: :func:`sample_pack` (the sample data as a
pack), :func:`trained_run` and :func:`quick_run` (tiny trained on it); a test that writes into a
run copies it first (``tests.cli.copy_run``). No test reads or writes ``~/.cache/gait``:
:func:`gait_cache` gives the session a kernel cache of its own, and :func:`built` builds the
kernels into it once, as ``gait build-kernels`` does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gaittrain.evaluation import native
from tests.cli import make_pack, train_tiny


def pytest_collection_modifyitems(config, items) -> None:
    """``cuda`` tests are skipped without a GPU; a test that uses the native kernels (the
    ``kernels`` or ``built`` fixture) is marked ``native``."""
    no_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if {"kernels", "built"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.native)


@pytest.fixture(scope="session", autouse=True)
def gait_cache(tmp_path_factory):
    """``GAIT_CACHE`` of this session's own (subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("GAIT_CACHE", str(tmp_path_factory.mktemp("gait-cache")))
        native._load.cache_clear()
        yield
    native._load.cache_clear()


@pytest.fixture(scope="session")
def built(gait_cache):
    """The native kernels built once into the session's cache: ``(library, "built")``, or
    ``(None, why)`` where this machine cannot build them."""
    return native.build()


@pytest.fixture
def kernels(built):
    """The loaded native kernels; the test is skipped where this machine cannot build them."""
    library, why = built
    if library is None:
        pytest.skip(f"no native kernels on this machine ({why})")
    lib = native.kernels()
    assert lib is not None, native.unavailable()
    return lib


@pytest.fixture(scope="session")
def sample_pack(tmp_path_factory) -> Path:
    """sample_data/casia-b as a pack (gait prep's defaults), made once; never written to."""
    return make_pack(tmp_path_factory.mktemp("sample-pack") / "sample.h5")


@pytest.fixture(scope="session")
def trained_run(sample_pack, tmp_path_factory) -> Path:
    """configs/tiny.yaml with the tests' FAST settings trained on the sample pack's first four
    subjects for tiny's 1,500 iterations: a run folder made once; copy it before writing into it
    (``tests.cli.copy_run``)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    r = train_tiny(sample_pack, out, "--train-subjects", "first:4")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def quick_run(sample_pack, tmp_path_factory) -> Path:
    """The same, trained for 4 iterations only (for tests to which any weights will do): made
    once; copy it before writing into it (``tests.cli.copy_run``)."""
    out = tmp_path_factory.mktemp("quick") / "run"
    r = train_tiny(sample_pack, out, "--train-subjects", "first:4", "--iterations", "4")
    assert r.exit_code == 0, r.output
    return out
