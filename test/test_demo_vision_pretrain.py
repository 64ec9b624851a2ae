"""Dense object pretraining of the vision tower: per-token targets sit in the right cells, the loss
falls, only the tower changes, the probe is not exported, and a crashed run resumes exactly."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lens_model.checkpoints import load_model
from lens_model.tiny import build_tiny_random
from training.common.logging import read_metrics
from training.data.image_targets import ImageTargets
from training.data.registry import load_dataset
from training.data.sample import Sample
from stage_fixtures import assert_exact_resume, run_stage, synthetic_data
from recipes.demo import vision_pretrain

CONFIG = "recipes/demo/configs/vision.yaml"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("syn"), images=6, seed=4, size=112)


def rectangle(image: np.ndarray, box: tuple[int, int, int, int], ref: str, category: int | None = None) -> Sample:
    x1, y1, x2, y2 = box
    mask = np.zeros(image.shape[:2], bool)
    mask[y1:y2, x1:x2] = True
    return Sample(image, "it", mask, box, "im", ref, ref, "test", meta={"category_id": category})


def test_each_target_is_written_to_the_token_whose_cell_holds_its_box_centre():
    image = np.full((112, 112, 3), 200, np.uint8)
    image[60:80, 10:30] = (255, 0, 0)
    image[64:72, 18:26] = (0, 0, 255)  # a small target inside the red one: same cell, smaller
    image[0:20, 84:112] = (0, 255, 0)
    samples = [rectangle(image, (10, 60, 30, 80), "red"), rectangle(image, (18, 64, 26, 72), "blue"),
               rectangle(image, (84, 0, 112, 20), "green")]
    targets = vision_pretrain.dense_targets(samples, (4, 4), shape_cells=4)
    # red and blue centres (20, 70) and (22, 68) lie in row 2, column 0; green (98, 10) in row 0, column 3
    assert targets.present.nonzero().ravel().tolist() == [3, 8]
    assert torch.allclose(targets.box[8], torch.tensor([10, 60, 30, 80]) / 112)  # the largest wins
    assert torch.allclose(targets.colour[8], torch.tensor([336.0, 0, 64]) / 400, atol=1e-4)  # red with a blue inset
    assert torch.allclose(targets.box[3], torch.tensor([84, 0, 112, 20]) / 112)
    assert torch.allclose(targets.colour[3], torch.tensor([0.0, 1.0, 0.0]))
    assert targets.shape[3].tolist() == [1.0] * 16
    assert not targets.box[~targets.present].any()


def test_the_category_is_written_with_its_target_and_must_be_a_known_id():
    image = np.full((112, 112, 3), 200, np.uint8)
    samples = [rectangle(image, (10, 60, 30, 80), "a", category=4), rectangle(image, (84, 0, 112, 20), "b", category=1)]
    targets = vision_pretrain.dense_targets(samples, (4, 4), shape_cells=4, categories=5)
    assert targets.category[8] == 4 and targets.category[3] == 1
    assert (targets.category[~targets.present] == -1).all()
    assert (vision_pretrain.dense_targets(samples, (4, 4), shape_cells=4).category == -1).all()  # off by default
    for bad in (5, None):
        with pytest.raises(ValueError, match="category_id"):
            vision_pretrain.dense_targets([rectangle(image, (10, 60, 30, 80), "a", category=bad)], (4, 4), 4, categories=5)


def test_the_silhouette_is_the_mask_inside_the_box():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:20] = True  # left half of the box (10, 10, 30, 30)
    cells = vision_pretrain.silhouette(mask, (10, 10, 30, 30), 4).reshape(4, 4)
    assert cells[:, :2].all() and not cells[:, 2:].any()


def test_an_image_item_carries_all_of_its_targets(data_root):
    targets = load_dataset("synthetic", data_root, "train", per="ref")
    images = ImageTargets(targets)
    items = [images[i] for i in range(len(images))]
    single = [t for t in targets.targets if t.referents == 1]  # groups and absent objects have no one box
    assert len(single) < len(targets) and sum(len(item) for item in items) == len(single)
    assert all(len({s.image_id for s in item}) == 1 and all(len(s.instances) == 1 for s in item) for item in items)


TINY = ("model.init=tiny-random", "engine.micro_batch_size=4", "engine.warmup_steps=0", "engine.lr=3e-3",
        "engine.scheduler=constant", "log.every_steps=1", "data.eval_limit=4")


def test_vision_pretraining_lowers_the_loss_and_changes_only_the_tower(data_root, tmp_path):
    out = tmp_path / "out"
    run_stage(vision_pretrain.main, CONFIG, data_root, out, *TINY, "max_steps=20", "eval_every_steps=5")
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    first, last = np.mean([r["loss"] for r in records[:3]]), np.mean([r["loss"] for r in records[-3:]])
    assert last < 0.8 * first  # 0.73 measured; 1.00 with lr 0
    evaluation = [r for r in read_metrics(out / "metrics.jsonl") if "eval_box_l1_px" in r]
    assert [r["step"] for r in evaluation] == [5, 10, 15, 20]  # the last step's evaluation is the final one only
    assert 0.0 <= evaluation[-1]["eval_objectness_acc"] <= 1.0
    assert 0.0 <= evaluation[-1]["eval_category_acc"] <= 1.0  # demo_vision.yaml asks for the shape's kind
    trained = load_file(out / "model.safetensors")
    start = build_tiny_random().state_dict()
    assert set(trained) <= set(start)  # the probe is not exported (the tied lm_head is not saved either)
    changed = {k for k, v in trained.items() if not torch.equal(v, start[k])}
    assert changed and all(k.startswith("reasoner.model.visual.") for k in changed)
    assert json.loads((out / "training_info.json").read_text())["stage"] == "vision_pretrain"
    load_model(str(out))


def test_resume_after_a_crash_reaches_the_same_tower(data_root, tmp_path, monkeypatch):
    assert_exact_resume(vision_pretrain.main, CONFIG, data_root, tmp_path, monkeypatch,
                        (*TINY, "max_steps=4", "checkpoint.every_steps=2", "data.eval_limit=0"))
