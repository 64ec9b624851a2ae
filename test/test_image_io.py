"""lens_model.image_io: size from the header before decoding, truncation refused, pixels as OpenCV decodes them."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from image_fixtures import (jpeg_bytes, jpeg_claiming, jpeg_with_orientation, png_bytes, png_chunk, png_claiming,
                            refuse_to_decode, smooth_scene)

from lens_model import image_io
from lens_model.errors import InputError
from lens_model.image_io import MAX_IMAGE_PIXELS, check_pixel_budget, decode_image, probe, read_image_file

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scene.png"
RGB = smooth_scene()


def opencv_rgb(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)[:, :, ::-1]


@pytest.mark.parametrize("name, data", [
    ("example png", EXAMPLE.read_bytes()),
    ("png", png_bytes(RGB)),
    ("16-bit png", cv2.imencode(".png", RGB.astype(np.uint16) * 257)[1].tobytes()),
    ("rgba png", cv2.imencode(".png", np.dstack([RGB, RGB[..., :1]]))[1].tobytes()),
    ("grey png", cv2.imencode(".png", RGB[..., 0])[1].tobytes()),
    ("baseline jpeg", jpeg_bytes(RGB)),
    ("progressive jpeg", jpeg_bytes(RGB, progressive=True)),
    ("restart markers", cv2.imencode(".jpg", RGB, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes()),
    ("grey jpeg", cv2.imencode(".jpg", RGB[..., 0])[1].tobytes()),
    ("data after EOI", jpeg_bytes(RGB) + b"\0" * 7 + b"trailer"),
])
def test_ordinary_images_decode_exactly_as_opencv_did(name, data):
    np.testing.assert_array_equal(decode_image(data, apply_exif_orientation=True), opencv_rgb(data))
    np.testing.assert_array_equal(decode_image(data, apply_exif_orientation=False), opencv_rgb(data))


def test_a_file_reads_as_cv2_imread_with_its_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg_with_orientation(RGB, 6))  # 6: rotate 90 degrees clockwise to view
    image = read_image_file(path, apply_exif_orientation=True)
    assert image.shape == (64, 48, 3)
    np.testing.assert_array_equal(image, cv2.imread(str(path))[:, :, ::-1])


def test_exif_orientation_can_be_ignored():
    data = jpeg_with_orientation(RGB, 6)
    image = decode_image(data, apply_exif_orientation=False)
    assert image.shape == (48, 64, 3)
    np.testing.assert_array_equal(image, opencv_rgb(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION))


def test_probe_reads_the_size_without_decoding(monkeypatch):
    monkeypatch.setattr(cv2, "imdecode", refuse_to_decode)
    assert probe(png_bytes(RGB)) == image_io.ImageHeader("PNG", 64, 48)
    assert probe(jpeg_bytes(RGB, progressive=True)) == image_io.ImageHeader("JPEG", 64, 48)


@pytest.mark.parametrize("data", [
    png_claiming(100_000, 100_000),
    png_claiming(10_000, 5_001),  # 50.01 MP, just over the budget
    png_claiming(2**32 - 1, 2**32 - 1),
    jpeg_claiming(65_535, 65_535),
    jpeg_claiming(8_000, 6_251),
], ids=["png 100000^2", "png 50.01 MP", "png 2^32-1", "jpeg 65535^2", "jpeg 50.01 MP"])
def test_images_over_the_pixel_budget_are_refused_from_the_header(data, monkeypatch):
    monkeypatch.setattr(cv2, "imdecode", refuse_to_decode)
    with pytest.raises(InputError, match="over the pixel budget of 50 MP"):
        decode_image(data, apply_exif_orientation=True)


def test_the_budget_includes_its_limit():
    check_pixel_budget(10_000, 5_000)
    assert 10_000 * 5_000 == MAX_IMAGE_PIXELS
    with pytest.raises(InputError, match="50.0 MP"):
        check_pixel_budget(10_000, 5_000 + 1)


@pytest.mark.parametrize("data", [png_bytes(RGB), jpeg_bytes(RGB), jpeg_bytes(RGB, progressive=True)],
                         ids=["png", "jpeg", "progressive jpeg"])
def test_every_truncation_is_refused(data):
    for length in range(0, len(data) - 1, 7):
        with pytest.raises(InputError, match="truncated|empty|neither PNG nor JPEG"):
            probe(data[:length])
    with pytest.raises(InputError, match="truncated"):
        probe(data[:-1])


def test_a_png_chunk_with_a_wrong_crc_is_refused():
    data = bytearray(png_bytes(RGB))
    data[-20] ^= 0x01  # inside the last IDAT
    with pytest.raises(InputError, match="'IDAT' at byte .* fails its CRC check"):
        probe(bytes(data))


def segment_start(data: bytes, marker: int) -> int:
    """Where the first segment with this marker starts."""
    return data.index(bytes([0xFF, marker]))


@pytest.mark.parametrize("case, message", [
    ("second frame header", "more than one frame header"),
    ("stray byte between segments", "no marker at byte"),
    ("scan before frame", "a scan comes before the frame header"),
    ("no scan", "ends without a frame header and a scan"),
    ("segment length 1", "has length 1"),
])
def test_jpeg_structure_is_strict(case, message):
    data = jpeg_bytes(RGB)
    sof, sos = segment_start(data, 0xC0), segment_start(data, 0xDA)
    sof_segment = data[sof:sof + 2 + int.from_bytes(data[sof + 2:sof + 4], "big")]
    if case == "second frame header":
        data = data[:sos] + sof_segment + data[sos:]
    elif case == "stray byte between segments":
        data = data[:sof] + b"\x00" + data[sof:]
    elif case == "scan before frame":
        data = data[:sof] + data[sof + len(sof_segment):sos] + data[sos:]
    elif case == "no scan":
        data = data[:sos] + b"\xff\xd9"
    elif case == "segment length 1":
        data = data[:sof + 2] + b"\x00\x01" + data[sof + 4:]
    with pytest.raises(InputError, match=message):
        probe(data)


def test_a_jpeg_with_more_scans_than_the_limit_is_refused():
    data = jpeg_bytes(RGB)
    sos = segment_start(data, 0xDA)
    scan = data[sos:-2]
    with pytest.raises(InputError, match="more than 500 scans"):
        probe(data[:sos] + scan * (image_io.MAX_JPEG_SCANS + 1) + b"\xff\xd9")


@pytest.mark.parametrize("data", [
    cv2.imencode(".bmp", RGB)[1].tobytes(),
    cv2.imencode(".webp", RGB)[1].tobytes(),
    cv2.imencode(".tiff", RGB)[1].tobytes(),
    b"GIF89a" + bytes(40),
], ids=["bmp", "webp", "tiff", "gif"])
def test_other_formats_are_refused(data):
    with pytest.raises(InputError, match="neither PNG nor JPEG"):
        decode_image(data, apply_exif_orientation=True)


def test_a_png_declaring_no_pixels_is_refused():
    with pytest.raises(InputError, match=r"PNG image is empty \(0x7\)"):
        decode_image(png_claiming(0, 7), apply_exif_orientation=True)


def test_a_complete_png_with_broken_pixel_data_is_refused():
    with pytest.raises(InputError, match="could not be decoded"):
        decode_image(png_claiming(20, 20)[:33] + png_chunk(b"IDAT", b"not zlib") + png_chunk(b"IEND", b""),
                     apply_exif_orientation=True)


def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as file:  # sparse: takes no disk space
        file.truncate(image_io.MAX_IMAGE_FILE_BYTES + 1)
    with pytest.raises(InputError, match="larger than MAX_IMAGE_FILE_BYTES = 268435456 bytes"):
        read_image_file(path, apply_exif_orientation=True)


def test_a_file_whose_stat_size_is_zero_is_still_read_within_the_limit(monkeypatch):
    monkeypatch.setattr(image_io, "MAX_IMAGE_FILE_BYTES", 64)
    assert os.stat("/proc/self/maps").st_size == 0
    with pytest.raises(InputError, match="larger than MAX_IMAGE_FILE_BYTES = 64 bytes"):
        read_image_file("/proc/self/maps", apply_exif_orientation=True)
