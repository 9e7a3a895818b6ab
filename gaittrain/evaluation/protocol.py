"""Published evaluation protocols (CASIA-B, OU-MVLP), read from the protocol files.

A protocol's ``evaluation`` section names the gallery recordings, the probe groups (e.g. NM, BG,
CL), whether identical views are excluded and whether the gallery is one view at a time (the
standard) or every view but the probe's. For every probe view and gallery view, the probes of a
group are ranked against that gallery; a probe view's figure is the mean over gallery views, and
a group's figure the mean over probe views. Missing sequences shrink the sets and are reported as
coverage; a cell with no probe or no gallery is left out of the means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from gaittrain.data.splits import SplitError, load_protocol, select
from gaittrain.evaluation.metrics import retrieve

Key = tuple[str, str, str, str]


@dataclass
class EvalProtocol:
    name: str
    test: str
    gallery: list[str]
    probes: dict[str, list[str]]
    exclude_identical_views: bool = True
    gallery_views: str = "same"  # same | others
    report_unmatched_removed: bool = False
    extra: dict = field(default_factory=dict)


def load_eval_protocol(name: str) -> EvalProtocol:
    data = load_protocol(name)
    ev = data.get("evaluation")
    if not isinstance(ev, dict):
        raise SplitError(f"protocol {name!r} has no evaluation section")
    known = {
        "gallery",
        "probes",
        "exclude_identical_views",
        "gallery_views",
        "report_unmatched_removed",
    }
    unknown = set(ev) - known
    if unknown:
        raise SplitError(f"protocol {name!r}: unknown evaluation key {sorted(unknown)[0]!r}")
    return EvalProtocol(
        name=data["name"],
        test=str(data["test"]),
        gallery=list(ev["gallery"]),
        probes={k: list(v) for k, v in ev["probes"].items()},
        exclude_identical_views=ev.get("exclude_identical_views", True),
        gallery_views=ev.get("gallery_views", "same"),
        report_unmatched_removed=ev.get("report_unmatched_removed", False),
    )


def _recording(key: Key) -> str:
    return f"{key[1]}-{key[2]}"


def evaluate(
    embeddings: dict[Key, np.ndarray],
    protocol: EvalProtocol,
    test_subjects: list[str] | None = None,
    include_identical: bool = False,
    metric: str = "euclidean",
    ranks: int = 5,
    max_memory: int = 256 << 20,
    device: torch.device | str = "cpu",
) -> dict:
    """Every group's per-view rank-1 table, CMC, mAP and mINP, with coverage.

    ``embeddings`` maps sequence keys to [parts, dim] arrays; only test subjects are used
    (``test_subjects`` or the protocol's test selector).
    """
    subjects = sorted({k[0] for k in embeddings})
    test = set(test_subjects if test_subjects is not None else select(subjects, protocol.test))
    keys = [k for k in embeddings if k[0] in test]
    views = sorted(
        {k[3] for k in keys}, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v)
    )
    exclude = protocol.exclude_identical_views and not include_identical
    out = {
        "protocol": protocol.name,
        "metric": metric,
        "test_subjects": len(test),
        "views": views,
        "exclude_identical_views": exclude,
        "conditions": {},
    }
    gallery_keys = [k for k in keys if _recording(k) in protocol.gallery]
    scorer = _Scorer(
        embeddings, protocol, views, exclude, metric, ranks, max_memory, torch.device(device)
    )
    for group, recordings in protocol.probes.items():
        probe_keys = [k for k in keys if _recording(k) in recordings]
        expected = len(test) * len(recordings) * len(views)
        out["conditions"][group] = scorer.group(probe_keys, gallery_keys, expected)
    return out


@dataclass
class _Scorer:
    """The settings shared by every cell of one evaluation."""

    embeddings: dict
    protocol: EvalProtocol
    views: list[str]
    exclude: bool
    metric: str
    ranks: int
    max_memory: int
    device: torch.device

    def _stack(self, keys) -> tuple[torch.Tensor, np.ndarray]:
        x = np.stack([self.embeddings[k] for k in keys]).astype(np.float32)
        return torch.from_numpy(x).to(self.device), np.array([k[0] for k in keys])

    def _targets(self, gallery_keys, pv: str) -> list[tuple[str, list]]:
        """(label, gallery) pairs of one probe view."""
        if self.protocol.gallery_views == "others":  # one gallery of every other view
            return [("others", [k for k in gallery_keys if not (self.exclude and k[3] == pv)])]
        return [
            (gv, [k for k in gallery_keys if k[3] == gv])
            for gv in self.views
            if not (self.exclude and gv == pv)
        ]  # the standard: one gallery view at a time

    def group(self, probe_keys, gallery_keys, expected: int) -> dict:
        """One probe group's table, CMC, mAP, mINP and coverage."""
        protocol, views = self.protocol, self.views
        cells: dict[str, dict[str, float]] = {}
        cmc, maps, minps, cells_removed = [], [], [], {}
        for pv in views:
            probes = [k for k in probe_keys if k[3] == pv]
            for label, gallery in self._targets(gallery_keys, pv):
                if not probes or not gallery:
                    continue
                p, p_ids = self._stack(probes)
                g, g_ids = self._stack(gallery)
                r = retrieve(p, p_ids, g, g_ids, self.metric, self.max_memory)
                curve = r.cmc(self.ranks)
                cells.setdefault(pv, {})[label] = float(curve[0])
                cmc.append(curve)
                maps.append(r.mean_ap())
                minps.append(r.mean_inp())
                if protocol.report_unmatched_removed:
                    removed = float(r.cmc(1, drop_unmatched=True)[0])
                    cells_removed.setdefault(pv, []).append(removed)
        return _summary(
            cells, views, cmc, maps, minps, cells_removed, protocol, len(probe_keys), expected
        )


def _summary(cells, views, cmc, maps, minps, cells_removed, protocol, found, expected) -> dict:
    per_view = {pv: float(np.mean(list(c.values()))) for pv, c in cells.items()}
    result = {
        "rank1": float(np.mean(list(per_view.values()))) if per_view else None,
        "per_view": {v: per_view.get(v) for v in views},
        "cells": cells,
        "cmc": [float(x) for x in np.nanmean(cmc, axis=0)] if cmc else [],
        "mAP": float(np.nanmean(maps)) if maps else None,
        "mINP": float(np.nanmean(minps)) if minps else None,
        "coverage": {"probe_sequences": found, "expected_probe_sequences": expected},
    }
    if protocol.report_unmatched_removed:
        removed = {pv: float(np.nanmean(v)) for pv, v in cells_removed.items()}
        result["rank1_unmatched_removed"] = (
            float(np.mean(list(removed.values()))) if removed else None
        )
        result["per_view_unmatched_removed"] = removed
    return result
