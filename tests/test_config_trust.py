"""Configs that cannot be trusted are refused in one line before a run writes anything.

Each refusal is checked twice: through ``load_config`` (a ConfigError naming the problem) and end to
end through ``gait train`` (exit 1, one line, no traceback, nothing created where --out points).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gaitcli.main import cli
from gaitprep.layout import CASIA_B
from gaitprep.prep import PrepJob, run_prep
from gaittrain.config import ConfigError, config_from_dict, dump_config, load_config, saved_config
from gaittrain.data.splits import load_protocol

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
DEEP = 5000  # far deeper than the YAML loader's recursion allows
# A valid one-iteration run on the sample pack, were it not for the case's own problem.
FAST = [
    "--device",
    "cpu",
    "--iterations",
    "1",
    "--train-subjects",
    "first:4",
    "--set",
    "data.batch.p=4",
    "--set",
    "data.batch.k=2",
    "--set",
    "data.workers=0",
    "--set",
    "data.frames=8",
]
# Added last to the refused runs: a selector that matches no subject, so that code which let the
# config through stops at the split instead of training 10^23 iterations or allocating 10^11
# frames. The config's refusal (the message each case checks) has to come first.
NO_SUBJECT = ["--train-subjects", "900-901"]


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust") / "sample.h5"
    run_prep(
        PrepJob(raw=ROOT / "sample_data" / "casia-b", out=out, dataset="casia-b", layout=CASIA_B),
        workers=1,
    )
    return out


def write(folder: Path, text: str, name: str = "c.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def train(config: Path, pack: Path, out: Path, *extra) -> object:
    args = ["train", config, "--pack", pack, "--out", out, *FAST, *extra]
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_refusal(result, message: str, work: Path) -> None:
    """Exit 1 with one line holding ``message``, no traceback, and nothing written under work."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert message in result.output, result.output
    assert not work.exists(), sorted(p.name for p in work.rglob("*"))


# (config text or None for configs/tiny.yaml, extra `gait train` options, the message)
REFUSED = {
    "foreign_loss_key": (
        "loss: {name: triplet, margin: 0.2, alpha: 2.0}\n",
        [],
        "unknown key 'loss.alpha' for loss 'triplet' (alpha belongs to center_ranked, "
        "ranked_list); known: name, margin",
    ),
    "loss_switch_keeps_other_keys": (
        "loss: {name: center_ranked, reading: r0, alpha: 1.2, margin: 0.4}\n",
        ["--set", "loss.name=triplet"],
        "--set loss.name=triplet: the loss section holds keys given for center_ranked "
        "(reading, alpha, margin)",
    ),
    "height_48": (
        "data: {height: 48}\n",
        [],
        "data.height 48 does not suit model.bins [16, 8, 4, 2, 1]",
    ),
    "height_40": (
        "data: {height: 40}\n",
        [],
        "use a multiple of 64 (64, 128, 192, ...)",
    ),
    "huge_dim": (
        "model: {dim: 100000000000000000000}\n",
        [],
        "model.dim must be at most 65536",
    ),
    "float_dim": ("model: {dim: 1.0e+20}\n", [], "model.dim must be int (a whole number)"),
    "huge_frames": (
        "data: {frames: 100000000000}\n",
        ["--set", "data.frames=100000000000"],
        "data.frames must be at most 10000",
    ),
    "huge_iterations": (
        None,
        ["--iterations", str(10**23)],
        "train.iterations must be at most 1000000000",
    ),
    "huge_batch": (None, ["--set", "data.batch.p=100000000"], "data.batch.p must be at most"),
    "too_many_workers": (None, ["--set", "data.workers=100000"], "data.workers must be at most"),
    "infinite_lr": ("optim: {lr: .inf}\n", [], "optim.lr must be a finite number"),
    "margin_not_below_alpha": (
        "loss: {name: center_ranked, alpha: 0.3, margin: 0.5}\n",
        [],
        "loss.margin must be less than loss.alpha",
    ),
    "negative_seed_in_config": ("seed: -1\n", [], "seed must be at least 0"),
    "negative_seed_option": (None, ["--seed", "-1"], "seed must be at least 0"),
    "deep_nesting": (
        "model: {bins: " + "[" * DEEP + "]" * DEEP + "}\n",
        [],
        "nested deeper than",
    ),
    "not_a_mapping_with_iterations": (
        "- 1\n- 2\n",
        ["--iterations", "5"],
        "the config must be a mapping",
    ),
    "duplicate_key": (
        "optim: {lr: 0.01}\ntrain: {amp: none}\noptim: {lr: 0.1}\n",
        [],
        "duplicate key 'optim' on line 3 (first on line 1)",
    ),
    "nested_duplicate_key": (
        "data:\n  frames: 8\n  cache: true\n  frames: 16\n",
        [],
        "duplicate key 'frames' on line 4 (first on line 2)",
    ),
}


def overrides(extra: list[str]) -> list[str]:
    """The ``--set`` equivalents of a case's options, for load_config."""
    out = []
    for opt, value in zip(extra[::2], extra[1::2], strict=True):
        key = {"--iterations": "train.iterations", "--seed": "seed"}.get(opt)
        out.append(value if opt == "--set" else f"{key}={value}")
    return out


@pytest.mark.parametrize("case", REFUSED)
def test_refused_in_one_line_before_anything_is_written(case, pack: Path, tmp_path: Path) -> None:
    text, extra, message = REFUSED[case]
    config = TINY if text is None else write(tmp_path / "cfg", text)
    with pytest.raises(ConfigError) as e:
        load_config(config, overrides(extra))
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    work = tmp_path / "work"
    result = train(config, pack, work / "run", *extra, *NO_SUBJECT)
    assert_one_line_refusal(result, message, work)


def test_triplet_margin_is_its_own_default(tmp_path: Path) -> None:
    for cfg in (
        load_config(write(tmp_path, "loss: {name: triplet}\n")),
        load_config(None, ["loss={name: triplet}"]),
        load_config(None, ["loss.name=triplet"]),  # no other key given: a clean switch
    ):
        assert cfg.to_dict()["loss"] == {"name": "triplet", "margin": 0.2}
    ranked = load_config(None, ["loss={name: ranked_list}"]).to_dict()["loss"]
    assert ranked == {
        "name": "ranked_list",
        "alpha": 1.2,
        "margin": 0.4,
        "t_n": 10.0,
        "t_p": 0.0,
        "lam": 1.0,
    }


def test_each_loss_dumps_only_its_keys_and_loads_back(tmp_path: Path) -> None:
    sections = {
        "center_ranked": "{name: center_ranked, reading: r0, alpha: 1.1, margin: 0.3, t_n: 5.0, "
        "t_p: 1.0, lam: 0.5, anchor: sample, detach_center: true}",
        "ranked_list": "{name: ranked_list, alpha: 1.0, margin: 0.2, lam: 2.0}",
        "triplet": "{name: triplet, margin: 0.3}",
    }
    ranked = ["name", "alpha", "margin", "t_n", "t_p", "lam"]
    keys = {
        "center_ranked": [
            *ranked,
            "anchor",
            "detach_center",
            "centers",
            "memory_momentum",
            "normalize",
            "reading",
            "temperature",
            "beta",
        ],
        "ranked_list": ranked,
        "triplet": ["name", "margin"],
    }
    for name, section in sections.items():
        cfg = load_config(TINY, [f"loss={section}"])
        text = dump_config(cfg)
        assert list(yaml.safe_load(text)["loss"]) == keys[name]
        again = load_config(write(tmp_path, text, f"{name}.yaml"))
        assert again.to_dict() == cfg.to_dict()
        assert dump_config(again) == text
        assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    centered = load_config(TINY, [f"loss={sections['center_ranked']}"]).loss
    assert (centered.anchor, centered.detach_center, centered.t_p) == ("sample", True, 1.0)


def test_a_center_ranked_config_stored_before_the_readings_is_r0(tmp_path: Path) -> None:
    """A run saved before the loss had readings (no ``reading`` key, r0 the only one) resumes
    as r0 with its stored values, not as today's default reading; one saved since keeps its
    reading, whatever the default."""
    stored = load_config(TINY).to_dict()
    stored["loss"] = {"name": "center_ranked", "alpha": 1.2, "margin": 0.4, "t_n": 10.0}
    stored["loss"] |= {"t_p": 0.0, "lam": 1.0, "anchor": "center", "detach_center": False}
    loss = config_from_dict(stored, saved=True).loss
    assert (loss.reading, loss.alpha, loss.margin, loss.normalize) == ("r0", 1.2, 0.4, True)
    assert config_from_dict(stored).loss.reading == "r2"  # a new config: today's default
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(stored))
    assert saved_config(path).loss.reading == "r0"  # a run folder's, as the trainer reads it
    stored["loss"] = {"name": "center_ranked", "reading": "r3"}
    assert config_from_dict(stored, saved=True).loss.reading == "r3"


def test_height_must_suit_the_bins(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.height 48 does not suit model.bins"):
        load_config(None, ["data.height=48", "model.bins=[16, 8, 4, 2, 1]"])
    with pytest.raises(ConfigError, match=r"use a multiple of 32 \(32, 64, 96, ...\)"):
        load_config(None, ["data.height=48", "model.bins=[8, 4, 2, 1]"])
    assert load_config(None, ["data.height=64"]).data.height == 64
    assert load_config(None, ["data.height=96", "model.bins=[8, 4, 2, 1]"]).data.height == 96
    assert load_config(None, ["data.height=48", "model.bins=[4, 3, 1]"]).data.height == 48
    assert load_config(TINY).data.height == 32


def test_protocol_with_a_duplicate_key_is_refused(pack: Path, tmp_path: Path) -> None:
    protocol = write(
        tmp_path / "proto",
        "name: mine\ntrain: 001-002\ntest: 005-006\ntrain: 001-004\n",
        "mine.yaml",
    )
    with pytest.raises(ValueError, match=r"duplicate key 'train' on line 4 \(first on line 2\)"):
        load_protocol(str(protocol))
    fast = [a for a in FAST if a not in ("--train-subjects", "first:4")]
    args = ["train", TINY, "--pack", pack, "--out", tmp_path / "run", *fast]
    args += ["--set", f"data.protocol={protocol}"]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "duplicate key 'train' on line 4" in result.output


def test_a_loss_name_that_is_not_a_string_is_one_line() -> None:
    with pytest.raises(ConfigError, match="loss.name is"):
        load_config(ROOT / "configs" / "tiny.yaml", ["loss.name=[1]"])
