"""A trained embedding model as ONNX: one sequence of silhouette frames in, its embedding out.

The graph takes ``frames``, uint8 [T, H, W] with any number of frames T: silhouettes normalized
like the pack the model was trained on (the pack's ``size``, ``min_sum``, ``binarize`` and
``largest_blob``), resized to the model's ``height`` and cut at the sides as the model was trained
(``data.height``, ``data.cut``). It returns ``embedding``, float32 [parts, dim], the embedding
``gait embed`` computes for the whole sequence. Everything a deployment must reproduce before the
graph is written into the model's metadata (``gait.*`` keys; docs/deploy.md).

After writing, the file is checked: onnxruntime embeds a few sequences of the pack and must agree
with PyTorch to :data:`TOLERANCE`; otherwise nothing is left behind.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gaitprep.errors import GaitError
from gaitprep.files import OutputLock, atomic_output
from gaitprep.pack import Pack
from gaittrain.data.dataset import PackDataset, cut_width
from gaittrain.trained_model import load_model, pack_normalization

#: Largest difference between onnxruntime's and PyTorch's embeddings an export may show.
TOLERANCE = 1e-4
OPSET = 17


class ExportError(GaitError):
    """An export that cannot be made or does not match PyTorch."""


class SequenceEmbedder(nn.Module):
    """uint8 frames [T, H, W] of one sequence -> its embedding [parts, dim] (eval mode)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float().div(255.0).unsqueeze(0)
        return self.model(x)[:, 0]


def export_onnx(run: Path, pack: Path, out: Path, check_sequences: int = 4) -> dict:
    """Write the model of ``run`` (a run folder or checkpoint) to ``out`` as ONNX, with the
    preprocessing of ``pack`` in its metadata, and check it against PyTorch on the first
    ``check_sequences`` sequences of the pack.

    Returns a summary: the metadata, the largest difference found and the time per sequence of
    each runtime (CPU, one call per sequence). ``out`` is locked and checked before any work (a
    device or FIFO is refused, a link written through).
    """
    with OutputLock(out):
        return _export(run, pack, out, check_sequences)


def _export(run: Path, pack: Path, out: Path, check_sequences: int) -> dict:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ExportError(
            "gait export needs onnx and onnxruntime: pip install onnx onnxruntime"
        ) from None
    trained = load_model(run, torch.device("cpu"))
    cfg = trained.cfg
    with Pack(pack) as p:
        normalization = pack_normalization(p)
        fingerprint = p.fingerprint
    data = PackDataset([pack], None, frames=None, height=cfg.data.height, cut=cfg.data.cut)
    try:
        samples = [data[i][0] for i in range(min(check_sequences, len(data)))]
    finally:
        data.close()
    if not samples:
        raise ExportError(f"{pack} holds no sequence to check the export on")
    module = SequenceEmbedder(trained.model).eval()
    height = cfg.data.height or int(normalization["size"])
    metadata = {
        "gait.checkpoint": str(trained.path),
        "gait.checkpoint_fingerprint": trained.fingerprint,
        "gait.model": cfg.model.name,
        "gait.pack_fingerprint": fingerprint,
        "gait.height": str(height),
        "gait.cut": str(cut_width(height) if cfg.data.cut else 0),
        "gait.input": "uint8 frames [T, height, height - 2 * cut], 255 = silhouette",
        "gait.output": "float32 embedding [parts, dim]; distance: mean over parts of Euclidean",
        **{f"gait.normalization.{k}": json.dumps(_plain(v)) for k, v in normalization.items()},
    }
    with atomic_output(out) as tmp:
        # The TorchScript-based exporter: the torch.export-based one needs onnxscript, a
        # dependency gait does not take; this one is deprecated but exact for these models
        # (checked below on every export).
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module,
                (samples[0],),
                str(tmp),
                dynamo=False,
                input_names=["frames"],
                output_names=["embedding"],
                dynamic_axes={"frames": {0: "frames"}},
                opset_version=OPSET,
            )
        graph = onnx.load(str(tmp))
        for k, v in metadata.items():
            graph.metadata_props.add(key=k, value=v)
        onnx.save(graph, str(tmp))
        check = _check(onnxruntime, tmp, module, samples)
    return {"metadata": metadata, **check}


def _check(onnxruntime, path: Path, module: nn.Module, samples) -> dict:
    """Largest |onnxruntime - PyTorch| over ``samples`` and the time per sequence of each;
    ExportError above :data:`TOLERANCE`."""
    options = onnxruntime.SessionOptions()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst, t_onnx, t_torch = 0.0, 0.0, 0.0
    for frames in samples:
        t0 = time.perf_counter()
        got = session.run(None, {"frames": frames.numpy()})[0]
        t1 = time.perf_counter()
        with torch.no_grad():
            want = module(frames).numpy()
        t2 = time.perf_counter()
        t_onnx, t_torch = t_onnx + t1 - t0, t_torch + t2 - t1
        worst = max(worst, float(np.abs(got - want).max()))
    if worst > TOLERANCE:
        raise ExportError(
            f"the ONNX model differs from PyTorch by {worst:.3g} (more than {TOLERANCE}); "
            "nothing was written"
        )
    n = len(samples)
    return {
        "opset": OPSET,
        "checked": n,
        "max_difference": worst,
        "onnx_seconds": t_onnx / n,
        "torch_seconds": t_torch / n,
    }


def _plain(v):
    """An HDF5 attribute value as a JSON-able Python value."""
    return v.item() if isinstance(v, np.generic) else v
