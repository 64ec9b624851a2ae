"""Conversions between sensor_msgs images and numpy arrays, in plain numpy and OpenCV.

No cv_bridge: messages are read and written by field name (``height``, ``width``, ``encoding``,
``is_bigendian``, ``step``, ``data``), so rclpy, CycloneDDS and rosbags messages all work.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from lens_model.errors import InputError
from lens_model.image_io import check_pixel_budget, decode_image


@dataclass(frozen=True)
class PixelLayout:
    channels: int
    dtype: np.dtype


LAYOUTS: dict[str, PixelLayout] = {
    "rgb8": PixelLayout(3, np.dtype(np.uint8)),
    "bgr8": PixelLayout(3, np.dtype(np.uint8)),
    "rgba8": PixelLayout(4, np.dtype(np.uint8)),
    "bgra8": PixelLayout(4, np.dtype(np.uint8)),
    "mono8": PixelLayout(1, np.dtype(np.uint8)),
    "8UC1": PixelLayout(1, np.dtype(np.uint8)),
    "mono16": PixelLayout(1, np.dtype(np.uint16)),
    "16UC1": PixelLayout(1, np.dtype(np.uint16)),
}
SUPPORTED_ENCODINGS = tuple(LAYOUTS)

_TO_RGB = {
    "rgb8": None,
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "8UC1": cv2.COLOR_GRAY2RGB,
}


def as_uint8_buffer(data: Any) -> np.ndarray:
    """View a message ``data`` field (bytes, array.array or ndarray) as a flat uint8 array, without copying."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def image_msg_to_array(msg: Any) -> np.ndarray:
    """The pixels of a sensor_msgs/Image as an H x W (x C) array in the message's own encoding."""
    encoding = msg.encoding
    layout = LAYOUTS.get(encoding)
    if layout is None:
        raise InputError(f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise InputError(f"image is empty ({width}x{height})")
    check_pixel_budget(width, height)
    row_bytes = width * layout.channels * layout.dtype.itemsize
    if step < row_bytes or step % layout.dtype.itemsize:
        raise InputError(
            f"image step {step} does not fit width {width} with encoding {encoding} "
            f"(each row needs {row_bytes} bytes)")
    data = as_uint8_buffer(msg.data)
    if data.size != step * height:
        kind = "truncated" if data.size < step * height else "too long"
        raise InputError(
            f"image data is {kind}: {data.size} bytes, expected step*height = {step}*{height} = {step * height}")
    rows = data.reshape(height, step)[:, :row_bytes]
    pixels = np.ascontiguousarray(rows).view(layout.dtype)
    if layout.dtype.itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == "big"):
        pixels = pixels.byteswap()
    shape = (height, width) if layout.channels == 1 else (height, width, layout.channels)
    return pixels.reshape(shape)


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/Image to H x W x 3 uint8 RGB, the model's input.

    16-bit images (depth, thermal) are scaled by their maximum into 8 bits and shown as grey.
    """
    pixels = image_msg_to_array(msg)
    if pixels.dtype == np.uint16:
        peak = int(pixels.max())
        scaled = (pixels.astype(np.float32) * (255.0 / peak)).round() if peak else np.zeros(pixels.shape, np.float32)
        return cv2.cvtColor(scaled.astype(np.uint8), cv2.COLOR_GRAY2RGB)
    code = _TO_RGB[msg.encoding]
    return np.ascontiguousarray(pixels) if code is None else cv2.cvtColor(pixels, code)


def compressed_msg_to_rgb(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG) to RGB with ``lens_model.image_io.decode_image``:
    the size is checked against the pixel budget from the header, truncated data is refused.

    The EXIF orientation tag is ignored: the pixels keep the camera's grid, as in a raw Image and
    its camera_info, so masks and boxes are in the same frame whichever transport carried them.
    """
    fmt = str(msg.format)
    if "compressedDepth" in fmt:
        raise InputError(
            f"compressed image format {fmt!r} (compressedDepth) is not supported; publish raw 16UC1 instead")
    data = as_uint8_buffer(msg.data)
    try:
        return decode_image(data, apply_exif_orientation=False)
    except InputError as exc:
        raise InputError(f"cannot decode compressed image (format {fmt!r}, {data.size} bytes): {exc}") from None


@dataclass(frozen=True)
class EncodedImage:
    """The pixel fields of a sensor_msgs/Image, ready to be put into a message."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


def encode_image(pixels: np.ndarray, encoding: str) -> EncodedImage:
    """Pack an H x W (x C) array whose layout already matches ``encoding`` (no colour conversion)."""
    layout = LAYOUTS.get(encoding)
    if layout is None:
        raise ValueError(f"cannot encode {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    expected_ndim = 2 if layout.channels == 1 else 3
    if pixels.ndim != expected_ndim or (layout.channels > 1 and pixels.shape[2] != layout.channels):
        raise ValueError(f"array of shape {pixels.shape} does not match encoding {encoding}")
    if pixels.dtype != layout.dtype:
        raise ValueError(f"array dtype {pixels.dtype} does not match encoding {encoding} ({layout.dtype})")
    height, width = pixels.shape[:2]
    return EncodedImage(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(sys.byteorder == "big" and layout.dtype.itemsize > 1),
        step=width * layout.channels * layout.dtype.itemsize,
        data=np.ascontiguousarray(pixels).tobytes(),
    )


def mask_to_mono8(mask: np.ndarray) -> np.ndarray:
    """Boolean mask -> mono8 pixels, 0 background and 255 target."""
    return np.where(mask, np.uint8(255), np.uint8(0))
