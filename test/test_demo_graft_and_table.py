"""Joining the demo's parallel branches (SAM 2 from one model, everything else from another) and the
ablation table built from evaluator result files."""
import json

import pytest
import torch

from lens_model import tiny
from lens_model.checkpoints import load_model, save_model
from lens_model.tiny import build_tiny_random
from recipes.demo import ablation_table, graft_sam


def test_graft_takes_sam_from_one_model_and_everything_else_from_the_other(tmp_path):
    save_model(build_tiny_random(seed=1), tmp_path / "reasoner_side")
    save_model(build_tiny_random(seed=2), tmp_path / "sam_side")
    (tmp_path / "reasoner_side" / "training_info.json").write_text(json.dumps({"stage": "sft"}))
    assert graft_sam.main(["--model", str(tmp_path / "reasoner_side"), "--sam", str(tmp_path / "sam_side"),
                           "--out", str(tmp_path / "joined")]) == 0
    joined = load_model(str(tmp_path / "joined")).state_dict()
    reasoner_side, sam_side = build_tiny_random(seed=1).state_dict(), build_tiny_random(seed=2).state_dict()
    for key, value in joined.items():
        expected = sam_side[key] if key.startswith("sam.") else reasoner_side[key]
        assert torch.equal(value, expected), key
    assert not torch.equal(reasoner_side["sam.sam_prompt_encoder.point_embeddings.0.weight"],
                           sam_side["sam.sam_prompt_encoder.point_embeddings.0.weight"])
    info = json.loads((tmp_path / "joined" / "training_info.json").read_text())
    assert info["stage"] == "sft" and info["sam_from"].endswith("sam_side")


def test_graft_refuses_models_with_different_sam_configs(tmp_path):
    save_model(build_tiny_random(), tmp_path / "a")
    other_sam = [*tiny.TINY_SAM2_OVERRIDES, "++model.image_size=128"]
    save_model(build_tiny_random(sam_image_size=128, sam2_overrides=other_sam), tmp_path / "b")
    with pytest.raises(ValueError, match="different SAM 2 configs"):
        graft_sam.graft_sam(tmp_path / "a", tmp_path / "b", tmp_path / "out")


def test_ablation_table_formats_evaluator_results_and_fills_the_marked_block(tmp_path):
    metrics = {"gIoU": 0.2519, "cIoU": 0.2562, "box_accuracy": 0.005, "box_iou": 0.0324, "parse_failure_rate": 0.07,
               "mean_generated_tokens": 122.52, "num_expressions": 200}
    (tmp_path / "align.json").write_text(json.dumps({"metrics": metrics}))
    (tmp_path / "sft.json").write_text(json.dumps({"metrics": {**metrics, "gIoU": None}}))
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{ablation_table.BEGIN}\nold table\n{ablation_table.END}\nafter\n")
    assert ablation_table.main([f"SFT only={tmp_path / 'sft.json'}", f"+ alignment={tmp_path / 'align.json'}",
                                "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "old table" not in text and text.startswith("before\n") and text.endswith("after\n")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1] == "| SFT only | – | 25.6 | 0.5 | 3.2 | 7.0 | 123 | 200 |"
    assert rows[2] == "| + alignment | 25.2 | 25.6 | 0.5 | 3.2 | 7.0 | 123 | 200 |"
