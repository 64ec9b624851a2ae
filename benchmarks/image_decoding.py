"""Peak memory and time of decoding images through lens_model.image_io, bombs and images at the pixel budget.

    python -m benchmarks.image_decoding [--unchecked]

Each case runs in a fresh process and prints how far its peak resident memory (VmHWM, reset
through /proc/self/clear_refs) rose over its resident memory just before decoding, and the decode
time (Linux only). Bombs: PNG and JPEG headers
declaring far more than ``MAX_IMAGE_PIXELS``, and a PNG whose small zlib stream really fills a
12000 x 12000 image. ``--unchecked`` also decodes that PNG with a bare ``cv2.imdecode``, as the
node and the CLI did before the header check (it allocates about 1 GB).
"""
from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np

from lens_model.image_io import MAX_IMAGE_PIXELS

MEASURE = """
import sys, time
import cv2, numpy as np
from lens_model.errors import InputError
from lens_model.image_io import decode_image

def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

data = open(sys.argv[1], "rb").read()
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # resets the peak (VmHWM) to the current resident size
before = status_kb("VmRSS")
start = time.perf_counter()
try:
    if sys.argv[2] == "unchecked":
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        outcome = "no image" if pixels is None else "decoded %dx%d" % (pixels.shape[1], pixels.shape[0])
    else:
        pixels = decode_image(data, apply_exif_orientation=False)
        outcome = "decoded %dx%d" % (pixels.shape[1], pixels.shape[0])
except InputError as exc:
    outcome = "refused: " + str(exc)[:60]
elapsed = time.perf_counter() - start
grown = status_kb("VmHWM") - before
print("%.1f\\t%.3f\\t%s" % (grown / 1024, elapsed, outcome))
"""


def png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zero_rows(width: int, height: int) -> bytes:
    """The zlib stream of ``height`` filter-0 rows of black RGB, compressed row by row."""
    packer = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    return b"".join(packer.compress(row) for _ in range(height)) + packer.flush()


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def photo_like(width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 64 + 1, width // 64 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def cases(unchecked: bool) -> list[tuple[str, bytes, str]]:
    filled = png(12_000, 12_000, zero_rows(12_000, 12_000))
    budget_side = int(MAX_IMAGE_PIXELS ** 0.5)
    found = [
        ("PNG header declaring 30000x30000", png(30_000, 30_000, zlib.compress(bytes(64))), "checked"),
        ("JPEG header declaring 65535x65535", jpeg_claiming(65_535, 65_535), "checked"),
        ("PNG filling 12000x12000 with zeros", filled, "checked"),
        ("8K UHD JPEG, 7680x4320", cv2.imencode(".jpg", photo_like(7680, 4320))[1].tobytes(), "checked"),
        (f"PNG at the budget, {budget_side}x{budget_side}",
         cv2.imencode(".png", photo_like(budget_side, budget_side))[1].tobytes(), "checked"),
    ]
    if unchecked:
        found.append(("PNG filling 12000x12000, bare cv2.imdecode", filled, "unchecked"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unchecked", action="store_true", help="also decode the filled PNG without the check")
    args = parser.parse_args()
    print(f"MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}")
    print(f"{'case':48} {'file':>10} {'peak rise':>10} {'time':>8}  outcome")
    with tempfile.TemporaryDirectory() as folder:
        for name, data, mode in cases(args.unchecked):
            path = Path(folder) / "image"
            path.write_bytes(data)
            out = subprocess.run([sys.executable, "-c", MEASURE, str(path), mode], capture_output=True, text=True,
                                 check=True).stdout.strip()
            grown_mb, seconds, outcome = out.split("\t")
            print(f"{name:48} {len(data) / 2**20:7.3f}MiB {float(grown_mb):7.1f}MiB {float(seconds):7.3f}s  {outcome}")


if __name__ == "__main__":
    main()
