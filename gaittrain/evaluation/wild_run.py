"""``gait eval RUN --pack PACK --protocol gait3d|grew|grew-submission|ccpg|hid``: a run's
embeddings of an in-the-wild pack, scored exactly as ``gait score`` scores an inputs ``.npz``.

1. The pack must be of the protocol's dataset (its ``dataset`` attribute, written by ``gait prep
   gait3d|grew|ccpg`` or ``gait prep opengait --dataset``): :func:`pack_dataset`.
2. The sequences the protocol ranks are embedded with the run's model, as ``gait eval`` embeds
   CASIA-B's (:func:`~gaittrain.evaluation.embed.ensure_embeddings`, kept and reused in
   ``RUN/embeddings-PACKNAME.h5``): the test subjects' (:func:`wanted_subjects`) and, of GREW,
   the unlabelled sequences the protocol ranks.
3. Each sequence's OpenGait label, type and view follow from its key
   (:func:`gaitprep.wild.opengait_keys`), and the embeddings are read from the file a block of
   rows at a time, in gait's own layout [n, parts, dim]
   (:meth:`gaittrain.evaluation.wild.Embeddings.from_gait`): nothing is transposed or loaded
   whole, so GREW's distractors need not fit in memory (:func:`opengait_arrays`).
4. The report is ``gait score``'s (:func:`gaittrain.evaluation.score.build_report`, one owner),
   with the run's provenance and warnings beside it; ``save_inputs`` writes the same arrays as
   ``gait score``'s inputs ``.npz`` (OpenGait's layout [n, c, p]), so that ``gait score`` on it
   gives the same figures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gaitprep.errors import GaitError
from gaitprep.files import output_target
from gaitprep.pack import Pack
from gaitprep.wild import DATASETS, DISTRACTOR, PROBE, opengait_keys
from gaittrain.data.dataset import pack_subjects
from gaittrain.data.splits import SplitError, load_protocol, select
from gaittrain.evaluation.embed import ensure_embeddings
from gaittrain.evaluation.embeddings_file import DEFAULT_STORAGE, EmbeddingStore
from gaittrain.evaluation.run_eval import run_warnings
from gaittrain.evaluation.score import (
    PROTOCOLS,
    build_report,
    check_options,
    load_partition,
    locked_outputs,
    save_inputs,
    sha256,
    write_outputs,
)
from gaittrain.evaluation.wild import MAX_MEMORY, Embeddings
from gaittrain.run_folder import default_embeddings, run_folder

#: The pack datasets each protocol scores. HID's probes are the sequences of subject ``probe``:
#: of the packs gait makes, GREW's test probes are such (gait packs no HID tree yet).
PROTOCOL_DATASETS = {
    "gait3d": ("gait3d",),
    "grew": ("grew",),
    "grew-submission": ("grew",),
    "ccpg": ("ccpg",),
    "hid": DATASETS,
}
#: The shipped protocol files whose ``test`` names a dataset's test subjects; Gait3D's test
#: subjects are its partition file's ``TEST_SET``.
TEST_SPLITS = {"grew": "grew", "ccpg": "ccpg"}
#: GREW's unlabelled sequences each protocol ranks: its test probes (subject ``probe``, type 03).
GREW_PROBES = {"grew-submission": (PROBE,), "hid": (PROBE,)}


class WildError(GaitError):
    """A run, pack or option that an in-the-wild protocol cannot score (one line: the fix)."""


def pack_dataset(pack: Path, protocol: str) -> str:
    """The ``dataset`` attribute of ``pack``, one that ``protocol`` scores."""
    with Pack(pack) as p:
        dataset = str(p.attrs.get("dataset", ""))
    allowed = PROTOCOL_DATASETS[protocol]
    make = " or ".join(f"gait prep {d}" for d in allowed)
    if dataset not in allowed:
        what = f"a {dataset} pack" if dataset else "a pack that records no dataset"
        raise WildError(
            f"{pack} is {what}; --protocol {protocol} scores a pack of "
            f"{' or '.join(allowed)}: make it with {make} (or gait prep opengait --dataset)"
        )
    return dataset


def wanted_subjects(
    pack: Path,
    dataset: str,
    protocol: str,
    test_subjects: str | None = None,
    partition: Path | None = None,
    distractors: bool = False,
) -> tuple[list[str], list[str]]:
    """``(embedded, test)``: the subjects whose sequences are embedded, and of those the test
    subjects (people, for the run's warnings).

    The test subjects are ``test_subjects`` (a selector) if given, else Gait3D's partition file's
    ``TEST_SET``, GREW's and CCPG's shipped protocol files' ``test``; GREW's probes and
    distractors (subjects ``probe`` and ``distractor``, nobody's) join them where the protocol
    ranks them (:data:`GREW_PROBES`, ``distractors``)."""
    people = pack_subjects([pack])
    if test_subjects:
        test = select(people, test_subjects)
    elif dataset == "gait3d":
        if partition is None:
            raise WildError(
                "a Gait3D pack's test subjects are its partition file's TEST_SET: give "
                "--partition Gait3D.json (gait3d) or --test-subjects"
            )
        wanted = set(load_partition(partition, "TEST_SET"))
        test = [s for s in people if s in wanted]
    else:
        test = select(people, str(load_protocol(TEST_SPLITS[dataset])["test"]))
    if not test:
        raise SplitError(f"no subject of {pack} is a test subject of {protocol}")
    unlabelled = list(GREW_PROBES.get(protocol, ())) + ([DISTRACTOR] if distractors else [])
    return test + (unlabelled if dataset == "grew" else []), test


def opengait_arrays(store: EmbeddingStore, dataset: str) -> dict:
    """The arrays ``gait score`` reads (:data:`~gaittrain.evaluation.score.KEYS`) of the
    embeddings ``store``: its rows as :class:`~gaittrain.evaluation.wild.Embeddings` (gait's
    layout, read on request) and each key's OpenGait label, type and view."""
    strings = np.array([opengait_keys(dataset, key) for key in store.keys], dtype=str)
    labels, types, views = strings.reshape(-1, 3).T
    return {
        "embeddings": Embeddings.from_gait(store),
        "labels": labels,
        "types": types,
        "views": views,
    }


def _check_outputs(out: Path, submission: Path | None, inputs: Path | None) -> None:
    if str(out) == "-":
        raise WildError(
            f"--out - writes CASIA-B's and OU-MVLP's reports; give {Path('report.json')} or "
            "another file for an in-the-wild report"
        )
    if inputs is not None and output_target(Path(inputs)) in {
        output_target(Path(p)) for p in (out, submission) if p is not None
    }:
        raise WildError(f"{inputs} is both --save-inputs and another output; give another file")


def evaluate_wild(
    run: Path,
    pack: Path,
    protocol: str,
    out: Path,
    fmt: str = "json",
    metric: str = "euclidean",
    partition: Path | None = None,
    rerank: bool = False,
    submission: Path | None = None,
    distractors: bool = False,
    inputs: Path | None = None,
    test_subjects: str | None = None,
    max_memory: int = MAX_MEMORY,
    max_frames: int = 0,
    device: torch.device | str = "cpu",
    storage: str = DEFAULT_STORAGE,
    notify: Callable[[str], None] = print,
    include_identical: bool = False,
    precision: str = "auto",
) -> dict:
    """Score ``run`` on ``pack`` by the in-the-wild ``protocol`` (:data:`PROTOCOLS`) and write
    the report ``out`` (json or html), the submission CSV ``submission`` (grew-submission, hid)
    and ``inputs``, the scored arrays as ``gait score``'s inputs ``.npz``, when given.

    ``rerank`` re-ranks in OpenGait's arithmetic; ``distractors`` adds GREW's distractors to the
    gallery; ``max_memory`` caps a block of ranking work and re-ranking. Everything is checked
    before anything is embedded: the options, the outputs, the pack's dataset, the test subjects
    and Gait3D's partition file. ``include_identical`` and ``precision`` are CASIA-B's and
    OU-MVLP's, refused here. Returns the report.
    """
    if protocol not in PROTOCOLS:
        raise WildError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if include_identical or precision != "auto":
        raise WildError(
            f"--include-identical and --precision are CASIA-B's and OU-MVLP's; {protocol} "
            "follows OpenGait's views and ranks float64 distances: leave them out"
        )
    check_options(protocol, metric, fmt, partition, rerank, None, out, submission, distractors)
    _check_outputs(out, submission, inputs)
    dataset = pack_dataset(pack, protocol)
    if protocol == "gait3d":
        load_partition(partition)  # its PROBE_SET, before anything is embedded
    subjects, test = wanted_subjects(pack, dataset, protocol, test_subjects, partition, distractors)
    path = default_embeddings(run, pack)
    with locked_outputs(out, submission, inputs):
        store, attrs, reason = ensure_embeddings(
            run,
            pack,
            path,
            subjects,
            torch.device(device),
            max_frames,
            stream=True,
            storage=storage,
        )
        if reason is not None and reason != "no embeddings yet":
            notify(f"embedded again: {reason}")
        warnings = run_warnings(run, attrs, test)
        for warning in warnings:
            notify(f"warning: {warning}")
        with store:
            arrays = opengait_arrays(store, dataset)
            if inputs is not None:
                every = np.arange(len(store))
                others = {k: arrays[k] for k in ("labels", "types", "views")}
                save_inputs(inputs, arrays["embeddings"].as_opengait(every), **others)
            parts, dim = store.shape  # OpenGait's channels are gait's dim
            scored = {"path": str(path), "sha256": sha256(path), "sequences": len(store)}
            provenance = {
                "run": str(run_folder(run)),
                "checkpoint": attrs.get("checkpoint"),
                "pack": str(pack),
                "storage": attrs.get("storage", "float32"),
                "warnings": warnings,
            }
            report = build_report(
                arrays,
                {**scored, "channels": dim, "parts": parts},
                protocol,
                metric,
                partition,
                rerank,
                None,
                distractors,
                max_memory,
                provenance,
            )
        write_outputs(report, out, fmt, submission)
    return report
