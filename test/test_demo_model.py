"""The shipped demo model: it loads by its built-in name, segments synthetic scenes it has never seen
(a seed the pipeline does not use) well above chance while the same model with its language model
re-initialised does not, and gets the README's example right, from Python and through the bag mode."""
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ros_fixtures import TYPESTORE, image_msg
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Writer

from lens_model.cli import main as cli_main
from lens_model.checkpoints import load_model
from lens_model.predictor import LensPredictor
from lens_ros.bag import main as bag_main
from training.data.registry import load_dataset
from training.data.synthetic_expressions import EXPRESSION_TYPES
from training.evaluate import run_evaluation
from training.metrics import SegmentationMeter
from training.synthetic import generate_dataset

NAME = "lens-synth-demo"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scene.png"
EXAMPLE_QUERY = "the leftmost circle"
# gIoU on the 118 unseen test expressions below, measured 2026-12-03 (thirteenth round): the shipped model
# 0.451 (the tenth round's 0.473, the eighth's 0.467); answering with a random shape of the scene (perfectly
# segmented) 0.289; the model with its language model re-initialised 0.155 (tenth round 0.203). Both
# baselines are asserted below it.
GIOU_THRESHOLD = 0.38


@pytest.fixture(scope="module")
def model():
    return LensPredictor.from_pretrained(NAME)


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    # single-object expressions only: the thresholds below were measured on them
    root = tmp_path_factory.mktemp("unseen")
    generate_dataset(root, num_images=150, seed=2027, size=112, expression_types=EXPRESSION_TYPES)
    return root, load_dataset("synthetic", root, "test")


def chance_giou(root: Path, dataset) -> float:
    """gIoU of answering with one of the scene's shapes at random (shapes do not overlap): mean of 1 / shapes."""
    instances = json.loads((root / "synthetic" / "instances.json").read_text())
    shapes = Counter(str(annotation["image_id"]) for annotation in instances["annotations"])
    return float(np.mean([1.0 / shapes[dataset[i].image_id] for i in range(len(dataset))]))


def giou(predictor: LensPredictor, dataset) -> float:
    return run_evaluation(predictor, dataset, SegmentationMeter(), progress=False).summary()["gIoU"]


def example_target() -> tuple[np.ndarray, np.ndarray]:
    """The example scene (RGB) and the mask of its leftmost shape, the large red circle."""
    image = cv2.cvtColor(cv2.imread(str(EXAMPLE)), cv2.COLOR_BGR2RGB)
    shapes = (np.abs(image.astype(int) - image[0, 0].astype(int)).sum(-1) > 30).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(shapes)
    return image, labels == 1 + int(np.argmin(stats[1:, cv2.CC_STAT_LEFT]))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_the_demo_model_segments_unseen_scenes_above_chance(model, unseen):
    root, dataset = unseen
    assert len(dataset) >= 100
    assert chance_giou(root, dataset) < GIOU_THRESHOLD
    assert giou(model, dataset) >= GIOU_THRESHOLD


def test_a_re_initialised_language_model_stays_below_the_threshold(unseen):
    _, dataset = unseen
    model = load_model(NAME)
    torch.manual_seed(0)
    for module in model.reasoner.model.language_model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.088)
    assert giou(LensPredictor(model), dataset) < GIOU_THRESHOLD


def test_the_readme_example_finds_the_leftmost_circle(model):
    image, target = example_target()
    result = model.predict(image, EXAMPLE_QUERY)
    assert not result.random_weights
    assert iou(result.mask, target) >= 0.7  # 0.917 measured
    # the reasoning lists the shapes and says why the target wins
    assert "large red circle" in result.reasoning and "smallest x" in result.reasoning


def test_the_readme_command_uses_the_demo_model_by_default(tmp_path):
    """``make demo``: lens-segment without --model writes the mask, the overlay and the result."""
    _, target = example_target()
    assert cli_main(["--image", str(EXAMPLE), "--query", EXAMPLE_QUERY, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["model"] == NAME and not summary["random_weights"]
    assert iou(cv2.imread(str(tmp_path / "mask.png"), cv2.IMREAD_GRAYSCALE) > 0, target) >= 0.7
    assert cv2.imread(str(tmp_path / "overlay.png")).shape == (*target.shape, 3)


def test_the_bag_mode_runs_the_demo_model(tmp_path):
    image, target = example_target()
    source, output = tmp_path / "camera", tmp_path / "out"
    with Writer(source, version=8) as writer:
        connection = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        writer.write(connection, 1_000_000_000, TYPESTORE.serialize_cdr(image_msg(image, "rgb8", 1.0, "camera"),
                                                                        connection.msgtype))
    assert bag_main(["--input", str(source), "--image-topic", "/camera/image_raw", "--query", EXAMPLE_QUERY,
                     "--output", str(output), "--model", NAME, "--no-progress"]) == 0
    with AnyReader([output], default_typestore=TYPESTORE) as reader:
        masks = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages() if c.topic == "/lens/mask"]
    (mask,) = masks
    assert iou(np.frombuffer(bytes(mask.data), np.uint8).reshape(mask.height, mask.width) > 0, target) >= 0.7
