r"""The in-the-wild protocols (Gait3D, GREW, CCPG, HID), figure for figure as OpenGait scores them.

Every function takes the arrays OpenGait's evaluator receives, in OpenGait's layout: embeddings
[n, c, p] (channels, then parts) and, per sequence, ``labels`` (subject ids), ``types`` and
``views`` as strings. Figures are returned in percent, unrounded (OpenGait rounds some of the
figures it logs; the figures here are those before its rounding).

Distances are OpenGait's ``cuda_dist``, computed in float64 by
:func:`gaittrain.evaluation.metrics.distance_blocks`: with P parts :math:`x_k`,

* ``euclidean`` (OpenGait's ``euc``): :math:`\frac{1}{P} \sum_k \lVert p_k - g_k \rVert`;
* ``cosine`` (OpenGait's ``cos``): :math:`1 - \frac{1}{P} \sum_k \hat p_k \cdot \hat g_k`,
  every part normalized on its own (:math:`\hat x_k = x_k / \lVert x_k \rVert`).

Ranking a gallery for a probe, with ties broken by gallery order (OpenGait's sorts break no ties
the same way every time; on continuous embeddings there are none):

* Rank-k: the share of probes whose subject is among the k nearest gallery sequences;
* AP: the mean, over the probe's correct gallery sequences at ranks :math:`r_1 < \dots < r_m`
  (from 1), of the precision :math:`i / r_i`;
* INP: :math:`m / r_m`, the share of correct sequences among everything up to the last one.

Which probes count, and what is removed from a probe's gallery, is each protocol's own (see each
function). One reference: ShiqiYu/OpenGait at commit 0efafd4, ``opengait/evaluation``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gaitprep.errors import GaitError
from gaittrain.evaluation.metrics import Retrieval, distance_blocks, retrieve
from gaittrain.evaluation.ranking import match_ranks, score_ranks

#: The distances, by gait's name; OpenGait calls them ``euc`` and ``cos``.
METRICS = ("euclidean", "cosine")
#: GREW: the labelled split's gallery and probe types, and the test split's.
GREW_GALLERY, GREW_PROBES = ("01",), ("02",)
GREW_SUBMISSION_GALLERY, GREW_SUBMISSION_PROBES = ("01", "02"), ("03",)
#: GREW's submission lists this many gallery subjects per probe video.
GREW_RANKS = 20
#: CCPG's four probe groups: (probe types, gallery types). CL: clothes changed; UP: upper
#: clothes; DN: trousers; BG: a bag.
CCPG_GROUPS = {
    "CL": (("U0_D0_BG", "U0_D0"), ("U1_D1", "U2_D2", "U3_D3")),
    "UP": (("U3_D3",), ("U0_D3",)),
    "DN": (("U1_D0",), ("U1_D1",)),
    "BG": (("U0_D0_BG",), ("U0_D0",)),
}
#: HID: the label every probe sequence carries (its video id is in ``views``).
HID_PROBE = "probe"
#: HID's k-reciprocal re-ranking, as OpenGait calls it.
HID_RERANK = {"k1": 6, "k2": 6, "lam": 0.3}
#: Its arithmetic (:data:`gaittrain.evaluation.rerank.PRECISIONS`): OpenGait's, the default, or
#: float64.
RERANK_PRECISIONS = ("opengait", "float64")


class ProtocolError(GaitError):
    """The sequences do not make the protocol's probes and gallery (one line: what is missing)."""


# --- distances and rankings ---------------------------------------------------------------------


def _parts(embeddings: np.ndarray) -> torch.Tensor:
    """OpenGait's [n, c, p] as gait's [n, p, c], in float64."""
    x = np.ascontiguousarray(np.asarray(embeddings).transpose(0, 2, 1), dtype=np.float64)
    return torch.from_numpy(x)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ProtocolError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")


def distances(probe: np.ndarray, gallery: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """The float64 distances [q, g] between embeddings [q, c, p] and [g, c, p] (OpenGait's
    ``cuda_dist``, see the module's docstring).

    Examples
    --------
    >>> p = np.array([[[3.0, 0.0], [4.0, 1.0]]])  # one sequence, c = 2, p = 2
    >>> g = np.zeros((1, 2, 2))
    >>> distances(p, g)  # parts (3, 4) and (0, 1): (5 + 1) / 2
    array([[3.]])
    """
    _check_metric(metric)
    blocks = [d for _, d in distance_blocks(_parts(probe), _parts(gallery), metric)]
    return torch.cat(blocks).numpy() if blocks else np.zeros((0, len(gallery)))


def _nearest(probe: np.ndarray, gallery: np.ndarray, metric: str, k: int) -> np.ndarray:
    """[q, min(k, g)]: each probe's k nearest gallery indices, nearest first (ties: gallery
    order), a block of probes at a time."""
    rows = [
        torch.sort(d, dim=1, stable=True).indices[:, :k]
        for _, d in distance_blocks(_parts(probe), _parts(gallery), metric)
    ]
    return torch.cat(rows).numpy() if rows else np.zeros((0, min(k, len(gallery))), np.int64)


def _ranked(probe, probe_ids, gallery, gallery_ids, metric: str) -> Retrieval:
    """Every probe's first correct rank, AP and INP against the whole gallery."""
    return retrieve(_parts(probe), probe_ids, _parts(gallery), gallery_ids, metric)


def _match_table(relevant: np.ndarray) -> torch.Tensor:
    """[b, M]: each row's True columns of ``relevant`` [b, g] in order, padded with -1 (M: the
    most any row has, at least 1), as :func:`~gaittrain.evaluation.ranking.match_ranks` takes."""
    width = max(int(relevant.sum(axis=1).max(initial=0)), 1)
    order = np.argsort(~relevant, axis=1, kind="stable")[:, :width]
    table = np.where(np.take_along_axis(relevant, order, axis=1), order, -1)
    return torch.from_numpy(table.astype(np.int64))


def _ranked_across_views(
    probe, probe_ids, probe_views, gallery, gallery_ids, gallery_views, metric: str
) -> Retrieval:
    """:func:`_ranked` with, for every probe, the gallery sequences of its own subject and view
    removed (a re-identification ranking: a probe is never matched to its own camera).

    Removing an entry is giving it an infinite distance and no part in the probe's matches: it
    then ranks after everything else and changes the rank of no correct sequence."""
    found = []
    for start, d in distance_blocks(_parts(probe), _parts(gallery), metric):
        rows = slice(start, start + d.shape[0])
        same = probe_ids[rows, None] == gallery_ids[None, :]
        removed = same & (probe_views[rows, None] == gallery_views[None, :])
        d = d.masked_fill(torch.from_numpy(removed), math.inf)
        matches = _match_table(same & ~removed)
        scores = score_ranks(match_ranks(d, matches), matches, d.argmin(dim=1), d.shape[1])
        found.append(Retrieval(*(s.numpy() for s in scores)))
    return Retrieval.concat(found)


def _rank_k(first: np.ndarray, k: int) -> float:
    """Rank-k in percent over the probes of ``first`` (a probe without a match, -1, misses)."""
    hits = np.count_nonzero((first >= 0) & (first < k))
    return 100.0 * float(hits) / first.size if first.size else math.nan


def _percent_mean(values: np.ndarray) -> float:
    return 100.0 * float(np.mean(values)) if values.size else math.nan


def _strings(*arrays) -> list[np.ndarray]:
    return [np.asarray(a).astype(str) for a in arrays]


def _nonempty(what: str, mask: np.ndarray, how: str) -> None:
    if not mask.any():
        raise ProtocolError(f"no {what} sequence: {how}")


# --- the protocols ------------------------------------------------------------------------------


def gait3d(
    embeddings: np.ndarray,
    labels,
    types,
    views,
    probe_set,
    metric: str = "euclidean",
) -> dict:
    """Gait3D (OpenGait's ``evaluate_Gait3D``): Rank-1/5/10, mAP and mINP, in percent.

    The probes are the sequences named in the partition file's ``PROBE_SET`` as
    ``subject-type-view`` (e.g. ``0001-camid0_videoid2-seq0``); the gallery is every other
    sequence. A probe whose subject has no gallery sequence is left out of every figure.

    Parameters
    ----------
    embeddings : ndarray [n, c, p]
    labels, types, views : sequences of str [n]
        Subject ids, camera-video folders (``camid0_videoid2``) and sequence names (``seq0``).
    probe_set : iterable of str
        The partition file's ``PROBE_SET``.
    metric : {"euclidean", "cosine"}

    Examples
    --------
    >>> emb = np.array([0.0, 1.0, 0.1, 0.9, 0.5]).reshape(5, 1, 1)
    >>> labels = ["a", "b", "a", "b", "c"]
    >>> views = ["seq0", "seq0", "seq1", "seq1", "seq0"]
    >>> r = gait3d(emb, labels, ["cam0"] * 5, views, ["a-cam0-seq0", "b-cam0-seq0"])
    >>> r["rank1"], r["mAP"], r["probes"], r["gallery"]
    (100.0, 100.0, 2, 3)
    """
    _check_metric(metric)
    labels, types, views = _strings(labels, types, views)
    wanted = set(probe_set)
    is_probe = np.array(
        [f"{s}-{t}-{v}" in wanted for s, t, v in zip(labels, types, views, strict=True)]
    )
    _nonempty("probe", is_probe, "none is named in the partition file's PROBE_SET")
    _nonempty("gallery", ~is_probe, "every sequence is a probe of the partition file")
    found = _ranked(
        embeddings[is_probe], labels[is_probe], embeddings[~is_probe], labels[~is_probe], metric
    )
    matched = found.has_match
    if not matched.any():
        raise ProtocolError("no probe's subject has a gallery sequence")
    first = found.first[matched]
    return {
        **{f"rank{k}": _rank_k(first, k) for k in (1, 5, 10)},
        "mAP": _percent_mean(found.ap[matched]),
        "mINP": _percent_mean(found.inp[matched]),
        "probes": int(is_probe.sum()),
        "probes_scored": int(matched.sum()),
        "gallery": int((~is_probe).sum()),
    }


def grew(embeddings: np.ndarray, labels, types, metric: str = "euclidean") -> dict:
    """GREW's labelled split (OpenGait's ``evaluate_real_scene``): Rank-1/5/10/20 in percent.

    Type ``01`` is the gallery, type ``02`` the probes; every probe counts (one whose subject has
    no gallery sequence is a miss). OpenGait rounds each Rank-k to 2 decimals and returns Rank-1
    and Rank-5 (it logs Rank-10 and Rank-20).
    """
    _check_metric(metric)
    labels, types = _strings(labels, types)
    gallery, probes = np.isin(types, GREW_GALLERY), np.isin(types, GREW_PROBES)
    _nonempty("gallery", gallery, "GREW's gallery is type 01")
    _nonempty("probe", probes, "GREW's probes are type 02")
    found = _ranked(
        embeddings[probes], labels[probes], embeddings[gallery], labels[gallery], metric
    )
    return {
        **{f"rank{k}": _rank_k(found.first, k) for k in (1, 5, 10, 20)},
        "probes": int(probes.sum()),
        "gallery": int(gallery.sum()),
    }


def grew_submission(
    embeddings: np.ndarray, labels, types, views, metric: str = "euclidean"
) -> list[tuple[str, list[int]]]:
    """GREW's test split (OpenGait's ``GREW_submission``): per probe video, in input order, the
    subject ids of its 20 nearest gallery sequences, nearest first.

    Types ``01`` and ``02`` are the gallery, type ``03`` the probes, whose video id is their
    ``views`` entry (their labels are not used). Subject ids are written as integers, as
    OpenGait writes them (``00018`` becomes ``18``), and so must be integers.
    """
    _check_metric(metric)
    labels, types, views = _strings(labels, types, views)
    gallery = np.isin(types, GREW_SUBMISSION_GALLERY)
    probes = np.isin(types, GREW_SUBMISSION_PROBES)
    _nonempty("probe", probes, "GREW's test probes are type 03")
    if gallery.sum() < GREW_RANKS:
        raise ProtocolError(
            f"GREW's submission lists {GREW_RANKS} gallery subjects per probe, but there are "
            f"{int(gallery.sum())} gallery sequences (types 01 and 02)"
        )
    ids = []
    for label in labels[gallery]:
        try:
            ids.append(int(label))
        except ValueError:
            raise ProtocolError(
                f"GREW's submission writes subject ids as integers; {label!r} is not one"
            ) from None
    ids = np.array(ids)
    nearest = _nearest(embeddings[probes], embeddings[gallery], metric, GREW_RANKS)
    return [(str(v), ids[row].tolist()) for v, row in zip(views[probes], nearest, strict=True)]


def _view_pair_rank1(embeddings, labels, probes, gallery, views_of, view_list, metric):
    """[V, V] rank-1 in percent, probe view by gallery view (NaN where a cell has no probe or no
    gallery sequence)."""
    table = np.full((len(view_list), len(view_list)), math.nan)
    for i, pv in enumerate(view_list):
        p = probes & (views_of == pv)
        for j, gv in enumerate(view_list):
            g = gallery & (views_of == gv)
            if p.any() and g.any():
                found = _ranked(embeddings[p], labels[p], embeddings[g], labels[g], metric)
                table[i, j] = _rank_k(found.first, 1)
    return table


def without_identical_views(table: np.ndarray) -> np.ndarray:
    """Per probe view (row), the mean over the other gallery views (OpenGait's ``de_diag``:
    the row's sum less its diagonal cell, over V - 1); NaN with one view.

    Examples
    --------
    >>> without_identical_views(np.array([[100.0, 50.0], [20.0, 90.0]]))
    array([50., 20.])
    """
    n = table.shape[1]
    if n < 2:
        return np.full(table.shape[0], math.nan)
    return (table.sum(axis=1) - np.diag(table)) / (n - 1)


def ccpg(embeddings: np.ndarray, labels, types, views, metric: str = "euclidean") -> dict:
    r"""CCPG (OpenGait's ``evaluate_CCPG``): per probe group (``CL``, ``UP``, ``DN``, ``BG``,
    each against its own gallery types, :data:`CCPG_GROUPS`), two kinds of figures, in percent.

    A view is the part of ``views`` before its first ``_`` (``03_1`` is view ``03``).

    * Re-identification (``rank1_reid``, ``mAP``, ``mINP``): each probe ranks the whole group's
      gallery less the sequences of its own subject *and* view; a probe left without a correct
      sequence is left out.
    * Per view pair (``rank1_per_view``, [V, V], probe view by gallery view): the rank-1 of the
      group's probes of one view against its gallery of one view, every probe counting. Its mean
      over all cells is ``rank1_including_identical_view``; the mean over probe views of each
      row's mean over the other views (:func:`without_identical_views`,
      ``rank1_per_probe_view_excluding_identical``) is ``rank1_excluding_identical_view``.

    OpenGait rounds each cell to 2 decimals before it averages them; the cells here are not
    rounded, so its averages may differ from these by up to 0.005.
    """
    _check_metric(metric)
    labels, types, views = _strings(labels, types, views)
    views = np.array([v.split("_")[0] for v in views])
    view_list = sorted(set(views.tolist()))
    result: dict = {"views": view_list}
    for name, (probe_types, gallery_types) in CCPG_GROUPS.items():
        probes, gallery = np.isin(types, probe_types), np.isin(types, gallery_types)
        _nonempty("probe", probes, f"CCPG's {name} probes are types {', '.join(probe_types)}")
        _nonempty("gallery", gallery, f"CCPG's {name} gallery is {', '.join(gallery_types)}")
        found = _ranked_across_views(
            *(embeddings[probes], labels[probes], views[probes]),
            *(embeddings[gallery], labels[gallery], views[gallery]),
            metric,
        )
        matched = found.has_match
        if not matched.any():
            raise ProtocolError(f"CCPG's {name}: no probe has a correct gallery sequence")
        table = _view_pair_rank1(embeddings, labels, probes, gallery, views, view_list, metric)
        per_view = without_identical_views(table)
        result[name] = {
            "probe_types": list(probe_types),
            "gallery_types": list(gallery_types),
            "probes": int(probes.sum()),
            "probes_scored": int(matched.sum()),
            "gallery": int(gallery.sum()),
            "rank1_reid": _rank_k(found.first[matched], 1),
            "mAP": _percent_mean(found.ap[matched]),
            "mINP": _percent_mean(found.inp[matched]),
            "rank1_excluding_identical_view": float(np.mean(per_view)),
            "rank1_including_identical_view": float(np.mean(table)),
            "rank1_per_probe_view_excluding_identical": per_view.tolist(),
            "rank1_per_view": table.tolist(),
        }
    return result


def hid(
    embeddings: np.ndarray,
    labels,
    views,
    metric: str = "euclidean",
    rerank: bool = False,
    rerank_precision: str = "opengait",
) -> list[tuple[str, str]]:
    """HID (OpenGait's ``HID_submission``): per probe video, in input order, the subject of the
    nearest gallery sequence.

    Probes are the sequences labelled ``probe``, their video id in ``views``; the gallery is every
    other sequence. With ``rerank``, the nearest is taken after k-reciprocal re-ranking
    (:func:`gaittrain.evaluation.rerank.rerank`, k1 = 6, k2 = 6, λ = 0.3) of the distances
    between all probes and gallery sequences, probes first, in ``rerank_precision``: OpenGait's
    arithmetic, the default, which gives OpenGait's submission line for line (its float32
    distances, :func:`gaittrain.evaluation.rerank.opengait_distances`, and its float16
    re-ranking), or float64 (the distances too).
    """
    _check_metric(metric)
    labels, views = _strings(labels, views)
    probes = labels == HID_PROBE
    _nonempty("probe", probes, f"HID's probes are labelled {HID_PROBE!r}")
    _nonempty("gallery", ~probes, f"HID's gallery is every sequence not labelled {HID_PROBE!r}")
    probe_x, gallery_x = embeddings[probes], embeddings[~probes]
    if rerank:
        try:
            from gaittrain.evaluation.rerank import nearest_gallery, opengait_distances
            from gaittrain.evaluation.rerank import rerank as k_reciprocal
        except ImportError as e:
            raise ProtocolError(
                f"re-ranking is not available in this installation ({e}); score without --rerank"
            ) from None
        both = np.concatenate([probe_x, gallery_x])
        if rerank_precision == "opengait":
            dist = opengait_distances(both, metric)
        else:
            dist = distances(both, both, metric)
        reranked = k_reciprocal(dist, len(probe_x), **HID_RERANK, precision=rerank_precision)
        nearest = nearest_gallery(reranked)
    else:
        nearest = _nearest(probe_x, gallery_x, metric, 1)[:, 0]
    return [(str(v), str(s)) for v, s in zip(views[probes], labels[~probes][nearest], strict=True)]
