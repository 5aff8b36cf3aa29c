"""Single-image reading (PNG, TIFF, DICOM) and letterboxing; every file is made here in tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from persam_lib.images import ImageReadError, Letterbox, Window, read_image, to_model_input

# ---------------------------------------------------------------- PIL / TIFF


def test_png_grey_8bit_divides_by_255(tmp_path):
    p = tmp_path / "grey.png"
    Image.fromarray(np.array([[0, 51], [255, 128]], np.uint8), mode="L").save(p)
    img = read_image(p)
    assert img.shape == (2, 2, 1) and img.dtype == np.float32
    np.testing.assert_allclose(img[..., 0], [[0, 0.2], [1, 128 / 255]], atol=1e-6)


def test_png_rgb_and_bmp_rgb(tmp_path):
    arr = np.zeros((3, 4, 3), np.uint8)
    arr[1, 2] = (255, 0, 51)
    for name in ("rgb.png", "rgb.bmp"):
        Image.fromarray(arr, mode="RGB").save(tmp_path / name)
        img = read_image(tmp_path / name)
        assert img.shape == (3, 4, 3)
        np.testing.assert_allclose(img[1, 2], [1, 0, 0.2], atol=1e-6)
        assert img[0, 0].tolist() == [0, 0, 0]


def test_png_rgba_drops_alpha(tmp_path):
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 1] = (102, 204, 255, 0)  # fully transparent, colour must survive
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "rgba.png")
    img = read_image(tmp_path / "rgba.png")
    assert img.shape == (2, 2, 3)
    np.testing.assert_allclose(img[0, 1], [0.4, 0.8, 1.0], atol=1e-6)


def test_png_palette_becomes_rgb(tmp_path):
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 51, 102, 255] + [0] * (256 * 3 - 6))
    pal.save(tmp_path / "pal.png")
    img = read_image(tmp_path / "pal.png")
    assert img.shape == (2, 2, 3)
    np.testing.assert_allclose(img[0, 1], [0.2, 0.4, 1.0], atol=1e-6)
    np.testing.assert_allclose(img[0, 0], [0, 0, 0])


def test_png_bilevel_and_grey_alpha(tmp_path):
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_image(tmp_path / "bits.png")[..., 0], [[1, 0]])
    Image.fromarray(np.array([[[51, 0], [255, 255]]], np.uint8), mode="LA").save(tmp_path / "la.png")
    img = read_image(tmp_path / "la.png")
    assert img.shape == (1, 2, 1)
    np.testing.assert_allclose(img[..., 0], [[0.2, 1.0]], atol=1e-6)


def _png16(path: Path, values) -> Path:
    Image.fromarray(np.array(values, np.uint16)).save(path)
    return path


def test_png_16bit_uses_min_max(tmp_path):
    img = read_image(_png16(tmp_path / "d.png", [[1000, 2000], [3000, 1000]]))
    assert img.shape == (2, 2, 1)
    np.testing.assert_allclose(img[..., 0], [[0, 0.5], [1, 0]], atol=1e-6)


def test_constant_16bit_image_is_zero(tmp_path):
    img = read_image(_png16(tmp_path / "c.png", [[777, 777], [777, 777]]))
    np.testing.assert_array_equal(img, 0)


def test_window_on_16bit_data(tmp_path):
    # linear DICOM formula with c=2000.5, w=2001: y = (x - 2000) / 2000 + 0.5
    img = read_image(_png16(tmp_path / "d.png", [[1000, 2000], [3000, 9000]]), window=Window(2000.5, 2001))
    np.testing.assert_allclose(img[..., 0], [[0, 0.5], [1, 1]], atol=1e-6)


def test_window_on_8bit_data(tmp_path):
    p = tmp_path / "g.png"
    Image.fromarray(np.array([[0, 64, 128, 192]], np.uint8), mode="L").save(p)
    img = read_image(p, window=Window(128.5, 129))  # y = (x - 128) / 128 + 0.5
    np.testing.assert_allclose(img[..., 0], [[0, 0, 0.5, 1]], atol=1e-6)


def test_float_tiff_uses_min_max(tmp_path):
    p = tmp_path / "f.tif"
    tifffile.imwrite(p, np.array([[-1, 0], [1, 3]], np.float32))
    img = read_image(p)
    assert img.shape == (2, 2, 1)
    np.testing.assert_allclose(img[..., 0], [[0, 0.25], [0.5, 1]], atol=1e-6)


def test_rgb_tiff_8bit_and_multipage_reads_first_page(tmp_path):
    p = tmp_path / "rgb.tiff"
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 0] = (255, 51, 0)
    tifffile.imwrite(p, arr, photometric="rgb")
    np.testing.assert_allclose(read_image(p)[0, 0], [1, 0.2, 0], atol=1e-6)
    stack = tmp_path / "stack.tif"
    with tifffile.TiffWriter(stack) as tw:
        tw.write(np.full((2, 2), 51, np.uint8))
        tw.write(np.full((2, 2), 255, np.uint8))
    np.testing.assert_allclose(read_image(stack), 0.2, atol=1e-6)


def test_window_requires_positive_width():
    with pytest.raises(ValueError, match="width must be > 0"):
        Window(center=40, width=0)


# ---------------------------------------------------------------- DICOM

# 12-bit raw values; with slope 2, intercept -1000 they become -1000, 0, 500, 1000, 2000, 7190
RAW = np.array([[0, 500, 750], [1000, 1500, 4095]], np.uint16)


def _write_dicom(path: Path, pixels: np.ndarray = RAW, *, photometric: str = "MONOCHROME2", slope: float = 2.0,
                 intercept: float = -1000.0, window: tuple[float, float] | None = (1000.5, 2001),
                 frames: int = 1) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_uses_window_from_file_after_rescale(tmp_path):
    img = read_image(_write_dicom(tmp_path / "ct.dcm"))  # y = (HU - 1000) / 2000 + 0.5
    assert img.shape == (2, 3, 1) and img.dtype == np.float32
    np.testing.assert_allclose(img[..., 0], [[0, 0, 0.25], [0.5, 1, 1]], atol=1e-6)


def test_dicom_rescale_slope_intercept_changes_values(tmp_path):
    img = read_image(_write_dicom(tmp_path / "raw.dcm", slope=1.0, intercept=0.0))  # HU = raw
    np.testing.assert_allclose(img[..., 0], [[0, 0.25, 0.375], [0.5, 0.75, 1]], atol=1e-6)


def test_dicom_window_argument_overrides_file(tmp_path):
    img = read_image(_write_dicom(tmp_path / "ct.dcm"), window=Window(2000.5, 4001))  # y = (HU-2000)/4000+0.5
    np.testing.assert_allclose(img[..., 0], [[0, 0, 0.125], [0.25, 0.5, 1]], atol=1e-6)


def test_dicom_multivalued_window_uses_first(tmp_path):
    from pydicom import dcmread

    p = _write_dicom(tmp_path / "ct.dcm")
    ds = dcmread(p)
    ds.WindowCenter, ds.WindowWidth = [1000.5, 40], [2001, 400]
    ds.save_as(p)
    np.testing.assert_allclose(read_image(p)[1, 0, 0], 0.5, atol=1e-6)


def test_dicom_without_window_uses_min_max(tmp_path):
    img = read_image(_write_dicom(tmp_path / "ct.dcm", slope=1.0, intercept=0.0, window=None))
    np.testing.assert_allclose(img[..., 0], RAW / 4095, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    img = read_image(_write_dicom(tmp_path / "cr.dcm", photometric="MONOCHROME1"))
    np.testing.assert_allclose(img[..., 0], [[1, 1, 0.75], [0.5, 0, 0]], atol=1e-6)


def test_dicom_without_extension_is_found_by_magic(tmp_path):
    img = read_image(_write_dicom(tmp_path / "IM0001"))
    np.testing.assert_allclose(img[..., 0], [[0, 0, 0.25], [0.5, 1, 1]], atol=1e-6)


def test_dicom_multiframe_is_refused(tmp_path):
    p = _write_dicom(tmp_path / "vol.dcm", np.stack([RAW] * 3), frames=3)
    with pytest.raises(ImageReadError, match=r"3 frames.*export one 2-D frame") as e:
        read_image(p)
    assert str(e.value).startswith(str(p))


def test_dicom_ybr_is_converted_to_rgb(tmp_path):
    from pydicom import dcmread
    from pydicom.pixels import convert_color_space

    p = _write_dicom(tmp_path / "ybr.dcm")
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 2] = (0, 0, 255)
    ds = dcmread(p)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    del ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    ds.save_as(p)
    img = read_image(p)
    assert img.shape == (2, 3, 3)
    np.testing.assert_allclose(img[0, 0], [1, 0, 0], atol=0.02)  # YBR round trip is off by a level or two
    np.testing.assert_allclose(img[1, 2], [0, 0, 1], atol=0.02)


def test_dicom_undecodable_compression_names_transfer_syntax(tmp_path):
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    p = _write_dicom(tmp_path / "j2k.dcm")
    ds = dcmread(p)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"not a jpeg 2000 codestream"])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(p)
    with pytest.raises(ImageReadError, match=r"JPEG 2000.*gdcmconv --raw") as e:
        read_image(p)
    assert str(e.value).startswith(str(p))


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize("name,content", [
    ("bad.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10),
    ("bad.dcm", b"not dicom at all" * 20),
    ("bad.tif", b"II*\x00garbage"),
    ("noext", b"\x00" * 128 + b"DICM" + b"\x02\x00"),  # magic, then a truncated header
])
def test_corrupt_file_error_names_path(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert str(e.value).startswith(str(p))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ImageReadError, match="file not found") as e:
        read_image(tmp_path / "nope.png")
    assert str(e.value).startswith(str(tmp_path / "nope.png"))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="file is empty"):
        read_image(tmp_path / "empty.png")


@pytest.mark.filterwarnings("ignore:.*zero-size array")
def test_zero_dimension_image_is_refused(tmp_path):
    p = tmp_path / "flat.tif"
    tifffile.imwrite(p, np.zeros((0, 5), np.uint16))
    with pytest.raises(ImageReadError, match="zero dimension") as e:
        read_image(p)
    assert str(e.value).startswith(str(p))


# ---------------------------------------------------------------- letterbox


def test_letterbox_wide_image():
    image = np.zeros((100, 200, 1), np.float32)
    image[:, 100:] = 1.0  # left half dark, right half bright
    x, box = to_model_input(image, size=64, channels=1)
    assert x.shape == (1, 64, 64) and x.dtype == np.float32
    assert box == Letterbox(scale=0.32, offset_x=0.0, offset_y=16.0, size=64)
    assert np.all(x[0, :16] == 0) and np.all(x[0, 48:] == 0)  # padding bands
    np.testing.assert_allclose(x[0, 16:48, :30], 0, atol=1e-6)
    np.testing.assert_allclose(x[0, 16:48, 34:], 1, atol=1e-6)
    np.testing.assert_allclose(box.to_original(np.array([[32.0, 32.0], [0, 16], [64, 48]])),
                               [[100, 50], [0, 0], [200, 100]])
    assert box.original_patch(16) == pytest.approx(50.0)


def test_letterbox_round_trip_tall_image():
    _, box = to_model_input(np.zeros((300, 120, 3), np.float32), size=100, channels=3)
    assert (box.offset_x, box.offset_y, box.scale) == (30.0, 0.0, pytest.approx(1 / 3))
    original = np.array([[0.0, 0.0], [60.0, 150.0], [119.5, 299.0]])
    model = original * box.scale + np.array([box.offset_x, box.offset_y])
    np.testing.assert_allclose(box.to_original(model), original)


def test_downscale_is_antialiased():
    stripes = np.zeros((192, 192, 1), np.float32)
    stripes[:, ::2] = 1.0  # 1-pixel stripes: point sampling at 1/3 would keep them
    x, _ = to_model_input(stripes, size=64, channels=1)
    assert abs(x.mean() - 0.5) < 0.05 and x.std() < 0.15


def test_same_size_image_is_unchanged():
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 3), dtype=np.float32)
    x, box = to_model_input(image, size=32, channels=3)
    np.testing.assert_allclose(x, image.transpose(2, 0, 1), atol=1e-6)
    assert box == Letterbox(scale=1.0, offset_x=0.0, offset_y=0.0, size=32)


def test_channel_conversion_both_ways():
    grey = np.array([[[0.2], [0.9]]], np.float32)  # (1, 2, 1)
    x, _ = to_model_input(grey, size=2, channels=3)
    assert x.shape == (3, 2, 2)
    for c in range(3):  # rows are padding except the centred one
        np.testing.assert_allclose(x[c, 0], [0.2, 0.9], atol=1e-6)
    rgb = np.array([[[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [1, 1, 1]]], np.float32)
    y, _ = to_model_input(rgb, size=2, channels=1)
    np.testing.assert_allclose(y[0], [[0.299, 0.587], [0.114, 1.0]], atol=1e-6)


def test_to_model_input_rejects_bad_shapes():
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        to_model_input(np.zeros((4, 4, 1), np.float32), size=4, channels=2)
    with pytest.raises(ValueError, match=r"\(H, W, 1\|3\)"):
        to_model_input(np.zeros((4, 4), np.float32), size=4, channels=1)
