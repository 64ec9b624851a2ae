"""Decoding image files into RGB arrays, turning every failure into a ``BrokenEntry``.

An image (or PNG mask) whose header declares more than ``MAX_IMAGE_PIXELS`` is refused before its
pixels are decoded, so a small compressed file cannot make a data loader allocate gigabytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lens_model.image_io import MAX_IMAGE_PIXELS  # the one pixel budget of the CLI, the node and the data
from training.data.skips import BrokenEntry

# Truncated files, unknown formats, decompression bombs and bad headers all surface as one of these:
# the exceptions Pillow's own fuzz tests accept from a corrupt file, except MemoryError (within the
# pixel budget, that is a real shortage).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, NotImplementedError, OverflowError, Image.DecompressionBombError)


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB as stored in the file.

    EXIF orientation is not applied: COCO masks and ``PIL.Image.open`` (what Qwen's processor sees)
    both use the stored pixel grid.
    """
    if not path.is_file():
        raise BrokenEntry("missing image", str(path))
    try:
        with Image.open(path) as image:
            check_pixel_budget(image, path, "image")
            return np.array(image.convert("RGB"))
    except DECODE_ERRORS as error:
        raise BrokenEntry("undecodable image", f"{path}: {error}") from error


def check_pixel_budget(image: Image.Image, path: Path, what: str) -> None:
    """Refuse an opened (header read, pixels not yet decoded) image of more than ``MAX_IMAGE_PIXELS``."""
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise BrokenEntry(f"{what} too large", f"{path}: {image.width}x{image.height} is over {MAX_IMAGE_PIXELS:,} pixels")
