"""OpenGait's GaitSet and GaitBase in gait (issue 12, items 2-4): the model section, the models,
GaitBase's objective, ``gait import-checkpoint``, and embeddings equal to OpenGait's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from gaittrain.config import ConfigError, config_from_dict, dump_config, load_config
from gaittrain.evaluation.embeddings_file import read_embeddings
from gaittrain.losses import TripletLoss
from gaittrain.models import MODELS, GaitBase, GaitSet, SetModel, build_model
from gaittrain.objective import Objective
from gaittrain.trained_model import load_model
from gaittrain.trainer import with_classes
from tests.cli import FAST, ROOT, assert_one_line_error, gait, make_pack
from tests.opengait_fixtures import fixture_pack, import_checkpoint

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "opengait"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"OpenGait reference fixtures not found at {FIXTURES}"
)
MODEL_NAMES = ("gaitset", "gaitbase")
CASIA_B = ROOT / "configs" / "casia-b.yaml"


# --- the model section ------------------------------------------------------------------------


def test_model_section_is_a_tagged_union_with_setnet_the_default() -> None:
    assert load_config(None).model.name == "setnet"
    assert config_from_dict({"model": {"channels": [8, 16, 32]}}).model.name == "setnet"
    base = load_config(None, ["model={name: gaitbase}"]).model
    assert (base.channels, base.layers, base.strides, base.bins, base.classes) == (
        [64, 128, 256, 512],
        [1, 1, 1, 1],
        [1, 2, 2, 1],
        [16],
        0,
    )
    cfg = load_config(CASIA_B, ["model.name=gaitset"])  # the same keys: a clean switch
    assert cfg.model.name == "gaitset" and cfg.model.channels == [32, 64, 128]
    assert list(yaml.safe_load(dump_config(cfg))["model"]) == ["name", "channels", "bins", "dim"]


@pytest.mark.parametrize(
    ("base", "overrides", "message"),
    [
        (
            None,
            ["model={name: gaitset, layers: [1, 1, 1, 1]}"],
            "unknown key 'model.layers' for model 'gaitset' (layers belongs to gaitbase",
        ),
        (None, ["model={name: resnet}"], "model.name is 'resnet'; use one of setnet, gaitset"),
        (None, ["model={name: gaitbase, channels: [8, 16]}"], "model.channels must hold 4 values"),
        (
            None,
            ["model={name: gaitbase}", "data.height=48"],
            "data.height 48 does not suit model.bins [16]: the backbone's strides leave 12 rows",
        ),
        (
            CASIA_B,
            ["model.name=gaitbase"],
            "--set model.name=gaitbase: the model section holds keys given for setnet",
        ),
        (None, ["data.augment.erase.area_min=0.5"], "area_min 0.5 is above area_max 0.2"),
        (None, ["data.augment.flip.chance=0.5"], "unknown key 'data.augment.flip.chance'"),
        (None, ["data.augment.rotate.prob=1.5"], "data.augment.rotate.prob must be at most 1"),
    ],
)
def test_model_and_augment_keys_are_strict(base, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(base, overrides)
    assert message in str(e.value)


@pytest.mark.parametrize("name", ["gaitset", "gaitbase", "tiny-gaitbase"])
def test_shipped_model_configs_load(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.model.name == ("gaitset" if name == "gaitset" else "gaitbase")
    assert cfg.loss.name == "triplet" and cfg.loss.margin == 0.2
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_a_bnneck_model_takes_the_training_subjects_as_classes() -> None:
    cfg = load_config(ROOT / "configs" / "tiny-gaitbase.yaml")
    assert with_classes(cfg, 20).model.classes == 20 and cfg.model.classes == 0
    with pytest.raises(Exception, match="model.classes is 74, but the run trains on 20 subjects"):
        with_classes(load_config(None, ["model={name: gaitbase, classes: 74}"]), 20)
    assert {"setnet", "gaitset", "gaitbase"} <= set(MODELS)
    with pytest.raises(ValueError, match="model.classes is 0"):
        build_model(cfg.model)


# --- the models -------------------------------------------------------------------------------


def small(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "gaitset":
        return GaitSet((4, 8, 8), (4, 2, 1), 6)
    return GaitBase((4, 8, 8, 8), (1, 1, 1, 1), (1, 2, 2, 1), False, (4, 2), 6, classes=3)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_give_parts_batch_dim_and_pool_over_sets(name: str) -> None:
    model = small(name).eval()
    parts = 14 if name == "gaitset" else 6
    x = torch.rand(3, 5, 16, 12)
    with torch.no_grad():
        emb = model(x)
        assert emb.shape == (parts, 3, 6) and model.parts == parts
        # order of the frames does not matter; lengths-packed batches equal fixed-length ones
        assert torch.allclose(model(x[:, torch.randperm(5)]), emb, atol=1e-6)
        packed = model(x.reshape(15, 16, 12), [5, 5, 5])
        assert torch.allclose(packed, emb, atol=1e-6)
        mixed = model(torch.cat([x[0], x[1, :2]]), [5, 2])
        assert torch.allclose(mixed[:, 0], emb[:, 0], atol=1e-6)
        assert torch.allclose(mixed[:, 1], model(x[1:2, :2])[:, 0], atol=1e-6)
    model.train()
    out = model(x)
    if name == "gaitset":
        assert isinstance(out, torch.Tensor) and out.shape == (parts, 3, 6)
    else:
        emb, logits = out
        assert emb.shape == (parts, 3, 6) and logits.shape == (parts, 3, 3)
        assert logits.abs().max() <= 1 + 1e-5  # cosines


def test_gaitbase_objective_is_triplet_plus_scaled_cross_entropy_on_the_logits() -> None:
    cfg = load_config(ROOT / "configs" / "tiny-gaitbase.yaml", ["model.dim=6"])
    objective = Objective(cfg, num_classes=3, parts=6)
    assert dict(objective.state_dict()) == {}  # the classifiers are the model's
    torch.manual_seed(1)
    feats, logits = torch.randn(6, 6, 6), torch.rand(6, 6, 3) * 2 - 1
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    want = TripletLoss(0.2)(feats, labels) + F.cross_entropy(
        (16 * logits).flatten(0, 1), labels.repeat(6), label_smoothing=0.1
    )
    assert objective(feats, labels, logits).item() == pytest.approx(want.item(), rel=1e-6)
    assert set(objective.stats) >= {"triplet/loss", "cross_entropy/loss", "cross_entropy/accuracy"}
    with pytest.raises(ValueError, match="BNNeck logits"):
        objective(feats, labels)
    setnet = Objective(load_config(None, ["cross_entropy.weight=0.1"]), num_classes=3, parts=31)
    assert set(setnet.state_dict()) == {"ce.weight"}  # setnet keeps its own classifiers


def test_a_gaitbase_step_gathers_its_logits_under_ddp(tmp_path: Path) -> None:
    """One gloo process: a DDP step of GaitBase (features and BNNeck logits gathered) equals the
    plain step, loss and parameters."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from gaittrain.trainer import build_optimizer, train_step

    cfg = with_classes(load_config(ROOT / "configs" / "tiny-gaitbase.yaml"), 4)
    frames, labels = torch.rand(8, 4, 32, 22), torch.arange(4).repeat_interleave(2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def step(distributed: bool):
        torch.manual_seed(0)
        model = build_model(cfg.model)
        objective = Objective(cfg, num_classes=4, parts=model.parts)
        optimizer = build_optimizer(cfg, list(model.parameters()))
        net = DistributedDataParallel(model) if distributed else model
        value, stepped = train_step(
            net, objective, optimizer, scaler, frames, labels, distributed=distributed
        )
        assert stepped
        return value, [q.detach().clone() for q in model.parameters()]

    plain, params = step(False)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        gathered, ddp_params = step(True)
    finally:
        dist.destroy_process_group()
    assert gathered == pytest.approx(plain, rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params, ddp_params, strict=True))


# --- OpenGait checkpoints ---------------------------------------------------------------------


@pytest.mark.slow
@needs_fixtures
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_imported_embeddings_equal_opengaits(name: str, tmp_path: Path) -> None:
    """`gait import-checkpoint`, then `gait embed` (whole sequences, 64 x 44 cut, /255) gives
    OpenGait's own inference embeddings, stored as the model computed them (float32: within 1e-4
    of the largest entry, the model's arithmetic); with --storage float16, those values rounded
    (one rounding step of the reference's float16 value more)."""
    r = import_checkpoint(FIXTURES / name, tmp_path / "run")
    assert r.exit_code == 0, r.output
    pack = fixture_pack(FIXTURES, tmp_path / "og.h5")
    r = gait("embed", tmp_path / "run", pack, "--out", tmp_path / "emb.h5", "--device", "cpu")
    assert r.exit_code == 0, r.output
    half = tmp_path / "emb16.h5"
    r = gait(
        "embed", tmp_path / "run", pack, "--out", half, "--device", "cpu", "--storage", "float16"
    )
    assert r.exit_code == 0, r.output
    ours, attrs = read_embeddings(tmp_path / "emb.h5")
    rounded, half_attrs = read_embeddings(half)
    assert attrs["storage"] == "float32" and half_attrs["storage"] == "float16"
    reference = np.load(FIXTURES / name / "embeddings.npz")
    assert len(ours) == len(rounded) == len(reference.files) == 6
    worst_abs = worst_rel = 0.0
    for key in reference.files:
        want = reference[key].T  # OpenGait's [channels, parts] -> gait's [parts, dim]
        got = ours[tuple(key.split("-"))]
        assert got.shape == want.shape and got.dtype == np.float32
        scale = np.abs(want).max()
        assert (np.abs(got - want) <= 1e-4 * scale).all()
        got16 = rounded[tuple(key.split("-"))]
        np.testing.assert_array_equal(got16, got.astype(np.float16).astype(np.float32))
        step = np.spacing(np.abs(want).astype(np.float16)).astype(np.float32)
        assert (np.abs(got16 - want.astype(np.float16)) <= step + 1e-4 * scale).all()
        worst_abs = max(worst_abs, float(np.abs(got - want).max()))
        worst_rel = max(worst_rel, float(np.abs(got - want).max() / scale))
    assert worst_rel <= 1e-3
    print(f"{name}: largest difference {worst_abs:.3g} absolute, {worst_rel:.3g} relative")
    assert attrs["max_frames"] == 0  # every frame of every sequence


@pytest.mark.slow
@needs_fixtures
def test_imported_run_records_its_source_and_is_not_resumed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert import_checkpoint(FIXTURES / "gaitbase", run).exit_code == 0
    record = json.loads((run / "data.json").read_text())
    assert record["imported"]["model"] == "Baseline" and record["train_subjects"] is None
    assert record["imported"]["iteration"] == 60000
    trained = load_model(run, torch.device("cpu"))
    assert trained.cfg.model.name == "gaitbase" and trained.cfg.model.classes == 74
    assert trained.path == run / "checkpoints" / "iter-060000.pt"
    r = import_checkpoint(FIXTURES / "gaitbase", run)
    assert_one_line_error(r, f"{run} is not empty")
    assert import_checkpoint(FIXTURES / "gaitset", tmp_path / "gaitset").exit_code == 0
    pack, config = make_pack(tmp_path / "sample.h5"), tmp_path / "gaitset" / "config.yaml"
    r = gait("train", config, "--pack", pack, "--out", tmp_path / "gaitset", "--resume", *FAST)
    assert_one_line_error(r, "was imported (gait import-checkpoint)")


@needs_fixtures
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("extra", "left over: Head.extra"),
        ("missing", "missing: gl_block3.2.conv.weight"),
        ("shape", "Head.fc_bin has shape [62, 128, 128], but the config's gaitset model needs"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_key(
    change: str, needle: str, tmp_path: Path
) -> None:
    ckpt = torch.load(FIXTURES / "gaitset" / "checkpoint.pt", weights_only=True)
    state = ckpt["model"]
    if change == "extra":
        state["Head.extra"] = torch.zeros(1)
    elif change == "missing":
        del state["gl_block3.2.conv.weight"]
    else:
        state["Head.fc_bin"] = state["Head.fc_bin"][..., :128]
    torch.save(ckpt, tmp_path / "bad.pt")
    r = gait(
        "import-checkpoint",
        tmp_path / "bad.pt",
        "--config",
        FIXTURES / "gaitset" / "config.yaml",
        "--out",
        tmp_path / "run",
    )
    assert_one_line_error(r, needle)
    assert not (tmp_path / "run").exists()


@needs_fixtures
@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ({"model": "SMPLGait"}, "cannot import OpenGait model 'SMPLGait'"),
        ({"backbone_cfg": {"type": "Plain"}}, "model_cfg.backbone_cfg.type is 'Plain'"),
        ({"FCs_extra": 1}, "model_cfg: cannot map FCs_extra"),
    ],
)
def test_a_model_that_cannot_be_mapped_is_refused(edit: dict, needle: str, tmp_path: Path) -> None:
    cfg = yaml.safe_load((FIXTURES / "gaitbase" / "config.yaml").read_text())
    cfg["model_cfg"].update(edit)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = gait(
        "import-checkpoint",
        FIXTURES / "gaitbase" / "checkpoint.pt",
        "--config",
        tmp_path / "c.yaml",
        "--out",
        tmp_path / "run",
    )
    assert_one_line_error(r, needle)


@pytest.mark.slow
@needs_fixtures
def test_imported_run_works_with_gait_eval(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert import_checkpoint(FIXTURES / "gaitset", run).exit_code == 0
    pack = make_pack(tmp_path / "sample.h5")
    out = tmp_path / "report.json"
    r = gait("eval", run, "--pack", pack, "--test-subjects", "001-006", "--out", out)
    assert r.exit_code == 0, r.output
    assert "NM: rank-1" in r.output
    assert "warning: this run was imported from OpenGait" in r.output
    report = json.loads(out.read_text())
    assert report["checkpoint"] == str(run / "checkpoints" / "iter-060000.pt")
    assert any("imported from OpenGait" in w for w in report["warnings"])


@pytest.mark.slow
def test_gaitbase_trains_and_evaluates(tmp_path: Path) -> None:
    """A few iterations of tiny-gaitbase (augmentation on), then `gait eval` of the run."""
    pack = make_pack(tmp_path / "sample.h5")
    run = tmp_path / "run"
    r = gait(
        "train",
        ROOT / "configs" / "tiny-gaitbase.yaml",
        "--pack",
        pack,
        "--out",
        run,
        "--train-subjects",
        "first:4",
        "--iterations",
        "3",
        *FAST,
        "--set",
        "data.augment.flip.prob=0.5",
        "--set",
        "data.augment.perspective.prob=0.5",
    )
    assert r.exit_code == 0, r.output
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"triplet/loss", "cross_entropy/loss"} <= set(log[-1])
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["classes"] == 0
    trained = load_model(run, torch.device("cpu"))
    assert isinstance(trained.model, GaitBase) and trained.model.classifier.shape[-1] == 4
    r = gait(
        "eval", run, "--pack", pack, "--test-subjects", "005-006", "--out", tmp_path / "r.json"
    )
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output


def test_setnet_is_unchanged() -> None:
    cfg = load_config(None)
    assert type(build_model(cfg.model)) is SetModel
