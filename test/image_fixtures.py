"""Encoded test images: ordinary PNG and JPEG, and crafted ones whose header lies about their size."""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
from PIL import Image

from model_fixtures import scene


def smooth_scene(height: int = 48, width: int = 64) -> np.ndarray:
    """RGB with gradients and edges (compresses like a photo, unlike noise)."""
    return cv2.GaussianBlur(scene(height, width), (5, 5), 2)


def png_bytes(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def jpeg_bytes(rgb: np.ndarray, progressive: bool = False) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)[1].tobytes()


def jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF orientation tag asks viewers to rotate or flip the stored pixels."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG (valid CRCs, IEND) declaring width x height RGB, with a tiny IDAT: a
    decoder would allocate the whole declared image before finding the data short."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(bytes(64)))
            + png_chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    data = bytearray(jpeg_bytes(smooth_scene(16, 16)))
    sof = data.index(b"\xff\xc0")  # cv2's baseline JPEG: APP0, DQT, then SOF0 (no 0xFFC0 inside them)
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def refuse_to_decode(*args, **kwargs):
    """Stands in for cv2.imdecode where an image must be refused from its header alone."""
    raise AssertionError("the decoder ran on an image that should have been refused from its header")


def write_video(path, frames: list[np.ndarray], fourcc: str = "FFV1", fps: float = 10.0) -> None:
    """RGB frames into a video file. FFV1 (in .mkv) is lossless, so a frame's pixels, markers included,
    decode exactly; mp4v (in .mp4) is what most users have."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} here"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
