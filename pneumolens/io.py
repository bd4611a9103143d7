"""Read one X-ray file (JPEG, PNG, DICOM) into an 8-bit grayscale array, and resize it.

The one place where bytes become pixels, so that training, evaluation, prediction, the
explanations and the web service all see exactly the same input for the same file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageTooLargeError, InvalidImageError, UnsupportedDicomError

#: Largest image (width x height) we agree to decode: a guard against decompression bombs.
#: A 4,000 x 4,000 chest film is 16 MP; this leaves generous room.
MAX_PIXELS = 64_000_000

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".dicom")


def _is_dicom(data: bytes, name: str) -> bool:
    return name.lower().endswith((".dcm", ".dicom")) or data[128:132] == b"DICM"


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map the array's own min..max linearly to 0..255 (for 16-bit and float sources)."""
    arr = arr.astype(np.float64)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    """Convert any single-frame PIL mode to 8-bit grayscale.

    Colour (RGB, RGBA, P, CMYK) goes through ITU-R 601 luma; alpha is dropped; 16/32-bit
    integer and float images are stretched from their own range to 0..255.
    """
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I", "F", "I;16N"):
        return _stretch_to_uint8(np.asarray(img))
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
    if mode in ("LA", "La"):
        return np.asarray(img.getchannel("L"), dtype=np.uint8).copy()
    return np.asarray(img.convert("RGB").convert("L"), dtype=np.uint8).copy()


def _read_dicom(data: bytes, name: str) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as exc:  # pragma: no cover - pydicom is a core dependency
        raise UnsupportedDicomError(f"{name}: reading DICOM needs pydicom (pip install pydicom)") from exc
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise InvalidImageError(f"{name}: not a readable DICOM file ({exc.__class__.__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise UnsupportedDicomError(f"{name}: DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > MAX_PIXELS:
        raise ImageTooLargeError(f"{name}: {cols}x{rows} pixels exceeds the limit of {MAX_PIXELS:,}")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise UnsupportedDicomError(f"{name}: multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise UnsupportedDicomError(
            f"{name}: cannot decode DICOM pixels ({exc.__class__.__name__}: {str(exc).splitlines()[0]}); "
            "compressed transfer syntaxes may need pylibjpeg or gdcm"
        ) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if photometric not in ("RGB",):
            raise UnsupportedDicomError(f"{name}: colour DICOM with {photometric} is not supported")
        return np.asarray(Image.fromarray(arr[..., :3].astype(np.uint8)).convert("L"))
    if arr.ndim != 2:
        raise UnsupportedDicomError(f"{name}: DICOM pixel array has shape {arr.shape}, expected 2-D")
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds, index=0)
    out = _stretch_to_uint8(arr)
    if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1: invert to the usual display
        out = 255 - out
    return out


def read_image(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Decode a JPEG, PNG or DICOM file (path or raw bytes) to an 8-bit grayscale array (H, W).

    Args:
        source: a file path, or the file's bytes (uploads).
        name: the name used in error messages; default: the path, or ``"<upload>"``.

    Raises:
        InvalidImageError: empty, truncated, unreadable or non-image data, or an unsupported
            DICOM (:class:`UnsupportedDicomError`), or more than :data:`MAX_PIXELS` pixels
            (:class:`ImageTooLargeError`). The message names the file and the reason.
    """
    if isinstance(source, (bytes, bytearray)):
        data, label = bytes(source), name or "<upload>"
    else:
        path = Path(source)
        label = name or str(path)
        try:
            data = path.read_bytes()
        except IsADirectoryError as exc:
            raise InvalidImageError(f"{label}: is a directory, not an image file") from exc
        except OSError as exc:
            raise InvalidImageError(f"{label}: cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise InvalidImageError(f"{label}: file is empty (0 bytes)")
    if _is_dicom(data, label):
        return _read_dicom(data, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageTooLargeError(f"{label}: {w}x{h} pixels exceeds the limit of {MAX_PIXELS:,}")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{label}: image is too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"{label}: not a recognised image format (expected JPEG, PNG or DICOM)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise InvalidImageError(f"{label}: corrupt or truncated image ({reason})") from exc
    if img.width < 8 or img.height < 8:
        raise InvalidImageError(f"{label}: image is {img.width}x{img.height}, too small to be an X-ray")
    return _pil_to_gray(img)


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize an 8-bit grayscale image to ``size x size`` without keeping the aspect ratio.

    Aspect ratio is deliberately not kept: part of the Kaggle data arrives already squashed to
    224x224, and any other policy would treat those films differently from the rest. Bilinear
    filtering with PIL's area-aware support (antialiased when shrinking).
    """
    if gray.shape == (size, size):
        return gray
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8))
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def load_image(source: str | Path | bytes, size: int, name: str | None = None) -> np.ndarray:
    """Read and resize in one step: the model's input as uint8 (size, size)."""
    return resize_square(read_image(source, name=name), size)
