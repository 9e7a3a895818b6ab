"""The CPU speed paths of `gait train` (channels_last, torch.compile) learn what the plain path
learns: the same losses up to float summation order, the same checkpoints, a resumable run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gaittrain.config import load_config
from gaittrain.device import memory_format
from gaittrain.run_folder import read_log
from tests.cli import TINY, assert_one_line_error, make_pack, train_tiny


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return make_pack(tmp_path_factory.mktemp("pack") / "sample.h5")


# The loss and learning rate these tolerances were set with (tiny.yaml's until issue 23): the
# test is of the memory format, and the default r2 at twice the rate moves the weights further.
FIRST_LOSS = ["--set", "loss={name: center_ranked, reading: r0, alpha: 1.2, margin: 0.4}"]
FIRST_LOSS += ["--set", "optim.lr=0.001"]


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_log(run / "log.jsonl")]


def test_auto_is_channels_last_on_the_cpu_and_the_choice_is_checked(
    pack: Path, tmp_path: Path
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert memory_format(load_config(TINY), cpu) == torch.channels_last
    assert memory_format(load_config(TINY), cuda) == torch.contiguous_format
    forced = load_config(TINY, ["train.memory_format=channels_last"])
    assert memory_format(forced, cuda) == torch.channels_last
    plain = load_config(TINY, ["train.memory_format=contiguous"])
    assert memory_format(plain, cpu) == torch.contiguous_format
    r = train_tiny(pack, tmp_path / "run", "--set", "train.memory_format=nhwc")
    assert_one_line_error(r, "train.memory_format", "channels_last", "contiguous")


@pytest.mark.slow
def test_channels_last_learns_what_contiguous_learns(pack: Path, tmp_path: Path) -> None:
    runs = {}
    for fmt in ("contiguous", "channels_last"):
        runs[fmt] = tmp_path / fmt
        settings = ["--set", "train.iterations=12", "--set", f"train.memory_format={fmt}"]
        r = train_tiny(pack, runs[fmt], *settings, *FIRST_LOSS)
        assert r.exit_code == 0, r.output
    a, b = losses(runs["contiguous"]), losses(runs["channels_last"])
    assert len(a) == len(b) == 12
    assert a == pytest.approx(b, rel=1e-3, abs=1e-5)
    wa = torch.load(runs["contiguous"] / "checkpoints/iter-000012.pt", weights_only=True)
    wb = torch.load(runs["channels_last"] / "checkpoints/iter-000012.pt", weights_only=True)
    for name, value in wa["model"].items():
        torch.testing.assert_close(wb["model"][name], value, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_a_compiled_run_matches_eager_and_resumes(pack: Path, tmp_path: Path) -> None:
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert train_tiny(pack, eager, "--set", "train.iterations=6").exit_code == 0
    r = train_tiny(pack, compiled, "--set", "train.iterations=4", "--set", "train.compile=true")
    assert r.exit_code == 0, r.output
    r = train_tiny(
        pack, compiled, "--set", "train.iterations=6", "--set", "train.compile=true", "--resume"
    )
    assert r.exit_code == 0, r.output
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-3, abs=1e-5)
    state = torch.load(compiled / "checkpoints/iter-000006.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in state["model"])  # loads into a plain model
