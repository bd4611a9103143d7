"""pneumolens.io: every image mode and DICOM variant to 8-bit grayscale, and one-line errors for bad input."""

from __future__ import annotations

import io as _io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_windowing
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, SecondaryCaptureImageStorage, generate_uid

from pneumolens import io
from pneumolens.errors import ImageTooLargeError, InvalidImageError, UnsupportedDicomError

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (24, 32), dtype=np.uint8)  # H=24, W=32


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def png_bytes(img: Image.Image) -> bytes:
    buf = _io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def assert_one_line_error(excinfo: pytest.ExceptionInfo, name: str, *words: str) -> None:
    """The message names the file, says why, and is one line."""
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    assert name in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg


# --------------------------------------------------------------------------- Pillow modes


def test_mode_L_png_is_exact(tmp_path):
    out = io.read_image(save(Image.fromarray(GRAY), tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == GRAY.shape
    np.testing.assert_array_equal(out, GRAY)


def test_mode_L_jpeg_is_close(tmp_path):
    out = io.read_image(save(Image.fromarray(GRAY), tmp_path / "a.jpeg", quality=100))
    assert out.shape == GRAY.shape
    assert np.abs(out.astype(int) - GRAY).mean() < 4


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_mode_RGB_gray_content_is_kept(tmp_path, fmt, suffix):
    rgb = np.repeat(GRAY[..., None], 3, axis=2)
    options = {"quality": 100} if fmt == "JPEG" else {}
    out = io.read_image(save(Image.fromarray(rgb), tmp_path / f"a{suffix}", **options))
    assert out.shape == GRAY.shape
    assert np.abs(out.astype(int) - GRAY).max() <= (0 if fmt == "PNG" else 12)


def test_mode_RGB_uses_luma(tmp_path):
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:, :8, 0] = 255  # red half
    rgb[:, 8:, 1] = 255  # green half
    out = io.read_image(save(Image.fromarray(rgb), tmp_path / "c.png"))
    assert out[0, 0] == 76 and out[0, 15] == 150  # ITU-R 601: 0.299 and 0.587 of 255


def test_mode_RGBA_drops_alpha(tmp_path):
    rgba = np.dstack([GRAY, GRAY, GRAY, np.where(GRAY > 128, 255, 0).astype(np.uint8)])
    img = Image.fromarray(rgba)
    assert img.mode == "RGBA"
    np.testing.assert_array_equal(io.read_image(save(img, tmp_path / "a.png")), GRAY)


def test_mode_P_applies_palette(tmp_path):
    idx = (GRAY // 2).astype(np.uint8)
    img = Image.fromarray(idx).convert("L")
    img = Image.frombytes("P", img.size, img.tobytes())
    img.putpalette([v for i in range(256) for v in (255 - i,) * 3])  # index i -> gray 255-i
    path = save(img, tmp_path / "p.png")
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(io.read_image(path), 255 - idx)


def test_mode_LA_keeps_luminance(tmp_path):
    img = Image.fromarray(np.dstack([GRAY, np.full_like(GRAY, 7)]), mode="LA")
    path = save(img, tmp_path / "la.png")
    assert Image.open(path).mode == "LA"
    np.testing.assert_array_equal(io.read_image(path), GRAY)


def test_16bit_png_is_stretched(tmp_path):
    arr16 = np.linspace(1000, 3000, 24 * 32).reshape(24, 32).astype(np.uint16)
    path = save(Image.fromarray(arr16), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    out = io.read_image(path)
    assert out.min() == 0 and out.max() == 255
    expected = np.round((arr16.astype(float) - 1000) * 255 / 2000)
    assert np.abs(out - expected).max() <= 1


@pytest.mark.parametrize("mode,dtype", [("I", np.int32), ("F", np.float32)])
def test_32bit_int_and_float_are_stretched(tmp_path, mode, dtype):
    arr = np.linspace(-500, 1500, 24 * 32).reshape(24, 32).astype(dtype)
    img = Image.fromarray(arr)
    assert img.mode == mode
    out = io.read_image(save(img, tmp_path / "deep.tif"))
    expected = np.round((arr.astype(float) + 500) * 255 / 2000)
    assert np.abs(out - expected).max() <= 1


def test_float_nan_and_constant_images():
    arr = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    arr[0, 0] = np.nan
    buf = _io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF")
    out = io.read_image(buf.getvalue(), name="nan.tif")
    assert out[0, 0] == 0 and out.max() == 255
    buf = _io.BytesIO()
    Image.fromarray(np.full((16, 16), 3.0, dtype=np.float32)).save(buf, format="TIFF")
    assert (io.read_image(buf.getvalue()) == 0).all()


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((60, 40), dtype=np.uint8)
    arr[:10] = 255  # bright band at the top of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turns it 90 degrees clockwise
    path = save(Image.fromarray(arr), tmp_path / "rot.jpeg", exif=exif, quality=95)
    out = io.read_image(path)
    assert out.shape == (40, 60)
    assert out[:, -10:].mean() > 200 and out[:, :30].mean() < 30  # the band is now on the right


def test_bytes_input_matches_path_input(tmp_path):
    path = save(Image.fromarray(GRAY), tmp_path / "a.png")
    np.testing.assert_array_equal(io.read_image(path.read_bytes(), name="a.png"), io.read_image(path))


# --------------------------------------------------------------------------- DICOM


def make_dicom(
    arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **elements
) -> Dataset:
    """An uncompressed single-image DICOM of ``arr``; ``elements`` are set as attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    for key, value in elements.items():
        setattr(ds, key, value)
    return ds


def dicom_bytes(ds: Dataset, preamble: bool = True) -> bytes:
    buf = _io.BytesIO()
    ds.save_as(buf, enforce_file_format=preamble, implicit_vr=None if preamble else False)
    return buf.getvalue()


RAMP12 = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # 0..4095, 12-bit


def test_dicom_8bit_monochrome2_kept_as_is(tmp_path):
    arr = RNG.integers(10, 200, (32, 32), dtype=np.uint8)
    path = tmp_path / "scan.dcm"
    path.write_bytes(dicom_bytes(make_dicom(arr)))
    np.testing.assert_array_equal(io.read_image(path), arr)


def test_dicom_16bit_monochrome2_stretched():
    out = io.read_image(dicom_bytes(make_dicom(RAMP12 * 10 + 100)), name="x.dcm")  # 100..41050 of 16 bits
    expected = np.round(RAMP12.astype(float) * 255 / 4095)
    assert np.abs(out - expected).max() <= 1


def test_dicom_monochrome1_is_inverted():
    mono2 = io.read_image(dicom_bytes(make_dicom(RAMP12, bits_stored=12)))
    mono1 = io.read_image(dicom_bytes(make_dicom(RAMP12, "MONOCHROME1", bits_stored=12)))
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert mono1[0, 0] == 255  # the lowest stored value is white in MONOCHROME1


def test_dicom_window_center_width_applied():
    ds = make_dicom(RAMP12, bits_stored=12, WindowCenter=2048, WindowWidth=1025)
    out = io.read_image(dicom_bytes(ds))
    # hand-checked values (PS3.3 C.11.2.1.2.1: c-0.5, w-1)
    assert list(out.flat[[0, 1535, 2048, 2560, 4095]]) == [0, 0, 128, 255, 255]
    # and pydicom's own windowing, mapped from its 12-bit output range
    reference = np.round(apply_windowing(RAMP12.copy(), ds) * 255 / 4095)
    assert np.abs(out - reference).max() <= 1


def test_dicom_multi_valued_window_uses_first():
    ds = make_dicom(RAMP12, bits_stored=12, WindowCenter=[2048, 100], WindowWidth=[1025, 50])
    assert io.read_image(dicom_bytes(ds)).flat[2048] == 128


def test_dicom_voi_lut_sequence_applied():
    ds = make_dicom(RAMP12, bits_stored=12)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [(4095 - i) * 16 for i in range(4096)])  # an inverting LUT
    ds.VOILUTSequence = Sequence([item])
    out = io.read_image(dicom_bytes(ds))
    expected = np.round((4095 - RAMP12.astype(float)) * 16 * 255 / 65535)
    np.testing.assert_array_equal(out, expected)


def test_dicom_8bit_voi_lut_longer_than_256_entries():
    ds = make_dicom(RAMP12, bits_stored=12)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.add_new(0x00283006, "US", [255 - i // 16 for i in range(4096)])
    ds.VOILUTSequence = Sequence([item])
    out = io.read_image(dicom_bytes(ds))
    np.testing.assert_array_equal(out, 255 - RAMP12 // 16)  # pydicom 3.0's apply_voi gets 240 at the end


def test_dicom_rescale_slope_intercept_before_window():
    stored = np.tile(np.array([50, 100, 150], dtype=np.uint16), (16, 6))[:, :16]
    ds = make_dicom(stored, RescaleSlope=10, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=1001)
    out = io.read_image(dicom_bytes(ds))
    # 50 -> -500 HU (below the window), 100 -> 0 HU (centre), 150 -> 500 HU (above)
    assert (out[stored == 50] == 0).all() and (out[stored == 100] == 128).all() and (out[stored == 150] == 255).all()


def test_dicom_negative_slope_without_window_inverts():
    out = io.read_image(dicom_bytes(make_dicom(RAMP12, bits_stored=12, RescaleSlope=-1, RescaleIntercept=0)))
    assert out.flat[0] == 255 and out.flat[-1] == 0


def test_dicom_invalid_window_falls_back_to_stretch(caplog):
    out = io.read_image(dicom_bytes(make_dicom(RAMP12, bits_stored=12, WindowCenter=10, WindowWidth=0)), name="w.dcm")
    assert out.flat[0] == 0 and out.flat[-1] == 255
    assert "w.dcm" in caplog.text and "window" in caplog.text


def test_dicom_rgb_to_luma():
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    assert (io.read_image(dicom_bytes(make_dicom(rgb, "RGB"))) == 76).all()


def test_dicom_without_preamble_read_by_suffix(tmp_path):
    arr = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    ds = make_dicom(arr)
    ds.file_meta = FileMetaDataset()  # a bare dataset, as old ACR-NEMA files are
    buf = _io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True)
    data = buf.getvalue()
    assert data[128:132] != b"DICM"
    path = tmp_path / "old.dcm"
    path.write_bytes(data)
    np.testing.assert_array_equal(io.read_image(path), arr)


def test_dicom_without_pixel_data(tmp_path):
    ds = make_dicom(np.zeros((16, 16), dtype=np.uint8))
    del ds.PixelData
    path = tmp_path / "report.dcm"
    path.write_bytes(dicom_bytes(ds))
    with pytest.raises(UnsupportedDicomError) as e:
        io.read_image(path)
    assert_one_line_error(e, "report.dcm", "no pixel data")


def test_dicom_multi_frame_is_refused(tmp_path):
    frames = RNG.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    ds = make_dicom(frames)
    assert int(ds.NumberOfFrames) == 3
    path = tmp_path / "cine.dcm"
    path.write_bytes(dicom_bytes(ds))
    with pytest.raises(UnsupportedDicomError) as e:
        io.read_image(path)
    assert_one_line_error(e, "cine.dcm", "multi-frame", "3 frames")


def test_dicom_compressed_without_decoder(tmp_path):
    ds = make_dicom(np.zeros((16, 16), dtype=np.uint8))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64)])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "jls.dcm"
    path.write_bytes(dicom_bytes(ds))
    with pytest.raises(UnsupportedDicomError) as e:
        io.read_image(path)
    assert_one_line_error(e, "jls.dcm", "JPEG-LS", "decoder", "pip install")


def test_dicom_header_claiming_huge_size_is_refused_before_decoding():
    ds = make_dicom(np.zeros((16, 16), dtype=np.uint8))
    ds.Rows, ds.Columns = 60000, 60000
    with pytest.raises(ImageTooLargeError) as e:
        io.read_image(dicom_bytes(ds), name="bomb.dcm")
    assert_one_line_error(e, "bomb.dcm", "exceeds the limit")


def test_random_bytes_named_dcm(tmp_path):
    path = tmp_path / "noise.dcm"
    path.write_bytes(RNG.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(InvalidImageError) as e:
        io.read_image(path)
    assert_one_line_error(e, "noise.dcm")


# --------------------------------------------------------------------------- bad input


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpeg"
    path.write_bytes(b"")
    with pytest.raises(InvalidImageError) as e:
        io.read_image(path)
    assert_one_line_error(e, "empty.jpeg", "empty")


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpeg"), ("PNG", ".png")])
def test_truncated_files(tmp_path, fmt, suffix):
    big = RNG.integers(0, 256, (200, 200), dtype=np.uint8)
    full = tmp_path / f"full{suffix}"
    Image.fromarray(big).save(full, format=fmt)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InvalidImageError) as e:
        io.read_image(cut)
    assert_one_line_error(e, str(cut), "truncated")


@pytest.mark.parametrize(
    "content", [RNG.integers(0, 256, 5000, dtype=np.uint8).tobytes(), b"this is a text file, not an X-ray\n" * 20]
)
def test_non_image_named_jpeg(tmp_path, content):
    path = tmp_path / "fake.jpeg"
    path.write_bytes(content)
    with pytest.raises(InvalidImageError) as e:
        io.read_image(path)
    assert_one_line_error(e, "fake.jpeg", "not a recognised image format")


def test_directory(tmp_path):
    folder = tmp_path / "folder.jpeg"
    folder.mkdir()
    with pytest.raises(InvalidImageError) as e:
        io.read_image(folder)
    assert_one_line_error(e, "folder.jpeg", "directory")


def test_special_file_is_not_read():
    with pytest.raises(InvalidImageError) as e:
        io.read_image("/dev/zero")
    assert_one_line_error(e, "/dev/zero", "not a regular file")


def test_missing_file(tmp_path):
    with pytest.raises(InvalidImageError) as e:
        io.read_image(tmp_path / "nope.png")
    assert_one_line_error(e, "nope.png", "does not exist")


def test_over_pixel_limit(tmp_path, monkeypatch):
    path = save(Image.fromarray(GRAY), tmp_path / "big.png")
    monkeypatch.setattr(io, "MAX_PIXELS", 24 * 32 - 1)
    with pytest.raises(ImageTooLargeError) as e:
        io.read_image(path)
    assert_one_line_error(e, "big.png", "32x24", "exceeds the limit")
    monkeypatch.setattr(io, "MAX_PIXELS", 24 * 32)
    assert io.read_image(path).shape == (24, 32)


def test_over_file_size_limit(tmp_path, monkeypatch):
    path = save(Image.fromarray(GRAY), tmp_path / "heavy.png")
    monkeypatch.setattr(io, "MAX_FILE_BYTES", 10)
    with pytest.raises(ImageTooLargeError) as e:
        io.read_image(path)
    assert_one_line_error(e, "heavy.png", "over the limit")


def png_header_claiming(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose header claims width x height 8-bit gray pixels (tiny IDAT)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9000, 100_000])  # 81 MP: over our limit; 10 GP: over Pillow's too
def test_png_header_claiming_huge_size_is_refused_without_allocating(side):
    data = png_header_claiming(side, side)
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError) as e:
            io.read_image(data, name="bomb.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_one_line_error(e, "bomb.png")
    assert peak < 5_000_000  # decoding even one row would be bigger than the file itself


def test_tiny_image_is_refused(tmp_path):
    path = save(Image.fromarray(np.zeros((2, 2), dtype=np.uint8)), tmp_path / "tiny.png")
    with pytest.raises(InvalidImageError) as e:
        io.read_image(path)
    assert_one_line_error(e, "tiny.png", "2x2", "too small")


def test_upload_errors_name_the_upload():
    with pytest.raises(InvalidImageError) as e:
        io.read_image(b"junk")
    assert_one_line_error(e, "<upload>")


VALID = {
    "png": png_bytes(Image.fromarray(GRAY)),
    "jpeg": (lambda b: (Image.fromarray(GRAY).save(b, format="JPEG"), b.getvalue())[1])(_io.BytesIO()),
    "dcm": dicom_bytes(make_dicom(RAMP12, bits_stored=12, WindowCenter=2048, WindowWidth=1025)),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the damaged values it meets
@settings(
    max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(kind=st.sampled_from(sorted(VALID)), cut=st.integers(0, 4000), flips=st.lists(st.integers(0, 10**6), max_size=4))
def test_damaged_files_give_an_array_or_a_one_line_error(kind, cut, flips):
    """Fuzz: truncated or bit-flipped JPEG/PNG/DICOM never raise anything but InvalidImageError."""
    data = bytearray(VALID[kind][: max(1, len(VALID[kind]) - cut)])
    for f in flips:
        data[f % len(data)] ^= 1 << (f % 8)
    try:
        out = io.read_image(bytes(data), name=f"fuzz.{kind}")
    except InvalidImageError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.")
    else:
        assert out.dtype == np.uint8 and out.ndim == 2


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "tag,words",
    [(b"\x28\x00\x10\x00", "invalid DICOM Rows"), (b"\x28\x00\x04\x00", "cannot decode DICOM pixel data")],
)  # Rows; Photometric Interpretation (which the pixel decoder reads first)
def test_dicom_element_with_a_damaged_value_representation_is_a_one_line_error(tag, words):
    """A flipped bit turned Rows' VR "US" into "ES": pydicom raised NotImplementedError on access."""
    data = VALID["dcm"]
    at = data.index(tag) + 4
    damaged = data[:at] + b"ES" + data[at + 2 :]
    with pytest.raises(InvalidImageError) as e:
        io.read_image(damaged, name="bad-vr.dcm")
    assert_one_line_error(e, "bad-vr.dcm", words)


# --------------------------------------------------------------------------- resizing


def test_resize_square_ignores_aspect_ratio():
    arr = np.zeros((40, 80), dtype=np.uint8)
    arr[:, 40:] = 255
    out = io.resize_square(arr, 16)
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert out[:, :7].max() < 10 and out[:, 9:].min() > 245  # left half dark, right half bright


def test_resize_square_identity_and_load_image(tmp_path):
    arr = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    assert io.resize_square(arr, 16) is arr
    path = save(Image.fromarray(GRAY), tmp_path / "a.png")
    np.testing.assert_array_equal(io.load_image(path, 20), io.resize_square(GRAY, 20))


def _smooth_film(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(40 + 150 * yy / h + 40 * np.sin(xx / 37.0) + 30 * np.cos(yy / 23.0), 0, 255).astype(np.uint8)


def test_large_jpegs_are_drafted_within_a_grey_level_and_small_ones_are_not(tmp_path: Path) -> None:
    big = save(Image.fromarray(_smooth_film(1100, 900)), tmp_path / "big.jpg", quality=95)
    full = io.resize_square(io.read_image(big), 64)
    drafted_gray = io.read_image(big, draft_size=2 * 64)
    assert drafted_gray.shape == (275, 225)  # libjpeg's 1/4 scale: the smallest keeping both sides >= 128
    drafted = io.load_image(big, 64)
    assert np.abs(drafted.astype(int) - full.astype(int)).max() <= 2
    small = save(Image.fromarray(_smooth_film(250, 300)), tmp_path / "small.jpg", quality=95)
    np.testing.assert_array_equal(io.load_image(small, 64), io.resize_square(io.read_image(small), 64))
    png = save(Image.fromarray(_smooth_film(1100, 900)), tmp_path / "big.png")
    assert io.read_image(png, draft_size=128).shape == (1100, 900)  # only JPEG has a draft mode


# --------------------------------------------------------------------------- issue 17: DICOM reasons, decode memory


def pydicom_test_file(name: str) -> Path:
    """One of pydicom's own test files; skipped when this install lacks it (some are downloaded on demand)."""
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(name)
    except Exception:  # a download attempted offline
        path = None
    if path is None:
        pytest.skip(f"pydicom test file {name} is not available offline")
    return Path(path)


@pytest.mark.parametrize(
    "name, syntax, uid, reason",
    [
        ("JPEG-lossy.dcm", "JPEG Extended", "1.2.840.10008.1.2.4.51", "12-bit precision"),
        ("JPGExtended.dcm", "JPEG Extended", "1.2.840.10008.1.2.4.51", "12-bit precision"),
        ("GDCMJ2K_TextGBR.dcm", "JPEG 2000", "1.2.840.10008.1.2.4.90", "broken data stream"),
        ("JPEG2000-embedded-sequence-delimiter.dcm", "JPEG 2000", "1.2.840.10008.1.2.4.91", "exceeds limit"),
    ],
)
def test_undecodable_compressed_dicom_is_one_full_line_and_no_logged_traceback(name, syntax, uid, reason, caplog):
    """Issue 17 item 5: pydicom logged whole tracebacks, and the reason stopped at "...all available plugins:"."""
    import logging

    path = pydicom_test_file(name)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(UnsupportedDicomError) as e:
            io.read_image(path, name=name)
    assert_one_line_error(e, name, syntax, uid, reason, "pip install pylibjpeg")
    assert not str(e.value).rstrip().endswith(":")
    assert [r for r in caplog.records if r.exc_info or r.exc_text] == []


def test_a_missing_decoder_names_the_package_that_would_decode_it(tmp_path):
    ds = make_dicom(np.zeros((16, 16), dtype=np.uint8))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64)])
    ds["PixelData"].VR = "OB"
    with pytest.raises(UnsupportedDicomError) as e:
        io.read_image(dicom_bytes(ds), name="jls.dcm")
    assert_one_line_error(e, "jls.dcm", "JPEG-LS Lossless", "1.2.840.10008.1.2.4.80", "no decoder for it is installed",
                          "pip install pylibjpeg pylibjpeg-libjpeg")


@pytest.mark.parametrize("content", [b"hello, this is text\n" * 3, RNG.bytes(3000), b"\x00" * 300])
def test_a_dcm_file_that_is_not_dicom_says_so(content):
    """Issue 17 item 6: text or noise named .dcm was "DICOM file has no pixel data" (an UnsupportedDicomError: 415)."""
    with pytest.raises(InvalidImageError) as e:
        io.read_image(content, name="notes.dcm")
    assert not isinstance(e.value, UnsupportedDicomError)
    assert_one_line_error(e, "notes.dcm", "not a DICOM file")


def test_a_truncated_uncompressed_dicom_says_truncated_not_decoder():
    """Issue 17 item 6: the reason ended with a misleading "compressed DICOM may need a decoder"."""
    data = dicom_bytes(make_dicom(RAMP12, bits_stored=12))
    with pytest.raises(InvalidImageError) as e:
        io.read_image(data[:-2000], name="cut.dcm")
    assert not isinstance(e.value, UnsupportedDicomError)
    assert_one_line_error(e, "cut.dcm", "truncated pixel data", "6192 of 8192 bytes")
    assert "decoder" not in str(e.value) and "pip" not in str(e.value)


def png16_header_claiming(width: int, height: int) -> bytes:
    """A valid 16-bit grayscale PNG header claiming width x height, with a tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_16bit_png_over_the_decode_budget_is_refused_from_its_header():
    """Issue 17 item 9: a 124 KB 16-bit 7999x7999 PNG (under the pixel cap) cost ~730 MB to decode."""
    assert 7999 * 7999 < io.MAX_PIXELS
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError) as e:
            io.read_image(png16_header_claiming(7999, 7999), name="deep.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_one_line_error(e, "deep.png", "7999x7999", "16-bit", f"{io.MAX_DECODED_BYTES:,}")
    assert peak < 5_000_000


def test_decoded_bytes_budget_per_mode():
    assert io.decoded_bytes("L", (8000, 8000)) == 64_000_000
    assert io.decoded_bytes("I;16", (100, 10)) == 2_000
    assert io.decoded_bytes("RGB", (100, 10)) == 4_000  # Pillow keeps 4 bytes per pixel for every multi-band mode
    assert io.decoded_bytes("F", (100, 10)) == 4_000


def test_16bit_decode_keeps_numpy_memory_near_the_output_size(tmp_path):
    """Converting 16 bits to 8 used float64 copies of the whole image (8+ bytes per pixel)."""
    h, w = 1500, 1400
    arr16 = (np.add.outer(np.arange(h), np.arange(w)) * 20 % 60000).astype(np.uint16)
    path = save(Image.fromarray(arr16), tmp_path / "deep.png")
    tracemalloc.start()
    try:
        out = io.read_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = np.round((arr16.astype(float) - arr16.min()) * 255 / (int(arr16.max()) - int(arr16.min())))
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert peak < 3 * h * w + 20_000_000, peak  # the uint8 result, a band's temporaries, the file's bytes


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "F", "RGB", "RGBA", "P", "LA", "1", "CMYK"])
def test_band_by_band_conversion_equals_the_whole_image_conversion(mode, monkeypatch):
    """Every mode is converted in bands of rows (bounded memory); the result must not depend on the bands."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (37, 23, 4), dtype=np.uint8)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (37, 23), dtype=np.uint16))
    elif mode in ("I", "F"):
        arr = rng.normal(0, 1000, (37, 23)).astype(np.int32 if mode == "I" else np.float32)
        if mode == "F":
            arr[3, 4] = np.nan
        img = Image.fromarray(arr)
    elif mode == "P":
        img = Image.fromarray(base[..., :3], "RGB").quantize(50)
    else:
        img = Image.fromarray(base, "RGBA").convert(mode)
    assert img.mode == mode
    data = _io.BytesIO()
    img.save(data, format="TIFF")
    whole = io.read_image(data.getvalue(), name="x.tif")
    monkeypatch.setattr(io, "BAND_PIXELS", 23 * 5)  # bands of 5 rows, the last one shorter
    np.testing.assert_array_equal(io.read_image(data.getvalue(), name="x.tif"), whole)


def test_dicom_band_by_band_conversion_equals_the_whole_image(monkeypatch):
    cases = [
        make_dicom(RAMP12, bits_stored=12),
        make_dicom(RAMP12, bits_stored=12, WindowCenter=2048, WindowWidth=1025),
        make_dicom(RAMP12, bits_stored=12, RescaleSlope=-2, RescaleIntercept=100),
        make_dicom(RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8), photometric="RGB"),
    ]
    datas = [dicom_bytes(ds) for ds in cases]
    whole = [io.read_image(d, name="x.dcm") for d in datas]
    monkeypatch.setattr(io, "BAND_PIXELS", 64 * 3)
    for d, w in zip(datas, whole):
        np.testing.assert_array_equal(io.read_image(d, name="x.dcm"), w)


def test_large_decodes_wait_for_a_slot(monkeypatch):
    """At most ``limit_large_decodes(n)`` decodes over LARGE_DECODE_BYTES run at once; small ones never wait."""
    import threading
    import time

    monkeypatch.setattr(io, "LARGE_DECODE_BYTES", 1000)
    big = png_bytes(Image.fromarray(RNG.integers(0, 256, (100, 100), dtype=np.uint8)))  # 10,000 bytes decoded
    small = png_bytes(Image.fromarray(GRAY))  # 768 bytes decoded
    active, most = 0, 0
    lock = threading.Lock()
    original = io._pil_to_gray

    def slow(img):
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return original(img)

    monkeypatch.setattr(io, "_pil_to_gray", slow)
    previous = io.limit_large_decodes(1)
    try:
        threads = [threading.Thread(target=io.read_image, args=(big,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert most == 1
        most = 0
        threads = [threading.Thread(target=io.read_image, args=(small,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert most > 1  # small decodes are not gated
    finally:
        io.limit_large_decodes(previous)
