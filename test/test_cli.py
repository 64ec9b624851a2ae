"""lens-segment: outputs on success, replaced only all together, one clear line and exit code 2 on user errors."""
import errno
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from image_fixtures import png_claiming, refuse_to_decode
from model_fixtures import scene
from ros_fixtures import FakeSegmenter

from lens_model import cli, staged_outputs
from lens_model.cli import main
from lens_model.visualize import BOX_COLOUR

OUTPUTS = ("mask.png", "instances.png", "overlay.png", "result.json")


@pytest.fixture()
def image_file(tmp_path):
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), scene(90, 140)[:, :, ::-1])
    return path


def plant_earlier_outputs(out):
    out.mkdir(exist_ok=True)
    for name in OUTPUTS:
        (out / name).write_bytes(f"an earlier good {name}".encode())


def assert_earlier_outputs_untouched(out):
    assert sorted(os.listdir(out)) == sorted(OUTPUTS)  # and no staging folder left behind
    for name in OUTPUTS:
        assert (out / name).read_bytes() == f"an earlier good {name}".encode()


def test_success_writes_mask_overlay_and_json(image_file, tmp_path, capsys):
    out = tmp_path / "out"
    plant_earlier_outputs(out)
    code = main(["--image", str(image_file), "--query", "the red square", "--model", "tiny-random", "--out", str(out)])
    assert code == 0
    assert sorted(os.listdir(out)) == sorted(OUTPUTS)
    mask = cv2.imread(str(out / "mask.png"), cv2.IMREAD_UNCHANGED)
    overlay = cv2.imread(str(out / "overlay.png"))
    assert mask.shape == (90, 140) and set(np.unique(mask)) <= {0, 255}
    assert overlay.shape == (90, 140, 3)
    result = json.loads((out / "result.json").read_text())
    for key in ("query", "box", "score", "label", "reasoning", "answer", "timings_ms"):
        assert key in result
    assert result["random_weights"] is True and result["status"] in ("ok", "no_target", "no_box")
    instances = cv2.imread(str(out / "instances.png"), cv2.IMREAD_UNCHANGED)
    assert instances.shape == (90, 140) and instances.dtype == np.uint8
    assert not instances[mask == 0].any() and set(np.unique(instances)) <= set(range(len(result["instances"]) + 1))
    assert "RANDOM weights" in capsys.readouterr().err


class TimedFake(FakeSegmenter):
    """FakeSegmenter with the predictor's total time, as lens-segment prints it."""

    def predict(self, image_rgb, query, *, template=None, max_new_tokens=None):
        result = super().predict(image_rgb, query, template=template, max_new_tokens=max_new_tokens)
        result.timings_ms["total"] = 3.0
        return result


def run_with_fake(behaviour, image_file, out, monkeypatch):
    monkeypatch.setattr(cli, "_load", lambda args, dtype: TimedFake(behaviour))
    assert main(["--image", str(image_file), "--query", "the things", "--out", str(out)]) == 0
    return json.loads((out / "result.json").read_text()), cv2.imread(str(out / "instances.png"), cv2.IMREAD_UNCHANGED)


def test_every_instance_is_written_listed_and_printed(image_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    result, instances = run_with_fake("multi", image_file, out, monkeypatch)
    assert result["status"] == "ok" and [i["label"] for i in result["instances"]] == ["thing", "other thing"]
    assert [i["box"] for i in result["instances"]] == [[0, 0, 70, 45], [70, 45, 140, 90]]
    assert result["box"] == [0, 0, 70, 45] and result["mask_area"] == 2 * 45 * 70
    assert (instances[:45, :70] == 1).all() and (instances[45:, 70:] == 2).all()
    assert (instances[:45, 70:] == 0).all() and (instances[45:, :70] == 0).all()
    overlay = cv2.imread(str(out / "overlay.png"))[:, :, ::-1]
    assert overlay[44, 69].tolist() == overlay[89, 139].tolist() == list(BOX_COLOUR)  # both boxes' corners
    printed = capsys.readouterr().out
    assert "status: ok, 2 instances" in printed
    assert "instance 2: box [70.0, 45.0, 140.0, 90.0], label other thing, score 0.500" in printed


def test_no_target_writes_empty_masks_and_says_so(image_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    result, instances = run_with_fake("no_target", image_file, out, monkeypatch)
    assert (result["status"], result["instances"], result["box"], result["mask_area"]) == ("no_target", [], None, 0)
    assert instances.shape == (90, 140) and not instances.any()
    assert not cv2.imread(str(out / "mask.png"), cv2.IMREAD_UNCHANGED).any()
    assert "status: no_target" in capsys.readouterr().out


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("corrupt", "PNG is truncated"),
    ("empty_query", "query is empty"),
    ("unknown_model", "huggingface-cli download"),
    ("bad_folder", "no config.json"),
])
def test_user_errors_exit_2_with_one_line(case, message, image_file, tmp_path, capsys):
    args = {"--image": str(image_file), "--query": "the red square", "--model": "tiny-random", "--out": str(tmp_path / "o")}
    if case == "missing":
        args["--image"] = str(tmp_path / "nope.png")
    elif case == "corrupt":
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        args["--image"] = str(bad)
    elif case == "empty_query":
        args["--query"] = "  "
    elif case == "unknown_model":
        args["--model"] = "someone/unknown-model"
    elif case == "bad_folder":
        args["--model"] = str(tmp_path)
    code = main([item for pair in args.items() for item in pair])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("lens-segment: error:") and message in err[-1]


def test_cuda_requested_but_absent(image_file, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    code = main(["--image", str(image_file), "--query", "x", "--model", "tiny-random", "--device", "cuda", "--out", str(tmp_path)])
    assert code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_an_image_over_the_pixel_budget_is_refused_before_decoding(tmp_path, monkeypatch, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(30_000, 30_000))  # 69 bytes declaring 900 MP
    monkeypatch.setattr(cv2, "imdecode", refuse_to_decode)
    monkeypatch.setattr(cv2, "imread", refuse_to_decode)
    code = main(["--image", str(bomb), "--query", "x", "--model", "tiny-random", "--out", str(tmp_path / "o")])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"lens-segment: error: image {bomb}: image of 30000x30000 = 900.0 MP is over the pixel budget of 50 MP "
        "(MAX_IMAGE_PIXELS)"]


@pytest.mark.parametrize("failure, code, message", [
    ("short write", 2, "0 of"),  # what cv2.imwrite did on a full disk, returning True
    ("disk full", 2, "No space left on device"),
    ("ctrl-c", 130, None),
])
def test_a_failed_write_leaves_the_earlier_outputs_untouched(failure, code, message, image_file, tmp_path,
                                                             monkeypatch, capsys):
    out = tmp_path / "out"
    plant_earlier_outputs(out)
    write = staged_outputs.write_durably

    def failing_write(path, data):
        if path.name != "overlay.png":
            write(path, data)
        elif failure == "short write":
            write(path, b"")
        elif failure == "disk full":
            raise OSError(errno.ENOSPC, "No space left on device")
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(staged_outputs, "write_durably", failing_write)
    assert main(["--image", str(image_file), "--query", "x", "--model", "tiny-random", "--out", str(out)]) == code
    assert_earlier_outputs_untouched(out)
    if message is not None:
        last = capsys.readouterr().err.splitlines()[-1]
        assert last.startswith(f"lens-segment: error: could not write {out / 'overlay.png'}: ") and message in last


def test_a_full_disk_leaves_the_earlier_outputs_untouched(image_file, tmp_path):
    """A real write error from the kernel: a file size limit of 4 kB (EFBIG) stands in for a full disk.
    The mask fits, the overlay does not."""
    out = tmp_path / "out"
    plant_earlier_outputs(out)
    limited = ("import resource, signal, sys\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
               "from lens_model.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", limited, "--image", str(image_file), "--query", "x",
                           "--model", "tiny-random", "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert_earlier_outputs_untouched(out)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == f"lens-segment: error: could not write {out / 'overlay.png'}: File too large"
