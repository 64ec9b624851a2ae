"""Saving and loading: native round trip, the authors' released layout, and clear errors."""
import json

import numpy as np
import pytest
import torch

from lens_model.checkpoints import load_model, save_model
from lens_model.config import ConnectorConfig
from lens_model.errors import CheckpointFormatError, LensError, ModelNotFoundError
from lens_model.hub import locate
from lens_model.predictor import LensPredictor
from model_fixtures import scene, tiny_model
from released_layout import write_released_checkpoint


def _same_outputs(a, b, query="the red square"):
    image = scene()
    ra, rb = LensPredictor(a).predict(image, query), LensPredictor(b).predict(image, query)
    assert ra.answer == rb.answer
    assert np.array_equal(ra.mask, rb.mask)
    assert ra.score == pytest.approx(rb.score, abs=1e-6)


def _same_parameters(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_native_round_trip(tmp_path):
    model = tiny_model()
    save_model(model, str(tmp_path / "m"))
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "preprocessor_config.json"} <= files
    loaded = load_model(str(tmp_path / "m"))
    _same_parameters(model, loaded)
    _same_outputs(model, loaded)
    assert loaded.config.random_weights is True


def test_round_trip_keeps_the_clean_variant(tmp_path):
    model = tiny_model(prompt_collapse="none", query_positions="mrope")
    save_model(model, str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.context.query_collapse is None and loaded.config.reuses_kv_cache
    _same_outputs(model, loaded)


@pytest.mark.parametrize("include_lm_head", [True, False])
def test_released_layout_loads_with_identical_outputs(tmp_path, include_lm_head):
    model = tiny_model(connector=ConnectorConfig(depth=4, num_heads=16))
    write_released_checkpoint(model, tmp_path / "released", include_lm_head=include_lm_head)
    keys = json.loads((tmp_path / "released" / "config.json").read_text())
    assert keys["model_type"] == "qwen2_vl" and keys["num_of_query"] == 64
    loaded = load_model(
        str(tmp_path / "released"),
        sam2_config=model.config.sam2_config, sam2_overrides=model.config.sam2_overrides,
        sam_image_size=model.config.sam_image_size, min_pixels=model.config.min_pixels,
        max_pixels=model.config.max_pixels, generation=model.config.generation,
    )
    assert loaded.config.prompt_collapse == "conv1d" and loaded.config.query_positions == "sequential"
    _same_parameters(model, loaded)
    _same_outputs(model, loaded)


def test_released_layout_with_new_transformers_key_names(tmp_path):
    """Checkpoints re-saved by transformers >= 4.52 use model.language_model.* / model.visual.*."""
    from safetensors.torch import load_file, save_file

    model = tiny_model(connector=ConnectorConfig(depth=4, num_heads=16))
    directory = tmp_path / "released"
    write_released_checkpoint(model, directory, include_lm_head=False)
    state = load_file(directory / "model.safetensors")
    renamed = {("model.language_model." + k[6:] if k.startswith("model.") else "model." + k if k.startswith("visual.") else k): v
               for k, v in state.items()}
    save_file(renamed, directory / "model.safetensors")
    loaded = load_model(str(directory), sam2_config=model.config.sam2_config, sam2_overrides=model.config.sam2_overrides,
                        sam_image_size=256, min_pixels=model.config.min_pixels, max_pixels=model.config.max_pixels)
    _same_parameters(model, loaded)


def test_checkpoint_with_wrong_shapes_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model()
    save_model(model, str(tmp_path / "m"))
    state = load_file(tmp_path / "m" / "model.safetensors")
    state["context.context_queries"] = torch.zeros(1, 8, 64)
    save_file(state, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointFormatError, match="context_queries"):
        load_model(str(tmp_path / "m"))


def test_truncated_weights_give_a_clear_error(tmp_path):
    model = tiny_model()
    save_model(model, str(tmp_path / "m"))
    path = tmp_path / "m" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointFormatError):
        load_model(str(tmp_path / "m"))


def test_unknown_names_and_folders(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        locate(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not found"):
        locate(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download"):
        locate("someone/not-cached-model")


def test_cuda_requested_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(LensError, match="CUDA is not available"):
        load_model("tiny-random", device="cuda")


@pytest.mark.parametrize("overrides", [{}, {"prompt_collapse": "none", "query_positions": "mrope"}])
def test_qwen2_vl_reasoner_predicts_and_round_trips(tmp_path, overrides):
    from model_fixtures import tiny_qwen2_vl_model

    model = tiny_qwen2_vl_model(**overrides)
    save_model(model, str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    assert type(loaded.reasoner).__name__ == "Qwen2VLForConditionalGeneration"
    _same_outputs(model, loaded)


def test_sharded_checkpoint_round_trip(tmp_path, capsys):
    model = tiny_model()
    save_model(model, str(tmp_path / "m"), max_shard_size="2MB")
    shards = sorted(p.name for p in (tmp_path / "m").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "m" / "model.safetensors.index.json").is_file()
    loaded = load_model(str(tmp_path / "m"))
    _same_parameters(model, loaded)
    assert "loading weights" in capsys.readouterr().err
    (tmp_path / "m" / shards[0]).unlink()
    with pytest.raises(CheckpointFormatError, match="missing"):
        load_model(str(tmp_path / "m"))
