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

Beyond OpenGait's evaluator, every protocol takes

* ``rerank``: a :class:`Rerank`, k-reciprocal re-ranking
  (:func:`gaittrain.evaluation.rerank.rerank`, HID's k1 = 6, k2 = 6, λ = 0.3) of the distances
  between the protocol's probes and gallery, all computed at once, before anything is ranked;
  every figure then comes from the re-ranked distances. It holds the n × n distances (n =
  probes + gallery) and is refused in one line
  (:class:`~gaittrain.evaluation.rerank.RerankMemoryError`) where that exceeds ``max_memory``;
* ``max_memory``: the bytes a block of work may take. GREW's protocols and HID rank the gallery
  a block of probes against a block of gallery sequences at a time, keeping each probe's running
  20 nearest (exact, ties by gallery order), so a gallery of any size, GREW's 233,857 distractors
  included (``distractors``), is ranked in bounded memory, read a block at a time;
* ``embeddings`` as an :class:`Embeddings`: gait's own layout [n, parts, dim] (an array, or an
  embeddings file's rows read on request), where an array is OpenGait's [n, c, p].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from gaitprep.errors import GaitError
from gaitprep.wild import DISTRACTOR
from gaittrain.evaluation import rerank as k_reciprocal
from gaittrain.evaluation.metrics import Retrieval, distance_blocks
from gaittrain.evaluation.ranking import match_ranks, score_ranks

#: The distances, by gait's name; OpenGait calls them ``euc`` and ``cos``.
METRICS = ("euclidean", "cosine")
#: GREW: the labelled split's gallery and probe types, and the test split's.
GREW_GALLERY, GREW_PROBES = ("01",), ("02",)
GREW_SUBMISSION_GALLERY, GREW_SUBMISSION_PROBES = ("01", "02"), ("03",)
#: GREW's distractors (gait keeps them as this type; OpenGait's pretreatment leaves them out),
#: which join the gallery of either GREW protocol with ``distractors``; a submission names a
#: distractor among a probe's nearest by this id, which no GREW subject has (GREW counts from 1).
GREW_DISTRACTORS, DISTRACTOR_ID = (DISTRACTOR,), 0
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
#: HID's k-reciprocal re-ranking, as OpenGait calls it (and as every protocol here re-ranks).
HID_RERANK = {"k1": 6, "k2": 6, "lam": 0.3}
#: Its arithmetic (:data:`gaittrain.evaluation.rerank.PRECISIONS`): OpenGait's, the default, or
#: float64.
RERANK_PRECISIONS = ("opengait", "float64")
#: Bytes a block of work may take unless told otherwise (``gait eval --max-memory``'s default).
MAX_MEMORY = 256 << 20
#: Bytes per probe x gallery pair of a block ranked by its nearest (:func:`_top_k`): the
#: distance, a part's squares and their joined copy (3 x 8), the running and new distances side
#: by side, sorted, and their order (3 x 8), the gallery indices side by side and reordered
#: (2 x 8). Per embedding entry of a block read: float64 (8) and its stored float32 (4).
_PAIR_BYTES, _ENTRY_BYTES = 64, 12


class ProtocolError(GaitError):
    """The sequences do not make the protocol's probes and gallery (one line: what is missing)."""


@dataclass(frozen=True)
class Rerank:
    """k-reciprocal re-ranking (:func:`gaittrain.evaluation.rerank.rerank`) of a protocol's
    distances: HID's parameters, in OpenGait's arithmetic (``"opengait"``: OpenGait's float32
    distances, its float16 encodings) or in ``"float64"``."""

    precision: str = "opengait"
    k1: int = HID_RERANK["k1"]
    k2: int = HID_RERANK["k2"]
    lam: float = HID_RERANK["lam"]

    def __post_init__(self) -> None:
        if self.precision not in RERANK_PRECISIONS:
            allowed = ", ".join(RERANK_PRECISIONS)
            raise ProtocolError(f"unknown re-ranking precision {self.precision!r}; use {allowed}")

    def describe(self) -> dict:
        """What a report says of it."""
        return asdict(self)


# --- where the embeddings come from -------------------------------------------------------------


class Embeddings:
    """The embeddings a protocol ranks, read a block of rows at a time.

    OpenGait's evaluator holds them as one array [n, c, p] (channels, then parts), as ``gait
    score`` reads them (:meth:`from_opengait`); gait stores [n, parts, dim], an array or an
    embeddings file whose rows are read on request (:meth:`from_gait`), so that a gallery need
    not fit in memory. A protocol reads gait's layout in float64 (:meth:`parts`) or, for
    OpenGait's own float32 distances, OpenGait's layout as stored (:meth:`as_opengait`).

    Examples
    --------
    >>> e = Embeddings.from_opengait(np.arange(12.0).reshape(2, 3, 2))  # n 2, c 3, p 2
    >>> e.parts([1]).shape, e.as_opengait([1]).shape  # [k, parts, dim], [k, c, p]
    (torch.Size([1, 2, 3]), (1, 3, 2))
    """

    def __init__(self, read: Callable[[np.ndarray], np.ndarray], n: int, row_size: int):
        self._read = read  # row indices -> gait's layout [k, parts, dim], as stored
        self.n = n
        self.row_size = row_size  # entries per sequence: parts x dim

    @classmethod
    def from_opengait(cls, array) -> Embeddings:
        """OpenGait's layout [n, c, p] (an array in memory)."""
        a = np.asarray(array)
        return cls(lambda idx: a[idx].transpose(0, 2, 1), len(a), int(np.prod(a.shape[1:])))

    @classmethod
    def from_gait(cls, rows) -> Embeddings:
        """gait's layout [n, parts, dim]: an array, or anything with ``rows(idx)`` giving those
        rows and a ``shape`` (parts, dim), as an open embeddings file's
        :class:`~gaittrain.evaluation.embeddings_file.EmbeddingStore`."""
        if hasattr(rows, "rows"):
            size = int(np.prod(rows.shape))
            return cls(lambda idx: np.asarray(rows.rows(idx)), len(rows), size)
        a = np.asarray(rows)
        return cls(lambda idx: a[idx], len(a), int(np.prod(a.shape[1:])))

    def __len__(self) -> int:
        return self.n

    def parts(self, idx) -> torch.Tensor:
        """Rows ``idx`` as gait's [k, parts, dim], float64."""
        x = self._read(np.asarray(idx, dtype=np.int64))
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))

    def as_opengait(self, idx) -> np.ndarray:
        """Rows ``idx`` as OpenGait's [k, c, p], in their dtype (at least float32)."""
        x = self._read(np.asarray(idx, dtype=np.int64)).transpose(0, 2, 1)
        return np.ascontiguousarray(x, dtype=np.promote_types(x.dtype, np.float32))


def _embeddings(embeddings) -> Embeddings:
    """An :class:`Embeddings` as it is; an array as OpenGait's layout [n, c, p]."""
    if isinstance(embeddings, Embeddings):
        return embeddings
    return Embeddings.from_opengait(embeddings)


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


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f} MB"


def rerank_bytes(n: int, num_probes: int, row_size: int, rerank: Rerank) -> tuple[int, int]:
    """``(need, dist)``: the bytes :func:`_reranked` takes for n sequences, ``num_probes`` of
    them probes, of ``row_size`` entries each, and of those the n × n distances.

    OpenGait's precision: the features in float32 (4n·row), the float32 distances (4n²) with,
    while they are computed, one part's products (4n²; OpenGait's ``cuda_dist``); float64: the
    features (8n·row), the distances (8n²), computed in blocks of
    :data:`~gaittrain.evaluation.rerank.BLOCK_BYTES`. Then re-ranking itself, beside its input:
    at least :func:`~gaittrain.evaluation.rerank.least_memory` (the q × g result, sparse
    neighbourhoods, scratch).
    """
    item = 4 if rerank.precision == "opengait" else 8
    dist = item * n * n
    scratch = dist if rerank.precision == "opengait" else k_reciprocal.BLOCK_BYTES
    least = k_reciprocal.least_memory(n, num_probes, rerank.k1, rerank.k2)
    return item * n * row_size + dist + max(scratch, least), dist


def _reranked(
    emb: Embeddings,
    probes: np.ndarray,
    gallery: np.ndarray,
    metric: str,
    rerank: Rerank,
    max_memory: int,
) -> np.ndarray:
    """The re-ranked distances [q, g] of the rows ``probes`` to the rows ``gallery`` of ``emb``:
    the distances between all of them, probes first (OpenGait's float32 ``cuda_dist`` in
    OpenGait's precision, :func:`~gaittrain.evaluation.rerank.opengait_distances`, float64
    otherwise), re-ranked. Refused before anything large is allocated where
    :func:`rerank_bytes` exceeds ``max_memory``."""
    both = np.concatenate([probes, gallery])
    n, q = len(both), len(probes)
    need, dist_bytes = rerank_bytes(n, q, emb.row_size, rerank)
    if need > max_memory:
        raise k_reciprocal.RerankMemoryError(
            f"re-ranking {n:,} sequences ({q:,} probes x {n - q:,} gallery) needs about "
            f"{_size(need)} ({_size(dist_bytes)} of them their distances), more than the "
            f"{_size(max_memory)} of --max-memory; raise --max-memory or re-rank fewer sequences"
        )
    if rerank.precision == "opengait":
        dist = k_reciprocal.opengait_distances(emb.as_opengait(both), metric)
    else:
        x = emb.parts(both)
        dist = np.empty((n, n))
        for start, d in distance_blocks(x, x, metric, k_reciprocal.BLOCK_BYTES):
            dist[start : start + d.shape[0]] = d.numpy()
        del x
    return k_reciprocal.rerank(
        dist,
        q,
        rerank.k1,
        rerank.k2,
        rerank.lam,
        max_memory=max_memory - dist_bytes,
        precision=rerank.precision,
    )


def _rows(
    emb: Embeddings,
    probes: np.ndarray,
    gallery: np.ndarray,
    metric: str,
    max_memory: int,
    reranked: np.ndarray | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, d)``: blocks of the float64 distances [b, g] of the rows ``probes`` to all of
    ``gallery`` (rows of ``emb``), or of the re-ranked distances ``reranked`` [q, g]."""
    if reranked is None:
        yield from distance_blocks(emb.parts(probes), emb.parts(gallery), metric, max_memory)
        return
    rows = max(1, max_memory // (32 * max(1, reranked.shape[1])))
    for start in range(0, len(reranked), rows):
        yield start, torch.from_numpy(np.asarray(reranked[start : start + rows], np.float64))


def _match_table(relevant: np.ndarray) -> torch.Tensor:
    """[b, M]: each row's True columns of ``relevant`` [b, g] in order, padded with -1 (M: the
    most any row has, at least 1), as :func:`~gaittrain.evaluation.ranking.match_ranks` takes."""
    width = max(int(relevant.sum(axis=1).max(initial=0)), 1)
    order = np.argsort(~relevant, axis=1, kind="stable")[:, :width]
    table = np.where(np.take_along_axis(relevant, order, axis=1), order, -1)
    return torch.from_numpy(table.astype(np.int64))


def _ranked(
    blocks: Iterator[tuple[int, torch.Tensor]],
    probe_ids: np.ndarray,
    gallery_ids: np.ndarray,
    probe_views: np.ndarray | None = None,
    gallery_views: np.ndarray | None = None,
) -> Retrieval:
    """Every probe's first correct rank, AP and INP, from the distance ``blocks`` of
    :func:`_rows` (ties broken by gallery order).

    With views, the gallery sequences of the probe's own subject *and* view are removed (a
    re-identification ranking: a probe is never matched to its own camera). Removing an entry is
    giving it an infinite distance and no part in the probe's matches: it then ranks after
    everything else and changes the rank of no correct sequence."""
    found = []
    for start, d in blocks:
        rows = slice(start, start + d.shape[0])
        same = probe_ids[rows, None] == gallery_ids[None, :]
        if probe_views is not None:
            removed = same & (probe_views[rows, None] == gallery_views[None, :])
            d = d.masked_fill(torch.from_numpy(removed), math.inf)
            same &= ~removed
        matches = _match_table(same)
        scores = score_ranks(match_ranks(d, matches), matches, d.argmin(dim=1), d.shape[1])
        found.append(Retrieval(*(s.numpy() for s in scores)))
    return Retrieval.concat(found)


def _top_k(
    emb: Embeddings,
    probes: np.ndarray,
    gallery: np.ndarray,
    metric: str,
    k: int,
    max_memory: int,
    reranked: np.ndarray | None = None,
) -> np.ndarray:
    """[q, min(k, g)]: each probe's k nearest gallery positions (into ``gallery``), nearest
    first, ties by gallery order, exactly as a stable sort of the whole row would give them.

    A block of probes meets the gallery a block at a time (rows read from ``emb`` on request,
    or from the re-ranked distances ``reranked`` [q, g]); each probe keeps only its running k
    nearest, merged with the next block by a stable sort (the running ones come first, so an
    equal distance keeps the earlier gallery sequence). A quarter of ``max_memory`` holds the
    gallery block, a quarter the probe block, the rest their pairs (:data:`_PAIR_BYTES` each)."""
    q, g = len(probes), len(gallery)
    k = min(k, g)
    row_bytes = _ENTRY_BYTES * emb.row_size
    gallery_rows = int(max(1, min(g, max_memory // (4 * row_bytes))))
    probe_rows = int(
        max(
            1,
            min(
                max_memory // (4 * row_bytes), max_memory // (2 * _PAIR_BYTES * (gallery_rows + k))
            ),
        )
    )
    out = np.empty((q, k), dtype=np.int64)
    for p0 in range(0, q, probe_rows):
        block = probes[p0 : p0 + probe_rows]
        x = emb.parts(block) if reranked is None else None
        best = torch.zeros((len(block), 0), dtype=torch.float64)
        where = torch.zeros((len(block), 0), dtype=torch.int64)
        for g0 in range(0, g, gallery_rows):
            columns = slice(g0, g0 + gallery_rows)
            if reranked is None:
                y = emb.parts(gallery[columns])
                d = torch.cat([d for _, d in distance_blocks(x, y, metric, max_memory)])
            else:
                d = torch.from_numpy(
                    np.asarray(reranked[p0 : p0 + len(block), columns], np.float64)
                )
            best, order = torch.sort(torch.cat([best, d], dim=1), dim=1, stable=True)
            at = torch.arange(g0, g0 + d.shape[1]).expand(len(block), -1)
            where = torch.cat([where, at], dim=1).gather(1, order)
            best, where = best[:, :k], where[:, :k]
        out[p0 : p0 + len(block)] = where.numpy()
    return out


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


def _check(metric: str, embeddings, labels, *others) -> tuple[Embeddings, list[np.ndarray]]:
    """The metric checked, the embeddings as :class:`Embeddings`, the string arrays as such."""
    _check_metric(metric)
    emb = _embeddings(embeddings)
    arrays = _strings(labels, *others)
    if any(len(a) != len(emb) for a in arrays):
        raise ProtocolError(
            f"{len(emb)} embeddings but {', '.join(str(len(a)) for a in arrays)} labels, types "
            "or views: give one of each per sequence"
        )
    return emb, arrays


def gait3d(
    embeddings,
    labels,
    types,
    views,
    probe_set,
    metric: str = "euclidean",
    rerank: Rerank | None = None,
    max_memory: int = MAX_MEMORY,
) -> dict:
    """Gait3D (OpenGait's ``evaluate_Gait3D``): Rank-1/5/10, mAP and mINP, in percent.

    The probes are the sequences named in the partition file's ``PROBE_SET`` as
    ``subject-type-view`` (e.g. ``0001-camid0_videoid2-seq0``); the gallery is every other
    sequence. A probe whose subject has no gallery sequence is left out of every figure.

    Parameters
    ----------
    embeddings : ndarray [n, c, p], or Embeddings
    labels, types, views : sequences of str [n]
        Subject ids, camera-video folders (``camid0_videoid2``) and sequence names (``seq0``).
    probe_set : iterable of str
        The partition file's ``PROBE_SET``.
    metric : {"euclidean", "cosine"}
    rerank, max_memory
        See the module's docstring.

    Examples
    --------
    >>> emb = np.array([0.0, 1.0, 0.1, 0.9, 0.5]).reshape(5, 1, 1)
    >>> labels = ["a", "b", "a", "b", "c"]
    >>> views = ["seq0", "seq0", "seq1", "seq1", "seq0"]
    >>> r = gait3d(emb, labels, ["cam0"] * 5, views, ["a-cam0-seq0", "b-cam0-seq0"])
    >>> r["rank1"], r["mAP"], r["probes"], r["gallery"]
    (100.0, 100.0, 2, 3)
    """
    emb, (labels, types, views) = _check(metric, embeddings, labels, types, views)
    wanted = set(probe_set)
    is_probe = np.array(
        [f"{s}-{t}-{v}" in wanted for s, t, v in zip(labels, types, views, strict=True)]
    )
    _nonempty("probe", is_probe, "none is named in the partition file's PROBE_SET")
    _nonempty("gallery", ~is_probe, "every sequence is a probe of the partition file")
    probes, gallery = np.flatnonzero(is_probe), np.flatnonzero(~is_probe)
    reranked = _reranked(emb, probes, gallery, metric, rerank, max_memory) if rerank else None
    found = _ranked(
        _rows(emb, probes, gallery, metric, max_memory, reranked), labels[probes], labels[gallery]
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


def _grew_gallery(types: np.ndarray, gallery_types: tuple, distractors: bool) -> np.ndarray:
    """GREW's gallery rows: ``gallery_types``, and with ``distractors`` GREW's distractors."""
    gallery = np.isin(types, gallery_types)
    if not distractors:
        return gallery
    extra = np.isin(types, GREW_DISTRACTORS)
    _nonempty("distractor", extra, "GREW's distractors are type 'distractor' (gait prep grew)")
    return gallery | extra


def grew(
    embeddings,
    labels,
    types,
    metric: str = "euclidean",
    distractors: bool = False,
    rerank: Rerank | None = None,
    max_memory: int = MAX_MEMORY,
) -> dict:
    """GREW's labelled split (OpenGait's ``evaluate_real_scene``): Rank-1/5/10/20 in percent.

    Type ``01`` is the gallery, type ``02`` the probes; every probe counts (one whose subject has
    no gallery sequence is a miss). OpenGait rounds each Rank-k to 2 decimals and returns Rank-1
    and Rank-5 (it logs Rank-10 and Rank-20). With ``distractors``, GREW's distractors join the
    gallery (no probe's subject). The gallery is ranked a block at a time (:func:`_top_k`):
    Rank-k is whether the probe's subject is among its k nearest.
    """
    emb, (labels, types) = _check(metric, embeddings, labels, types)
    gallery = _grew_gallery(types, GREW_GALLERY, distractors)
    probes = np.isin(types, GREW_PROBES)
    _nonempty("gallery", gallery, "GREW's gallery is type 01")
    _nonempty("probe", probes, "GREW's probes are type 02")
    nearest = _nearest(emb, probes, gallery, metric, GREW_RANKS, rerank, max_memory)
    hit = labels[np.flatnonzero(gallery)][nearest] == labels[probes][:, None]
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    return {
        **{f"rank{k}": _rank_k(first, k) for k in (1, 5, 10, 20)},
        "probes": int(probes.sum()),
        "gallery": int(gallery.sum()),
        "distractors": int((gallery & np.isin(types, GREW_DISTRACTORS)).sum()),
    }


def _nearest(emb, probes, gallery, metric, k, rerank, max_memory) -> np.ndarray:
    """:func:`_top_k` of the masks ``probes`` and ``gallery``, after re-ranking if asked."""
    probes, gallery = np.flatnonzero(probes), np.flatnonzero(gallery)
    reranked = _reranked(emb, probes, gallery, metric, rerank, max_memory) if rerank else None
    return _top_k(emb, probes, gallery, metric, k, max_memory, reranked)


def grew_submission(
    embeddings,
    labels,
    types,
    views,
    metric: str = "euclidean",
    distractors: bool = False,
    rerank: Rerank | None = None,
    max_memory: int = MAX_MEMORY,
) -> list[tuple[str, list[int]]]:
    """GREW's test split (OpenGait's ``GREW_submission``): per probe video, in input order, the
    subject ids of its 20 nearest gallery sequences, nearest first.

    Types ``01`` and ``02`` are the gallery, type ``03`` the probes, whose video id is their
    ``views`` entry (their labels are not used). Subject ids are written as integers, as
    OpenGait writes them (``00018`` becomes ``18``), and so must be integers. With
    ``distractors``, GREW's distractors join the gallery; one among a probe's 20 nearest is
    written as :data:`DISTRACTOR_ID`.
    """
    emb, (labels, types, views) = _check(metric, embeddings, labels, types, views)
    gallery = _grew_gallery(types, GREW_SUBMISSION_GALLERY, distractors)
    probes = np.isin(types, GREW_SUBMISSION_PROBES)
    _nonempty("probe", probes, "GREW's test probes are type 03")
    if gallery.sum() < GREW_RANKS:
        raise ProtocolError(
            f"GREW's submission lists {GREW_RANKS} gallery subjects per probe, but there are "
            f"{int(gallery.sum())} gallery sequences (types 01 and 02)"
        )
    ids = []
    for label, kind in zip(labels[gallery], types[gallery], strict=True):
        try:
            ids.append(DISTRACTOR_ID if kind in GREW_DISTRACTORS else int(label))
        except ValueError:
            raise ProtocolError(
                f"GREW's submission writes subject ids as integers; {label!r} is not one"
            ) from None
    ids = np.array(ids)
    nearest = _nearest(emb, probes, gallery, metric, GREW_RANKS, rerank, max_memory)
    return [(str(v), ids[row].tolist()) for v, row in zip(views[probes], nearest, strict=True)]


def _view_pair_rank1(emb, labels, probes, gallery, views, view_list, metric, max_memory, reranked):
    """[V, V] rank-1 in percent, probe view by gallery view, of the rows ``probes`` against the
    rows ``gallery`` (NaN where a cell has no probe or no gallery sequence); with ``reranked``
    [len(probes), len(gallery)], from its entries."""
    table = np.full((len(view_list), len(view_list)), math.nan)
    for i, pv in enumerate(view_list):
        p = np.flatnonzero(views[probes] == pv)
        for j, gv in enumerate(view_list):
            g = np.flatnonzero(views[gallery] == gv)
            if p.size and g.size:
                cell = None if reranked is None else reranked[np.ix_(p, g)]
                blocks = _rows(emb, probes[p], gallery[g], metric, max_memory, cell)
                found = _ranked(blocks, labels[probes[p]], labels[gallery[g]])
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


def ccpg(
    embeddings,
    labels,
    types,
    views,
    metric: str = "euclidean",
    rerank: Rerank | None = None,
    max_memory: int = MAX_MEMORY,
) -> dict:
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
    rounded, so its averages may differ from these by up to 0.005. With ``rerank``, each group's
    probes and gallery are re-ranked together once, and both kinds of figures come from those
    distances (a cell: its probes' rows, its gallery's columns).
    """
    emb, (labels, types, views) = _check(metric, embeddings, labels, types, views)
    views = np.array([v.split("_")[0] for v in views])
    view_list = sorted(set(views.tolist()))
    result: dict = {"views": view_list}
    for name, (probe_types, gallery_types) in CCPG_GROUPS.items():
        is_probe, is_gallery = np.isin(types, probe_types), np.isin(types, gallery_types)
        _nonempty("probe", is_probe, f"CCPG's {name} probes are types {', '.join(probe_types)}")
        _nonempty("gallery", is_gallery, f"CCPG's {name} gallery is {', '.join(gallery_types)}")
        probes, gallery = np.flatnonzero(is_probe), np.flatnonzero(is_gallery)
        reranked = _reranked(emb, probes, gallery, metric, rerank, max_memory) if rerank else None
        found = _ranked(
            _rows(emb, probes, gallery, metric, max_memory, reranked),
            *(labels[probes], labels[gallery]),
            *(views[probes], views[gallery]),
        )
        matched = found.has_match
        if not matched.any():
            raise ProtocolError(f"CCPG's {name}: no probe has a correct gallery sequence")
        table = _view_pair_rank1(
            emb, labels, probes, gallery, views, view_list, metric, max_memory, reranked
        )
        per_view = without_identical_views(table)
        result[name] = {
            "probe_types": list(probe_types),
            "gallery_types": list(gallery_types),
            "probes": int(is_probe.sum()),
            "probes_scored": int(matched.sum()),
            "gallery": int(is_gallery.sum()),
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
    embeddings,
    labels,
    views,
    metric: str = "euclidean",
    rerank: Rerank | None = None,
    max_memory: int = MAX_MEMORY,
) -> list[tuple[str, str]]:
    """HID (OpenGait's ``HID_submission``): per probe video, in input order, the subject of the
    nearest gallery sequence.

    Probes are the sequences labelled ``probe``, their video id in ``views``; the gallery is every
    other sequence. With ``rerank``, the nearest is taken after k-reciprocal re-ranking
    (:func:`gaittrain.evaluation.rerank.rerank`, k1 = 6, k2 = 6, λ = 0.3) of the distances
    between all probes and gallery sequences, probes first, in ``rerank.precision``: OpenGait's
    arithmetic, the default, which gives OpenGait's submission line for line (its float32
    distances, :func:`gaittrain.evaluation.rerank.opengait_distances`, its float16 re-ranking, and
    its ``np.argsort``'s choice among equal distances,
    :func:`~gaittrain.evaluation.rerank.nearest_gallery`), or float64 (the distances too).
    """
    emb, (labels, views) = _check(metric, embeddings, labels, views)
    probes = labels == HID_PROBE
    _nonempty("probe", probes, f"HID's probes are labelled {HID_PROBE!r}")
    _nonempty("gallery", ~probes, f"HID's gallery is every sequence not labelled {HID_PROBE!r}")
    if rerank:
        p, g = np.flatnonzero(probes), np.flatnonzero(~probes)
        nearest = k_reciprocal.nearest_gallery(_reranked(emb, p, g, metric, rerank, max_memory))
    else:
        nearest = _nearest(emb, probes, ~probes, metric, 1, None, max_memory)[:, 0]
    return [(str(v), str(s)) for v, s in zip(views[probes], labels[~probes][nearest], strict=True)]
