"""``gait score``: an in-the-wild protocol (:mod:`gaittrain.evaluation.wild`) run on the arrays
OpenGait's evaluator receives, saved as one ``.npz``, into a JSON or HTML report and, for the
GREW and HID challenges, a submission CSV.

The ``.npz`` holds ``embeddings`` (float, [n, c, p]: channels, then parts) and, per sequence,
``labels``, ``types`` and ``views`` (strings, [n]): ``np.savez(path, embeddings=...,
labels=..., types=..., views=...)``. It is read without unpickling anything
(:func:`load_inputs`) and written by :func:`save_inputs`.

One owner of the reports: ``gait eval RUN --pack PACK --protocol gait3d`` (and grew, ccpg, ...;
:mod:`gaittrain.evaluation.wild_run`) makes the same arrays from a run's embeddings and goes
through the same steps as ``gait score``: :func:`check_options`, :func:`locked_outputs`,
:func:`build_report`, :func:`write_outputs`.

Every figure of a report is in percent and unrounded. The report names the protocol, the
metric and the sha256 of the inputs (and of Gait3D's partition file). The submission CSVs are
written as OpenGait writes them, line for line: GREW's header ``videoId,rank1,...,rank20`` and
HID's ``videoID,label`` (OpenGait spells the video id's column differently in the two; both are
kept).
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import jinja2
import numpy as np

from gaitprep.errors import GaitError, first_line
from gaitprep.files import OutputLock, atomic_output, atomic_write, output_target
from gaittrain.evaluation import wild

PROTOCOLS = ("gait3d", "grew", "grew-submission", "ccpg", "hid")
FORMATS = ("json", "html")
#: The protocols whose result is a submission (rows), not figures.
SUBMISSIONS = ("grew-submission", "hid")
#: OpenGait's function behind each protocol (opengait/evaluation/evaluator.py).
OPENGAIT = {
    "gait3d": "evaluate_Gait3D",
    "grew": "evaluate_real_scene",
    "grew-submission": "GREW_submission",
    "ccpg": "evaluate_CCPG",
    "hid": "HID_submission",
}
#: The protocols GREW's distractors may join (``distractors``).
DISTRACTOR_PROTOCOLS = ("grew", "grew-submission")
KEYS = ("embeddings", "labels", "types", "views")
PARTITION = "Gait3D.json"
TEMPLATE = Path(__file__).with_name("score.html.j2")
#: Submission rows shown on the HTML page (the CSV and the JSON hold them all).
HTML_ROWS = 50


class ScoreError(GaitError):
    """Inputs or options that ``gait score`` cannot use (one line: the file and the fix)."""


# --- inputs -------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_inputs(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of an inputs ``.npz``, checked: every key present, ``embeddings`` a finite
    float array [n, c, p], ``labels``, ``types`` and ``views`` 1-D arrays of n strings (integers
    are taken as their decimal strings)."""
    path = Path(path)
    fix = "give an .npz saved with np.savez(path, embeddings=E, labels=L, types=T, views=V)"
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ScoreError(f"{path} holds one array, not named arrays; {fix}")
        with npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise ScoreError(f"{path} has no {', '.join(missing)} array; {fix}")
            arrays = {k: npz[k] for k in KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ScoreError(f"cannot read {path}: {first_line(e)}; {fix}") from None
    emb = arrays["embeddings"]
    if emb.ndim != 3 or emb.dtype.kind != "f" or emb.shape[0] == 0:
        raise ScoreError(
            f"{path}: embeddings is {emb.dtype} of shape {list(emb.shape)}, not a float array "
            "[n, c, p] (sequences, channels, parts: the layout OpenGait's evaluator receives)"
        )
    if not np.isfinite(emb).all():
        raise ScoreError(f"{path}: embeddings hold NaN or infinite values; embed them again")
    for key in KEYS[1:]:
        a = arrays[key]
        if a.ndim != 1 or a.dtype.kind not in "USiu" or len(a) != len(emb):
            raise ScoreError(
                f"{path}: {key} is {a.dtype} of shape {list(a.shape)}, not {len(emb)} strings "
                "(one per sequence of embeddings)"
            )
        arrays[key] = a.astype(str)
    return arrays


def save_inputs(path: Path, embeddings: np.ndarray, labels, types, views) -> None:
    """Write an inputs ``.npz`` (atomically): ``embeddings`` [n, c, p] in OpenGait's layout and
    the three string arrays, as :func:`load_inputs` reads them."""
    arrays = {
        "embeddings": np.asarray(embeddings),
        **{
            k: np.asarray(a).astype(str)
            for k, a in zip(KEYS[1:], (labels, types, views), strict=True)
        },
    }
    with atomic_output(Path(path)) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_partition(partition: Path | None, key: str = "PROBE_SET") -> list[str]:
    """A list of Gait3D's partition file: ``PROBE_SET``, the probes as ``subject-type-view``
    (or ``TEST_SET``, the test subjects, for ``gait eval``)."""
    what = f"Gait3D's partition file ({PARTITION}, whose PROBE_SET names the probes)"
    if partition is None:
        raise ScoreError(f"gait3d needs {what}: give its path with --partition")
    partition = Path(partition)
    if not partition.is_file():
        raise ScoreError(f"partition file {partition} not found: give the path of {what}")
    try:
        names = json.loads(partition.read_text(encoding="utf-8"))[key]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ScoreError(
            f"cannot read {key} from {partition} ({first_line(e)}); give {what}"
        ) from None
    if not isinstance(names, list) or not all(isinstance(p, str) for p in names):
        raise ScoreError(f"{partition}: {key} is not a list of names; give {what}")
    return names


# --- the report ---------------------------------------------------------------------------------


def evaluate(
    arrays: dict,
    protocol: str,
    metric: str = "euclidean",
    probe_set: list[str] | None = None,
    rerank: wild.Rerank | None = None,
    distractors: bool = False,
    max_memory: int = wild.MAX_MEMORY,
) -> dict:
    """The protocol's figures (percent) or submission rows, as the report holds them.
    ``arrays["embeddings"]``: OpenGait's [n, c, p] array or a :class:`~wild.Embeddings`."""
    e, labels, types, views = (arrays[k] for k in KEYS)
    options = {"rerank": rerank, "max_memory": max_memory}
    if protocol == "gait3d":
        return wild.gait3d(e, labels, types, views, probe_set, metric, **options)
    if protocol == "grew":
        return wild.grew(e, labels, types, metric, distractors, **options)
    if protocol == "ccpg":
        return wild.ccpg(e, labels, types, views, metric, **options)
    if protocol == "grew-submission":
        rows = wild.grew_submission(e, labels, types, views, metric, distractors, **options)
        among = np.isin(types, wild.GREW_DISTRACTORS).sum() if distractors else 0
        return {
            "distractors": int(among),
            "submission": [{"videoId": v, "subjects": s} for v, s in rows],
        }
    if protocol == "hid":
        rows = wild.hid(e, labels, views, metric, **options)
        return {"submission": [{"videoID": v, "label": s} for v, s in rows]}
    raise ScoreError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")


def submission_csv(report: dict) -> str:
    """The submission of a ``grew-submission`` or ``hid`` report, as OpenGait writes it."""
    rows = report["submission"]
    if report["protocol"] == "grew-submission":
        header = ["videoId", *(f"rank{k}" for k in range(1, wild.GREW_RANKS + 1))]
        lines = [[r["videoId"], *map(str, r["subjects"])] for r in rows]
    else:
        header, lines = ["videoID", "label"], [[r["videoID"], r["label"]] for r in rows]
    for line in lines:
        if any("," in cell or "\n" in cell for cell in line):
            raise ScoreError(f"{line[0]!r}: a video id or label with a comma cannot go in a CSV")
    return "".join(",".join(line) + "\n" for line in [header, *lines])


def _no_nan(value):
    """``value`` with every NaN float as None (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


def to_json(report: dict) -> str:
    return json.dumps(_no_nan(report), indent=1) + "\n"


def to_html(report: dict) -> str:
    """One self-contained page of the report's figures (or its first submission rows)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["pct"] = lambda x: "–" if x is None else f"{x:.3f}"
    return env.get_template(TEMPLATE.name).render(
        r=_no_nan(report), groups=list(wild.CCPG_GROUPS), shown=HTML_ROWS
    )


def summary(report: dict) -> list[str]:
    """A few lines for the terminal: the headline figures, or the number of submission rows."""
    head = f"{report['protocol']} ({report['metric']})"
    if report["protocol"] in SUBMISSIONS:
        return [f"{head}: {len(report['submission'])} probe videos"]
    if report["protocol"] == "ccpg":
        return [
            f"{head} {g}: rank-1 {report[g]['rank1_reid']:.2f} %, mAP {report[g]['mAP']:.2f} %, "
            f"rank-1 per view pair {report[g]['rank1_excluding_identical_view']:.2f} %"
            for g in wild.CCPG_GROUPS
        ]
    names = [k for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP") if k in report]
    return [head + ": " + ", ".join(f"{k} {report[k]:.2f} %" for k in names)]


# --- the steps of gait score (and of gait eval's in-the-wild protocols) ------------------------


def check_options(
    protocol: str,
    metric: str,
    fmt: str,
    partition: Path | None = None,
    rerank: bool = False,
    precision: str | None = None,
    out: Path | None = None,
    submission: Path | None = None,
    distractors: bool = False,
) -> None:
    """One-line ScoreErrors for options that do not go together, before any work."""
    for name, value, allowed in (
        ("protocol", protocol, PROTOCOLS),
        ("metric", metric, wild.METRICS),
        ("report format", fmt, FORMATS),
    ):
        if value not in allowed:
            raise ScoreError(f"unknown {name} {value!r}; use one of {', '.join(allowed)}")
    if partition is not None and protocol != "gait3d":
        raise ScoreError(f"--partition is Gait3D's; {protocol} takes none")
    if distractors and protocol not in DISTRACTOR_PROTOCOLS:
        raise ScoreError(f"--distractors is GREW's (grew, grew-submission); {protocol} takes none")
    if precision is not None and not rerank:
        raise ScoreError("--rerank-precision is --rerank's; give --rerank too, or leave it out")
    if precision is not None and precision not in wild.RERANK_PRECISIONS:
        allowed = ", ".join(wild.RERANK_PRECISIONS)
        raise ScoreError(f"unknown re-ranking precision {precision!r}; use one of {allowed}")
    if submission is not None and protocol not in SUBMISSIONS:
        raise ScoreError(
            f"{protocol} makes no submission; --submission is for grew-submission, hid"
        )
    both = submission is not None and out is not None
    if both and output_target(submission) == output_target(out):
        raise ScoreError(f"{out} is both the report and the submission; give two files")


@contextmanager
def locked_outputs(*paths: Path | None) -> Iterator[None]:
    """Every output checked (a folder, a device or an output another process is writing is
    refused) and locked while the block runs; None is skipped."""
    with ExitStack() as locks:
        for path in paths:
            if path is not None:
                output_target(Path(path))
                locks.enter_context(OutputLock(Path(path)))
        yield


def build_report(
    arrays: dict,
    inputs: dict,
    protocol: str,
    metric: str = "euclidean",
    partition: Path | None = None,
    rerank: bool = False,
    rerank_precision: str | None = None,
    distractors: bool = False,
    max_memory: int = wild.MAX_MEMORY,
    about: dict | None = None,
) -> dict:
    """The report of ``arrays`` (:data:`KEYS`; ``embeddings`` an array [n, c, p] or a
    :class:`~wild.Embeddings`) by ``protocol``: what was scored (``inputs``, as the caller
    describes it, and ``about``: a run's provenance, for ``gait eval``), the partition file, the
    re-ranking, then the figures or submission rows (:func:`evaluate`)."""
    probe_set = load_partition(partition) if protocol == "gait3d" else None
    reranking = wild.Rerank(rerank_precision or wild.RERANK_PRECISIONS[0]) if rerank else None
    report = {
        "protocol": protocol,
        "metric": metric,
        "opengait": f"ShiqiYu/OpenGait 0efafd4 {OPENGAIT[protocol]}",
        "units": "percent",
        "inputs": inputs,
        **(about or {}),
    }
    if protocol == "gait3d":
        report["partition"] = {"path": str(partition), "sha256": sha256(partition)}
    report["rerank"] = reranking.describe() if reranking else None
    report.update(evaluate(arrays, protocol, metric, probe_set, reranking, distractors, max_memory))
    return report


def write_outputs(report: dict, out: Path, fmt: str = "json", submission: Path | None = None):
    """The report ``out`` (``fmt``: json or html) and, when given, the submission CSV, each
    written atomically."""
    atomic_write(out, to_json(report) if fmt == "json" else to_html(report))
    if submission is not None:
        atomic_write(submission, submission_csv(report))


def score(
    inputs: Path,
    protocol: str,
    out: Path,
    fmt: str = "json",
    metric: str = "euclidean",
    partition: Path | None = None,
    rerank: bool = False,
    submission: Path | None = None,
    rerank_precision: str | None = None,
    distractors: bool = False,
    max_memory: int = wild.MAX_MEMORY,
) -> dict:
    """Score the inputs ``.npz`` by ``protocol`` and write the report ``out`` (``fmt``: json or
    html) and, for grew-submission and hid, the submission CSV ``submission`` when given.
    ``rerank`` (any protocol): k-reciprocal re-ranking first, in ``rerank_precision``:
    ``"opengait"`` (None: the default) or ``"float64"``, refused past ``max_memory``
    (:func:`gaittrain.evaluation.wild.rerank_bytes`); ``distractors`` (GREW's protocols): GREW's
    distractors join the gallery.

    Everything is checked before any work: the options, the outputs (a folder, a device or an
    output another process is writing is refused), the inputs and Gait3D's partition file. Both
    files are written atomically. Returns the report.
    """
    check_options(
        protocol, metric, fmt, partition, rerank, rerank_precision, out, submission, distractors
    )
    with locked_outputs(out, submission):
        arrays = load_inputs(inputs)
        n, channels, parts = arrays["embeddings"].shape
        about = {
            "path": str(inputs),
            "sha256": sha256(inputs),
            "sequences": n,
            "channels": channels,
            "parts": parts,
        }
        report = build_report(
            arrays,
            about,
            protocol,
            metric,
            partition,
            rerank,
            rerank_precision,
            distractors,
            max_memory,
        )
        write_outputs(report, out, fmt, submission)
    return report
