"""CPU time of one training step, gait's code against OpenGait's, per model, on the same batch.

For each row, one random batch (P x K sequences of random frames, the labels of P subjects) and
two training steps on it, each side's own: gait's (the config's model placed as ``gait train``
places it: channels_last on the CPU; its objective; ``gaittrain.trainer.train_step``) and
OpenGait's (its model class built by its own ``build_network`` from the ``model_cfg`` of its own
YAML in ``DIR/configs``, with the widths, layers, strips and classes set to gait's config for
that row; its own TripletLoss (margin 0.2) and CrossEntropyLoss where its YAML has one, summed by
its LossAggregator's ``forward``; then its ``run_train`` / ``BaseModel.train_step`` body in
float32: forward on ``(ipts=[frames], labs, typs, vies, seqL=None)`` with the frames a leaf that
requires grad, as its ``inputs_pretreament`` makes them in training, ``zero_grad``, the loss
check, ``backward``, ``step``). Both sides use the gait config's optimizer (``build_optimizer``)
and no learning-rate schedule. The steps alternate, gait then OpenGait, after one warm-up step
each; each row reports the median CPU time (``time.process_time``: this process's, the measure a
busy machine disturbs least) per step of each side and OpenGait's / gait's (above 1: gait is
faster). Run with one thread (OMP_NUM_THREADS=1), as below.

What is checked in each row, before any step: the OpenGait ``model_cfg`` maps back onto gait's
config (``gaittrain.opengait.model_section``: same widths, layers, strips, dims, classes); the
losses are the config's (margin, cross-entropy scale and smoothing); both models have the same
trainable parameter count (asserted; printed); and, with OpenGait's freshly initialised weights
loaded into gait's model (``gaittrain.opengait.convert_state``, as ``gait import-checkpoint``
does), both give the same embeddings on the batch (the largest difference, relative to the
largest embedding value, printed: float rounding, gait's convolutions run channels_last). The
steps are then timed from those same weights. The batch's shape is the same on both sides. The
first step's losses are recorded: equal to 3-4 digits where a cross-entropy is part of the
objective; with the triplet loss alone OpenGait's is slightly lower at initialisation (0.199 vs
0.2), since its batch-all triplets count the anchor as its own positive (d(a, a) = 0) and gait's
do not.

Rows: the tiny configs (configs/tiny-*.yaml: P x K 4 x 4) and the paper configs
(configs/{gaitset,gaitbase,gaitpart,gaitgl,deepgaitv2}.yaml) at P x K 2 x 4 (``--batch``), so a
CPU step takes seconds. GaitSet has no tiny config: its row is the paper config's. Two tiny rows
run at 64 x 44 (``data.height=64``) instead of 32 x 22, since OpenGait fixes what the tiny config
changes: GaitGL's 64 GeM strips (``model.bins=[64]``: 32 x 22 frames leave 16 x 11 cells, which
64 strips do not divide) and DeepGaitV2's 16 strips and input width (its forward asserts a width
of 44 or 88; ``model.bins=[16]``).

OpenGait's code is not part of gait: give a checkout of ShiqiYu/OpenGait (commit 0efafd4) with
``--opengait DIR``; its ``DIR/opengait`` goes on ``sys.path`` and its modules are imported as they
are. Of the third-party packages they import, torchvision and einops are not gait dependencies:
this script puts small stand-ins in ``sys.modules`` (what the five models use at run time:
torchvision's ResNet ``BasicBlock`` and ``_make_layer``, which OpenGait's ResNet9 builds on, and
einops' ``rearrange`` for the patterns these models use; the rest only has to import). A
single-process gloo group is initialised: OpenGait's losses all-gather across processes.

    mkdir -p /tmp/opengait   # a checkout of 0efafd4: a clone, or from a mirror of the repository
    git --git-dir=/work/.mirror/ShiqiYu+OpenGait/repo archive HEAD opengait configs \
        | tar -x -C /tmp/opengait   # (the mirror lacks assets/gallery.gif: archive these two)
    OMP_NUM_THREADS=1 nice -n 10 python bench/opengait_step.py --opengait /tmp/opengait \
        [--steps 5] [--rows tiny-gaitbase gaitset ...] [--profile 15]

Prints a table and writes bench/results/opengait_step.json. CUDA rows wait for a GPU: none is
available on the machine these figures come from; the same script with the models and batch on
``cuda`` (and ``torch.cuda.synchronize`` around each step) would give them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import importlib.util
import json
import socket
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn

from gaittrain.config import Config, load_config
from gaittrain.data.dataset import cut_width
from gaittrain.device import place_model
from gaittrain.models import build_model
from gaittrain.objective import Objective
from gaittrain.opengait import convert_state, model_section
from gaittrain.shipped import resolve
from gaittrain.trainer import build_optimizer, train_step, with_classes

#: gait model name -> (OpenGait class, its module under modeling/models, its CASIA-B YAML).
OPENGAIT = {
    "gaitset": ("GaitSet", "gaitset", "gaitset/gaitset.yaml"),
    "gaitbase": ("Baseline", "baseline", "gaitbase/gaitbase_da_casiab.yaml"),
    "gaitpart": ("GaitPart", "gaitpart", "gaitpart/gaitpart.yaml"),
    "gaitgl": ("GaitGL", "gaitgl", "gaitgl/gaitgl.yaml"),
    "deepgaitv2": ("DeepGaitV2", "deepgaitv2", "deepgaitv2/DeepGaitV2_casiab.yaml"),
}

#: Tiny rows: (row, config, --set overrides). GaitGL and DeepGaitV2 at 64 x 44: see above.
TINY = [
    ("tiny-gaitbase", "tiny-gaitbase", []),
    ("tiny-gaitpart", "tiny-gaitpart", []),
    ("tiny-gaitgl@64x44", "tiny-gaitgl", ["data.height=64", "model.bins=[64]"]),
    ("tiny-deepgaitv2@64x44", "tiny-deepgaitv2", ["data.height=64", "model.bins=[16]"]),
]
PAPER = ["gaitset", "gaitbase", "gaitpart", "gaitgl", "deepgaitv2"]


# --- OpenGait's imports -------------------------------------------------------------------------


def _stub_torchvision() -> None:
    """torchvision is no gait dependency. OpenGait imports it in data/transform.py,
    utils/msg_manager.py and modeling/modules.py (RoIAlign), used by neither these models nor
    their losses, and in modeling/backbones/resnet.py, whose ResNet9 subclasses torchvision's
    ResNet and builds its stages with ResNet._make_layer and BasicBlock: those two are written
    out here as torchvision (0.15-0.2x) runs them for ResNet9 (groups 1, base width 64, no
    dilation, BatchNorm2d); of ResNet.__init__ only what ResNet9 keeps (its ReLU and max-pool)."""

    def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
            super().__init__()
            self.conv1 = conv3x3(inplanes, planes, stride)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = conv3x3(planes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            return self.relu(out)

    class Bottleneck(nn.Module):  # named by resnet.py's block_map; no model here uses it
        expansion = 4

    class RoIAlign(nn.Module):  # imported by modeling/modules.py; no model here uses it
        pass

    class ResNet(nn.Module):
        def __init__(self, block, layers, **kwargs):
            super().__init__()
            self.inplanes = 64
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate=False):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            layers = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

    root = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.BasicBlock, resnet.Bottleneck, resnet.ResNet = BasicBlock, Bottleneck, ResNet
    transforms = types.ModuleType("torchvision.transforms")  # imported, not used here
    utils = types.ModuleType("torchvision.utils")  # imported, not used here
    ops = types.ModuleType("torchvision.ops")
    ops.RoIAlign = RoIAlign
    root.__path__, models.__path__ = [], []  # packages, for `import torchvision.ops`
    root.models, models.resnet, root.transforms, root.utils = models, resnet, transforms, utils
    root.ops = ops
    for name, module in (
        ("torchvision", root),
        ("torchvision.models", models),
        ("torchvision.models.resnet", resnet),
        ("torchvision.transforms", transforms),
        ("torchvision.utils", utils),
        ("torchvision.ops", ops),
    ):
        sys.modules.setdefault(name, module)


def _rearrange(x: torch.Tensor, pattern: str, **sizes) -> torch.Tensor:
    """einops.rearrange for the patterns these models and their modules run (einops is no gait
    dependency): the same permute-then-reshape that einops does."""
    if pattern == "n c s h w -> (n s) c h w":  # Baseline's and DeepGaitV2's visual summary
        n, c, s, h, w = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(n * s, c, h, w)
    if pattern == "n s c h w -> n c s h w":
        return x.permute(0, 2, 1, 3, 4)
    raise NotImplementedError(f"rearrange stand-in: {pattern!r}")


def import_opengait(root: Path) -> types.SimpleNamespace:
    """OpenGait's model classes and loss code from the checkout ``root``, imported as they are.
    ``modeling.models`` is registered as a bare package so that its ``__init__`` (which imports
    every model, with their own third-party packages) does not run."""
    src = root / "opengait"
    if not (src / "modeling" / "models" / "baseline.py").is_file():
        raise SystemExit(f"--opengait {root}: no OpenGait checkout (opengait/modeling/models/)")
    _stub_torchvision()
    if importlib.util.find_spec("einops") is None:
        einops = types.ModuleType("einops")
        einops.rearrange = _rearrange
        sys.modules["einops"] = einops
    sys.path.insert(0, str(src))
    package = types.ModuleType("modeling.models")
    package.__path__ = [str(src / "modeling" / "models")]
    sys.modules["modeling.models"] = package
    classes = {
        gait_name: getattr(importlib.import_module(f"modeling.models.{module}"), cls)
        for gait_name, (cls, module, _) in OPENGAIT.items()
    }
    aggregator = importlib.import_module("modeling.loss_aggregator")
    return types.SimpleNamespace(
        classes=classes,
        LossAggregator=aggregator.LossAggregator,
        losses=importlib.import_module("modeling.losses"),
        utils=importlib.import_module("utils"),
    )


def init_process_group() -> None:
    """A single-process gloo group: OpenGait's losses all-gather their inputs and scale by the
    world size (gather_and_scale_wrapper)."""
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


# --- the two sides ------------------------------------------------------------------------------


def sized_model_cfg(model_cfg: dict, m) -> dict:
    """OpenGait's ``model_cfg`` (from its YAML) with the sizes of gait's model section ``m``."""
    cfg = copy.deepcopy(model_cfg)
    parts = sum(m.bins)
    if m.name == "gaitset":
        cfg["in_channels"] = [1, *m.channels]
        cfg["SeparateFCs"] = {
            "in_channels": m.channels[-1],
            "out_channels": m.dim,
            "parts_num": 2 * parts,
        }
        cfg["bin_num"] = list(m.bins)
    elif m.name == "gaitbase":
        cfg["backbone_cfg"].update(
            channels=list(m.channels),
            layers=list(m.layers),
            strides=list(m.strides),
            maxpool=m.maxpool,
        )
        cfg["SeparateFCs"] = {
            "in_channels": m.channels[-1],
            "out_channels": m.dim,
            "parts_num": parts,
        }
        cfg["SeparateBNNecks"] = {"class_num": m.classes, "in_channels": m.dim, "parts_num": parts}
        cfg["bin_num"] = list(m.bins)
    elif m.name == "gaitpart":
        layers = []
        for i, (c, h) in enumerate(zip(m.channels, m.halving, strict=True), 1):
            layers.append(f"FC-{c}-{h}" if h else f"BC-{c}")
            if i in m.pool_after:
                layers.append("M")
        cfg["backbone_cfg"]["layers_cfg"] = layers
        cfg["SeparateFCs"] = {
            "in_channels": m.channels[-1],
            "out_channels": m.dim,
            "parts_num": parts,
        }
        cfg["bin_num"] = list(m.bins)
    elif m.name == "gaitgl":
        cfg.update(channels=list(m.channels), class_num=m.classes)
    elif m.name == "deepgaitv2":
        cfg["Backbone"].update(mode=m.mode, channels=list(m.channels), layers=list(m.layers))
        cfg["SeparateBNNecks"] = {"class_num": m.classes}
    return cfg


def check_same_model(model_cfg: dict, dataset: str, m) -> None:
    """gait's reading of the OpenGait ``model_cfg`` is gait's model section ``m``."""
    mapped = model_section(model_cfg, dataset)
    section = dataclasses.asdict(m)
    differ = {
        k: (v, section[k])
        for k, v in mapped.items()
        if (list(v) if isinstance(v, list | tuple) else v)
        != (list(section[k]) if isinstance(section[k], list | tuple) else section[k])
    }
    assert not differ, f"OpenGait's model_cfg maps to another model: {differ}"


def check_same_loss(loss_cfg: list[dict], cfg: Config) -> None:
    """OpenGait's losses are the gait config's objective."""
    by_type = {c["type"]: c for c in loss_cfg}
    assert cfg.loss.name == "triplet" and by_type["TripletLoss"]["margin"] == cfg.loss.margin
    ce = by_type.get("CrossEntropyLoss")
    assert (ce is not None) == (cfg.cross_entropy.weight > 0), "cross-entropy in one side only"
    if ce is not None:
        smoothing = ce.get("eps", 0.1) if ce.get("label_smooth", True) else 0.0
        assert ce.get("scale", 16) == cfg.cross_entropy.scale
        assert smoothing == cfg.cross_entropy.label_smoothing
        assert ce.get("loss_term_weight", 1.0) == cfg.cross_entropy.weight


def build_opengait(og, cfg: Config, root: Path):
    """OpenGait's model for gait's ``cfg`` (freshly initialised by its init_parameters) and its
    LossAggregator, both without BaseModel.__init__ (which loads data and moves to CUDA)."""
    yaml_path = OPENGAIT[cfg.model.name][2]
    full = yaml.safe_load((root / "configs" / yaml_path).read_text())
    model_cfg = sized_model_cfg(full["model_cfg"], cfg.model)
    dataset = full["data_cfg"]["dataset_name"]
    check_same_model(model_cfg, dataset, cfg.model)
    loss_cfg = full["loss_cfg"] if isinstance(full["loss_cfg"], list) else [full["loss_cfg"]]
    check_same_loss(loss_cfg, cfg)

    cls = og.classes[cfg.model.name]
    model = cls.__new__(cls)
    nn.Module.__init__(model)
    model.cfgs = {"data_cfg": full["data_cfg"], "model_cfg": model_cfg}  # GaitGL reads its name
    model.build_network(model_cfg)
    model.init_parameters()
    model.train()

    # LossAggregator._build_loss_ without .cuda() and the DDP wrapper (these losses have no
    # parameters, where get_ddp_module returns the loss itself); its forward is OpenGait's.
    aggregator = og.LossAggregator.__new__(og.LossAggregator)
    nn.Module.__init__(aggregator)
    built = {}
    for c in loss_cfg:
        loss = og.utils.get_attr_from([og.losses], c["type"])
        built[c["log_prefix"]] = loss(
            **og.utils.get_valid_args(loss, c, ["type", "gather_and_scale"])
        )
    aggregator.losses = nn.ModuleDict(built)
    return model, aggregator


def trainable(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


def compare(row: str, config: str, sets: list[str], og, root: Path, steps: int, profile: int):
    cfg = load_config(resolve(config, "config"), sets)
    p, k = cfg.data.batch.p, cfg.data.batch.k
    cfg = with_classes(cfg, p)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    h = cfg.data.height
    w = h - 2 * cut_width(h) if cfg.data.cut else h
    frames = torch.rand(p * k, cfg.data.frames, h, w)
    labels = torch.arange(p).repeat_interleave(k)

    og_model, aggregator = build_opengait(og, cfg, root)
    gait_model = place_model(build_model(cfg.model), cfg, cpu)
    gait_model.load_state_dict(convert_state(og_model.state_dict(), cfg, "OpenGait's model"))
    objective = Objective(cfg, num_classes=p, parts=gait_model.parts)
    gait_params = trainable(gait_model, objective)
    og_params = trainable(og_model, aggregator)
    assert gait_params == og_params, f"{row}: parameters {gait_params} (gait) != {og_params}"

    typs, vies = ["nm-01"] * len(labels), ["090"] * len(labels)

    def og_inputs():  # inputs_pretreament: np2var(..., requires_grad=True) in training
        return [frames.detach().requires_grad_(True)], labels, typs, vies, None

    with torch.no_grad():  # same weights, same batch: same embeddings (batch-statistics BN)
        out = gait_model(frames)
        gait_emb = out[0] if isinstance(out, tuple) else out
        og_emb = og_model(og_inputs())["training_feat"]["triplet"]["embeddings"]
    og_emb = og_emb.permute(2, 0, 1)  # [n, c, p] -> gait's [parts, batch, dim]
    rel_diff = ((gait_emb - og_emb).abs().max() / og_emb.abs().max()).item()

    gait_opt = build_optimizer(cfg, list(gait_model.parameters()) + list(objective.parameters()))
    og_opt = build_optimizer(cfg, [q for q in og_model.parameters() if q.requires_grad])
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def gait_step() -> float:
        return train_step(gait_model, objective, gait_opt, scaler, frames, labels)[0]

    def og_step() -> float:  # run_train + BaseModel.train_step, enable_float16 false
        retval = og_model(og_inputs())
        loss_sum, _ = aggregator(retval["training_feat"])
        og_opt.zero_grad()
        _ = bool(loss_sum <= 1e-9)  # OpenGait's check (it only warns): a host sync
        loss_sum.backward()
        og_opt.step()
        return float(loss_sum.detach())

    losses = {"gait": gait_step(), "opengait": og_step()}  # warm-up; first losses, same weights
    times: dict[str, list[float]] = {"gait": [], "opengait": []}
    for _ in range(steps):
        for side, step in (("gait", gait_step), ("opengait", og_step)):
            c0 = time.process_time()
            step()
            times[side].append(time.process_time() - c0)
    if profile:
        for side, step in (("gait", gait_step), ("opengait", og_step)):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                step()
            print(f"\n{row}: {side}'s step, top {profile} ops by self CPU time")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile))
    gait_ms = 1000 * statistics.median(times["gait"])
    og_ms = 1000 * statistics.median(times["opengait"])
    return {
        "row": row,
        "config": config,
        "set": sets,
        "batch": f"{p}x{k}",
        "frames": cfg.data.frames,
        "input": f"{h}x{w}",
        "params_gait": gait_params,
        "params_opengait": og_params,
        "embedding_max_rel_diff": float(f"{rel_diff:.3g}"),
        "first_loss_gait": round(losses["gait"], 4),
        "first_loss_opengait": round(losses["opengait"], 4),
        "steps": steps,
        "gait_cpu_ms": round(gait_ms, 1),
        "opengait_cpu_ms": round(og_ms, 1),
        "opengait_over_gait": round(og_ms / gait_ms, 2),
        "gait_cpu_ms_all": [round(1000 * t, 1) for t in times["gait"]],
        "opengait_cpu_ms_all": [round(1000 * t, 1) for t in times["opengait"]],
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--opengait", type=Path, required=True, help="a ShiqiYu/OpenGait checkout")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side (after a warm-up)")
    ap.add_argument(
        "--batch",
        type=int,
        nargs=2,
        default=(2, 4),
        metavar=("P", "K"),
        help="P x K of the paper rows (default 2 4)",
    )
    names = [r for r, _, _ in TINY] + PAPER
    ap.add_argument("--rows", nargs="+", choices=names, default=names)
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after timing, print each side's top N ops of one step",
    )
    ap.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "opengait_step.json",
    )
    args = ap.parse_args()
    og = import_opengait(args.opengait.resolve())
    init_process_group()
    p, k = args.batch
    plan = TINY + [(c, c, [f"data.batch.p={p}", f"data.batch.k={k}"]) for c in PAPER]
    rows = []
    print(
        f"one training step, CPU time per step (median of {args.steps}, interleaved), "
        f"{torch.get_num_threads()} thread(s)"
    )
    header = (
        f"{'row':22} {'P x K':>5} {'frames':>6} {'input':>6} {'params':>10} {'emb rel':>8} "
        f"{'gait ms':>8} {'OpenGait ms':>11} {'OG/gait':>7}"
    )
    print(header)
    for row, config, sets in plan:
        if row not in args.rows:
            continue
        r = compare(row, config, sets, og, args.opengait.resolve(), args.steps, args.profile)
        rows.append(r)
        print(
            f"{r['row']:22} {r['batch']:>5} {r['frames']:>6} {r['input']:>6} "
            f"{r['params_gait']:>10} {r['embedding_max_rel_diff']:>8.1g} {r['gait_cpu_ms']:>8.1f} "
            f"{r['opengait_cpu_ms']:>11.1f} {r['opengait_over_gait']:>7.2f}",
            flush=True,
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
