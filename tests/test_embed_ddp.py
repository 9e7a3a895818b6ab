"""`gait embed` under torchrun: the processes share the batches and rank 0 writes one file,
equal to a single-process run's (gloo on CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gaittrain.evaluation.embeddings_file import read_embeddings
from tests.cli import gait, subprocess_env, train_tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_pack) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("embed-ddp")
    pack = sample_pack
    r = train_tiny(pack, base / "run", "--iterations", "2")
    assert r.exit_code == 0, r.output
    return pack, base / "run"


def torchrun_embed(*args, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
        *("--nproc_per_node", str(nproc), "-m", "gaitcli", "embed", *map(str, args)),
    ]
    env = subprocess_env(OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_write_what_one_writes(run, tmp_path) -> None:
    pack, folder = run
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    # batches of 512 frames: the sample pack's 36 sequences make several, shared by the ranks
    r = gait("embed", folder, pack, "--out", one, "--device", "cpu")
    assert r.exit_code == 0, r.output
    done = torchrun_embed(folder, pack, "--out", two, "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(f"wrote {two}") == 1  # rank 0 speaks
    a, attrs_a = read_embeddings(one)
    b, attrs_b = read_embeddings(two)
    assert list(a) == list(b) and len(a) > 2
    np.testing.assert_array_equal(np.stack(list(b.values())), np.stack(list(a.values())))
    assert attrs_a == attrs_b
    assert not two.with_name(two.name + ".parts").exists()  # the parts are gone
    again = torchrun_embed(folder, pack, "--out", two, "--device", "cpu")
    assert again.returncode == 0 and again.stdout.count(f"up to date: {two}") == 1
