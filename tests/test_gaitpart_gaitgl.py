"""GaitPart and GaitGL in gait: their config sections, the models (packed batches, GaitGL's
long sequences), `gait import-checkpoint` of OpenGait checkpoints with embeddings equal to
OpenGait's own, refusals, and the tiny configs through `gait train`, `--resume` and `gait
export`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gaittrain.config import ConfigError, config_from_dict, load_config
from gaittrain.data.dataset import PackDataset
from gaittrain.evaluation.embeddings_file import read_embeddings
from gaittrain.models import BNNECK_MODELS, MODELS, GaitGL, GaitPart, build_model
from gaittrain.trained_model import load_model
from tests.cli import ROOT, assert_one_line_error, gait
from tests.opengait_fixtures import fixture_pack, import_checkpoint

FIXTURES = ROOT.parent / "shared" / "fixtures" / "opengait-models"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"OpenGait reference fixtures not found at {FIXTURES}"
)
#: the fixtures' folders: GaitPart, GaitGL's CASIA-B branch, GaitGL's deep (OU-MVLP, GREW) one
CASES = ("gaitpart", "gaitgl", "gaitgl-grew")
CONFIGS = ROOT / "configs"


# --- the config sections ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gaitpart", "gaitgl", "tiny-gaitpart", "tiny-gaitgl"])
def test_shipped_configs_load_and_round_trip(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.name == name.removeprefix("tiny-")
    assert cfg.data.sampling == "ordered" and cfg.loss.name == "triplet"
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_both_are_registered_and_gaitgl_carries_logits() -> None:
    assert {"gaitpart", "gaitgl"} <= set(MODELS)
    assert "gaitgl" in BNNECK_MODELS and "gaitpart" not in BNNECK_MODELS
    with pytest.raises(ValueError, match="model.classes is 0"):
        build_model(load_config(CONFIGS / "tiny-gaitgl.yaml").model)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model={name: gaitpart, halving: [0, 1]}"], "model.halving holds 2 values"),
        (["model={name: gaitpart, pool_after: [4, 2]}"], "model.pool_after [4, 2] must name"),
        (["model={name: gaitpart, pool_after: [7]}"], "convolutions 1 to 6"),
        (["model={name: gaitpart, squeeze: 200}"], "model.squeeze 200 leaves no channel"),
        (["model={name: gaitpart}", "data.height=32"], "does not suit model.bins [16]"),
        (["model={name: gaitgl, branch: oumvlp}"], "model.branch is 'oumvlp'; use one of"),
        (["model={name: gaitgl, branch: deep}"], "branch deep takes 4"),
        (["model={name: gaitgl}", "data.height=32"], "does not suit model.bins [64]"),
        (["model={name: gaitgl, layers: [1]}"], "unknown key 'model.layers' for model 'gaitgl'"),
    ],
)
def test_model_keys_are_strict(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)


# --- the models -------------------------------------------------------------------------------


def small(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "gaitpart":
        return GaitPart((4, 4, 8, 8), (0, 1, 2, 2), (2,), (8, 2), 6, squeeze=2)
    if name == "gaitgl":
        return GaitGL("casia-b", (4, 6, 8), 3, (32, 4), 6, classes=3)
    return GaitGL("deep", (4, 6, 8, 8), 1, (32,), 6, classes=3)


@pytest.mark.parametrize("name", ["gaitpart", "gaitgl", "gaitgl-deep"])
def test_a_packed_batch_gives_each_sequence_its_own_embedding(name: str) -> None:
    """Sequences of different lengths in one packed batch (and a fixed-length batch) embed as
    each does alone: nothing leaks across a sequence's ends."""
    model = small(name).eval()
    torch.manual_seed(1)
    x = torch.rand(31, 32, 22)
    lengths = [10, 7, 10, 4]
    with torch.no_grad():
        alone = [model(s[None])[:, 0] for s in x.split(lengths)]
        packed = model(x, lengths)
        fixed = model(torch.stack([x[:10], x[17:27]]))
    assert packed.shape == (model.parts, 4, 6)
    for i, want in enumerate(alone):
        torch.testing.assert_close(packed[:, i], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fixed, packed[:, [0, 2]], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lengths must be positive and sum to the 31 rows"):
        model(x, [10, 7])


@pytest.mark.parametrize("name", ["gaitgl", "gaitgl-deep"])
def test_gaitgl_embeds_a_long_sequence_in_bounded_passes_with_the_same_result(name: str) -> None:
    """A sequence longer than ``chunk`` LTA steps goes through in passes of a bounded number of
    frames, and its embedding is that of one pass over all of it (any chunk, any length: also
    one, two and four frames, which the LTA's repetition handles)."""
    model = small(name).eval()
    seen: list[int] = []
    model.stem.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[2]))
    torch.manual_seed(2)
    x = torch.rand(1, 100, 32, 22)
    with torch.no_grad():
        model.chunk = 33  # 100 frames are 33 LTA steps: one pass
        whole = model(x)
        assert seen == [100]
        for chunk in (1, 2, 5):
            seen.clear()
            model.chunk = chunk
            torch.testing.assert_close(model(x), whole, rtol=1e-5, atol=1e-6)
            reach = 3 * (chunk + 2 * model.stage_reach) + 2 * model.stem_reach
            assert len(seen) == -(-33 // chunk) and max(seen) <= reach
        for t in (1, 2, 4, 7):
            model.chunk = 1
            short = model(x[:, :t])
            model.chunk = 32
            torch.testing.assert_close(short, model(x[:, :t]), rtol=1e-5, atol=1e-6)
        # one frame is repeated to three, two to four (OpenGait's rule)
        torch.testing.assert_close(model(x[:, :1]), model(x[:, [0, 0, 0]]))
        torch.testing.assert_close(model(x[:, :2]), model(x[:, [0, 1, 0, 1]]))


def test_gaitgl_trains_on_its_normalized_embeddings_and_linear_logits() -> None:
    model = small("gaitgl").train()
    emb, logits = model(torch.rand(4, 6, 32, 22))
    assert emb.shape == (36, 4, 6) and logits.shape == (36, 4, 3)
    torch.testing.assert_close(logits, emb.matmul(model.classifier))
    # one batch norm per embedding channel, its statistics over all parts and sequences
    flat = emb.detach().permute(2, 0, 1).reshape(6, -1)
    torch.testing.assert_close(flat.mean(1), model.bn.bias.detach(), atol=1e-5, rtol=0)


# --- OpenGait checkpoints ---------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize("case", CASES)
def test_imported_embeddings_equal_opengaits(case: str, tmp_path: Path) -> None:
    """`gait import-checkpoint`, then `gait embed` (whole sequences of 11 and 12 frames packed
    into one batch, 64 x 44 cut, /255) gives OpenGait's inference embeddings to 1e-5 of each
    sequence's largest value."""
    r = import_checkpoint(FIXTURES / case, tmp_path / "run")
    assert r.exit_code == 0, r.output
    pack = fixture_pack(FIXTURES, tmp_path / "og.h5")
    out = tmp_path / "emb.h5"
    r = gait("embed", tmp_path / "run", pack, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    ours, attrs = read_embeddings(out)
    reference = np.load(FIXTURES / case / "embeddings.npz")
    assert len(ours) == len(reference.files) == 6 and attrs["max_frames"] == 0
    worst = 0.0
    for key in reference.files:
        want = reference[key].T  # OpenGait's [channels, parts] -> gait's [parts, dim]
        got = ours[tuple(key.split("-"))]
        assert got.shape == want.shape and got.dtype == np.float32
        relative = float(np.abs(got - want).max() / np.abs(want).max())
        assert relative <= 1e-5, (key, relative)
        worst = max(worst, relative)
    print(f"{case}: largest difference {worst:.3g} of the sequence's largest value")


@needs_fixtures
def test_imported_runs_record_their_model_and_branch(tmp_path: Path) -> None:
    for case, branch, classes in (("gaitgl", "casia-b", 74), ("gaitgl-grew", "deep", 100)):
        assert import_checkpoint(FIXTURES / case, tmp_path / case).exit_code == 0
        cfg = load_model(tmp_path / case, torch.device("cpu")).cfg
        assert (cfg.model.branch, cfg.model.classes, cfg.data.sampling) == (
            branch,
            classes,
            "ordered",
        )
        assert cfg.cross_entropy.scale == 1.0
        record = json.loads((tmp_path / case / "data.json").read_text())
        assert record["imported"]["model"] == "GaitGL"
    assert import_checkpoint(FIXTURES / "gaitpart", tmp_path / "gaitpart").exit_code == 0
    model = load_model(tmp_path / "gaitpart", torch.device("cpu")).model
    assert isinstance(model, GaitPart) and model.parts == 16 and model.dim == 128


def edited_checkpoint(case: str, tmp_path: Path, edit) -> Path:
    ckpt = torch.load(FIXTURES / case / "checkpoint.pt", weights_only=True)
    edit(ckpt["model"])
    torch.save(ckpt, tmp_path / "bad.pt")
    return tmp_path / "bad.pt"


@needs_fixtures
@pytest.mark.parametrize(
    ("case", "key"),
    [
        ("gaitpart", "TFA.pooling_func.conv1d3x3.15.2.conv.weight"),
        ("gaitpart", "Backbone.forward_block.feature.12.conv.weight"),
        ("gaitgl", "Bn.running_var"),
        ("gaitgl", "HPP.p"),
        ("gaitgl-grew", "GLConvB2.1.local_conv3d.conv3d.weight"),
        ("gaitgl-grew", "conv3d.2.conv3d.weight"),
    ],
)
def test_a_key_left_over_or_missing_is_refused_by_name(case: str, key: str, tmp_path: Path) -> None:
    def drop(state: dict) -> None:
        del state[key]

    def add(state: dict) -> None:
        state[key.rsplit(".", 1)[0] + ".extra"] = torch.zeros(1)

    r = import_checkpoint(
        FIXTURES / case, tmp_path / "run", checkpoint=edited_checkpoint(case, tmp_path, drop)
    )
    assert_one_line_error(r, f"missing: {key}")
    r = import_checkpoint(
        FIXTURES / case, tmp_path / "run", checkpoint=edited_checkpoint(case, tmp_path, add)
    )
    assert_one_line_error(r, f"left over: {key.rsplit('.', 1)[0]}.extra")
    assert not (tmp_path / "run").exists()


@needs_fixtures
def test_a_checkpoint_of_the_other_branch_or_class_count_is_refused(tmp_path: Path) -> None:
    """GaitGL's layout follows data_cfg.dataset_name: the CASIA-B checkpoint with a GREW config
    leaves keys over and misses others; another class_num is a shape the config does not give."""
    cfg = yaml.safe_load((FIXTURES / "gaitgl" / "config.yaml").read_text())
    cfg["data_cfg"]["dataset_name"] = "GREW"
    cfg["model_cfg"]["channels"] = [16, 32, 64, 128]
    (tmp_path / "grew.yaml").write_text(yaml.safe_dump(cfg))
    r = import_checkpoint(FIXTURES / "gaitgl", tmp_path / "run", config=tmp_path / "grew.yaml")
    assert_one_line_error(r, "left over: GLConvA0.global_conv3d", "missing: conv3d.2.conv3d")
    cfg = yaml.safe_load((FIXTURES / "gaitgl" / "config.yaml").read_text())
    cfg["model_cfg"]["class_num"] = 75
    (tmp_path / "c75.yaml").write_text(yaml.safe_dump(cfg))
    r = import_checkpoint(FIXTURES / "gaitgl", tmp_path / "run", config=tmp_path / "c75.yaml")
    assert_one_line_error(r, "Head1.fc_bin has shape [64, 128, 74], but the config's gaitgl")


@needs_fixtures
@pytest.mark.parametrize(
    ("case", "edit", "needle"),
    [
        ("gaitgl", {"data_cfg": None}, "GaitGL's layout follows data_cfg.dataset_name"),
        ("gaitgl", {"channels": [32, 64, 128, 256]}, "model_cfg.channels must be a list of 3"),
        ("gaitgl-grew", {"channels": [16, 32, 64]}, "model_cfg.channels must be a list of 4"),
        (
            "gaitgl",
            {"SeparateBNNecks": {"class_num": 74, "in_channels": 128, "parts_num": 64}},
            "model_cfg: cannot map SeparateBNNecks",
        ),
        (
            "gaitpart",
            {"layers_cfg": ["BC-32", "M", "M", "FC-64-2"]},
            "a max-pool M must follow a convolution",
        ),
        ("gaitpart", {"layers_cfg": ["BC-32", "XC-64"]}, "cannot map layer 'XC-64'"),
        ("gaitpart", {"type": "ResNet9"}, "backbone_cfg.type is 'ResNet9'; gait maps only 'Plain'"),
        ("gaitpart", {"parts_num": 8}, "SeparateFCs.parts_num is 8; gait maps only 16"),
    ],
)
def test_a_config_that_cannot_be_mapped_is_refused(
    case: str, edit: dict, needle: str, tmp_path: Path
) -> None:
    cfg = yaml.safe_load((FIXTURES / case / "config.yaml").read_text())
    model = cfg["model_cfg"]
    for key, value in edit.items():
        if key == "data_cfg":
            del cfg["data_cfg"]
        elif key in ("layers_cfg", "type"):
            model["backbone_cfg"][key] = value
        elif key == "parts_num":
            model["SeparateFCs"][key] = value
        else:
            model[key] = value
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = import_checkpoint(FIXTURES / case, tmp_path / "run", config=tmp_path / "c.yaml")
    assert_one_line_error(r, needle)


# --- the tiny configs through the CLI ---------------------------------------------------------

#: A quick run on the sample pack: 20 iterations, 4 training subjects, the configs' own batch
#: and frames, a log line per step, a short warm-up.
QUICK = [
    *("--iterations", "20", "--train-subjects", "first:4", "--device", "cpu"),
    *("--set", "train.log_every=1", "--set", "schedule.warmup=5"),
]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_runs(sample_pack, tmp_path_factory) -> dict[str, Path]:
    """tiny-gaitpart and tiny-gaitgl trained 20 iterations each on the sample pack (~10 s each);
    copy a run before writing into it."""
    base = tmp_path_factory.mktemp("tiny-runs")
    runs = {}
    for name in ("tiny-gaitpart", "tiny-gaitgl"):
        run = base / name
        r = gait("train", CONFIGS / f"{name}.yaml", "--pack", sample_pack, "--out", run, *QUICK)
        assert r.exit_code == 0, r.output
        runs[name] = run
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-gaitpart", "tiny-gaitgl"])
def test_tiny_variants_learn(name: str, tiny_runs) -> None:
    values = losses(tiny_runs[name])
    assert len(values) == 20 and all(np.isfinite(values))
    assert sum(values[-5:]) < 0.97 * sum(values[:5]), values
    log = json.loads((tiny_runs[name] / "log.jsonl").read_text().splitlines()[-1])
    if name == "tiny-gaitgl":
        assert {"triplet/loss", "cross_entropy/loss"} <= set(log)
        model = load_model(tiny_runs[name], torch.device("cpu")).model
        assert model.classifier.shape == (32, 32, 4)  # one class per training subject


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-gaitpart", "tiny-gaitgl"])
def test_resume_continues_as_one_run(name: str, sample_pack, tmp_path: Path) -> None:
    """8 iterations at once, or 4 then --resume to 8: the same losses (constant learning rate,
    so that a resumed run may extend its iterations)."""
    args = ["--pack", sample_pack, *QUICK, "--set", "schedule.name=constant"]
    args += ["--set", "data.batch.k=2", "--checkpoint-every", "4"]
    config = CONFIGS / f"{name}.yaml"
    r = gait("train", config, "--out", tmp_path / "ref", "--iterations", "8", *args)
    assert r.exit_code == 0, r.output
    r = gait("train", config, "--out", tmp_path / "run", "--iterations", "4", *args)
    assert r.exit_code == 0, r.output
    r = gait("train", config, "--out", tmp_path / "run", "--iterations", "8", "--resume", *args)
    assert r.exit_code == 0, r.output
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-gaitpart", "tiny-gaitgl"])
def test_export_to_onnx_equals_pytorch_for_any_length(name: str, tiny_runs, sample_pack) -> None:
    """`gait export`, then onnxruntime on every sample sequence, on a 100-frame one (which
    PyTorch embeds in passes for GaitGL, the graph in one) and on 1, 2 and 3 frames (which
    GaitGL repeats, in the graph too)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model_file = tiny_runs[name].parent / f"{name}.onnx"
    r = gait("export", tiny_runs[name], model_file, "--pack", sample_pack)
    assert r.exit_code == 0, r.output
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    trained = load_model(tiny_runs[name], torch.device("cpu"))
    if isinstance(trained.model, GaitGL):
        trained.model.chunk = 4
    cfg = trained.cfg
    data = PackDataset([sample_pack], None, frames=None, height=cfg.data.height, cut=cfg.data.cut)
    try:
        sequences = [data[i][0] for i in range(len(data))]
    finally:
        data.close()
    sequences += [torch.cat(sequences[:10])[:100], *(sequences[0][:t] for t in (1, 2, 3))]
    worst = 0.0
    for frames in sequences:
        got = session.run(None, {"frames": frames.numpy()})[0]
        with torch.no_grad():
            want = trained.model(frames.float().div(255)[None])[:, 0].numpy()
        assert got.shape == want.shape == (trained.model.parts, cfg.model.dim)
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst <= 1e-4
