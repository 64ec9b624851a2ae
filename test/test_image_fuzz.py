"""Property tests of the image codecs on arbitrary and damaged input.

Each returns an H x W x 3 uint8 array of the size the image declares, or raises InputError; no
other exception, and the decoder never runs on an image that an independent header parser (PIL's)
sees as over the pixel budget.
"""
from __future__ import annotations

import io
from contextlib import contextmanager
from types import SimpleNamespace
from unittest import mock

import cv2
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from image_fixtures import jpeg_bytes, jpeg_with_orientation, png_bytes, smooth_scene
from PIL import Image

from lens_model.errors import InputError
from lens_model.image_io import MAX_IMAGE_PIXELS, decode_image, probe
from lens_ros.core.image_codec import LAYOUTS, compressed_msg_to_rgb, image_msg_to_rgb

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None)
RGB = smooth_scene(24, 32)
SEEDS = [png_bytes(RGB), jpeg_bytes(RGB), jpeg_bytes(RGB, progressive=True), jpeg_with_orientation(RGB, 6),
         cv2.imencode(".jpg", RGB, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes()]


@contextmanager
def decoder_checked_against_pil():
    """cv2.imdecode, failing the test if PIL reads a size over the budget from what it is given."""
    real = cv2.imdecode

    def imdecode(buffer, flags):
        try:
            with Image.open(io.BytesIO(buffer.tobytes()), formats=["PNG", "JPEG"]) as image:
                width, height = image.size
        except Image.DecompressionBombError:
            raise AssertionError("the decoder ran on a decompression bomb") from None
        except Exception:  # PIL cannot read this header either: nothing to compare with
            return real(buffer, flags)
        assert width * height <= MAX_IMAGE_PIXELS, f"the decoder ran on a {width}x{height} image"
        return real(buffer, flags)

    with mock.patch.object(cv2, "imdecode", imdecode):
        yield


def decoded_or_refused(decode, data: bytes) -> np.ndarray | None:
    with decoder_checked_against_pil():
        try:
            image = decode(data)
        except InputError:
            return None
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    return image


@st.composite
def damaged(draw) -> bytes:
    """A valid PNG or JPEG with a few bytes flipped, overwritten, deleted or inserted, or cut short."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "flip", "set", "delete", "insert", "truncate"]))
        if action == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0xD9, 0xDA, 0xC0, 0x7F]))
        elif action == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[pos:]
        if not data:
            break
    return bytes(data)


arbitrary_bytes = st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=2048).map(lambda tail: b"\x89PNG\r\n\x1a\n" + tail),
    st.binary(max_size=2048).map(lambda tail: b"\xff\xd8" + tail),
)


def compressed(data: bytes) -> SimpleNamespace:
    return SimpleNamespace(format="jpeg", data=data)


@FUZZ
@given(data=st.one_of(damaged(), arbitrary_bytes))
def test_compressed_images_decode_to_their_declared_size_or_raise_input_error(data):
    image = decoded_or_refused(lambda d: compressed_msg_to_rgb(compressed(d)), data)
    if image is not None:
        header = probe(data)
        assert image.shape == (header.height, header.width, 3)  # EXIF orientation is not applied


@FUZZ
@given(data=damaged())
def test_files_decode_to_their_declared_size_in_either_orientation_or_raise_input_error(data):
    image = decoded_or_refused(lambda d: decode_image(d, apply_exif_orientation=True), data)
    if image is not None:
        header = probe(data)
        assert image.shape[:2] in ((header.height, header.width), (header.width, header.height))


sizes = st.one_of(st.integers(0, 12), st.integers(0, 2**32 - 1))


@st.composite
def raw_images(draw) -> SimpleNamespace:
    """sensor_msgs/Image fields: mostly consistent ones, some with any step, size or data length."""
    encoding = draw(st.one_of(st.sampled_from(sorted(LAYOUTS)), st.text(max_size=6)))
    layout = LAYOUTS.get(encoding)
    if layout is not None and draw(st.booleans()):
        height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        step = width * layout.channels * layout.dtype.itemsize + draw(st.integers(0, 3))
        length = step * height + draw(st.sampled_from([0, 0, 0, -1, 1]))
    else:
        height, width, step, length = draw(sizes), draw(sizes), draw(sizes), draw(st.integers(0, 600))
    data = draw(st.binary(min_size=max(length, 0), max_size=max(length, 0)))
    return SimpleNamespace(height=height, width=width, step=step, encoding=encoding,
                           is_bigendian=draw(st.integers(0, 1)), data=data)


@FUZZ
@given(msg=raw_images())
def test_raw_images_decode_to_their_declared_size_or_raise_input_error(msg):
    try:
        image = image_msg_to_rgb(msg)
    except InputError:
        return
    assert image.dtype == np.uint8 and image.shape == (msg.height, msg.width, 3)
