"""OpenGait's pretreated datasets: one pickled numpy array per sequence, read safely.

OpenGait's ``datasets/pretreatment.py`` writes each sequence as ``{subject}/{type}-{seq}/{view}/
{view}.pkl`` (OU-MVLP, after OpenGait's rearrangement: ``{subject}/{seq}/{view}/{view}.pkl``), a
pickled uint8 array ``[frames, S, S]`` of silhouettes it has already normalized the way
:mod:`gaitprep.normalize` does (threshold 10000, crop, resize, centre). ``gait prep opengait``
stores those frames as they are.

A pickle can run any code when it is loaded, so these files are never given to :func:`pickle.load`.
:class:`ArrayUnpickler` resolves only the globals that a pickled numpy array names (numpy 1.x's
``numpy.core`` and 2.x's ``numpy._core`` spellings, protocols 0 to 5) and refuses every other one
before anything is called; :func:`load_array` then accepts only a non-empty 3-D uint8 array of
0-255 silhouettes (bool arrays and 0/1 masks are refused, not rescaled).
Every problem, a refused global included, is a :class:`PickleRefused` whose message says why.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from gaitprep.errors import first_line
from gaitprep.layout import RawSequence
from gaitprep.pack import frames_crc
from gaitprep.process import EMPTY_FILE, Params, Processed

#: The files a sequence is read from.
PICKLE_EXTENSIONS = (".pkl",)
#: OpenGait's layouts after its pretreatment (``--layout`` presets of ``gait prep opengait``):
#: the same (subject, condition, seq, view) keys as ``gait prep casia-b`` and ``ou-mvlp`` give.
CASIA_B = "{subject}/{condition}-{seq}/{view}/*.pkl"
OU_MVLP = "{subject}/{seq}/{view}/*.pkl"
LAYOUTS = {"casia-b": CASIA_B, "ou-mvlp": OU_MVLP}
#: The ``imported_from`` pack attribute of a pack whose frames are OpenGait's, stored as they were.
IMPORTED_FROM = "opengait-pickle"
#: OpenGait's pretreatment.py drops frames whose grey-value sum is at most 10000, does not keep
#: only the largest blob and does not binarize: gait's normalization with these parameters.
MIN_SUM = 10000


class PickleRefused(Exception):
    """A pickle that is not read: unsafe, damaged, or not a sequence of uint8 frames."""


def opengait_params(size: int = 64) -> Params:
    """The normalization parameters that describe OpenGait's pretreatment at ``size``: recorded in
    the pack, so that a probe for ``gait identify`` is normalized the same way."""
    return Params(size=size, min_sum=MIN_SUM, binarize=False, largest_blob=False)


def _latin1(text, encoding="latin1", errors="strict") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes, and for nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise PickleRefused(
            f"refused: the pickle calls _codecs.encode with {encoding!r}, which a numpy array "
            "never needs (nothing of it was run)"
        )
    return text.encode("latin1")


def _allowed() -> dict[tuple[str, str], object]:
    """Every global a pickled numpy array names, mapped to this numpy's own object."""
    probe = np.zeros(1, np.uint8)
    reconstruct = probe.__reduce__()[0]  # numpy.{_core,core}.multiarray._reconstruct
    frombuffer = probe.__reduce_ex__(5)[0]  # numpy.{_core,core}.numeric._frombuffer
    if (reconstruct.__name__, frombuffer.__name__) != ("_reconstruct", "_frombuffer"):
        raise ImportError(f"numpy {np.__version__} pickles arrays in a way gait does not know")
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


ALLOWED = _allowed()


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and nothing else.

    ``find_class`` is asked for every global before it can be called; anything that is not in
    :data:`ALLOWED` (``os.system``, ``builtins.eval``, a class of some module) raises
    :class:`PickleRefused` naming it, so the pickle stops there and nothing of it runs.
    ``encoding="latin1"`` reads arrays pickled by Python 2 as numpy documents.
    """

    def __init__(self, file):
        super().__init__(file, encoding="latin1")

    def find_class(self, module: str, name: str):
        found = ALLOWED.get((module, name))
        if found is None:
            raise PickleRefused(
                f"refused: the pickle asks for {module}.{name}, which is not part of a numpy "
                "array (nothing of it was run)"
            )
        return found

    def persistent_load(self, pid):
        raise PickleRefused("refused: the pickle holds a persistent id (nothing of it was run)")


def load_array(data: bytes) -> np.ndarray:
    """The uint8 frames ``[n, H, W]`` pickled in ``data``; PickleRefused says why not."""
    if not data:
        raise PickleRefused(EMPTY_FILE)
    try:
        obj = ArrayUnpickler(io.BytesIO(data)).load()
    except PickleRefused:
        raise
    except Exception as e:  # a damaged pickle fails in many ways; the restricted one runs nothing
        raise PickleRefused(
            f"not a readable pickle (truncated or corrupt: {first_line(e, 100)})"
        ) from None
    if type(obj) is not np.ndarray:
        raise PickleRefused(
            f"holds a {type(obj).__name__}, not a numpy array [frames, height, width]"
        )
    if obj.ndim != 3:
        raise PickleRefused(
            f"holds a {obj.ndim}-D array {tuple(obj.shape)}, not frames [frames, height, width]"
        )
    if obj.dtype != np.uint8:
        raise PickleRefused(
            f"holds {obj.dtype} values, not uint8 silhouettes (0-255, as OpenGait's "
            "pretreatment.py writes them)"
        )
    if obj.shape[0] == 0 or obj.size == 0:
        raise PickleRefused(f"holds no frames (an empty array {tuple(obj.shape)})")
    if obj.max() == 1:
        raise PickleRefused(
            "holds only 0 and 1 (a mask), not 0-255 silhouettes; multiply it by 255 first"
        )
    return np.ascontiguousarray(obj)


def _check_size(frames: np.ndarray, size: int) -> None:
    h, w = frames.shape[1:]
    if h != w:
        raise PickleRefused(f"frames are {h} x {w}, not square; a gait pack holds S x S frames")
    if h != size:
        hint = f"pass --size {h}" if h in (64, 128) else "a gait pack holds 64 x 64 or 128 x 128"
        raise PickleRefused(f"frames are {h} x {w}, not {size} x {size} ({hint})")


def read_pickle_sequence(root: Path, seq: RawSequence, params: Params) -> Processed:
    """The frames of one OpenGait sequence as they are; nothing raises for a bad pickle.

    A sequence is one pickle. A refused one (unsafe, damaged, not non-empty uint8 frames of
    ``params.size`` squared) is listed in ``unreadable`` with its reason and gives no frames.
    """
    s = params.size
    nothing = np.zeros((0, s, s), np.uint8)
    folder = os.path.join(root, seq.folder)
    if len(seq.files) > 1:
        reason = (
            f"one of {len(seq.files)} pickles in its sequence folder ({', '.join(seq.files)}); "
            "a sequence is one pickle: narrow the file glob of --layout"
        )
        unreadable = [(f"{seq.folder}/{name}", reason) for name in seq.files]
        return Processed(nothing, np.zeros(0, np.int32), 0, [], unreadable, frames_crc(nothing))
    rel = f"{seq.folder}/{seq.files[0]}"
    try:
        with open(os.path.join(folder, seq.files[0]), "rb") as f:
            data = f.read()
        frames = load_array(data)
        _check_size(frames, s)
    except OSError as e:
        problem = f"cannot read file: {e.strerror or first_line(e)}"
    except PickleRefused as e:
        problem = str(e)
    else:
        source = np.arange(len(frames), dtype=np.int32)
        return Processed(frames, source, len(frames), [], [], frames_crc(frames))
    return Processed(nothing, np.zeros(0, np.int32), 0, [], [(rel, problem)], frames_crc(nothing))
