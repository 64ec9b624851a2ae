"""Reading untrusted PNG and JPEG images: size and completeness checked from the file's structure, then decoded.

Only PNG and JPEG are read. Their structure is walked here, without decoding any pixels, so that

* an image whose header declares more than ``MAX_IMAGE_PIXELS`` is refused before the decoder
  allocates anything (a PNG of 69 bytes can declare 30000 x 30000 pixels, under OpenCV's own
  limit of 1 GP, and deflate packs up to about 1000 zero bytes into one);
* a truncated file (no PNG ``IEND`` or JPEG ``EOI``, a chunk or segment cut short) or a PNG chunk
  whose CRC does not match is refused, where OpenCV's file reader fills a truncated JPEG with grey;
* anything that is not PNG or JPEG is refused, which keeps OpenCV's other decoders (TIFF,
  JPEG 2000, OpenEXR, ...) away from untrusted bytes.

The walk is strict where decoders are lenient (no stray bytes between JPEG segments, one frame
header), so the size it reads is the size the decoder will allocate. The pixels are then decoded
by OpenCV, exactly as ``cv2.imread``/``cv2.imdecode`` did before. JPEG has no checksum over its
compressed data, so flipped bits inside it decode to wrong pixels rather than an error.
"""
from __future__ import annotations

import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from typing import Union

import cv2
import numpy as np

from lens_model.errors import InputError

# width * height. 50 MP covers 8K UHD (7680 x 4320 = 33.2 MP) and 48 MP phone photos (8000 x 6000);
# its RGB image is 150 MB (benchmarks/image_decoding.py measures the decoder's peak).
MAX_IMAGE_PIXELS = 50_000_000
# An image file is read whole into memory; no PNG or JPEG of at most 50 MP legitimately needs more.
MAX_IMAGE_FILE_BYTES = 256 * 2**20
# Each scan of a progressive JPEG is decoded over the whole image, so a small file of many tiny scans
# costs CPU without bound; encoders write about 10. libjpeg-turbo's own fuzzers set its scan limit
# (TJPARAM_SCANLIMIT, which OpenCV does not set) to 500.
MAX_JPEG_SCANS = 500

BytesLike = Union[bytes, bytearray, memoryview, np.ndarray]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHUNK_HEAD = struct.Struct(">I4s")
_PNG_MAX_CHUNK = 2**31 - 1
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = 0xD9
_JPEG_SOS = 0xDA
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC are not frames
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length
# The end of a scan's entropy-coded data: 0xFF followed by a marker code, i.e. not a stuffed 0x00,
# not a restart marker inside the scan, not another fill byte.
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")
_JPEG_FILL = re.compile(rb"\xff*")


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "PNG" or "JPEG"
    width: int
    height: int


def check_pixel_budget(width: int, height: int) -> None:
    """Refuse an image of more than ``MAX_IMAGE_PIXELS``, before anything of its size is allocated."""
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"image of {width}x{height} = {width * height / 1e6:.1f} MP is over the pixel budget "
                         f"of {MAX_IMAGE_PIXELS / 1e6:.0f} MP (MAX_IMAGE_PIXELS)")


def probe(data: BytesLike) -> ImageHeader:
    """Format and size of a complete PNG or JPEG, from its structure alone (no pixel is decoded)."""
    view = _byte_view(data)
    if len(view) == 0:
        raise InputError("image data is empty")
    if view[:len(_PNG_SIGNATURE)] == _PNG_SIGNATURE:
        width, height = _png_size(view)
        return ImageHeader("PNG", width, height)
    if view[:2] == _JPEG_SOI:
        width, height = _jpeg_size(view)
        return ImageHeader("JPEG", width, height)
    raise InputError("image is neither PNG nor JPEG (the only formats read); convert it to one of them")


def decode_image(data: BytesLike, *, apply_exif_orientation: bool) -> np.ndarray:
    """Decode a PNG or JPEG to H x W x 3 uint8 RGB after :func:`probe` and the pixel budget accept it.

    ``apply_exif_orientation``: True rotates and flips a JPEG by its EXIF orientation tag, as
    ``cv2.imread`` does and photo viewers show it; False keeps the stored pixel grid.
    Raises :class:`InputError` for anything that is not a complete, decodable PNG or JPEG.
    """
    view = _byte_view(data)
    header = probe(view)
    if header.width == 0 or header.height == 0:
        raise InputError(f"{header.format} image is empty ({header.width}x{header.height})")
    check_pixel_budget(header.width, header.height)
    flags = cv2.IMREAD_COLOR if apply_exif_orientation else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imdecode(np.frombuffer(view, np.uint8), flags)
    if pixels is None:
        raise InputError(f"{header.format} image could not be decoded (corrupt data)")
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels)  # in place: one image-sized buffer, not two


def read_image_file(path: str | os.PathLike[str], *, apply_exif_orientation: bool) -> np.ndarray:
    """Read a PNG or JPEG file and decode it with :func:`decode_image`.

    Only a regular file of at most ``MAX_IMAGE_FILE_BYTES`` is read; a directory, FIFO or device is
    refused without blocking or reading it. Every failure is an :class:`InputError` naming the file.
    """
    shown = display_path(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it has no effect on regular files).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"image {shown} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot open image {shown}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"image {shown} is not a regular file")
        data = None if info.st_size > MAX_IMAGE_FILE_BYTES else _read_at_most(fd, MAX_IMAGE_FILE_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read image {shown}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if data is None:
        raise InputError(f"image {shown} is larger than MAX_IMAGE_FILE_BYTES = {MAX_IMAGE_FILE_BYTES} bytes")
    try:
        return decode_image(data, apply_exif_orientation=apply_exif_orientation)
    except InputError as exc:
        raise InputError(f"image {shown}: {exc}") from None


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image (grey, or BGR as OpenCV stores colour)."""
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise OSError("could not encode a PNG")
    return encoded.tobytes()


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as text any terminal or JSON reader takes: bytes that are not UTF-8 become \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _read_at_most(fd: int, limit: int) -> bytearray | None:
    """The whole file, or None once it proves longer than ``limit`` (stat sizes can be 0, as in /proc)."""
    data = bytearray()
    while chunk := os.read(fd, min(2**24, limit + 1 - len(data))):
        data += chunk
        if len(data) > limit:
            return None
    return data


def _byte_view(data: BytesLike) -> memoryview:
    return memoryview(data).cast("B")


def _png_size(view: memoryview) -> tuple[int, int]:
    """(width, height) from IHDR, after checking every chunk's length and CRC up to IEND."""
    pos, size = len(_PNG_SIGNATURE), None
    while True:
        if pos + _PNG_CHUNK_HEAD.size > len(view):
            raise InputError("PNG is truncated (it ends before its IEND chunk)")
        length, kind = _PNG_CHUNK_HEAD.unpack_from(view, pos)
        name = kind.decode("latin-1")
        body = pos + _PNG_CHUNK_HEAD.size
        end = body + length + 4
        if length > _PNG_MAX_CHUNK:
            raise InputError(f"PNG is corrupt: chunk {name!r} at byte {pos} declares {length} bytes")
        if end > len(view):
            raise InputError(f"PNG is truncated (chunk {name!r} at byte {pos} runs past the end of the data)")
        if zlib.crc32(view[pos + 4:body + length]) != int.from_bytes(view[body + length:end], "big"):
            raise InputError(f"PNG is corrupt: chunk {name!r} at byte {pos} fails its CRC check")
        if size is None:
            if kind != b"IHDR" or length != 13:
                raise InputError("PNG is corrupt: it does not start with an IHDR chunk")
            size = struct.unpack_from(">II", view, body)
        elif kind == b"IEND":
            return size
        pos = end


def _jpeg_size(view: memoryview) -> tuple[int, int]:
    """(width, height) from the frame header, after walking every segment and scan up to EOI."""
    pos, size, scans = len(_JPEG_SOI), None, 0
    while True:
        marker, pos = _jpeg_marker(view, pos)
        if marker == _JPEG_EOI:
            if size is None or scans == 0:
                raise InputError("JPEG is corrupt: it ends without a frame header and a scan")
            return size
        if marker in _JPEG_STANDALONE:
            continue
        if pos + 2 > len(view):
            raise InputError("JPEG is truncated (it ends inside a segment header)")
        length = int.from_bytes(view[pos:pos + 2], "big")
        end = pos + length
        if length < 2:
            raise InputError(f"JPEG is corrupt: segment 0xFF{marker:02X} at byte {pos - 2} has length {length}")
        if end > len(view):
            raise InputError(f"JPEG is truncated (segment 0xFF{marker:02X} at byte {pos - 2} runs past the end)")
        if marker in _JPEG_SOF:
            if size is not None:
                raise InputError("JPEG is corrupt: it has more than one frame header")
            if length < 8:
                raise InputError(f"JPEG is corrupt: frame header of {length} bytes")
            height, width = struct.unpack_from(">HH", view, pos + 3)
            size = (width, height)
        elif marker == _JPEG_SOS:
            if size is None:
                raise InputError("JPEG is corrupt: a scan comes before the frame header")
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise InputError(f"JPEG has more than {MAX_JPEG_SCANS} scans (MAX_JPEG_SCANS)")
            scan_end = _JPEG_SCAN_END.search(view, end)
            if scan_end is None:
                raise InputError("JPEG is truncated (it ends inside its compressed data, before the EOI marker)")
            end = scan_end.start()
        pos = end


def _jpeg_marker(view: memoryview, pos: int) -> tuple[int, int]:
    """The marker code at ``pos`` (0xFF, optional 0xFF fill bytes, code) and the position after it."""
    found = _JPEG_MARKER.match(view, pos)
    if found is not None:
        return found.group(1)[0], found.end()
    if _JPEG_FILL.fullmatch(view, pos):
        raise InputError("JPEG is truncated (it ends before its EOI marker)")
    raise InputError(f"JPEG is corrupt: no marker at byte {pos}")
