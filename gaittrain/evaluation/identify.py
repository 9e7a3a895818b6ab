"""Identify one raw sequence against a gallery: preprocess as `gait prep`, embed, rank subjects."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from gaitprep.layout import IMAGE_EXTENSIONS, RawSequence
from gaitprep.pack import Pack
from gaitprep.process import Params, process_sequence
from gaittrain.data.dataset import shape_frames
from gaittrain.evaluation.embed import embed_dataset, read_embeddings
from gaittrain.evaluation.metrics import distance_blocks


def gallery_embeddings(gallery: Path, model, cfg, device) -> tuple[dict, Params]:
    """Embeddings of a gallery given as an embeddings file or as a pack (embedded now), and the
    normalization parameters of the pack it came from."""
    with h5py.File(gallery, "r") as f:
        is_embeddings = "embeddings" in f
    if is_embeddings:
        emb, attrs = read_embeddings(gallery)
        source = Path(attrs.get("pack", ""))
        params = _params(source) if source.is_file() else Params()
        return emb, params
    from gaittrain.data.dataset import PackDataset

    data = PackDataset([gallery], frames=None, height=cfg.data.height, cut=cfg.data.cut)
    arr = embed_dataset(model, data, device)
    return {data.key(j): arr[j] for j in range(len(data))}, _params(gallery)


def _params(pack: Path) -> Params:
    with Pack(pack) as p:
        a = p.attrs
    return Params(int(a["size"]), int(a["min_sum"]), bool(a["binarize"]), bool(a["largest_blob"]))


@torch.no_grad()
def identify(
    folder: Path, model, cfg, gallery: dict, params: Params, device, top_k: int = 5
) -> dict:
    """The ``top_k`` gallery subjects nearest to the sequence in ``folder`` (a subject's distance
    is that of its nearest gallery sequence)."""
    files = sorted(
        f.name
        for f in Path(folder).iterdir()
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise FileNotFoundError(f"{folder} holds no png, jpg or bmp frame")
    seq = RawSequence("?", "?", "?", "?", ".", tuple(files))
    res = process_sequence(Path(folder), seq, params)
    if len(res.frames) == 0:
        raise ValueError(f"no frame of {folder} has enough foreground to normalize")
    x = shape_frames(res.frames, cfg.data.height, cfg.data.cut)
    frames = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0).to(device)
    probe = model(frames, [len(frames)]).permute(1, 0, 2).float().cpu()  # [1, parts, dim]
    keys = list(gallery)
    g = torch.from_numpy(np.stack([gallery[k] for k in keys]))
    ((_, d),) = distance_blocks(probe, g)
    best: dict[str, tuple[float, tuple]] = {}
    for key, dist in zip(keys, d[0].tolist(), strict=True):
        if key[0] not in best or dist < best[key[0]][0]:
            best[key[0]] = (dist, key)
    ranked = sorted(best.items(), key=lambda kv: kv[1][0])[:top_k]
    return {
        "sequence": str(folder),
        "frames_read": res.read,
        "frames_used": len(res.frames),
        "matches": [
            {"rank": i + 1, "subject": s, "distance": round(dist, 6), "nearest": "-".join(key)}
            for i, (s, (dist, key)) in enumerate(ranked)
        ],
    }
