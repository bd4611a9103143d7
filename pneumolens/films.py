"""What the Python API accepts as a film, and the film's own pixel grid that explanation maps return to.

:func:`as_film` turns a path, raw bytes, a NumPy array, a torch tensor or a PIL image into a
:class:`Film`: the decoded 8-bit grayscale film (H, W) and the model's input (S, S) made from it
exactly as ``pneumolens predict`` makes it from a file, so that ``model.predict(path)`` and the
command line give the same number. Every film goes through 8 bits, as every film the model was
trained on did; a float array in [0, 1] is rounded to 8 bits first. :func:`map_on_film` resamples a
map computed at the model's input size back onto the film's (H, W) grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import ImageTooLargeError, InvalidImageError
from .io import MAX_PIXELS, MIN_SIDE, _pil_to_gray, blank_reason, load_image, read_image, resize_square

#: The name a film without a file name goes by in predictions and error messages.
ARRAY_NAME = "<array>"
IMAGE_NAME = "<image>"
BYTES_NAME = "<bytes>"


@dataclass(frozen=True, eq=False)
class Film:
    """One film ready for the model.

    Attributes:
        name: the file name, or ``<array>`` / ``<image>`` / ``<bytes>`` (with an index in a list).
        input: uint8 (S, S), the model's input before scaling to [0, 1].
        gray: uint8 (H, W), the decoded film at full size (None when not asked for).
    """

    name: str
    input: np.ndarray
    gray: np.ndarray | None = None


def is_file_source(source: Any) -> bool:
    """Whether ``source`` names a file (a ``str`` or path-like object)."""
    return isinstance(source, (str, os.PathLike))


def default_name(source: Any) -> str:
    """A film's name when the caller gives none: its path, ``<bytes>``, the PIL image's file (else ``<image>``),
    or ``<array>``."""
    if is_file_source(source):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return BYTES_NAME
    if isinstance(source, Image.Image):
        return str(getattr(source, "filename", "") or IMAGE_NAME)
    return ARRAY_NAME


def _array_to_gray(arr: np.ndarray, name: str) -> np.ndarray:
    """A user's array → writable uint8 (H, W): uint8 kept, float in [0, 1] rounded to 8 bits, RGB(A) → luma."""
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8:
        return _pil_to_gray(Image.fromarray(np.ascontiguousarray(arr)))  # ITU-R 601 luma, alpha dropped
    if arr.ndim != 2:
        raise InvalidImageError(
            f"{name}: expected one grayscale image (H, W) or an RGB image (H, W, 3) of uint8, got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return np.array(arr, dtype=np.uint8)  # a copy: writable, and the caller's array is never changed
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise InvalidImageError(
                f"{name}: float pixels must lie in [0, 1] (got {lo:.4g} to {hi:.4g}); pass uint8 for 0..255"
            )
        return np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    raise InvalidImageError(
        f"{name}: pixels of type {arr.dtype} are not supported; pass uint8 (0..255) or float (0..1)"
    )


def _check_gray(gray: np.ndarray, name: str) -> None:
    """The checks a decoded file gets (:func:`pneumolens.io.read_image`, :func:`pneumolens.io.load_image`)."""
    h, w = gray.shape
    if h * w > MAX_PIXELS:
        raise ImageTooLargeError(f"{name}: {w}x{h} pixels exceeds the limit of {MAX_PIXELS:,}")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise InvalidImageError(f"{name}: image is {w}x{h} pixels, too small to be an X-ray (minimum {MIN_SIDE})")
    reason = blank_reason(gray)
    if reason is not None:
        raise InvalidImageError(f"{name}: {reason}")


def as_film(source: Any, size: int, name: str | None = None, full: bool = False) -> Film:
    """Decode what a user handed the API into a :class:`Film` for a model taking ``size`` x ``size``.

    Args:
        source: a path (``str`` or path-like) to a JPEG, PNG or DICOM file; the file's bytes; a
            NumPy array or torch tensor: uint8 (H, W) or (H, W, 3), or float (H, W) in [0, 1]; or a
            PIL image (any mode; colour goes through luma).
        size: the model's input side.
        name: the name used in the result and in error messages. Default: the path, else
            ``<array>``, ``<image>`` or ``<bytes>``.
        full: also keep the decoded film at full size (:attr:`Film.gray`), for maps on its grid.

    Raises:
        InvalidImageError: a file or array that is not a usable film (unreadable, too small, blank,
            float pixels outside [0, 1]...), in one line naming it.
        TypeError: ``source`` is none of the above.
    """
    label = name or default_name(source)
    if is_file_source(source) or isinstance(source, (bytes, bytearray, memoryview)):
        data: Path | bytes = Path(os.fspath(source)) if is_file_source(source) else bytes(source)
        model_input = load_image(data, size, name=label)  # exactly as predict and evaluate read files
        gray = read_image(data, name=label) if full else None
        return Film(label, model_input, gray)
    if isinstance(source, Image.Image):
        gray = _pil_to_gray(source)
    elif isinstance(source, torch.Tensor):
        gray = _array_to_gray(source.detach().cpu().numpy(), label)
    elif isinstance(source, np.ndarray):
        gray = _array_to_gray(source, label)
    else:
        raise TypeError(
            f"{label}: cannot read a {type(source).__name__}; pass a file path, bytes, a NumPy array, "
            "a torch tensor or a PIL image"
        )
    _check_gray(gray, label)
    return Film(label, np.array(resize_square(gray, size), dtype=np.uint8), gray if full else None)


def map_on_film(amap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map computed at the model's input (S, S) resampled onto a film of ``shape`` (H, W), float32.

    The model saw the film squashed to a square (aspect ratio not kept), so each map cell covers
    the same fraction of the film's height and width: bilinear resampling (pixel centres aligned,
    antialiased when shrinking) puts every value back over the part of the film it describes.
    """
    h, w = int(shape[0]), int(shape[1])
    t = torch.as_tensor(np.asarray(amap, dtype=np.float32))[None, None]
    if tuple(t.shape[-2:]) == (h, w):
        return t[0, 0].numpy().copy()
    shrink = h < t.shape[-2] or w < t.shape[-1]
    out = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0, 0].numpy()
