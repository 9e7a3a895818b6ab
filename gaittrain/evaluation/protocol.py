"""Published evaluation protocols (CASIA-B, OU-MVLP), read from the protocol files.

A protocol's ``evaluation`` section names the gallery recordings, the probe groups (e.g. NM, BG,
CL), whether identical views are excluded and whether the gallery is one view at a time (the
standard) or every view but the probe's. For every probe view and gallery view, the probes of a
group are ranked against that gallery; a probe view's figure is the mean over gallery views, and
a group's figure the mean over probe views. Missing sequences shrink the sets and are reported as
coverage; a cell with no probe or no gallery is left out of the means.

The failed probes a report shows come from the same retrievals as the table: a probe is listed in
a cell only where that cell counts it as a rank-1 miss.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from gaittrain.data.splits import SplitError, load_protocol, select
from gaittrain.evaluation import certified, cost, lowrank
from gaittrain.evaluation.embeddings_file import EmbeddingStore
from gaittrain.evaluation.metrics import Retrieval, retrieve, squared_norms
from gaittrain.schema import ConfigError, build

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


@dataclass
class EvaluationSection:
    """A protocol file's ``evaluation:`` section, validated strictly (:mod:`gaittrain.schema`):
    the gallery's recordings, the probe groups' recordings, and the rules of the cells."""

    gallery: list[str] = field(default_factory=list)  # recordings like nm-01
    probes: dict[str, list[str]] = field(default_factory=dict)  # group name -> recordings
    exclude_identical_views: bool = True
    gallery_views: str = "same"  # same | others
    report_unmatched_removed: bool = False


def load_eval_protocol(name: str) -> EvalProtocol:
    """The evaluation protocol of a protocol file (a name or a path); a one-line SplitError names
    the file's problem."""
    data = load_protocol(name)
    if not isinstance(data.get("evaluation"), dict):
        raise SplitError(f"protocol {name!r} has no evaluation section")
    try:
        ev = build(EvaluationSection, data["evaluation"], "evaluation")
    except ConfigError as e:
        raise SplitError(f"protocol {name!r}: {e}") from None
    problems = []
    if not ev.gallery:
        problems.append("gallery must list recordings like nm-01")
    if not ev.probes or not all(ev.probes.values()):
        problems.append("probes must map group names to lists of recordings")
    if ev.gallery_views not in ("same", "others"):
        problems.append("gallery_views must be same or others")
    if problems:
        raise SplitError(f"protocol {name!r}: evaluation.{problems[0]}")
    return EvalProtocol(
        name=data["name"],
        test=str(data["test"]),
        gallery=ev.gallery,
        probes=ev.probes,
        exclude_identical_views=ev.exclude_identical_views,
        gallery_views=ev.gallery_views,
        report_unmatched_removed=ev.report_unmatched_removed,
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
    failures_per_group: int = 6,
    precision: str = "auto",
) -> dict:
    """Every group's per-view rank-1 table, CMC, mAP and mINP, with coverage and failed probes.

    Parameters
    ----------
    embeddings : dict or EmbeddingStore
        Sequence keys (subject, condition, seq, view) to [parts, dim] arrays, or a store that
        reads them on request (:mod:`gaittrain.evaluation.embeddings_file`): one gallery view and
        one block of probes are held at a time.
    protocol : EvalProtocol
        Gallery, probe groups, identical-view rule and gallery views.
    test_subjects : list of str, optional
        The subjects evaluated; by default the protocol's test selector. No other key is used.
    include_identical : bool
        Keep the probe's own view in its galleries.
    metric : {"euclidean", "cosine", "cosine-flat"}
        See :mod:`gaittrain.evaluation.metrics`.
    ranks, max_memory, device
        CMC length, the memory cap, and where distances are computed. The cap is shared: half
        for the galleries kept for later cells, an eighth for a block of probes read, three
        eighths for the distance stage; beyond it, the gallery of the cell at hand.
    precision : {"fp32", "int8", "lowrank", "auto"}
        How distances are computed (:func:`gaittrain.evaluation.metrics.retrieve`), decided
        cell by cell for ``auto`` (:func:`gaittrain.evaluation.cost.resolve_precision`); every
        choice gives the same figures.
    failures_per_group : int
        How many failed probes to list per group.

    Returns
    -------
    dict
        ``conditions[group]`` holds the table (``cells[probe_view][gallery_view]``, the fraction
        of a cell's probes whose top-ranked gallery sequence is of their subject), ``per_view``,
        ``rank1``, CMC, mAP, mINP and coverage. ``failures`` lists, group by group, the first
        ``failures_per_group`` probes in key order that some cell counts as a rank-1 miss, each
        in its first such cell with the gallery sequence ranked first there (``wrong``) and the
        nearest one of its own subject (``right``): the same retrievals as the table.
    """
    store = embeddings if isinstance(embeddings, EmbeddingStore) else None
    store = store or EmbeddingStore.from_dict(embeddings)
    subjects = sorted({k[0] for k in store.keys})
    test = set(test_subjects if test_subjects is not None else select(subjects, protocol.test))
    keys = [k for k in store.keys if k[0] in test]
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
        "failures": [],
    }
    gallery_keys = [k for k in keys if _recording(k) in protocol.gallery]
    scorer = _Scorer(
        store,
        protocol,
        views,
        exclude,
        metric,
        ranks,
        max_memory,
        torch.device(device),
        failures_per_group,
        precision,
    )
    for group, recordings in protocol.probes.items():
        probe_keys = [k for k in keys if _recording(k) in recordings]
        expected = len(test) * len(recordings) * len(views)
        summary, failed = scorer.group(probe_keys, gallery_keys, expected)
        out["conditions"][group] = summary
        out["failures"] += [{"group": group, **f} for f in failed]
    return out


def _failure(probe: Key, gallery: list[Key], r: Retrieval, i: int, cell: tuple[str, str]) -> dict:
    """Probe ``i`` of a cell, its nearest gallery sequence and the nearest of its own subject
    (None where the cell's gallery lacks that subject), as JSON-able lists."""
    right = int(r.nearest_match[i])
    return {
        "probe": list(probe),
        "probe_view": cell[0],
        "gallery_view": cell[1],
        "wrong": list(gallery[int(r.nearest[i])]),
        "right": list(gallery[right]) if right >= 0 else None,
    }


def _note_failures(
    failed: dict[Key, dict],
    probes: list[Key],
    gallery: list[Key],
    r: Retrieval,
    cell: tuple[str, str],
    limit: int,
) -> None:
    """Add a cell's rank-1 misses (``r.first != 0``) to ``failed``, keeping the ``limit`` first
    probe keys; a probe already there keeps its earlier cell. ``probes`` is in key order."""
    for i in np.flatnonzero(r.first != 0):
        key = probes[i]
        if key in failed:
            continue
        if len(failed) >= limit and (limit <= 0 or key > max(failed)):
            break  # the cell's later probes have larger keys still
        failed[key] = _failure(key, gallery, r, i, cell)
        if len(failed) > limit:
            del failed[max(failed)]


@dataclass
class _Scorer:
    """The settings shared by every cell of one evaluation."""

    store: EmbeddingStore
    protocol: EvalProtocol
    views: list[str]
    exclude: bool
    metric: str
    ranks: int
    max_memory: int
    device: torch.device
    limit: int = 6  # failed probes kept per group
    precision: str = "auto"

    def __post_init__(self) -> None:
        self._row = {k: i for i, k in enumerate(self.store.keys)}
        self._galleries: dict[tuple, tuple] = {}
        self._prepared_galleries: dict[tuple, certified.Quantized | lowrank.Projected] = {}
        self._bases: dict[tuple, lowrank.Basis] = {}
        self._last = None  # (keys, gallery) of the previous cell
        self._last_prepared = None  # (keys, int8 or projected gallery) of the previous cell
        self._kept = 0  # bytes of the galleries kept

    def _stack(
        self, keys, as_stored: bool, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None]:
        """The embeddings of ``keys`` (``rows``, where read already) on the device, their
        subjects and their squared norms; for the cells of a certified path (``as_stored``),
        as stored (float32, or float16 in that storage: the re-checks read the stored values)
        and no norms."""
        t = self._read(keys) if rows is None else rows
        t = t.to(self.device) if as_stored else t.to(self.device, torch.float32)
        return t, np.array([k[0] for k in keys]), None if as_stored else squared_norms(t)

    def _read_ahead(self, blocks: list) -> Iterator[torch.Tensor]:
        """The stored rows of each block of keys in turn, the next read by a second thread
        while the caller ranks the current one; a single block is read at once (no thread:
        CASIA-B's 330 one-block cells were 25 % slower with one)."""
        if len(blocks) == 1:
            yield self._read(blocks[0])
            return
        with ThreadPoolExecutor(1) as reader:
            ahead = reader.submit(self._read, blocks[0])
            for following in [*blocks[1:], None]:
                rows = ahead.result()
                if following is not None:
                    ahead = reader.submit(self._read, following)
                yield rows

    def _read(self, keys) -> torch.Tensor:
        """The stored rows of ``keys``; the reading thread does nothing else (PyTorch
        operations from a second thread would start a second team of OpenMP workers)."""
        return self.store.rows([self._row[k] for k in keys])

    def _gallery(self, keys, as_stored: bool) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """:meth:`_stack` of a gallery, kept for the next probe views and groups that use it
        while the kept galleries fit in half of ``max_memory`` (stacking CASIA-B's eleven
        again for each of its 330 cells took a quarter of its evaluation)."""
        key = (tuple(keys), as_stored)
        found = self._galleries.get(key)
        if found is None and self._last is not None and self._last[0] == key:
            found = self._last[1]  # the gallery of the previous cell, even when not kept
        if found is None:
            self._last = None  # let it go before the next one is read
            found = self._stack(keys, as_stored)
            size = found[0].nbytes + (0 if as_stored else found[2].nbytes)
            if self._kept + size <= self.max_memory // 2:
                self._galleries[key] = found
                self._kept += size
        self._last = (key, found)
        return found

    def _basis(self, keys) -> lowrank.Basis:
        """The low-rank directions of a gallery, fitted on the rows :func:`lowrank.fit` would
        take (read alone), kept (a few MB each)."""
        if tuple(keys) not in self._bases:
            step = max(1, len(keys) // lowrank.FIT_ROWS)
            rows = self._read(keys[::step][: lowrank.FIT_ROWS]).to(self.device)
            self._bases[tuple(keys)] = lowrank.fit(rows)
        return self._bases[tuple(keys)]

    def _path(self, probes: list, keys: list) -> str:
        """How a cell is ranked: ``fp32``, ``int8`` or ``lowrank``
        (:func:`~gaittrain.evaluation.cost.resolve_precision`, with the gallery's rank where
        ``auto`` weighs the low-rank path)."""
        rank = None
        shape = tuple(self.store.shape)
        big = len(probes) * len(keys) >= cost.AUTO_PAIRS
        if self.precision == "auto" and self.metric == "euclidean" and big:
            basis = self._basis(keys)
            rank = basis.rank if basis.residual <= lowrank.RESIDUAL else None
        return cost.resolve_precision(
            self.precision, self.metric, self.device, len(probes), len(keys), shape, rank
        )

    def _prepared(self, keys, g: torch.Tensor, path: str):
        """The gallery's int8 copy or projection for ``path``, kept with the gallery (while
        they fit in half of ``max_memory``)."""
        key = (tuple(keys), path)
        found = self._prepared_galleries.get(key)
        if found is None and self._last_prepared is not None and self._last_prepared[0] == key:
            found = self._last_prepared[1]
        if found is None:
            self._last_prepared = None
            if path == "int8":
                found = certified.quantize(g, probe_side=False)
            else:
                found = lowrank.project(g, self._basis(keys), probe_side=False)
            if self._kept + found.nbytes <= self.max_memory // 2:
                self._prepared_galleries[key] = found
                self._kept += found.nbytes
        self._last_prepared = (key, found)
        return found

    def _cell(self, pv: str, probes: list, label: str, gallery: list) -> Retrieval:
        """One cell's retrieval, its probes read and ranked in blocks."""
        path = self._path(probes, gallery)
        as_stored = path != "fp32"
        g, g_ids, g_sq = self._gallery(gallery, as_stored)
        prepared = self._prepared(gallery, g, path) if as_stored else None
        # An eighth of the cap holds the block of probes at hand and the next one, read
        # meanwhile (as stored for the certified paths, else as float32).
        entry = self.store.itemsize if as_stored else 4
        rows = max(1, self.max_memory // (16 * entry * max(math.prod(self.store.shape), 1)))
        blocks = [probes[s : s + rows] for s in range(0, len(probes), rows)]
        found = []
        for block, rows_read in zip(blocks, self._read_ahead(blocks), strict=True):
            p, p_ids, p_sq = self._stack(block, as_stored, rows_read)
            norms = (p_sq, g_sq) if self.metric == "euclidean" and not as_stored else None
            found.append(
                retrieve(
                    p,
                    p_ids,
                    g,
                    g_ids,
                    self.metric,
                    self.max_memory * 3 // 8,  # the distance stage's share of the cap
                    norms,
                    path,  # decided for the whole cell
                    prepared,
                )
            )
        return Retrieval.concat(found)

    def _targets(self, gallery_keys, pv: str) -> list[tuple[str, list]]:
        """(label, gallery) pairs of one probe view."""
        if self.protocol.gallery_views == "others":  # one gallery of every other view
            return [("others", [k for k in gallery_keys if not (self.exclude and k[3] == pv)])]
        return [
            (gv, [k for k in gallery_keys if k[3] == gv])
            for gv in self.views
            if not (self.exclude and gv == pv)
        ]  # the standard: one gallery view at a time

    def group(self, probe_keys, gallery_keys, expected: int) -> tuple[dict, list[dict]]:
        """One probe group's table, CMC, mAP, mINP and coverage, and its failed probes in key
        order, from the same retrievals."""
        protocol, views = self.protocol, self.views
        cells: dict[str, dict[str, float]] = {}
        cmc, maps, minps, cells_removed = [], [], [], {}
        failed: dict[Key, dict] = {}
        cells_todo = []  # (probe view, probes, label, gallery) in the order the table reads
        for pv in views:
            probes = sorted(k for k in probe_keys if k[3] == pv)
            if probes:
                cells_todo += [
                    (pv, probes, label, gallery)
                    for label, gallery in self._targets(gallery_keys, pv)
                    if gallery
                ]
        # computed gallery by gallery (each read and converted once), noted in table order
        order = sorted(range(len(cells_todo)), key=lambda i: cells_todo[i][2])
        found = {i: self._cell(*cells_todo[i]) for i in order}
        for i, (pv, probes, label, gallery) in enumerate(cells_todo):
            r = found.pop(i)
            curve = r.cmc(self.ranks)
            cells.setdefault(pv, {})[label] = float(curve[0])
            cmc.append(curve)
            maps.append(r.mean_ap())
            minps.append(r.mean_inp())
            _note_failures(failed, probes, gallery, r, (pv, label), self.limit)
            if protocol.report_unmatched_removed:
                removed = float(r.cmc(1, drop_unmatched=True)[0])
                cells_removed.setdefault(pv, []).append(removed)
        summary = _summary(
            cells, views, cmc, maps, minps, cells_removed, protocol, len(probe_keys), expected
        )
        return summary, [failed[k] for k in sorted(failed)]


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
