"""The in-the-wild datasets Gait3D, GREW and CCPG: where their sequences are, how a pack keys
each one, and the three strings OpenGait's evaluator sees for it.

A pack keys a sequence by ``(subject, condition, seq, view)``, with ``view`` the camera where the
dataset names one. OpenGait's evaluator sees ``(label, type, view)``: the three folders its
pretreatment wrote the sequence to. :func:`opengait_keys` makes these from a pack's key:

=======  =============================  ============  ==========  ========  ======
dataset  a sequence's folder            subject       condition   seq       view
=======  =============================  ============  ==========  ========  ======
gait3d   0001/camid0_videoid2/seq0      0001          videoid2    seq0      camid0
grew     train/00001/4XPn5Z28           00001train    00          4XPn5Z28  000
grew     test/gallery/00001/79XJefi8    00001         01 or 02    79XJefi8  000
grew     test/probe/etaGVnWf            probe         03          etaGVnWf  000
grew     distractor/edXJefi8            distractor    distractor  edXJefi8  000
ccpg     000/U0_D0_BG/01_3              000           U0_D0_BG    3         01
=======  =============================  ============  ==========  ========  ======

OpenGait's label is the subject and its type the condition, except Gait3D's type
``{view}_{condition}`` (``camid0_videoid2``); its view is the seq, except CCPG's view
``{view}_{seq}`` (``01_3``, whose camera ``01`` OpenGait's CCPG protocol reads).

GREW's labels and types are those of OpenGait's ``datasets/GREW/rearrange_GREW.py``: training
subjects get the suffix ``train`` (GREW numbers its training and test people from 00001 alike),
type 00; a test subject's two gallery sequences are types 01 and 02, in the order of their names
(OpenGait takes the order the file system lists them in); the test probes, whose subject nobody
knows, are label ``probe``, type 03. OpenGait leaves the distractors out; gait keeps them as
label and type ``distractor``, which no OpenGait protocol selects. GREW has no camera: ``view``
is ``000``. The probes and distractors are the only sequences without a known subject
(:func:`labelled`; ``/sequences/labelled`` in the pack).

Keys hold everything, so the OpenGait strings of a sequence follow from its key alone (also in
an embeddings file, which keeps only keys), and ``gait prep opengait --dataset`` gives the same
keys from OpenGait's pickles of the same sequences.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from gaitprep.errors import GaitError
from gaitprep.layout import LayoutError, RawSequence, discover, natural_key
from gaitprep.opengait import PICKLE_EXTENSIONS

DATASETS = ("gait3d", "grew", "ccpg")

#: Gait3D's ``2D_Silhouettes`` folder: ``{id}/camid{c}_videoid{v}/seq{n}/*.png``.
GAIT3D = "{subject}/{view}_{condition}/{seq}/*.png"
#: CCPG's silhouettes: ``{id}/{type}/{camera}_{n}/*.png`` (RGB frames beside them are not read).
CCPG = "{subject}/{condition}/{view}_{seq}/*.png"
#: GREW, as its archives unpack: four parts, any of which may be absent.
GREW_TRAIN = "train/{subject}/{seq}/*.png"
GREW_GALLERY = "test/gallery/{subject}/{seq}/*.png"
GREW_PROBE = "test/probe/{seq}/*.png"
GREW_DISTRACTORS = ("distractor/{seq}/*.png", "distractors/{seq}/*.png")  # OpenGait's, GREW's
GREW_PARTS = (GREW_TRAIN, GREW_GALLERY, GREW_PROBE, *GREW_DISTRACTORS)

#: The subject and type of GREW's sequences of no known subject.
PROBE, PROBE_TYPE = "probe", "03"
DISTRACTOR = "distractor"
#: GREW's training sequences: OpenGait's suffix of their subjects, and their type.
TRAIN_SUFFIX, TRAIN_TYPE = "train", "00"
#: A test subject's gallery sequences in GREW, numbered as OpenGait numbers them.
GALLERY_TYPES = ("01", "02")
#: Gait energy images beside the sequences are not frames (OpenGait's pretreatment skips them).
GEI = "*gei.png"

#: OpenGait's pickles of each dataset (``datasets/pretreatment.py``; CCPG:
#: ``datasets/CCPG/organize_ccpg.py``, whose aligned silhouettes OpenGait's CCPG configs read),
#: and pickles not to read (Gait3D's ``merge_two_modality.py`` puts SMPL pickles beside them).
PICKLES = {
    "gait3d": ("{subject}/{view}_{condition}/{seq}/*.pkl", ("smpls-*.pkl",)),
    "grew": ("{subject}/{condition}/{seq}/*.pkl", ()),
    "ccpg": ("{subject}/{condition}/{view}_{seq}/*-aligned-sils.pkl", ()),
}


#: What to give instead, said when a folder does not fit: for the raw frames, for the pickles.
RAW_HINT = {
    "gait3d": "give Gait3D's 2D_Silhouettes folder",
    "grew": "give the folder GREW's archives unpack to",
    "ccpg": "give the folder of CCPG's silhouettes, {id}/{type}/{camera}_{n}/*.png",
}
PICKLE_HINT = "give the output folder of OpenGait's pretreatment of {}"


def layout(dataset: str, pickles: bool = False) -> str:
    """The layout ``dataset``'s sequences are found with, as a pack records it."""
    if pickles:
        return PICKLES[dataset][0]
    return {"gait3d": GAIT3D, "ccpg": CCPG, "grew": "; ".join(GREW_PARTS)}[dataset]


def find_sequences(dataset: str, root: Path, pickles: bool = False) -> list[RawSequence]:
    """Every sequence of ``dataset`` under ``root`` (its raw frames, or OpenGait's pickles),
    keyed as the table above says, sorted by key. Raises LayoutError naming what does not fit."""
    root = Path(root)
    if pickles:
        pattern, ignore = PICKLES[dataset]
        files = {"extensions": PICKLE_EXTENSIONS, "what": "pickles (*.pkl)"}
        found = discover(root, pattern, ignore=ignore, hint=PICKLE_HINT.format(dataset), **files)
    elif dataset == "grew":
        found = _grew(root)
    else:
        found = discover(root, layout(dataset), ignore=(GEI,), hint=RAW_HINT[dataset])
    return [replace(s, labelled=labelled(dataset, s.key)) for s in found]


def _grew(root: Path) -> list[RawSequence]:
    """GREW's sequences: those of each of its parts that ``root`` holds."""
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder")

    def part(pattern: str, defaults: dict | None = None) -> list[RawSequence]:
        if not (root / pattern.partition("{")[0]).is_dir():
            return []
        return discover(root, pattern, defaults, ignore=(GEI,), hint=RAW_HINT["grew"])

    train = part(GREW_TRAIN, {"condition": TRAIN_TYPE})
    found = [replace(s, subject=s.subject + TRAIN_SUFFIX) for s in train]
    found += _number_gallery(part(GREW_GALLERY))
    found += part(GREW_PROBE, {"subject": PROBE, "condition": PROBE_TYPE})
    for pattern in GREW_DISTRACTORS:
        found += part(pattern, {"subject": DISTRACTOR, "condition": DISTRACTOR})
    if not found:
        raise LayoutError(
            f"{root} holds none of GREW's folders train/, test/gallery/, test/probe/, "
            f"distractor/; {RAW_HINT['grew']}"
        )
    where: dict[tuple, str] = {}
    for s in found:
        if s.key in where:
            raise LayoutError(f"{s.folder} and {where[s.key]} are the same sequence of GREW")
        where[s.key] = s.folder
    return sorted(found, key=lambda s: natural_key(s.key))


def _number_gallery(seqs: list[RawSequence]) -> list[RawSequence]:
    """Types 01 and 02 for each test subject's gallery sequences, in the order of their names
    (``seqs`` is sorted by key)."""
    count: Counter[str] = Counter()
    out = []
    for s in seqs:
        count[s.subject] += 1
        if count[s.subject] > len(GALLERY_TYPES):
            raise LayoutError(
                f"test/gallery/{s.subject} holds more than {len(GALLERY_TYPES)} sequences; "
                f"GREW's gallery has {len(GALLERY_TYPES)} a subject, which OpenGait numbers "
                f"{' and '.join(GALLERY_TYPES)} (a third would take the probes' type {PROBE_TYPE})"
            )
        out.append(replace(s, condition=GALLERY_TYPES[count[s.subject] - 1]))
    return out


def labelled(dataset: str, key: Sequence[str]) -> bool:
    """Whether the sequence of ``key`` has a known subject: all but GREW's probes and
    distractors."""
    return not (dataset == "grew" and key[0] in (PROBE, DISTRACTOR))


def opengait_keys(dataset: str, key: Sequence[str]) -> tuple[str, str, str]:
    """OpenGait's ``(label, type, view)`` for the pack key ``(subject, condition, seq, view)``
    of a sequence of ``dataset`` (the pack's ``dataset`` attribute).

    Examples
    --------
    >>> opengait_keys("gait3d", ("0001", "videoid2", "seq0", "camid0"))
    ('0001', 'camid0_videoid2', 'seq0')
    >>> opengait_keys("grew", ("probe", "03", "etaGVnWf", "000"))
    ('probe', '03', 'etaGVnWf')
    >>> opengait_keys("ccpg", ("000", "U0_D0_BG", "3", "01"))
    ('000', 'U0_D0_BG', '01_3')
    """
    subject, condition, seq, view = key
    if dataset == "gait3d":
        return subject, f"{view}_{condition}", seq
    if dataset == "grew":
        return subject, condition, seq
    if dataset == "ccpg":
        return subject, condition, f"{view}_{seq}"
    raise GaitError(
        f"OpenGait's labels, types and views are known for packs of {', '.join(DATASETS)}, "
        f"not of {dataset!r}"
    )
