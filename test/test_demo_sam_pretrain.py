"""Box-prompted SAM 2 pretraining: the mask loss falls within a few steps, only SAM 2 changes, the
box frame is SAM 2's input frame, and the output loads."""
import json

import pytest
import torch
from safetensors.torch import load_file

from lens_model.checkpoints import load_model
from lens_model.tiny import build_tiny_random
from training.common.logging import read_metrics
from training.data.registry import load_dataset
from recipes.demo import sam_pretrain
from training.synthetic import main as synthetic_main

CONFIG = "recipes/demo/configs/sam.yaml"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    synthetic_main(["--out", str(root), "--images", "6", "--seed", "4", "--size", "112"])
    return root


def test_boxes_are_scaled_to_sam_input_and_jittered_within_bounds(data_root):
    samples = [s for s in load_dataset("synthetic", data_root, "train", per="ref")][:4]
    exact = sam_pretrain.sam_boxes(samples, 256, 0.0)
    expected = torch.tensor([s.box for s in samples]) * 256 / 112
    assert torch.allclose(exact, expected)
    torch.manual_seed(0)
    jittered = sam_pretrain.sam_boxes(samples, 256, 0.1)
    extent = (expected[:, 2:] - expected[:, :2]).repeat(1, 2)
    assert not torch.equal(jittered, exact)
    assert ((jittered - exact).abs() <= 0.1 * extent + 1e-4).all()


@torch.no_grad()
def test_one_token_prompts_are_the_sum_of_the_corner_embeddings_in_the_batch_order(data_root):
    from lens_model import sam_head

    model = build_tiny_random().eval()
    samples = [s for s in load_dataset("synthetic", data_root, "train", per="ref")][:4]
    images = [samples[0].image, samples[1].image]
    image_of_box = torch.tensor([0, 1, 0, 1])
    boxes = sam_pretrain.sam_boxes(samples, model.config.sam_image_size, 0.0)
    two_tokens = sam_pretrain.box_prompted_logits(model, images, boxes, image_of_box)
    assert torch.allclose(sam_pretrain.box_prompted_logits(model, images, boxes, image_of_box, torch.zeros(4, dtype=torch.bool)),
                          two_tokens, atol=1e-5)
    one_token = torch.tensor([True, False, False, True])
    mixed = sam_pretrain.box_prompted_logits(model, images, boxes, image_of_box, one_token)
    features = model.sam_features(images).select(image_of_box)
    corners, _ = model.sam.sam_prompt_encoder(points=None, boxes=boxes, masks=None)
    summed = sam_head.decode_masks(model.sam, features, corners.sum(1, keepdim=True), repeat_image=False)[0]
    for row in range(4):
        expected = summed[row] if one_token[row] else two_tokens[row]
        assert torch.allclose(mixed[row], expected, atol=1e-5), row
    assert not torch.allclose(mixed[0], two_tokens[0], atol=1e-3)  # the one-token prompt is another prompt


def test_sam_pretraining_lowers_the_mask_loss_and_changes_only_sam(data_root, tmp_path):
    out = tmp_path / "out"
    args = ["--config", CONFIG, "model.init=tiny-random", f"data.root={data_root}", f"output_dir={out}",
            "max_steps=12", "engine.micro_batch_size=2", "engine.warmup_steps=0", "engine.lr=2e-3",
            "log.every_steps=3", "data.eval_limit=8", "log.progress_bar=false", "min_eval_giou=0"]
    assert sam_pretrain.main(args) == 0
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert records[-1]["loss"] < 0.8 * records[0]["loss"]
    assert records[-1]["loss_bce"] < 0.5 * records[0]["loss_bce"]
    evaluation = [r for r in read_metrics(out / "metrics.jsonl") if "eval_box_prompt_gIoU" in r]
    assert len(evaluation) == 1 and 0.0 <= evaluation[0]["eval_box_prompt_gIoU"] <= 1.0
    trained = load_file(out / "model.safetensors")
    start = build_tiny_random().state_dict()
    changed = {k for k, v in trained.items() if not torch.equal(v, start[k])}
    assert any(k.startswith("sam.image_encoder.") for k in changed)
    assert any(k.startswith("sam.sam_prompt_encoder.") for k in changed)
    assert changed and all(k.startswith("sam.") for k in changed)
    assert json.loads((out / "training_info.json").read_text())["stage"] == "sam_pretrain"
    load_model(str(out))


def test_a_sam_2_below_min_eval_giou_fails_after_export(data_root, tmp_path, capsys):
    """A decoder still on its plateau stops the pipeline with a clear message; the model is kept."""
    out = tmp_path / "out"
    args = ["--config", CONFIG, "model.init=tiny-random", f"data.root={data_root}", f"output_dir={out}",
            "max_steps=2", "engine.micro_batch_size=2", "data.eval_limit=8", "log.progress_bar=false"]
    assert sam_pretrain.main([*args, "min_eval_giou=1.01"]) == 1
    assert "stayed on its 'every object' plateau" in capsys.readouterr().err
    assert (out / "model.safetensors").is_file()
    giou = [r for r in read_metrics(out / "metrics.jsonl") if "eval_box_prompt_gIoU" in r][-1]["eval_box_prompt_gIoU"]
    assert sam_pretrain.main([*args, f"min_eval_giou={giou}"]) == 0  # resumed at its last step: the same gIoU
