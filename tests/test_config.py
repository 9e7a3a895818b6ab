"""Strict YAML configs: unknown keys and bad values are errors that name them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gaittrain.config import Config, ConfigError, dump_config, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["casia-b", "ou-mvlp", "tiny"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.loss.name == "center_ranked"
    assert load_config(None, []).to_dict() == Config().to_dict()


def test_paper_scale_settings() -> None:
    cfg = load_config(CONFIGS / "casia-b.yaml")
    assert (cfg.data.batch.p, cfg.data.batch.k, cfg.data.frames) == (8, 16, 30)
    assert cfg.model.channels == [32, 64, 128] and cfg.model.dim == 256
    assert load_config(CONFIGS / "ou-mvlp.yaml").data.batch.p == 32


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "optim: {lr: 0.1, momentun: 0.9}\n",
            "unknown key 'optim.momentun' (did you mean 'momentum'?)",
        ),
        ("data: {batch: {p: 4, kk: 2}}\n", "unknown key 'data.batch.kk'"),
        ("lossy: {}\n", "unknown key 'lossy' (did you mean 'loss'?)"),
        ("optim: {lr: fast}\n", "optim.lr must be float"),
        ("data: {cache: 1}\n", "data.cache must be true or false"),
        ("loss: {name: quadruplet}\n", "loss.name is 'quadruplet'"),
        ("train: {iterations: 0}\n", "train.iterations must be at least 1"),
        ("model: {channels: 32}\n", "model.channels must be a list"),
        ("- 1\n- 2\n", "the config must be a mapping"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert message in str(e.value)


def test_set_overrides_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        ["optim.lr=0.01", "loss={name: triplet}", "data.batch.p=4", "model.bins=[4, 1]"],
    )
    assert cfg.optim.lr == 0.01 and cfg.loss.name == "triplet"
    assert cfg.loss.margin == 0.2  # the whole section replaced: triplet's own default
    assert load_config(None, ["loss.name=triplet"]).loss.margin == 0.2  # triplet's own default
    assert cfg.data.batch.p == 4 and cfg.model.bins == [4, 1]
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        load_config(None, ["optim.lr"])


def test_center_ranked_options_defaults_and_choices() -> None:
    loss = load_config(None, ["loss={name: center_ranked, reading: r0}"]).loss
    assert (loss.anchor, loss.centers, loss.memory_momentum, loss.normalize) == (
        "center",
        "batch",
        0.9,
        True,
    )
    section = (
        "{name: center_ranked, reading: r0, anchor: both, centers: memory, memory_momentum: 0, "
        "normalize: false}"
    )
    loss = load_config(None, [f"loss={section}"]).loss
    assert (loss.anchor, loss.centers, loss.memory_momentum, loss.normalize) == (
        "both",
        "memory",
        0.0,
        False,
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("loss.anchor=middle", "loss.anchor is 'middle'; use one of center, sample, both"),
        ("loss.centers=global", "loss.centers is 'global'; use one of batch, memory"),
        ("loss.memory_momentum=1", "loss.memory_momentum must be less than 1 (got 1)"),
        ("loss.memory_momentum=1.5", "loss.memory_momentum must be less than 1 (got 1.5)"),
        ("loss.memory_momentum=-0.1", "loss.memory_momentum must be at least 0 (got -0.1)"),
        ("loss.memory_momentum=.nan", "loss.memory_momentum must be a finite number"),
        ("loss.normalize=1", "loss.normalize must be true or false"),
        (
            "loss={name: triplet, centers: memory}",
            "unknown key 'loss.centers' for loss 'triplet' (centers belongs to center_ranked)",
        ),
        (
            "loss={name: ranked_list, normalize: false}",
            "unknown key 'loss.normalize' for loss 'ranked_list' (normalize belongs to "
            "center_ranked)",
        ),
    ],
)
def test_center_ranked_options_are_checked(setting: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [setting])
    assert message in str(e.value)
