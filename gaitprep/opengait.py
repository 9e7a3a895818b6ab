"""OpenGait's pretreated datasets: one pickled numpy array per sequence, read safely.

OpenGait's ``datasets/pretreatment.py`` writes each sequence as ``{subject}/{type}-{seq}/{view}/
{view}.pkl`` (OU-MVLP, after OpenGait's rearrangement: ``{subject}/{seq}/{view}/{view}.pkl``;
Gait3D, GREW and CCPG: see :mod:`gaitprep.wild`), a pickled uint8 array ``[frames, S, S]`` of
silhouettes it has already normalized the way :mod:`gaitprep.normalize` does (threshold 10000,
crop, resize, centre; GREW's and CCPG's frames: see :mod:`gaitprep.wild_frames`). ``gait prep
opengait`` stores those frames as they are.

A pickle can run any code when it is loaded, so these files are never given to :func:`pickle.load`.
:class:`ArrayUnpickler` resolves only the globals that a pickled numpy array names (numpy 1.x's
``numpy.core`` and 2.x's ``numpy._core`` spellings, protocols 0 to 5) and refuses every other one
before anything is called. Those it resolves are checking stand-ins, not numpy's objects: an array
is made only of bytes the pickle holds, exactly its size (never ``numpy.ndarray(shape)``, which
would be uninitialised memory), of a plain numeric dtype, and all the data a pickle makes is at
most twice the file's size. :func:`load_array` then accepts only a non-empty 3-D uint8 array of
0-255 silhouettes (bool arrays and 0/1 masks are refused, not rescaled).
Every problem, a refused global included, is a :class:`PickleRefused` whose message says why.
"""

from __future__ import annotations

import functools
import io
import math
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


def opengait_params(size: int = 64, min_sum: int = MIN_SUM) -> Params:
    """The normalization parameters that describe OpenGait's pretreatment at ``size``: recorded in
    the pack, so that a probe for ``gait identify`` is normalized the same way. ``min_sum`` is 0
    for datasets whose pretreatment drops no frame for too little foreground (GREW, CCPG)."""
    return Params(size=size, min_sum=min_sum, binarize=False, largest_blob=False)


def _numpy_functions():
    """numpy's ``_reconstruct`` and ``_frombuffer``, from whichever module this numpy has them."""
    probe = np.zeros(1, np.uint8)
    reconstruct = probe.__reduce__()[0]  # numpy.{_core,core}.multiarray._reconstruct
    frombuffer = probe.__reduce_ex__(5)[0]  # numpy.{_core,core}.numeric._frombuffer
    if (reconstruct.__name__, frombuffer.__name__) != ("_reconstruct", "_frombuffer"):
        raise ImportError(f"numpy {np.__version__} pickles arrays in a way gait does not know")
    return reconstruct, frombuffer


RECONSTRUCT, FROMBUFFER = _numpy_functions()


def _refused(what: str) -> PickleRefused:
    """The refusal of something a numpy array's pickle never does."""
    return PickleRefused(
        f"refused: {what}, which a numpy array never needs (nothing of it was run)"
    )


class _Budget:
    """The bytes a pickle may still make: twice its own size (protocols 0-2 decode an array's
    bytes from text, then copy them into it). A pickle that uses its data again and again, to
    make more than that, is refused: an array's pickle holds its data once."""

    __slots__ = ("left",)

    def __init__(self, size: int):
        self.left = 2 * size

    def spend(self, n: int) -> None:
        if n > self.left:
            raise PickleRefused(
                "refused: the pickle makes more data than twice its own size (an array's pickle "
                "holds its data once)"
            )
        self.left -= n


class _Callable:
    """A global the pickle may call, under its own name. BUILD on it is refused, and it is no
    type, so the NEWOBJ opcodes cannot make an instance of it either."""

    __slots__ = ("name", "call")

    def __init__(self, name: str, call):
        self.name, self.call = name, call

    def __call__(self, *args):
        return self.call(*args)

    def __setstate__(self, state):
        raise _refused(f"the pickle sets the state of {self.name}")


class _Dtype:
    """A dtype as a pickle builds it: ``numpy.dtype(code, align, copy)``, then BUILD with a state.

    Only a plain numeric code as numpy writes it (kind and item size: ``u1``, ``f4``, ``b1``) is
    made, and only the state numpy writes for it (with a byte order) is taken; numpy's own
    ``dtype.__setstate__`` never sees the pickle's state.
    """

    __slots__ = ("dtype",)

    def __init__(self, code):
        try:
            dtype = np.dtype(code) if isinstance(code, str) else None
        except (TypeError, ValueError):
            dtype = None
        if dtype is None or dtype.kind not in "biufc" or code != f"{dtype.kind}{dtype.itemsize}":
            raise _refused(f"the pickle asks for the dtype {code!r:.40}")
        self.dtype = dtype

    def __setstate__(self, state):
        order = state[1] if type(state) is tuple and len(state) > 1 else None
        dtype = self.dtype.newbyteorder(order) if order in ("<", ">") else self.dtype
        if state != dtype.__reduce__()[2]:
            raise _refused(f"the pickle gives the dtype {self.dtype} another state")
        self.dtype = dtype


def _array_data(budget: _Budget, data, dtype, shape) -> tuple:
    """The data (bytes; text as Python 2 wrote it), dtype and shape of an array the pickle makes,
    refused unless the data is exactly the array's size: no array holds memory the file did not
    give it (uninitialised memory), or more than the file's size."""
    if isinstance(data, str):
        budget.spend(len(data))
        data = data.encode("latin1")
    if not isinstance(dtype, _Dtype) or not isinstance(data, (bytes, bytearray)):
        raise _refused("the pickle makes an array without a numeric dtype and bytes of data")
    if type(shape) is not tuple or any(type(n) is not int or n < 0 for n in shape):
        raise _refused(f"the pickle gives an array the shape {shape!r:.60}")
    dtype = dtype.dtype
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != len(data):
        raise PickleRefused(
            f"refused: the pickle gives a {shape} {dtype} array {len(data)} bytes of data, not the "
            f"{nbytes} it needs (an array's data must be in the file)"
        )
    budget.spend(nbytes)
    return data, dtype, shape


class _Array:
    """An array as a pickle builds it, from data the pickle holds and nothing else.

    Protocols 0-4 make an empty array (``_reconstruct``) and BUILD it with ``(1, shape, dtype,
    fortran, data)``; protocol 5 calls ``_frombuffer(data, dtype, shape, order)``. Both are
    checked by :func:`_array_data` before numpy's own ``ndarray.__setstate__`` or ``_frombuffer``
    builds ``array`` from them; one built (or never given its data) takes no other state.
    """

    __slots__ = ("budget", "array")

    def __init__(self, budget: _Budget, array: np.ndarray | None = None):
        self.budget, self.array = budget, array

    def __setstate__(self, state):
        if self.array is not None or type(state) is not tuple or len(state) != 5 or state[0] != 1:
            raise _refused("the pickle sets the state of an array in another way")
        _, shape, dtype, fortran, data = state
        data, dtype, shape = _array_data(self.budget, data, dtype, shape)
        array = RECONSTRUCT(np.ndarray, (0,), b"b")
        array.__setstate__((1, shape, dtype, bool(fortran), data))
        self.array = array


def _ndarray(budget: _Budget, *args):
    raise PickleRefused(
        "refused: the pickle calls numpy.ndarray, which makes an array of memory the file does "
        "not hold (nothing of it was run)"
    )


def _dtype(budget: _Budget, code, align=False, copy=True) -> _Dtype:
    """``numpy.dtype`` as numpy's pickles call it."""
    return _Dtype(code)


def _encode(budget: _Budget, text, encoding="latin1", errors="strict") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes, and for nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _refused(f"the pickle calls _codecs.encode with {encoding!r:.40}")
    budget.spend(len(text))
    return text.encode("latin1")


def _reconstruct(budget: _Budget, subtype, shape, typecode) -> _Array:
    """``_reconstruct`` as numpy's pickles call it: an empty array, its data to come by BUILD."""
    ndarray = type(subtype) is _Callable and subtype.name == "numpy.ndarray"
    if not ndarray or shape != (0,) or typecode not in (b"b", "b"):
        raise _refused(f"the pickle calls _reconstruct with {shape!r:.60}, {typecode!r:.20}")
    return _Array(budget)


def _frombuffer(budget: _Budget, data, dtype, shape, order) -> _Array:
    """``_frombuffer`` as numpy's protocol-5 pickles call it, on data in the pickle."""
    if isinstance(data, str) or order not in ("C", "F"):
        raise _refused(f"the pickle calls _frombuffer with text or the order {order!r:.20}")
    data, dtype, shape = _array_data(budget, data, dtype, shape)
    return _Array(budget, FROMBUFFER(data, dtype, shape, order))


def _allowed() -> dict[tuple[str, str], object]:
    """Every global a pickled numpy array names (numpy 1.x's and 2.x's modules), mapped to the
    function the pickle calls instead, given the budget of the file being read first."""
    allowed = {
        ("numpy", "ndarray"): _ndarray,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


ALLOWED = _allowed()


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and nothing else, from data of a file of ``size``
    bytes.

    ``find_class`` is asked for every global before it can be called; anything that is not in
    :data:`ALLOWED` (``os.system``, ``builtins.eval``, a class of some module) raises
    :class:`PickleRefused` naming it, so the pickle stops there and nothing of it runs. What is
    allowed is called through a checking stand-in (:class:`_Callable`), never numpy's own object,
    and makes an :class:`_Array` only of data the pickle holds, no more than twice ``size`` in
    all. ``encoding="latin1"`` reads arrays pickled by Python 2 as numpy documents.
    """

    def __init__(self, file, size: int):
        super().__init__(file, encoding="latin1")
        self.budget = _Budget(size)

    def find_class(self, module: str, name: str):
        found = ALLOWED.get((module, name))
        if found is None:
            raise PickleRefused(
                f"refused: the pickle asks for {module}.{name}, which is not part of a numpy "
                "array (nothing of it was run)"
            )
        return _Callable(f"{module}.{name}", functools.partial(found, self.budget))

    def persistent_load(self, pid):
        raise PickleRefused("refused: the pickle holds a persistent id (nothing of it was run)")


def load_array(data: bytes) -> np.ndarray:
    """The uint8 frames ``[n, H, W]`` pickled in ``data``; PickleRefused says why not."""
    if not data:
        raise PickleRefused(EMPTY_FILE)
    try:
        obj = ArrayUnpickler(io.BytesIO(data), len(data)).load()
    except PickleRefused:
        raise
    except Exception as e:  # a damaged pickle fails in many ways; the restricted one runs nothing
        raise PickleRefused(
            f"not a readable pickle (truncated or corrupt: {first_line(e, 100)})"
        ) from None
    if type(obj) is _Array and obj.array is None:
        raise PickleRefused(
            "refused: the pickle makes an array but gives it no data (an array's data must be in "
            "the file)"
        )
    if type(obj) is not _Array:
        kind = {_Dtype: "numpy dtype", _Callable: "function"}.get(type(obj), type(obj).__name__)
        raise PickleRefused(f"holds a {kind}, not a numpy array [frames, height, width]")
    obj = obj.array
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
