"""Decoding image files into RGB arrays, turning every failure into a ``BrokenEntry``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from training.data.skips import BrokenEntry

# Truncated files, unknown formats, decompression bombs and bad headers all surface as one of these.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB as stored in the file.

    EXIF orientation is not applied: COCO masks and ``PIL.Image.open`` (what Qwen's processor sees)
    both use the stored pixel grid.
    """
    if not path.is_file():
        raise BrokenEntry("missing image", str(path))
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except DECODE_ERRORS as error:
        raise BrokenEntry("undecodable image", f"{path}: {error}") from error
