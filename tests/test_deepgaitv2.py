"""DeepGaitV2 in gait: the model (P3D, 2-D and 3-D blocks), sequences of any length, `gait
import-checkpoint` of OpenGait's checkpoints (embeddings equal to OpenGait's own), the shipped
configs, training through the CLI, resuming, and ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gaittrain.config import ConfigError, load_config
from gaittrain.evaluation.embeddings_file import read_embeddings
from gaittrain.models import BNNECK_MODELS, MODELS
from gaittrain.models.deepgaitv2 import DeepGaitV2
from gaittrain.opengait import KEY_RULES, gait_config, opengait_key, rule_set
from gaittrain.trained_model import load_model
from tests.cli import FAST, ROOT, assert_one_line_error, gait
from tests.opengait_fixtures import fixture_pack, import_checkpoint

FIXTURES = ROOT.parent / "shared" / "fixtures" / "opengait-models"
CASES = ("deepgaitv2", "deepgaitv2-gait3d")
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"OpenGait reference fixtures not found at {FIXTURES}"
)
TINY = ROOT / "configs" / "tiny-deepgaitv2.yaml"


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest difference, relative to the largest entry of ``want``."""
    return float((got - want).abs().max() / want.abs().max())


def small(mode: str, layers=(1, 2, 1, 2)) -> DeepGaitV2:
    """A narrow model with batch-norm statistics and biases away from their defaults."""
    torch.manual_seed(0)
    model = DeepGaitV2(mode, (4, 8, 8, 12), layers, (1, 2, 2, 1), (4, 2), 6, classes=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


# --- the config section -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deepgaitv2", "deepgaitv2-gait3d", "tiny-deepgaitv2"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.model.name == "deepgaitv2" and cfg.model.mode == "p3d"
    assert cfg.loss.name == "triplet" and cfg.cross_entropy.scale == 16
    assert cfg.data.sampling == "ordered"  # consecutive frames: the model convolves over time
    assert "deepgaitv2" in MODELS and "deepgaitv2" in BNNECK_MODELS


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model={name: deepgaitv2, mode: 4d}"], "model.mode is '4d'; use one of p3d, 2d, 3d"),
        (["model={name: deepgaitv2, layers: [1, 0, 1, 1]}"], "model.layers[1] must be at least 1"),
        (
            ["model={name: deepgaitv2}", "data.height=48"],
            "data.height 48 does not suit model.bins [16]: the backbone's strides leave 12 rows",
        ),
        (["model={name: deepgaitv2, maxpool: true}"], "maxpool belongs to gaitbase"),
    ],
)
def test_the_model_section_is_strict(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)


def test_strides_set_the_rows_the_height_must_leave() -> None:
    cfg = load_config(None, ["model={name: deepgaitv2, strides: [2, 2, 2, 1]}", "data.height=128"])
    assert cfg.model.rows(128) == 16
    with pytest.raises(ConfigError, match="leave 8 rows"):
        load_config(None, ["model={name: deepgaitv2, strides: [2, 2, 2, 1]}"])


# --- the model --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["p3d", "2d", "3d"])
def test_a_batch_of_different_lengths_embeds_each_sequence_as_alone(mode: str) -> None:
    """Packed sequences of different lengths: each embedding is the sequence's own, alone (a
    temporal convolution never sees another sequence's frames); fixed-length batches equal
    packed ones."""
    model = small(mode)
    torch.manual_seed(1)
    a, b, c = torch.rand(7, 16, 12), torch.rand(3, 16, 12), torch.rand(7, 16, 12)
    with torch.no_grad():
        alone = torch.cat([model(s[None]) for s in (a, b, c)], dim=1)
        packed = model(torch.cat([a, b, c]), [7, 3, 7])
        fixed = model(torch.stack([a, c]))
    assert packed.shape == (6, 3, 6)
    assert relative(packed, alone) <= 1e-5
    assert relative(fixed, alone[:, [0, 2]]) <= 1e-5
    if mode != "2d":  # frames do interact over time: order matters, unlike a set model
        with torch.no_grad():
            assert relative(model(a.flip(0)[None]), alone[:, :1]) > 1e-3


@pytest.mark.parametrize("mode", ["p3d", "3d"])
def test_long_sequences_embed_in_bounded_windows_with_the_same_embedding(mode: str) -> None:
    """In eval mode a batch of more than ``window`` frames goes through the backbone at most
    ``window + 2 * reach`` frames at a time, and its embeddings are those of one pass."""
    model = small(mode)
    assert model.reach == (5 if mode == "p3d" else 10)  # a frame per temporal convolution
    torch.manual_seed(2)
    seqs = [torch.rand(n, 16, 12) for n in (40, 3, 17, 1)]
    frames, lengths = torch.cat(seqs), [len(s) for s in seqs]
    with torch.no_grad():
        whole = model(frames, lengths)
        seen = []
        backbone = model.frame_maps
        model.frame_maps = lambda x, t: seen.append(len(x)) or backbone(x, t)
        for window in (1, 5, 16):
            model.window, seen[:] = window, []
            assert relative(model(frames, lengths), whole) <= 1e-5
            assert max(seen) <= window + 2 * model.reach and len(seen) > 1
        model.window = 8
        assert relative(model(seqs[0][None]), whole[:, :1]) <= 1e-5  # [B, T] input too


def test_training_mode_gives_embeddings_and_bnneck_cosines() -> None:
    model = small("p3d").train()
    emb, logits = model(torch.rand(4, 6, 16, 12))
    assert emb.shape == (6, 4, 6) and logits.shape == (6, 4, 3)
    assert logits.abs().max() <= 1 + 1e-5
    (emb.sum() + logits.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


#: OpenGait's names for some of the weights of each block mode (its deepgaitv2.py and modules.py:
#: a 2-D stage wrapped in SetBlockWrapper, a P3D block's convolutions each in one, 3-D blocks
#: plain), with their shapes for the small model's widths 4/8/8/12.
OPENGAIT_NAMES = {
    "p3d": {
        "layer0.forward_block.0.weight": (4, 1, 3, 3),
        "layer1.forward_block.0.bn2.running_var": (4,),
        "layer2.0.conv1.forward_block.0.weight": (8, 4, 3, 3),
        "layer2.0.conv2.forward_block.1.bias": (8,),
        "layer2.0.shortcut3d.weight": (8, 8, 3, 1, 1),
        "layer2.1.sbn.running_mean": (8,),
        "layer4.0.downsample.0.weight": (12, 8, 1, 1, 1),
        "FCs.fc_bin": (6, 12, 6),
        "BNNecks.bn1d.weight": (36,),
    },
    "2d": {
        "layer2.forward_block.0.conv1.weight": (8, 4, 3, 3),
        "layer2.forward_block.0.downsample.0.weight": (8, 4, 1, 1),
        "layer3.forward_block.0.bn1.running_mean": (8,),
    },
    "3d": {
        "layer2.0.conv1.weight": (8, 4, 3, 3, 3),
        "layer2.1.conv2.weight": (8, 8, 3, 3, 3),
        "layer2.0.downsample.0.weight": (8, 4, 1, 1, 1),
        "layer4.0.bn2.running_var": (12,),
    },
}


@pytest.mark.parametrize("mode", ["p3d", "2d", "3d"])
def test_every_weight_has_one_opengait_name(mode: str) -> None:
    model = small(mode)
    section = load_config(None, [f"model={{name: deepgaitv2, mode: {mode}}}"]).model
    names = {opengait_key(k, rule_set(section)): v.shape for k, v in model.state_dict().items()}
    assert len(names) == len(model.state_dict())  # one to one
    for name, shape in OPENGAIT_NAMES[mode].items():
        assert tuple(names[name]) == shape, name
    assert f"deepgaitv2/{mode}" in KEY_RULES


# --- OpenGait checkpoints ---------------------------------------------------------------------


@pytest.mark.slow
@needs_fixtures
@pytest.mark.parametrize("case", CASES)
def test_imported_embeddings_equal_opengaits(case: str, tmp_path: Path) -> None:
    """`gait import-checkpoint`, then `gait embed` (every frame, 64 x 44 cut, /255; the six
    sequences batched together by length) gives OpenGait's own inference embeddings, each
    sequence within 1e-5 of its largest entry."""
    run = tmp_path / "run"
    r = import_checkpoint(FIXTURES / case, run)
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((FIXTURES / case / "config.yaml").read_text())["model_cfg"]
    model = load_model(run, torch.device("cpu")).cfg.model
    assert (model.mode, model.layers, model.channels) == (
        cfg["Backbone"]["mode"],
        cfg["Backbone"]["layers"],
        cfg["Backbone"]["channels"],
    )
    assert model.classes == cfg["SeparateBNNecks"]["class_num"]
    assert model.dim == cfg["Backbone"]["channels"][2]
    pack = fixture_pack(FIXTURES, tmp_path / "og.h5")
    r = gait("embed", run, pack, "--out", tmp_path / "emb.h5", "--device", "cpu")
    assert r.exit_code == 0, r.output
    ours, attrs = read_embeddings(tmp_path / "emb.h5")
    reference = np.load(FIXTURES / case / "embeddings.npz")
    assert len(ours) == len(reference.files) == 6 and attrs["max_frames"] == 0
    worst = 0.0
    for key in reference.files:
        want = torch.from_numpy(reference[key].T)  # OpenGait's [channels, parts] -> [parts, dim]
        got = torch.from_numpy(ours[tuple(key.split("-"))])
        assert got.shape == want.shape
        worst = max(worst, relative(got, want))
    print(f"{case}: largest difference {worst:.3g} of the largest entry")
    assert worst <= 1e-5


@needs_fixtures
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("extra", "left over: layer2.0.extra.weight"),
        ("missing", "missing: layer3.0.shortcut3d.weight"),
        ("both", "left over: Backbone.x; missing: BNNecks.bn1d.running_var"),
        ("shape", "BNNecks.fc_bin has shape [16, 64, 99], but the config's deepgaitv2 model needs"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_keys(
    change: str, needle: str, tmp_path: Path
) -> None:
    case = "deepgaitv2-gait3d"
    ckpt = torch.load(FIXTURES / case / "checkpoint.pt", weights_only=True)
    state = ckpt["model"]
    if change == "extra":
        state["layer2.0.extra.weight"] = torch.zeros(1)
    elif change == "missing":
        del state["layer3.0.shortcut3d.weight"]
    elif change == "both":
        state["Backbone.x"] = state.pop("BNNecks.bn1d.running_var")
    else:
        state["BNNecks.fc_bin"] = state["BNNecks.fc_bin"][..., :99]
    torch.save(ckpt, tmp_path / "bad.pt")
    r = import_checkpoint(FIXTURES / case, tmp_path / "run", checkpoint=tmp_path / "bad.pt")
    assert_one_line_error(r, needle)
    assert not (tmp_path / "run").exists()


@needs_fixtures
@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ({"Backbone": {"mode": "4d"}}, "model_cfg.Backbone.mode is '4d'; gait maps p3d, 2d and 3d"),
        ({"Backbone": {"in_channels": 3}}, "model_cfg.Backbone.in_channels is 3; gait maps only 1"),
        ({"Backbone": {"layers": [1, 4]}}, "model_cfg.Backbone.layers must be a list of 4 ints"),
        ({"Backbone": {"width": 2}}, "model_cfg.Backbone: cannot map width"),
        ({"use_emb2": True}, "model_cfg.use_emb2 is True; gait maps only False"),
        ({"SeparateFCs": 16}, "model_cfg: cannot map SeparateFCs"),
    ],
)
def test_a_config_that_cannot_be_mapped_is_refused(edit: dict, needle: str, tmp_path: Path):
    cfg = yaml.safe_load((FIXTURES / "deepgaitv2" / "config.yaml").read_text())
    for key, value in edit.items():
        if isinstance(value, dict):
            cfg["model_cfg"][key].update(value)
        else:
            cfg["model_cfg"][key] = value
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = import_checkpoint(FIXTURES / "deepgaitv2", tmp_path / "run", config=tmp_path / "c.yaml")
    assert_one_line_error(r, needle)


def test_the_mapped_section_follows_the_config_not_the_fixture() -> None:
    """Sizes come from the OpenGait config: a 3-D model of other widths and classes."""
    model_cfg = {
        "model": "DeepGaitV2",
        "Backbone": {"mode": "3d", "in_channels": 1, "layers": [1, 0, 3, 1], "channels": [8] * 4},
        "SeparateBNNecks": {"class_num": 5},
    }
    cfg = gait_config(model_cfg)
    assert (cfg.model.mode, cfg.model.layers, cfg.model.dim, cfg.model.classes) == (
        "3d",
        [1, 1, 3, 1],  # OpenGait builds a stage's first block whatever its count
        8,
        5,
    )
    assert cfg.loss.name == "triplet" and cfg.cross_entropy.weight == 1.0


# --- training, resuming, export ---------------------------------------------------------------


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").open())]


@pytest.fixture(scope="module")
def tiny_run(sample_pack, tmp_path_factory) -> Path:
    """tiny-deepgaitv2 as shipped (P x K 4 x 4, 16 frames, augmentation on) for 20 iterations."""
    run = tmp_path_factory.mktemp("deepgaitv2") / "run"
    r = gait(
        "train",
        TINY,
        "--pack",
        sample_pack,
        "--out",
        run,
        *("--train-subjects", "first:4", "--iterations", "20", "--device", "cpu"),
        *("--set", "train.log_every=1"),
    )
    assert r.exit_code == 0, r.output
    return run


@pytest.mark.slow
def test_the_tiny_model_learns_through_the_cli(tiny_run: Path) -> None:
    values = losses(tiny_run)
    assert len(values) == 20
    assert sum(values[-5:]) / 5 < 0.9 * sum(values[:5]) / 5
    record = json.loads((tiny_run / "log.jsonl").read_text().splitlines()[-1])
    assert {"triplet/loss", "cross_entropy/loss"} <= set(record)
    trained = load_model(tiny_run, torch.device("cpu"))
    assert isinstance(trained.model, DeepGaitV2) and trained.model.classifier.shape[-1] == 4


@pytest.mark.slow
def test_a_resumed_run_logs_the_same_losses(sample_pack, tmp_path: Path) -> None:
    args = ["--pack", sample_pack, "--train-subjects", "first:4", "--device", "cpu", *FAST]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert gait("train", TINY, "--out", ref, "--iterations", "6", *args).exit_code == 0
    assert gait("train", TINY, "--out", run, "--iterations", "3", *args).exit_code == 0
    r = gait("train", TINY, "--out", run, "--iterations", "6", "--resume", *args)
    assert r.exit_code == 0, r.output
    assert len(losses(run)) == 6 and losses(run) == losses(ref)


@pytest.mark.slow
def test_onnx_export_equals_pytorch_for_any_length(tiny_run: Path, sample_pack, tmp_path: Path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    r = gait("export", tiny_run, out, "--pack", sample_pack)
    assert r.exit_code == 0, r.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = load_model(tiny_run, torch.device("cpu")).model
    rng = np.random.default_rng(0)
    for t in (1, 2, 9, 50):
        frames = (rng.random((t, 32, 22)) > 0.5).astype(np.uint8) * 255
        got = session.run(None, {"frames": frames})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(frames).float().div(255)[None])[:, 0]
        assert relative(torch.from_numpy(got), want) <= 1e-5, t
