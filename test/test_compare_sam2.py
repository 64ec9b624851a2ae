"""python -m lens_model.compare_sam2: a LENS model's SAM 2 against an official SAM 2 checkpoint, on
tiny models saved in both layouts (native and the authors' released one)."""
from __future__ import annotations

import pytest
import torch

from lens_model import compare_sam2, sam_arch, sam_head
from lens_model.checkpoints import save_model
from model_fixtures import tiny_model
from released_layout import write_released_checkpoint


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def official(model, path, change=None) -> None:
    """A SAM 2 .pt whose image path is the model's and whose memory modules are its own."""
    description = sam_head.resolve_sam2_config(model.config.sam2_config, model.config.sam2_overrides)
    torch.manual_seed(5)
    state = sam_arch.build_sam2_base(description).state_dict()
    state.update({k: v.clone() for k, v in model.sam.state_dict().items()})
    if change is not None:
        change(state)
    torch.save({"model": state}, path)


@pytest.mark.parametrize("layout", ["native", "released"])
def test_an_unchanged_image_encoder_is_reported_equal(model, tmp_path, capsys, layout):
    folder = tmp_path / "model"
    save_model(model, folder) if layout == "native" else write_released_checkpoint(model, folder)
    official(model, tmp_path / "sam2.pt")
    assert compare_sam2.main(["--model", str(folder), "--sam2", str(tmp_path / "sam2.pt")]) == 0
    out = capsys.readouterr().out
    assert "image encoder: EQUAL" in out
    assert "image_encoder.trunk" in out and "sam_mask_decoder.transformer" in out
    assert "only in the SAM 2 checkpoint: " in out and "memory_attention" in out  # LENS deletes its memory


def test_a_changed_trunk_tensor_is_found_and_named(model, tmp_path, capsys):
    save_model(model, tmp_path / "model")
    key = "image_encoder.trunk.blocks.0.attn.qkv.weight"
    official(model, tmp_path / "sam2.pt", lambda state: state[key].add_(0.25))
    assert compare_sam2.main(["--model", str(tmp_path / "model"), "--sam2", str(tmp_path / "sam2.pt")]) == 1
    out = capsys.readouterr().out
    trunk = next(line for line in out.splitlines() if line.startswith("image_encoder.trunk"))
    assert trunk.split()[2] == "0.25" and trunk.endswith("NO")
    assert "image encoder: DIFFERENT" in out


def test_bf16_weights_equal_the_checkpoint_after_rounding(model, tmp_path, capsys):
    save_model(tiny_model().to(torch.bfloat16), tmp_path / "model")
    official(model, tmp_path / "sam2.pt")  # fp32, as SAM 2 ships
    assert compare_sam2.main(["--model", str(tmp_path / "model"), "--sam2", str(tmp_path / "sam2.pt")]) == 0
    out = capsys.readouterr().out
    assert "equal after rounding to bfloat16" in out and "image encoder: EQUAL" in out


def test_a_checkpoint_of_another_size_differs(model, tmp_path, capsys):
    save_model(model, tmp_path / "model")
    description = sam_head.resolve_sam2_config(model.config.sam2_config, model.config.sam2_overrides + [
        "++model.image_encoder.trunk.embed_dim=24", "++model.image_encoder.neck.backbone_channel_list=[192,96,48,24]"])
    torch.save({"model": sam_arch.build_sam2_base(description).state_dict()}, tmp_path / "other.pt")
    assert compare_sam2.main(["--model", str(tmp_path / "model"), "--sam2", str(tmp_path / "other.pt")]) == 1
    assert "of another shape" in capsys.readouterr().out


def test_unreadable_inputs_are_one_line_errors(model, tmp_path, capsys):
    save_model(model, tmp_path / "model")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    assert compare_sam2.main(["--model", str(tmp_path / "model"), "--sam2", str(tmp_path / "broken.pt")]) == 2
    assert compare_sam2.main(["--model", str(tmp_path / "absent"), "--sam2", str(tmp_path / "broken.pt")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("compare_sam2: error: ") for line in errors)
