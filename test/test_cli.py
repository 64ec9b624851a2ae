"""lens-segment: outputs on success, one clear line and exit code 2 on user errors."""
import json

import cv2
import numpy as np
import pytest
import torch

from lens_model.cli import main
from model_fixtures import scene


@pytest.fixture()
def image_file(tmp_path):
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), scene(90, 140)[:, :, ::-1])
    return path


def test_success_writes_mask_overlay_and_json(image_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--image", str(image_file), "--query", "the red square", "--model", "tiny-random", "--out", str(out)])
    assert code == 0
    mask = cv2.imread(str(out / "mask.png"), cv2.IMREAD_UNCHANGED)
    overlay = cv2.imread(str(out / "overlay.png"))
    assert mask.shape == (90, 140) and set(np.unique(mask)) <= {0, 255}
    assert overlay.shape == (90, 140, 3)
    result = json.loads((out / "result.json").read_text())
    for key in ("query", "box", "score", "label", "reasoning", "answer", "timings_ms"):
        assert key in result
    assert result["random_weights"] is True
    assert "RANDOM weights" in capsys.readouterr().err


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("corrupt", "could not be decoded"),
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
