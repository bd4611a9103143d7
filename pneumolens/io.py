"""Read one X-ray file (JPEG, PNG, DICOM) into an 8-bit grayscale array, and resize it.

The one place where bytes become pixels, so that training, evaluation, prediction, the
explanations and the web service all see exactly the same input for the same file.

Memory is bounded by the file's header, before any pixel is decoded: the pixel count
(:data:`MAX_PIXELS`) and the decoded size (:data:`MAX_DECODED_BYTES`); the conversion to 8 bits
then works a band of rows at a time, and :func:`limit_large_decodes` caps how many large
decodes a process (the web service) runs at once.

Every failure on user input is an :class:`~pneumolens.errors.InvalidImageError` whose message
is one line naming the file and the reason: files come from users and from the web, so any
exception a decoder raises on bad bytes is turned into that error here, never a traceback.
Corrupt data a decoder lets through is refused too: a JPEG whose data ends early (it decodes
without an error, the missing rows grey) and, on the way to a model input, a decode that is
blank or nearly so.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageTooLargeError, InvalidImageError, UnsupportedDicomError

log = logging.getLogger(__name__)

#: Largest image (width x height) we agree to decode: a guard against decompression bombs.
#: A 4,000 x 4,000 chest film is 16 MP; this leaves generous room. Checked from the header,
#: before any pixel is allocated.
MAX_PIXELS = 64_000_000

#: Largest decoded image we agree to hold, in bytes, judged from the header before decoding
#: (:func:`decoded_bytes`): 64 MP at 8 bits, 32 MP at 16 bits, 16 MP in colour (Pillow keeps every
#: multi-band mode at 4 bytes per pixel). A small file can claim a huge image: a 124 KB 16-bit PNG
#: of 7999x7999 pixels is under :data:`MAX_PIXELS` but decodes to 128 MB.
MAX_DECODED_BYTES = 64_000_000

#: Decodes above this many bytes count as large: :func:`limit_large_decodes` caps how many run at once.
LARGE_DECODE_BYTES = 16_000_000

#: Pixels converted at a time from the decoded image to 8 bits (rows per band = this / width), so
#: that the conversion's temporaries (float64 for 16-bit and float sources) stay a few MB whatever
#: the image's size. Any value gives the same result.
BAND_PIXELS = 1 << 18

#: Largest file we agree to read into memory (a 64 MP 16-bit DICOM is 128 MB).
MAX_FILE_BYTES = 512 * 1024 * 1024

#: Smallest width or height we accept: below this a file cannot be a radiograph.
MIN_SIDE = 8

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")

_EXIF_ORIENTATION = 0x0112

#: EXIF orientation -> the transpose that displays the image upright (as ``ImageOps.exif_transpose``).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_large_decodes: threading.BoundedSemaphore | None = None
_large_decodes_limit: int | None = None


def limit_large_decodes(n: int | None) -> int | None:
    """Let at most ``n`` decodes of more than :data:`LARGE_DECODE_BYTES` run at once in this process.

    What bounds the memory of a server decoding uploads in many threads: the others wait for a
    slot (small images never wait), and after each large decode the memory it freed is handed
    back to the system (:func:`_release_freed_memory`) instead of staying with the process.
    ``None``: no limit and no release (the default). Returns the previous limit.
    """
    global _large_decodes, _large_decodes_limit
    if n is not None and n < 1:
        raise ValueError(f"limit_large_decodes: n must be at least 1, got {n}")
    previous = _large_decodes_limit
    _large_decodes_limit = n
    _large_decodes = None if n is None else threading.BoundedSemaphore(n)
    return previous


def _release_freed_memory() -> None:
    """Hand memory freed inside the C library's heaps back to the system (glibc ``malloc_trim``).

    Pillow decodes into 16 MB blocks that glibc serves from per-thread heaps and keeps after
    they are freed; a server decoding in many threads would hold its peak for good. A no-op
    where the C library has no ``malloc_trim`` (macOS, musl).
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            import ctypes.util

            trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
            _malloc_trim = trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


@contextlib.contextmanager
def _decode_slot(nbytes: int) -> Iterator[None]:
    """Hold one of the large-decode slots for a decode of ``nbytes`` (if it is large and a limit is set),
    and give the decode's freed memory back to the system afterwards."""
    gate = _large_decodes
    if gate is None or nbytes <= LARGE_DECODE_BYTES:
        yield
        return
    try:
        with gate:
            yield
    finally:
        _release_freed_memory()


def decoded_bytes(mode: str, size: tuple[int, int]) -> int:
    """Bytes Pillow allocates to decode an image of ``mode`` and ``size`` (width, height).

    1 byte per pixel for ``1``, ``L`` and ``P``; 2 for ``I;16`` variants; 4 for every other mode
    (Pillow stores multi-band and 32-bit images at 4 bytes per pixel).
    """
    w, h = size
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return int(w) * int(h) * per_pixel


def _depth(mode: str) -> str:
    """A mode in words, for messages: ``16-bit grayscale``, ``colour (RGB)``..."""
    if mode.startswith("I;16"):
        return "16-bit grayscale"
    return {"1": "1-bit", "L": "8-bit grayscale", "P": "palette", "I": "32-bit integer", "F": "32-bit float"}.get(
        mode, f"colour ({mode})"
    )


def _check_decoded_bytes(label: str, nbytes: int, size: tuple[int, int], what: str) -> None:
    if nbytes > MAX_DECODED_BYTES:
        w, h = size
        raise ImageTooLargeError(
            f"{label}: {w}x{h} {what} image needs {nbytes:,} bytes to decode, over the limit of "
            f"{MAX_DECODED_BYTES:,} (at this depth at most {MAX_DECODED_BYTES * w * h // nbytes:,} pixels)"
        )


def _bands(height: int, width: int) -> Iterator[tuple[int, int]]:
    """Row ranges ``(r0, r1)`` covering ``height`` rows, each about :data:`BAND_PIXELS` pixels."""
    rows = max(1, BAND_PIXELS // max(1, width))
    for r0 in range(0, height, rows):
        yield r0, min(height, r0 + rows)


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


def _finite_range(arr: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of the finite values of ``arr``; ``None`` when it has none."""
    if np.issubdtype(arr.dtype, np.integer):
        return (float(arr.min()), float(arr.max())) if arr.size else None
    finite = arr[np.isfinite(arr)]
    return (float(finite.min()), float(finite.max())) if finite.size else None


def _merge_ranges(ranges: Iterator[tuple[float, float] | None]) -> tuple[float, float] | None:
    found = [r for r in ranges if r is not None]
    return (min(r[0] for r in found), max(r[1] for r in found)) if found else None


def _stretch_band(arr: np.ndarray, finite: tuple[float, float] | None) -> np.ndarray:
    """Map ``arr`` linearly from the whole image's finite range ``finite`` to 0..255.

    NaN and infinities become the minimum; a constant image (or one without a finite value)
    becomes all zeros.
    """
    if finite is None or finite[1] <= finite[0]:
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = finite
    x = arr.astype(np.float64)  # a copy: the steps below work in place on it
    if not np.issubdtype(arr.dtype, np.integer):
        x[~np.isfinite(x)] = lo
    x -= lo
    x *= 255.0 / (hi - lo)
    return np.round(x, out=x).astype(np.uint8)


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map the array's own finite min..max linearly to 0..255 (for 16-bit and float sources), band by band.

    A constant image becomes all zeros; NaN and infinities become the minimum.
    """
    if arr.ndim < 2:
        return _stretch_band(arr, _finite_range(arr))
    finite = _merge_ranges(_finite_range(arr[r0:r1]) for r0, r1 in _bands(arr.shape[0], arr.shape[1]))
    out = np.empty(arr.shape, dtype=np.uint8)
    for r0, r1 in _bands(arr.shape[0], arr.shape[1]):
        out[r0:r1] = _stretch_band(arr[r0:r1], finite)
    return out


def _rgb_to_gray(arr: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an (H, W, 3+) RGB array, scaled from its dtype's range to 0..255, band by band.

    Integer arrays are scaled from their dtype's full range, float arrays from their maximum (at least 1).
    """
    if np.issubdtype(arr.dtype, np.integer):
        full = float(np.iinfo(arr.dtype).max)
    else:
        full = max(max((float(arr[r0:r1, :, :3].max()) for r0, r1 in _bands(arr.shape[0], arr.shape[1])),
                       default=1.0), 1.0)
    weights = np.array([0.299, 0.587, 0.114])
    out = np.empty(arr.shape[:2], dtype=np.uint8)
    for r0, r1 in _bands(arr.shape[0], arr.shape[1]):
        luma = arr[r0:r1, :, :3].astype(np.float64) @ weights
        out[r0:r1] = np.clip(np.round(luma * (255.0 / full)), 0, 255).astype(np.uint8)
    return out


def _band_to_gray(band: Image.Image) -> np.ndarray:
    """8-bit grayscale of one band of rows of an 8-bit-per-channel image (any mode but I*/F)."""
    mode = band.mode
    if mode == "L":
        return np.asarray(band, dtype=np.uint8)
    if mode in ("LA", "La"):
        return np.asarray(band.getchannel("L"), dtype=np.uint8)
    if mode in ("P", "PA"):
        band = band.convert("RGBA")
    return np.asarray(band.convert("RGB").convert("L"), dtype=np.uint8)


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    """Convert any single-frame PIL mode to 8-bit grayscale, a band of rows at a time.

    Colour (RGB, RGBA, P, CMYK...) goes through ITU-R 601 luma; alpha is dropped (the stored
    colour of transparent pixels is kept); 16/32-bit integer and float images are stretched
    from their own range to 0..255. Working in bands of :data:`BAND_PIXELS` keeps the memory
    beyond the decoded image to the uint8 result and a few MB; every step is per pixel, so the
    result is the same as converting the whole image at once.
    """
    w, h = img.size
    out = np.empty((h, w), dtype=np.uint8)
    bands = list(_bands(h, w))
    if img.mode.startswith("I") or img.mode == "F":
        finite = _merge_ranges(_finite_range(np.asarray(img.crop((0, r0, w, r1)))) for r0, r1 in bands)
        for r0, r1 in bands:
            out[r0:r1] = _stretch_band(np.asarray(img.crop((0, r0, w, r1))), finite)
        return out
    for r0, r1 in bands:
        out[r0:r1] = _band_to_gray(img.crop((0, r0, w, r1)))
    return out


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
            img.draft(img.mode, (draft_size, draft_size))  # img.size is now the drafted size
        nbytes = decoded_bytes(img.mode, img.size)
    except Exception as exc:
        raise InvalidImageError(f"{label}: corrupt image header ({_reason(exc)})") from exc
    _check_decoded_bytes(label, nbytes, img.size, _depth(img.mode))
    try:
        with _decode_slot(nbytes):
            fmt = img.format
            img.load()
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            gray = _pil_to_gray(img)
            img.close()  # the decoded pixels go now, not when the caller lets go of its result
    except Exception as exc:
        raise InvalidImageError(f"{label}: corrupt or truncated image ({_reason(exc)})") from exc
    if fmt in ("JPEG", "MPO") and _jpeg_data_ran_out(gray):
        raise InvalidImageError(
            f"{label}: truncated JPEG: its image data ends before the last rows (the decoder filled them with grey)"
        )
    try:
        transpose = _EXIF_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
        if transpose is not None:  # a photographed film stored sideways
            gray = np.asarray(Image.fromarray(gray).transpose(transpose), dtype=np.uint8)
        return gray
    except Exception as exc:
        raise InvalidImageError(f"{label}: corrupt or truncated image ({_reason(exc)})") from exc


#: What libjpeg puts in every pixel of a block it has no data for (all coefficients zero).
JPEG_FILL = 128


def _jpeg_data_ran_out(gray: np.ndarray) -> bool:
    """Whether a JPEG's decode ends in libjpeg's grey fill: its data stopped before the image did.

    A JPEG cut short and closed with an end-of-image marker (or one whose header claims more rows
    than its data holds) decodes without any error: libjpeg only warns ("premature end of data
    segment"), Pillow does not pass the warning on, and every block after the cut comes out as
    :data:`JPEG_FILL`. The bottom row, in stored orientation, is always in the last blocks decoded,
    so a bottom row that is exactly that grey across the whole width, in an image that is not
    that grey everywhere, means missing data (no film of the Kaggle set has such a row; a
    uniformly grey image is left to :func:`blank_reason`). A progressive JPEG cut short is not
    caught: it decodes to a blurred but complete image.
    """
    last = gray[-1]
    return bool(last.size) and bool(np.all(last == JPEG_FILL)) and bool(np.any(gray != JPEG_FILL))


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


class _NoDecoderTracebacks(logging.Filter):
    """Drops pydicom's log records that carry a traceback.

    pydicom logs every failed decoder plugin with ``logger.exception`` before raising; the
    reasons are in the one-line error :func:`_read_dicom` raises, so the tracebacks only
    flooded the terminal and the service log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.exc_info


_PYDICOM_FILTER = _NoDecoderTracebacks()


#: pydicom's loggers that log tracebacks (a logger's filters see only the records it creates itself).
_PYDICOM_LOGGERS = ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils")


def _quiet_pydicom() -> None:
    """Attach :class:`_NoDecoderTracebacks` to pydicom's loggers (once)."""
    for name in _PYDICOM_LOGGERS:
        logger = logging.getLogger(name)
        if _PYDICOM_FILTER not in logger.filters:
            logger.addFilter(_PYDICOM_FILTER)


#: pip distribution of each pydicom decoder requirement, where it differs from the requirement's name.
_PIP_NAMES = {"gdcm": "python-gdcm"}
#: Decoder plugins in the order their install commands are suggested (wheels for every platform first).
_PLUGIN_ORDER = ("pylibjpeg", "pyjpegls", "gdcm")


def _install_hint(missing: list[str]) -> str:
    """``pip install ...`` commands for pydicom's missing decoder plugins, e.g.
    ``'pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1'``
    → ``pip install pylibjpeg pylibjpeg-libjpeg``."""
    from importlib import metadata

    commands = []
    def rank(entry: str) -> int:
        plugin = entry.split(" ")[0]
        return _PLUGIN_ORDER.index(plugin) if plugin in _PLUGIN_ORDER else len(_PLUGIN_ORDER)

    for entry in sorted(missing, key=rank):
        _, _, needs = entry.partition("requires")
        packages = []
        for requirement in needs.split(" and "):
            name = re.split(r"[<>=!~ ]", requirement.strip(), maxsplit=1)[0]
            if not name:
                continue
            try:
                metadata.version(name)
                continue  # installed already (e.g. numpy)
            except metadata.PackageNotFoundError:
                packages.append(_PIP_NAMES.get(name, name))
        if packages:
            commands.append("pip install " + " ".join(packages))
    return ", or ".join(commands)


def _dicom_decode_error(label: str, ds: Any, exc: Exception) -> InvalidImageError:
    """The one-line error for pixel data pydicom could not decode: truncated, damaged, or compressed
    in a way no installed decoder reads (then: the transfer syntax, each decoder's reason, what to install)."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    syntax = getattr(ts, "name", None) or str(ts or "unknown transfer syntax")
    text = str(exc)
    try:
        compressed = ts is not None and bool(ts.is_compressed)
    except Exception:  # not a transfer syntax UID at all (a damaged file)
        compressed = False
    if not compressed:
        m = re.search(r"less than expected \((\d+) vs (\d+) bytes\)", text)
        if m:
            return InvalidImageError(f"{label}: truncated pixel data ({m[1]} of {m[2]} bytes, {syntax})")
        return InvalidImageError(f"{label}: cannot decode DICOM pixel data ({syntax}: {_reason(exc, 160)})")
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(ts)
        available, missing = list(decoder.available_plugins), list(decoder.missing_dependencies)
    except Exception:  # a transfer syntax pydicom has no decoder for at all
        available, missing = [], []
    head = f"{label}: cannot decode DICOM pixel data compressed as {syntax} ({ts})"
    install = _install_hint(missing)
    if not available:
        return UnsupportedDicomError(f"{head}: no decoder for it is installed" + (f"; {install}" if install else ""))
    reasons = [line.strip().rstrip(".") for line in text.splitlines()[1:] if line.strip()] or [_reason(exc, 160)]
    reasons = [r if len(r) <= 160 else r[:157] + "..." for r in reasons]
    tail = f"; another decoder may read it: {install}" if install else "; the file may be damaged"
    return UnsupportedDicomError(f"{head}: {'; '.join(reasons)}{tail}")


def _dicom_decoded_bytes(ds: Any, rows: int, cols: int, photometric: str) -> tuple[int, str]:
    """Bytes of the pixel array pydicom will build (and the depth in words), from the header."""
    if "DoubleFloatPixelData" in ds:
        bits = 64
    elif "FloatPixelData" in ds:
        bits = 32
    else:
        bits = int(ds.get("BitsAllocated", 16) or 16)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    per_pixel = max(1, -(-bits // 8)) * max(1, samples)
    if photometric == "PALETTE COLOR":
        per_pixel = max(per_pixel, 6)  # the palette gives 16-bit RGB
    what = f"{bits}-bit DICOM" if samples <= 1 and photometric != "PALETTE COLOR" else f"{bits}-bit colour DICOM"
    return rows * cols * per_pixel, what


def _dicom_gray(arr: np.ndarray, ds: Any, label: str) -> np.ndarray:
    """A grayscale DICOM pixel array to uint8: modality LUT, VOI LUT or window, else the image's own range.

    Band by band (each step is per pixel), so the float64 temporaries of the LUTs stay small.
    """
    from pydicom.pixels import apply_modality_lut

    rescaled = "RescaleSlope" in ds or "RescaleIntercept" in ds or ds.get("ModalityLUTSequence")
    bands = list(_bands(arr.shape[0], arr.shape[1]))
    out = np.empty(arr.shape, dtype=np.uint8)
    try:
        windowed = True
        for r0, r1 in bands:
            part = _apply_voi(apply_modality_lut(arr[r0:r1], ds), ds)
            if part is None:
                windowed = False
                break
            out[r0:r1] = part
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        log.warning("%s: ignoring invalid DICOM window (%s); using the image's own range", label, _reason(exc))
        windowed = False
    if windowed:
        return out
    if arr.dtype == np.uint8 and not rescaled:
        out[...] = arr
        return out
    finite = _merge_ranges(_finite_range(np.asarray(apply_modality_lut(arr[r0:r1], ds))) for r0, r1 in bands)
    for r0, r1 in bands:
        out[r0:r1] = _stretch_band(np.asarray(apply_modality_lut(arr[r0:r1], ds)), finite)
    return out


def _read_dicom(data: bytes, label: str) -> np.ndarray:
    """Decode a single-frame DICOM: modality LUT (rescale), then VOI LUT / window, then MONOCHROME1 inverted.

    Without a window, 8-bit unsigned pixels are kept as they are and anything else is
    stretched from its own min..max (the usual automatic window). Data without the ``DICM``
    marker and without pixel data (a text or random file named ``.dcm``) is not a DICOM file.
    """
    try:
        import pydicom
        from pydicom.pixels import apply_color_lut
    except ImportError as exc:  # pragma: no cover - pydicom is a core dependency
        raise UnsupportedDicomError(f"{label}: reading DICOM needs pydicom (pip install pydicom)") from exc
    _quiet_pydicom()
    marked = data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        if not marked:
            raise InvalidImageError(f"{label}: not a DICOM file (no DICM marker; {_reason(exc, 120)})") from exc
        raise InvalidImageError(f"{label}: not a readable DICOM file ({_reason(exc)})") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if not marked and not any(k in ds for k in ("SOPClassUID", "Modality", "StudyInstanceUID")):
            raise InvalidImageError(f"{label}: not a DICOM file (no DICM marker, no DICOM image elements)")
        raise UnsupportedDicomError(f"{label}: DICOM file has no pixel data (not an image object)")
    try:
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    except Exception as exc:
        raise InvalidImageError(f"{label}: cannot decode DICOM pixel data (invalid Photometric Interpretation: "
                                f"{_reason(exc)})") from exc
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        nbytes, what = _dicom_decoded_bytes(ds, rows, cols, photometric)
    except Exception as exc:  # a damaged element (bad VR, bad value) raises whatever pydicom meets
        raise InvalidImageError(f"{label}: invalid DICOM Rows/Columns/Number of Frames ({_reason(exc)})") from exc
    if rows * cols > MAX_PIXELS:
        raise ImageTooLargeError(f"{label}: {cols}x{rows} pixels exceeds the limit of {MAX_PIXELS:,}")
    if frames > 1:
        raise UnsupportedDicomError(f"{label}: multi-frame DICOM ({frames} frames) is not supported; export one frame")
    _check_decoded_bytes(label, nbytes, (cols, rows), what)
    with _decode_slot(nbytes):
        try:
            _ensure_transfer_syntax(ds)
            arr = ds.pixel_array
        except Exception as exc:
            raise _dicom_decode_error(label, ds, exc) from exc
        try:
            if photometric == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
            if arr.ndim == 3 and arr.shape[-1] in (3, 4):
                out = _rgb_to_gray(arr)  # pydicom has already converted YBR to RGB
            elif arr.ndim != 2:
                raise UnsupportedDicomError(f"{label}: DICOM pixel array has shape {arr.shape}, expected one 2-D image")
            else:
                out = _dicom_gray(arr, ds, label)
                if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1: invert to the usual display
                    np.subtract(255, out, out=out)
        except InvalidImageError:
            raise
        except Exception as exc:
            reason = _reason(exc)
            raise UnsupportedDicomError(f"{label}: cannot convert {photometric} DICOM to grayscale ({reason})") from exc
    return out


def dicom_patient_id(path: str | Path) -> str | None:
    """The PatientID of a DICOM file, read from its header alone (no pixel data), or ``None``.

    Cheap enough to call on every file of a folder: a file without the ``DICM`` marker and without
    a ``.dcm`` / ``.dicom`` name costs one 132-byte read; a DICOM file is parsed up to its
    PatientID only (pydicom's ``stop_before_pixels`` and ``specific_tags``), its pixels never
    decoded. ``None`` too for an empty PatientID and for a file that cannot be read or parsed:
    decoding the image reports such a file by name, so this never raises on bad input.
    """
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:  # a FIFO could block the read
            return None
        with path.open("rb") as fh:
            marked = fh.read(132)[128:132] == b"DICM"
    except OSError:
        return None
    if not marked and not path.name.lower().endswith(DICOM_SUFFIXES):
        return None
    try:
        import pydicom

        _quiet_pydicom()
        with warnings.catch_warnings():  # odd encodings warn; the image's own decode speaks for the file
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"], force=True)
            value = str(ds.get("PatientID", "") or "").strip()
    except Exception:  # noqa: BLE001 - untrusted bytes: any parser failure means "no patient id here"
        return None
    return value or None


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
            (libjpeg's DCT scaling, which decodes fewer coefficients). Default: full size.

    Raises:
        InvalidImageError: missing, empty, truncated, unreadable or non-image data, an image
            smaller than :data:`MIN_SIDE`, an unsupported DICOM (:class:`UnsupportedDicomError`),
            more than :data:`MAX_PIXELS` pixels or more than :data:`MAX_DECODED_BYTES` decoded
            (:class:`ImageTooLargeError`, judged from the header). The message is one line
            naming the file and the reason.
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
    filtering with PIL's area-aware support (antialiased when shrinking). The result is a writable
    array of its own (a view of PIL's buffer would be read-only, and torch warns on those).
    """
    if gray.shape == (size, size):
        return gray
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8))
    return np.array(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


#: A large JPEG is decoded at no less than this multiple of the model's input size. At 2x the final
#: antialiased resize is still a real downscale: on a 2400x2000 film the result stays within one
#: grey level of the full decode, and files this small (the Kaggle set) are not drafted at all;
#: drafting straight to 1x changed a quarter of the dataset's images by up to 53 grey levels
#: (``bench/bench_core.py``).
DRAFT_FACTOR = 2


#: A decoded image whose grey levels spread less than this (standard deviation) is blank: far
#: below the least spread film of the Kaggle train and val splits (``bench/bench_blank_rule.py``
#: measures the margin on every film).
MIN_CONTENT_STD = 4.0

#: A decoded image with at least this share of its pixels within :data:`DOMINANT_HALF_WIDTH` grey
#: levels of one value is blank too (a flat field with a small mark on it); far above any Kaggle
#: film (same script).
MAX_DOMINANT_SHARE = 0.95
DOMINANT_HALF_WIDTH = 2

#: :func:`blank_reason` reads at most about this many pixels (a regular grid over a larger image).
BLANK_SAMPLE_PIXELS = 1 << 20


def blank_reason(image: np.ndarray) -> str | None:
    """Why a decoded uint8 image is (nearly) constant, or ``None`` when it has content.

    Blank: a standard deviation under :data:`MIN_CONTENT_STD` grey levels, or at least
    :data:`MAX_DOMINANT_SHARE` of the pixels within ±:data:`DOMINANT_HALF_WIDTH` levels of one
    grey level. Such a decode is a corrupt file or an empty picture, not an X-ray, and the model
    would still answer it with confidence. Judged on the decode, not on the model input: fine
    noise shrunk to the input size averages out to flat grey, yet it is an image (the
    out-of-distribution guard's business, not a decoding error). Computed from one 256-bin
    histogram of at most about :data:`BLANK_SAMPLE_PIXELS` pixels on a regular grid.
    """
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2 and image.size > BLANK_SAMPLE_PIXELS:
        step = int(np.ceil(np.sqrt(image.size / BLANK_SAMPLE_PIXELS)))
        image = image[::step, ::step]
    n = image.size
    if n == 0:
        return "image has no pixels"
    hist = np.bincount(image.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    mean = float(hist @ levels) / n
    std = float(np.sqrt(hist @ (levels - mean) ** 2 / n))
    window = np.convolve(hist, np.ones(2 * DOMINANT_HALF_WIDTH + 1), mode="same")
    peak = int(window.argmax())
    share = float(window[peak]) / n
    if std < MIN_CONTENT_STD or share >= MAX_DOMINANT_SHARE:
        return (
            f"image is blank or nearly so (grey levels spread {std:.1f}, {share:.0%} of pixels within "
            f"{DOMINANT_HALF_WIDTH} levels of {peak}): a corrupt decode or an empty picture, not an X-ray"
        )
    return None


def load_image(source: str | Path | bytes, size: int, name: str | None = None) -> np.ndarray:
    """Read and resize in one step: the model's input as uint8 (size, size), a writable array.

    Raises:
        InvalidImageError: as :func:`read_image`, and for a decode that is blank or nearly so
            (:func:`blank_reason`).
    """
    gray = read_image(source, name=name, draft_size=DRAFT_FACTOR * size)
    reason = blank_reason(gray)
    if reason is not None:
        label = name or ("<upload>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source))
        raise InvalidImageError(f"{label}: {reason}")
    out = resize_square(gray, size)
    return out if out.flags.writeable else out.copy()  # e.g. an EXIF-rotated decode already at the size
