"""Read one X-ray file (JPEG, PNG, DICOM) into an 8-bit grayscale array, and resize it.

The one place where bytes become pixels, so that training, evaluation, prediction, the
explanations and the web service all see exactly the same input for the same file.

Every failure on user input is an :class:`~pneumolens.errors.InvalidImageError` whose message
is one line naming the file and the reason: files come from users and from the web, so any
exception a decoder raises on bad bytes is turned into that error here, never a traceback.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLargeError, InvalidImageError, UnsupportedDicomError

log = logging.getLogger(__name__)

#: Largest image (width x height) we agree to decode: a guard against decompression bombs.
#: A 4,000 x 4,000 chest film is 16 MP; this leaves generous room. Checked from the header,
#: before any pixel is allocated.
MAX_PIXELS = 64_000_000

#: Largest file we agree to read into memory (a 64 MP 16-bit DICOM is 128 MB).
MAX_FILE_BYTES = 512 * 1024 * 1024

#: Smallest width or height we accept: below this a file cannot be a radiograph.
MIN_SIDE = 8

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")

_EXIF_ORIENTATION = 0x0112


def _reason(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its class name), shortened: for one-line errors."""
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else exc.__class__.__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def read_file_bytes(path: str | Path, name: str | None = None) -> bytes:
    """Read a whole image file, refusing directories, missing files and files over :data:`MAX_FILE_BYTES`.

    Raises:
        InvalidImageError: the message names the file (``name``, default the path) and the reason.
    """
    path = Path(path)
    label = name or str(path)
    try:
        if path.is_dir():
            raise InvalidImageError(f"{label}: is a directory, not an image file")
        size = path.stat().st_size
        if not path.is_file():  # a FIFO or device (/dev/zero) could be read forever
            raise InvalidImageError(f"{label}: not a regular file")
        if size > MAX_FILE_BYTES:
            raise ImageTooLargeError(f"{label}: file is {size:,} bytes, over the limit of {MAX_FILE_BYTES:,}")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidImageError(f"{label}: file does not exist") from exc
    except OSError as exc:
        raise InvalidImageError(f"{label}: cannot read file ({exc.strerror or _reason(exc)})") from exc


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map the array's own finite min..max linearly to 0..255 (for 16-bit and float sources).

    A constant image becomes all zeros; NaN and infinities become the minimum.
    """
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, np.min(arr[finite]) if finite.any() else 0.0)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _rgb_to_gray(arr: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an (H, W, 3+) integer RGB array, scaled from its dtype's range to 0..255."""
    rgb = arr[..., :3].astype(np.float64)
    full = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else max(float(rgb.max()), 1.0)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    return np.clip(np.round(luma * (255.0 / full)), 0, 255).astype(np.uint8)


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    """Convert any single-frame PIL mode to 8-bit grayscale.

    Colour (RGB, RGBA, P, CMYK...) goes through ITU-R 601 luma; alpha is dropped (the stored
    colour of transparent pixels is kept); 16/32-bit integer and float images are stretched
    from their own range to 0..255.
    """
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode.startswith("I") or mode == "F":
        return _stretch_to_uint8(np.asarray(img))
    if mode in ("LA", "La"):
        return np.asarray(img.getchannel("L"), dtype=np.uint8).copy()
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB").convert("L"), dtype=np.uint8).copy()


def _decode_pil(data: bytes, label: str, draft_size: int | None = None) -> np.ndarray | None:
    """Decode with Pillow; ``None`` when Pillow does not recognise the format at all.

    ``draft_size``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain, never
    below ``draft_size`` on either side (see :func:`read_image`).
    """
    try:
        # A DecompressionBombWarning becomes an error: the size check below refuses it anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{label}: image is too large to decode safely ({_reason(exc)})") from exc
    except Exception as exc:  # any decoder failure on untrusted bytes is the file's fault
        raise InvalidImageError(f"{label}: corrupt image header ({_reason(exc)})") from exc
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageTooLargeError(f"{label}: {w}x{h} pixels exceeds the limit of {MAX_PIXELS:,}")
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # multi-page TIFF / animated PNG: the first frame
        if draft_size and img.format == "JPEG":
            img.draft(img.mode, (draft_size, draft_size))
        img.load()
        if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)  # a photographed film stored sideways
        return _pil_to_gray(img)
    except Exception as exc:
        raise InvalidImageError(f"{label}: corrupt or truncated image ({_reason(exc)})") from exc


def _first_value(value: Any) -> float:
    """The first value of a possibly multi-valued DICOM element (Window Center/Width)."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, (str, bytes))):
        value = value[0]
    return float(value)


def _window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Apply a DICOM VOI window (PS3.3 C.11.2.1.2) with its output range mapped to 0..255."""
    x = arr.astype(np.float64)
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"Window Width {width} must be > 0 for SIGMOID")
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"Window Width {width} must be > 0 for LINEAR_EXACT")
        y = (x - center) / width + 0.5
    elif function == "LINEAR":
        if width < 1:
            raise ValueError(f"Window Width {width} must be >= 1 for LINEAR")
        c, w = center - 0.5, width - 1.0
        y = (x > c).astype(np.float64) if w == 0 else (x - c) / w + 0.5
    else:
        raise ValueError(f"VOI LUT Function '{function}' is not supported")
    return np.round(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def _voi_lut(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Apply the first item of a VOI LUT Sequence, its output range (0..2^bits-1) mapped to 0..255.

    Done here rather than with pydicom's ``apply_voi``, which indexes 8-bit LUTs with an 8-bit
    array and so maps every value above 255 to entry 255 (pydicom 3.0).
    """
    item = ds.VOILUTSequence[0]
    n_entries, first, bits = (int(v) for v in item.LUTDescriptor)
    elem = item["LUTData"]
    if isinstance(elem.value, (bytes, bytearray)):  # OW: raw 16-bit words
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        big = ts is not None and not ts.is_little_endian
        lut = np.frombuffer(elem.value, dtype=">u2" if big else "<u2").astype(np.int64)
    else:
        lut = np.asarray(elem.value, dtype=np.int64).ravel()
    lut = lut[: n_entries or 65536]
    if lut.size == 0:
        raise ValueError("VOI LUT Sequence has no LUT Data")
    idx = np.clip(np.asarray(arr, dtype=np.float64) - first, 0, lut.size - 1).astype(np.int64)
    hi = max(float(2**bits - 1), float(lut.max()), 1.0)
    return np.round(np.clip(lut[idx], 0, hi) * (255.0 / hi)).astype(np.uint8)


def _apply_voi(arr: np.ndarray, ds: Any) -> np.ndarray | None:
    """The VOI LUT Sequence, else Window Center/Width, as uint8; ``None`` when the file has neither."""
    if ds.get("VOILUTSequence"):
        return _voi_lut(arr, ds)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return _window(arr, _first_value(ds.WindowCenter), _first_value(ds.WindowWidth), function)
    return None


def _ensure_transfer_syntax(ds: Any) -> None:
    """Give a DICOM read without file meta (no preamble) the transfer syntax it was parsed with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if implicit is False:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
    else:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian


def _read_dicom(data: bytes, label: str) -> np.ndarray:
    """Decode a single-frame DICOM: modality LUT (rescale), then VOI LUT / window, then MONOCHROME1 inverted.

    Without a window, 8-bit unsigned pixels are kept as they are and anything else is
    stretched from its own min..max (the usual automatic window).
    """
    try:
        import pydicom
        from pydicom.pixels import apply_color_lut, apply_modality_lut
    except ImportError as exc:  # pragma: no cover - pydicom is a core dependency
        raise UnsupportedDicomError(f"{label}: reading DICOM needs pydicom (pip install pydicom)") from exc
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise InvalidImageError(f"{label}: not a readable DICOM file ({_reason(exc)})") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if data[128:132] != b"DICM" and len(ds) == 0:
            raise InvalidImageError(f"{label}: not a DICOM file (no DICM header and no DICOM elements)")
        raise UnsupportedDicomError(f"{label}: DICOM file has no pixel data (not an image object)")
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:  # a damaged element (bad VR, bad value) raises whatever pydicom meets
        raise InvalidImageError(f"{label}: invalid DICOM Rows/Columns/Number of Frames ({_reason(exc)})") from exc
    if rows * cols > MAX_PIXELS:
        raise ImageTooLargeError(f"{label}: {cols}x{rows} pixels exceeds the limit of {MAX_PIXELS:,}")
    if frames > 1:
        raise UnsupportedDicomError(f"{label}: multi-frame DICOM ({frames} frames) is not supported; export one frame")
    try:
        _ensure_transfer_syntax(ds)
        arr = ds.pixel_array
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax = getattr(ts, "name", None) or str(ts or "unknown transfer syntax")
        raise UnsupportedDicomError(
            f"{label}: cannot decode DICOM pixel data ({syntax}: {_reason(exc, 120)}); compressed DICOM may "
            "need a decoder: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
        ) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            out = _rgb_to_gray(arr)  # pydicom has already converted YBR to RGB
        elif arr.ndim != 2:
            raise UnsupportedDicomError(f"{label}: DICOM pixel array has shape {arr.shape}, expected one 2-D image")
        else:
            rescaled = "RescaleSlope" in ds or "RescaleIntercept" in ds or ds.get("ModalityLUTSequence")
            arr = apply_modality_lut(arr, ds)
            try:
                out = _apply_voi(arr, ds)
            except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
                log.warning("%s: ignoring invalid DICOM window (%s); using the image's own range", label, _reason(exc))
                out = None
            if out is None:
                out = arr.copy() if arr.dtype == np.uint8 and not rescaled else _stretch_to_uint8(arr)
            if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1: invert to the usual display
                out = 255 - out
    except InvalidImageError:
        raise
    except Exception as exc:
        reason = _reason(exc)
        raise UnsupportedDicomError(f"{label}: cannot convert {photometric} DICOM to grayscale ({reason})") from exc
    return out


def read_image(source: str | Path | bytes, name: str | None = None, draft_size: int | None = None) -> np.ndarray:
    """Decode a JPEG, PNG or DICOM file (path or raw bytes) to an 8-bit grayscale array (H, W).

    Other formats Pillow reads (TIFF, BMP, WebP...) are accepted too. DICOM is recognised by
    its ``DICM`` marker, or by a ``.dcm`` / ``.dicom`` name when the marker is missing.

    Args:
        source: a file path, or the file's bytes (uploads).
        name: the name used in error messages and for the ``.dcm`` hint; default: the path,
            or ``"<upload>"``.
        draft_size: when the caller will shrink the image anyway, a large JPEG may be decoded
            at a power-of-two fraction of its size that keeps both sides >= ``draft_size``
            (libjpeg's DCT scaling: 2-3x faster on a 2400x2000 film). Default: full size.

    Raises:
        InvalidImageError: missing, empty, truncated, unreadable or non-image data, an image
            smaller than :data:`MIN_SIDE`, an unsupported DICOM (:class:`UnsupportedDicomError`),
            or more than :data:`MAX_PIXELS` pixels (:class:`ImageTooLargeError`). The message is
            one line naming the file and the reason.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), name or "<upload>"
    else:
        label = name or str(source)
        data = read_file_bytes(source, name=label)
    if not data:
        raise InvalidImageError(f"{label}: file is empty (0 bytes)")
    if data[128:132] == b"DICM":
        gray = _read_dicom(data, label)
    else:
        gray = _decode_pil(data, label, draft_size)
        if gray is None:
            if not label.lower().endswith(DICOM_SUFFIXES):
                raise InvalidImageError(f"{label}: not a recognised image format (expected JPEG, PNG or DICOM)")
            gray = _read_dicom(data, label)  # DICOM without the 128-byte preamble
    h, w = gray.shape
    if w < MIN_SIDE or h < MIN_SIDE:
        raise InvalidImageError(f"{label}: image is {w}x{h} pixels, too small to be an X-ray (minimum {MIN_SIDE})")
    return gray


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


#: A large JPEG is decoded at no less than this multiple of the model's input size. At 2x the final
#: antialiased resize is still a real downscale: on a 2400x2000 film the result stays within one
#: grey level of the full decode, and files this small (the Kaggle set) are not drafted at all;
#: drafting straight to 1x changed a quarter of the dataset's images by up to 53 grey levels
#: (``bench/bench_core.py``).
DRAFT_FACTOR = 2


def load_image(source: str | Path | bytes, size: int, name: str | None = None) -> np.ndarray:
    """Read and resize in one step: the model's input as uint8 (size, size)."""
    return resize_square(read_image(source, name=name, draft_size=DRAFT_FACTOR * size), size)
