"""Evaluation reports: JSON (docs/eval-report.md), CSV, and one self-contained HTML page.

The HTML page embeds its images as data URIs and loads nothing from the network: the summary,
per-view tables, probe-view x gallery-view heatmaps, CMC curves, the training-loss curve, failed
probes beside their wrong and right matches (those the table counts as misses), the config, the
environment and the pack's provenance. Every format names the storage of the embeddings the
figures were computed from (``storage``: float32, the model's values, or float16). Every string
that comes from data is escaped by the template engine.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import platform
import sys
from pathlib import Path

import jinja2
import numpy as np
import torch

from gaitprep.pack import Pack


def stored_as(result: dict) -> str:
    """The storage of the embeddings a result was computed from (float32 where it names none:
    a result of ``protocol.evaluate`` on embeddings held in memory)."""
    return str(result.get("storage", "float32"))


def to_csv(result: dict) -> str:
    """One row per condition group and probe view, then the group means; every row names the
    embeddings' storage."""
    buf = io.StringIO()
    w = csv.writer(buf)
    storage = stored_as(result)
    w.writerow(["condition", "probe_view", "rank1", "storage"])
    for name, c in result["conditions"].items():
        for view, value in c["per_view"].items():
            w.writerow([name, view, "" if value is None else f"{value:.6f}", storage])
        w.writerow([name, "mean", "" if c["rank1"] is None else f"{c['rank1']:.6f}", storage])
    return buf.getvalue()


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(result: dict, log: list[dict]) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {"heatmaps": {}}
    views = result["views"]
    for name, c in result["conditions"].items():
        grid = np.full((len(views), len(views)), np.nan)
        for i, pv in enumerate(views):
            for j, gv in enumerate(views):
                v = c["cells"].get(pv, {}).get(gv)
                grid[i, j] = np.nan if v is None else 100 * v
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
        ax.set_xticks(range(len(views)), views, rotation=90, fontsize=7)
        ax.set_yticks(range(len(views)), views, fontsize=7)
        ax.set_xlabel("gallery view")
        ax.set_ylabel("probe view")
        ax.set_title(f"{name} rank-1 (%)")
        fig.colorbar(im, ax=ax)
        plots["heatmaps"][name] = _png(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, c in result["conditions"].items():
        if c["cmc"]:
            ax.plot(
                range(1, len(c["cmc"]) + 1), [100 * x for x in c["cmc"]], marker="o", label=name
            )
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate (%)")
    ax.set_title("CMC")
    ax.legend()
    ax.grid(alpha=0.3)
    plots["cmc"] = _png(fig)
    if log:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.plot([r["iteration"] for r in log], [r["loss"] for r in log])
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.set_title("training loss")
        ax.grid(alpha=0.3)
        plots["loss"] = _png(fig)
    return plots


def _thumb(pack: Pack, key) -> str | None:
    try:
        frames = pack[tuple(key)]
    except Exception:  # a key missing from the pack only loses its thumbnail
        return None
    import cv2

    ok, buf = cv2.imencode(".png", frames[len(frames) // 2])
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None


TEMPLATE = Path(__file__).with_name("report.html.j2")


def to_html(
    result: dict,
    *,
    title: str,
    pack_path: Path,
    log: list[dict],
    config_text: str,
    provenance: dict,
) -> str:
    """The self-contained HTML report of ``result``, a result of ``protocol.evaluate``.

    The failed probes shown are ``result["failures"]``: those the table itself counts as misses,
    with the middle frames of the probe and of its matches read from the pack at ``pack_path``.
    The provenance table names the embeddings' storage.
    """
    fails = [dict(f) for f in result.get("failures", [])]
    provenance = {**provenance, "embeddings storage": stored_as(result)}
    with Pack(pack_path) as pack:
        for f in fails:
            for part in ("probe", "wrong", "right"):
                f[f"{part}_img"] = _thumb(pack, f[part]) if f[part] else None
        provenance = {**provenance, **{f"pack.{k}": v for k, v in pack.attrs.items()}}
    provenance.update(
        {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
        }
    )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals["pct"] = lambda x: "–" if x is None else f"{100 * x:.1f}"
    return env.get_template(TEMPLATE.name).render(
        title=title,
        r=result,
        plots=_plots(result, log),
        fails=fails,
        provenance=provenance,
        config=config_text,
    )


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2, default=lambda o: list(o) if isinstance(o, tuple) else o)
