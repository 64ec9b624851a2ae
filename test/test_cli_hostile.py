"""lens-segment run as a process on hostile command lines: each user error is exactly one stderr line
"lens-segment: error: ..." and exit code 2, raised before the model loads; argv bytes reach it as
the shell passes them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from image_fixtures import jpeg_bytes, jpeg_claiming, png_bytes, png_claiming, smooth_scene

from lens_model import image_io

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: bytes, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lens_model.cli", *args], capture_output=True, timeout=300,
                          cwd=REPO, env={**os.environ, **env})


def write(path: Path, data: bytes) -> bytes:
    path.write_bytes(data)
    return os.fsencode(path)


def fifo(path: Path) -> bytes:
    os.mkfifo(path)
    return os.fsencode(path)


def link_to_process_memory(path: Path) -> bytes:
    path.symlink_to("/proc/self/mem")
    return os.fsencode(path)


def sparse_file(path: Path, size: int) -> bytes:
    with open(path, "wb") as file:
        file.truncate(size)
    return os.fsencode(path)


# Each case: what replaces the defaults (None drops the option), and what the error line says.
CASES = {
    "query not UTF-8": (lambda d: {b"--query": b"\xff"}, "argument --query: not valid UTF-8 text"),
    "no query": (lambda d: {b"--query": None}, "the following arguments are required: --query"),
    "empty query": (lambda d: {b"--query": b"  "}, "query is empty"),
    "query too long": (lambda d: {b"--query": b"x" * 2001}, "query is 2001 characters long"),
    "max-new-tokens 0": (lambda d: {b"--max-new-tokens": b"0"}, "must be at least 1, got 0"),
    "max-new-tokens -5": (lambda d: {b"--max-new-tokens": b"-5"}, "must be at least 1, got -5"),
    "max-new-tokens abc": (lambda d: {b"--max-new-tokens": b"abc"}, "'abc' is not a whole number"),
    "unknown template": (lambda d: {b"--template": b"poem"}, "argument --template: invalid choice: 'poem'"),
    "device cuda:abc": (lambda d: {b"--device": b"cuda:abc"}, "device 'cuda:abc' is not one of cpu, cuda, mps"),
    "device tpu": (lambda d: {b"--device": b"tpu"}, "device 'tpu' is not one of cpu, cuda, mps"),
    "dtype int4": (lambda d: {b"--dtype": b"int4"}, "unknown dtype 'int4'"),
    "image missing": (lambda d: {b"--image": os.fsencode(d / "nope.png")}, "does not exist"),
    "image is a folder": (lambda d: {b"--image": os.fsencode(d)}, "is not a regular file"),
    "image is a FIFO": (lambda d: {b"--image": fifo(d / "fifo")}, "is not a regular file"),
    "image is /dev/zero": (lambda d: {b"--image": b"/dev/zero"}, "is not a regular file"),
    "image links to /proc/self/mem": (lambda d: {b"--image": link_to_process_memory(d / "mem.png")},
                                      "cannot read image"),
    "image is empty": (lambda d: {b"--image": write(d / "empty.png", b"")}, "image data is empty"),
    "image file over the size limit": (lambda d: {b"--image": sparse_file(d / "big.png",
                                                                          image_io.MAX_IMAGE_FILE_BYTES + 1)},
                                       "larger than MAX_IMAGE_FILE_BYTES"),
    "image is a BMP": (lambda d: {b"--image": write(d / "x.bmp", b"BM" + bytes(60))}, "neither PNG nor JPEG"),
    "truncated JPEG": (lambda d: {b"--image": write(d / "cut.jpg", jpeg_bytes(smooth_scene())[:-300])},
                       "JPEG is truncated"),
    "JPEG without EOI": (lambda d: {b"--image": write(d / "cut.jpg", jpeg_bytes(smooth_scene())[:-2])},
                         "JPEG is truncated"),
    "truncated PNG": (lambda d: {b"--image": write(d / "cut.png", png_bytes(smooth_scene())[:-100])},
                      "PNG is truncated"),
    "truncated JPEG, name not UTF-8": (lambda d: {b"--image": write(d / os.fsdecode(b"cut\xe9.jpg"),
                                                                    jpeg_bytes(smooth_scene())[:-2])},
                                       "cut\\xe9.jpg: JPEG is truncated"),
    "PNG header declaring 900 MP": (lambda d: {b"--image": write(d / "bomb.png", png_claiming(30_000, 30_000))},
                                    "over the pixel budget"),
    "JPEG header declaring 4.3 GP": (lambda d: {b"--image": write(d / "bomb.jpg", jpeg_claiming(65_535, 65_535))},
                                     "over the pixel budget"),
    "out is a file": (lambda d: {b"--out": write(d / "file", b"")}, "cannot create output folder"),
    "out inside a file": (lambda d: {b"--out": write(d / "file", b"") + b"/out"}, "Not a directory"),
    "out cannot be created": (lambda d: {b"--out": b"/proc/self/lens_out"}, "cannot create output folder"),
}


@pytest.mark.parametrize("case", CASES)
def test_hostile_input_is_one_error_line_and_exit_code_2(case, tmp_path):
    change, message = CASES[case]
    scene = tmp_path / "scene.png"
    scene.write_bytes(png_bytes(smooth_scene()))
    options = {b"--image": os.fsencode(scene), b"--query": b"the red square", b"--model": b"tiny-random",
               b"--out": os.fsencode(tmp_path / "out")}
    options.update(change(tmp_path))
    proc = run_cli(*[item for key, value in options.items() if value is not None for item in (key, value)])
    lines = proc.stderr.decode("utf-8", "backslashreplace").splitlines()
    assert proc.returncode == 2, lines
    assert len(lines) == 1 and lines[0].startswith("lens-segment: error: "), lines
    assert message in lines[0]


def test_paths_that_are_not_utf8_work_end_to_end(tmp_path):
    """Undecodable bytes in --image and --out are read and written, and shown escaped (stdout here
    is strict UTF-8, as in a desktop UTF-8 locale); OpenCV crashed on such paths."""
    image = write(tmp_path / os.fsdecode(b"sc\xe8ne.png"), png_bytes(smooth_scene()))
    out = os.fsencode(tmp_path) + b"/out\xff"
    proc = run_cli(b"--image", image, b"--query", b"the red square", b"--model", b"tiny-random", b"--out", out,
                   PYTHONIOENCODING="utf-8:strict")
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "backslashreplace")
    assert sorted(os.listdir(out)) == [b"instances.png", b"mask.png", b"overlay.png", b"result.json"]
    assert json.loads(open(out + b"/result.json", "rb").read())["image"] == f"{tmp_path}/sc\\xe8ne.png"
    assert f"to {tmp_path}/out\\xff (".encode() in proc.stdout
