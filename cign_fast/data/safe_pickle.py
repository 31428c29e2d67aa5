"""Reading pickled ``.npy`` dictionaries (AV-CIL's feature format) without running code from them.

``np.load(path, allow_pickle=True)`` unpickles whatever the file holds, and unpickling can call any
importable function: a crafted ``.npy`` runs its payload the moment it is loaded. This module reads
the same files with an unpickler that only rebuilds numpy arrays, numpy dtypes and numpy scalars
(plus the dicts, strings and numbers pickle writes natively); any other object in the file is refused
before it is created, with an :class:`UnsafeFileError` naming the file and the object. The result is
then checked against the structure the caller documents (:func:`load_label_dict`,
:func:`load_feature_dict`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# The three callables numpy's own pickles refer to, found through numpy's reductions so the names
# below resolve to them under numpy 1.x (numpy.core) and 2.x (numpy._core) alike.
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]
SAFE_GLOBALS = {
    (module, name): value
    for modules, name, value in (
        (("numpy.core.multiarray", "numpy._core.multiarray"), "_reconstruct", _RECONSTRUCT),
        (("numpy.core.multiarray", "numpy._core.multiarray"), "scalar", _SCALAR),
        (("numpy",), "ndarray", np.ndarray),
        (("numpy",), "dtype", np.dtype),
    )
    for module in modules
}
NUMERIC_KINDS = "biuf"  # bool, signed / unsigned integer, floating point


class UnsafeFileError(ValueError):
    """A pickled file that holds something other than the documented data (the message names it)."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds only :data:`SAFE_GLOBALS`; every other global is refused before it is imported."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        super().__init__(handle)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        raise UnsafeFileError(
            f"{self.path}: refused to unpickle {module}.{name}; this file should hold only dictionaries of "
            f"numpy arrays and strings, and loading other objects could run code from it"
        )


def _read_npy_header(handle: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as error:
        raise UnsafeFileError(f"{path}: not a readable .npy file ({error})") from None
    return shape, dtype


def load_pickled_object(path: str | Path) -> Any:
    """The object a ``np.save(path, obj, allow_pickle=True)`` call stored, rebuilt without running code.

    Refuses (:class:`UnsafeFileError`) a file that is not a pickled 0-d object array, or whose pickle
    refers to anything but numpy arrays, dtypes and scalars."""
    path = Path(path)
    with path.open("rb") as handle:
        shape, dtype = _read_npy_header(handle, path)
        if dtype != np.dtype(object) or shape != ():
            raise UnsafeFileError(
                f"{path}: expected a pickled dictionary (a 0-d object array), got an array of "
                f"dtype {dtype} and shape {shape}"
            )
        try:
            array = _NumpyOnlyUnpickler(handle, path).load()
        except UnsafeFileError:
            raise
        except Exception as error:  # noqa: BLE001 - any unpickling failure means the file is unusable
            raise UnsafeFileError(f"{path}: damaged pickle ({type(error).__name__}: {error})") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.dtype(object) or array.shape != ():
        raise UnsafeFileError(f"{path}: expected a pickled dictionary (a 0-d object array)")
    return array.item()


def _require_dict(value: Any, path: Path, what: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise UnsafeFileError(f"{path}: expected {what} to be a dictionary, got {type(value).__name__}")
    return value


def load_label_dict(path: str | Path) -> dict[str, dict[str, str]]:
    """``{split: {clip id: category}}`` (AV-CIL's ``all_id_category_dict.npy``); categories become strings."""
    path = Path(path)
    splits = _require_dict(load_pickled_object(path), path, "the file")
    labels: dict[str, dict[str, str]] = {}
    for split, clips in splits.items():
        clips = _require_dict(clips, path, f"split {split!r}")
        for clip_id, category in clips.items():
            if not isinstance(clip_id, str) or not isinstance(category, (str, int)) or isinstance(category, bool):
                raise UnsafeFileError(
                    f"{path}: split {split!r}: expected clip id (str) -> category (str or int), "
                    f"got {clip_id!r} -> {category!r}"
                )
        labels[str(split)] = {str(clip_id): str(category) for clip_id, category in clips.items()}
    return labels


def load_feature_dict(path: str | Path) -> dict[str, np.ndarray]:
    """``{clip id: numeric array}`` (AV-CIL's ``*_pretrained_feature_dict.npy``)."""
    path = Path(path)
    features = _require_dict(load_pickled_object(path), path, "the file")
    for clip_id, array in features.items():
        if not isinstance(clip_id, str) or not isinstance(array, np.ndarray) or array.dtype.kind not in NUMERIC_KINDS:
            shown = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise UnsafeFileError(f"{path}: expected clip id (str) -> numeric array, got {clip_id!r} -> {shown}")
    return {str(clip_id): array for clip_id, array in features.items()}
