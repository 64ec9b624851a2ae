"""Image conversions against the ROS 2 message definitions of rosbags, through CDR and back."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from image_fixtures import jpeg_bytes, jpeg_claiming, jpeg_with_orientation, png_claiming, refuse_to_decode
from ros_fixtures import KIT, TYPESTORE, image_msg, pattern_image, raw_image_msg

from lens_model.errors import InputError
from lens_ros.core import messages
from lens_ros.core.frames import Stamp
from lens_ros.core.image_codec import compressed_msg_to_rgb, encode_image, image_msg_to_rgb, mask_to_mono8

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"


def through_cdr(msg, msgtype: str = IMAGE):
    return TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(msg, msgtype), msgtype)


RGB = pattern_image(30, 40)
GREY = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)
ALPHA = np.full((30, 40, 1), 77, np.uint8)


@pytest.mark.parametrize("encoding, pixels, expected", [
    ("rgb8", RGB, RGB),
    ("bgr8", np.ascontiguousarray(RGB[..., ::-1]), RGB),
    ("rgba8", np.concatenate([RGB, ALPHA], axis=-1), RGB),
    ("bgra8", np.concatenate([RGB[..., ::-1], ALPHA], axis=-1), RGB),
    ("mono8", GREY, np.repeat(GREY[..., None], 3, axis=-1)),
    ("8UC1", GREY, np.repeat(GREY[..., None], 3, axis=-1)),
])
def test_eight_bit_encodings_decode_to_rgb(encoding, pixels, expected):
    decoded = image_msg_to_rgb(through_cdr(image_msg(pixels, encoding, 5.0)))
    assert decoded.dtype == np.uint8 and decoded.shape == (30, 40, 3)
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_sixteen_bit_images_are_scaled_by_their_maximum(encoding, big_endian):
    depth = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 7)
    data = depth.astype(">u2" if big_endian else "<u2").tobytes()
    msg = raw_image_msg(KIT, height=30, width=40, encoding=encoding, step=80, data=data)
    msg.is_bigendian = int(big_endian)
    decoded = image_msg_to_rgb(through_cdr(msg))
    expected = np.round(depth.astype(np.float64) * 255.0 / depth.max()).astype(np.uint8)
    np.testing.assert_array_equal(decoded[..., 0], expected)
    np.testing.assert_array_equal(decoded[..., 0], decoded[..., 2])


def test_all_zero_depth_image_decodes_to_black():
    msg = raw_image_msg(KIT, height=2, width=3, encoding="16UC1", step=6, data=bytes(12))
    assert not image_msg_to_rgb(msg).any()


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 9), width=st.integers(1, 9), padding=st.integers(0, 5),
       encoding=st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8", "mono8"]), seed=st.integers(0, 2**16))
def test_rows_padded_beyond_the_pixels_are_ignored(height, width, padding, encoding, seed):
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}[encoding]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    row = width * channels
    padded = np.zeros((height, row + padding), np.uint8)
    padded[:, :row] = pixels.reshape(height, row)
    padded[:, row:] = 0xAB
    msg = raw_image_msg(KIT, height=height, width=width, encoding=encoding, step=row + padding, data=padded.tobytes())
    unpadded = image_msg(pixels if channels > 1 else pixels[..., 0], encoding, 1.0)
    np.testing.assert_array_equal(image_msg_to_rgb(through_cdr(msg)), image_msg_to_rgb(unpadded))


@pytest.mark.parametrize("fields, message", [
    (dict(height=0, width=4, encoding="rgb8", step=12, data=b""), "image is empty (4x0)"),
    (dict(height=2, width=0, encoding="rgb8", step=0, data=b""), "image is empty (0x2)"),
    (dict(height=2, width=4, encoding="rgb8", step=12, data=bytes(23)),
     "image data is truncated: 23 bytes, expected step*height = 12*2 = 24"),
    (dict(height=2, width=4, encoding="rgb8", step=12, data=bytes(30)), "image data is too long: 30 bytes"),
    (dict(height=2, width=4, encoding="rgb8", step=8, data=bytes(16)),
     "image step 8 does not fit width 4 with encoding rgb8 (each row needs 12 bytes)"),
    (dict(height=2, width=4, encoding="16UC1", step=9, data=bytes(18)), "image step 9 does not fit width 4"),
    (dict(height=2, width=4, encoding="yuv422", step=8, data=bytes(16)), "unsupported image encoding 'yuv422'"),
    (dict(height=2, width=4, encoding="32FC1", step=16, data=bytes(32)), "supported: rgb8, bgr8"),
])
def test_inconsistent_images_raise_input_error(fields, message):
    with pytest.raises(InputError) as info:
        image_msg_to_rgb(through_cdr(raw_image_msg(KIT, **fields)))
    assert message in str(info.value)


def compressed_msg(data: bytes, fmt: str):
    hdr = messages.header(KIT, Stamp(1, 0), "camera")
    return through_cdr(KIT.CompressedImage(header=hdr, format=fmt, data=KIT.uint8_sequence(data)), COMPRESSED)


def test_png_compressed_image_decodes_exactly():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(compressed_msg_to_rgb(compressed_msg(png.tobytes(), "png")), RGB)


def test_jpeg_compressed_image_decodes_close_to_the_original():
    smooth = np.dstack([np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))] * 3)
    ok, jpeg = cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    decoded = compressed_msg_to_rgb(compressed_msg(jpeg.tobytes(), "rgb8; jpeg compressed bgr8"))
    assert decoded.shape == (30, 40, 3)
    assert np.abs(decoded.astype(int) - smooth).mean() < 3


@pytest.mark.parametrize("data, fmt, message", [
    (b"", "jpeg", "cannot decode compressed image (format 'jpeg', 0 bytes): image data is empty"),
    (b"definitely not an image", "jpeg", "cannot decode compressed image (format 'jpeg', 23 bytes)"),
    (b"\x00" * 20, "16UC1; compressedDepth png", "compressedDepth) is not supported"),
])
def test_bad_compressed_images_raise_input_error(data, fmt, message):
    with pytest.raises(InputError) as info:
        compressed_msg_to_rgb(compressed_msg(data, fmt))
    assert message in str(info.value)


@pytest.mark.parametrize("data", [png_claiming(30_000, 30_000), jpeg_claiming(65_535, 65_535)], ids=["png", "jpeg"])
def test_compressed_images_over_the_pixel_budget_are_refused_before_decoding(data, monkeypatch):
    monkeypatch.setattr(cv2, "imdecode", refuse_to_decode)
    with pytest.raises(InputError, match="over the pixel budget of 50 MP"):
        compressed_msg_to_rgb(compressed_msg(data, "png"))


def test_a_truncated_compressed_jpeg_is_refused():
    data = jpeg_bytes(RGB)
    with pytest.raises(InputError, match="JPEG is truncated"):
        compressed_msg_to_rgb(compressed_msg(data[:-2], "jpeg"))


def test_compressed_images_keep_the_camera_pixel_grid_whatever_their_exif_orientation():
    decoded = compressed_msg_to_rgb(compressed_msg(jpeg_with_orientation(RGB, 6), "jpeg"))
    assert decoded.shape == RGB.shape
    assert np.abs(decoded.astype(int) - RGB).mean() < 3


class UnreadImage:
    """A raw image over the pixel budget whose pixel data must not be touched."""

    height, width, step, encoding, is_bigendian = 5_001, 10_000, 10_000, "mono8", 0

    @property
    def data(self):
        raise AssertionError("the pixel data was read for an image over the pixel budget")


def test_raw_images_over_the_pixel_budget_are_refused_before_their_data_is_read():
    with pytest.raises(InputError, match="10000x5001 = 50.0 MP is over the pixel budget of 50 MP"):
        image_msg_to_rgb(UnreadImage())


def test_mask_becomes_mono8_zero_and_255_of_frame_size():
    mask = np.zeros((30, 40), bool)
    mask[5:10, 7:20] = True
    msg = through_cdr(messages.image(KIT, messages.header(KIT, Stamp(3, 4), "cam"),
                                     encode_image(mask_to_mono8(mask), "mono8")))
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("mono8", 30, 40, 40)
    pixels = np.asarray(msg.data).reshape(30, 40)
    assert set(np.unique(pixels)) == {0, 255}
    np.testing.assert_array_equal(pixels == 255, mask)


def test_encode_image_refuses_arrays_that_do_not_match_the_encoding():
    with pytest.raises(ValueError, match="does not match encoding rgb8"):
        encode_image(np.zeros((4, 4), np.uint8), "rgb8")
    with pytest.raises(ValueError, match="dtype uint16 does not match"):
        encode_image(np.zeros((4, 4), np.uint16), "mono8")
