"""Each released checkpoint loads with the inputs it was trained and evaluated with: the profile is
recognised from where the folder came from, recorded in the config, and overridable; native
checkpoints keep this project's conventions."""
from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lens_model import sam_head
from lens_model.checkpoints import load_model
from lens_model.config import ConnectorConfig
from lens_model.errors import CheckpointFormatError, LensError
from lens_model.predictor import LensPredictor
from lens_model.processor import resize_longest
from lens_model.prompts import SAMR1_V4_INSTRUCTION
from lens_model.query_pass import full_query_pass
from model_fixtures import scene, tiny_model
from released_layout import released_generation_config, write_released_checkpoint
from test_released_generation import tiny_overrides

PROFILE_OF_FOLDER = {
    "LENS": ("OuyBin/LENS", 0, "pil_bilinear", "direct", "", None),
    "LENS_ReasonSeg": ("OuyBin/LENS_ReasonSeg", 0, "pil_bilinear", "direct", "", None),
    "LENS_ReasonSeg_FT": ("OuyBin/LENS_ReasonSeg_FT", 640, "cv2_linear", "direct", "", 768),
    "LENS_ReasonSeg_CoT": ("OuyBin/LENS_ReasonSeg_CoT", 640, "cv2_linear", "reasoning", SAMR1_V4_INSTRUCTION, 768),
}


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(connector=ConnectorConfig(depth=4, num_heads=16))


@pytest.fixture(scope="module")
def folder(tiny, tmp_path_factory):
    """One released checkpoint, copied (by symlinks) to wherever a test needs it."""
    directory = tmp_path_factory.mktemp("released") / "checkpoint"
    write_released_checkpoint(tiny, directory, generation=released_generation_config(tiny))
    return directory


def place(folder, path):
    path.mkdir(parents=True)
    for file in folder.iterdir():
        (path / file.name).symlink_to(file)
    return path


def profile_of(config):
    p = config.preprocessing
    return (config.profile, p.reasoner_longest_side, p.sam_resize, config.template, config.instruction,
            config.generation.max_length)


@pytest.mark.parametrize("name", sorted(PROFILE_OF_FOLDER))
def test_the_folder_name_and_the_hub_cache_path_choose_the_profile(tiny, folder, tmp_path, name):
    by_name = load_model(str(place(folder, tmp_path / name)), **tiny_overrides(tiny))
    assert profile_of(by_name.config) == PROFILE_OF_FOLDER[name]
    assert not by_name.config.preprocessing.collapse_whitespace and by_name.config.preprocessing.mask_pad_in_query_pass
    snapshot = place(folder, tmp_path / "hub" / f"models--OuyBin--{name}" / "snapshots" / "0123abc")
    assert profile_of(load_model(str(snapshot), **tiny_overrides(tiny)).config) == PROFILE_OF_FOLDER[name]


def test_name_or_path_explicit_profile_and_unknown_folders(tiny, folder, tmp_path, caplog):
    copy = place(folder, tmp_path / "resaved")
    (copy / "config.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "_name_or_path": "OuyBin/LENS_ReasonSeg_CoT"}))
    assert load_model(str(copy), **tiny_overrides(tiny)).config.profile == "OuyBin/LENS_ReasonSeg_CoT"
    (copy / "config.json").write_text(json.dumps({**config, "_name_or_path": ["not", "a", "name"]}))
    assert load_model(str(copy), **tiny_overrides(tiny)).config.profile == "OuyBin/LENS"
    with caplog.at_level(logging.WARNING, logger="lens_model.released_profiles"):
        unknown = load_model(str(folder), **tiny_overrides(tiny))
    assert unknown.config.profile == "OuyBin/LENS" and "profile=" in caplog.text
    chosen = load_model(str(folder), profile="OuyBin/LENS_ReasonSeg_FT", **tiny_overrides(tiny))
    assert profile_of(chosen.config) == PROFILE_OF_FOLDER["LENS_ReasonSeg_FT"]
    with pytest.raises(CheckpointFormatError, match="unknown profile"):
        load_model(str(folder), profile="OuyBin/LENS_v2", **tiny_overrides(tiny))
    with pytest.raises(LensError, match="not one"):
        load_model("tiny-random", profile="OuyBin/LENS")


def test_native_checkpoints_keep_this_projects_conventions():
    config = tiny_model().config
    assert profile_of(config) == ("", 0, "pil_bilinear", "direct", "", None)
    assert config.preprocessing.collapse_whitespace and not config.preprocessing.mask_pad_in_query_pass


@pytest.mark.parametrize("size, expected", [((1000, 750), (640, 480)), ((100, 50), (640, 320)),
                                            ((333, 250), (640, 480)), ((250, 333), (480, 640))])
def test_reasoner_resize_is_the_authors_arithmetic(size, expected):
    image = Image.new("RGB", size)
    width, height = size
    scale = 640 / width if width > height else 640 / height
    assert resize_longest(image, 640).size == (int(width * scale), int(height * scale)) == expected


def test_reasonseg_profile_changes_what_the_reasoner_and_sam_see(tiny, folder, tmp_path):
    refcoco = load_model(str(place(folder, tmp_path / "LENS")), **tiny_overrides(tiny))
    reasonseg = load_model(str(place(folder, tmp_path / "LENS_ReasonSeg_FT")), **tiny_overrides(tiny))
    image = scene()
    ours = reasonseg.encode_image(image)
    expected = reasonseg.processor.encode_image(np.asarray(resize_longest(Image.fromarray(image), 640)))
    assert torch.equal(ours.grid_thw, expected.grid_thw) and torch.equal(ours.pixel_values, expected.pixel_values)
    assert not torch.equal(ours.grid_thw, refcoco.encode_image(image).grid_thw)
    size = refcoco.config.sam_image_size
    cv2_input = sam_head.preprocess(image, size, "cv2_linear")
    by_hand = (torch.from_numpy(cv2.resize(image, (size, size)).astype(np.float32)).permute(2, 0, 1)
               - torch.tensor(sam_head.PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(sam_head.PIXEL_STD).view(3, 1, 1)
    assert torch.equal(cv2_input, by_hand)
    small = scene(height=512, width=600)  # shrinking: antialiasing matters
    assert not torch.allclose(sam_head.preprocess(small, size, "cv2_linear"), sam_head.preprocess(small, size), atol=0.1)
    features = reasonseg.sam_features([small]).fpn[-1]
    assert torch.equal(features, sam_head.encode_images(reasonseg.sam, sam_head.preprocess(small, size, "cv2_linear")[None]).fpn[-1])


def test_released_queries_are_verbatim_and_native_ones_collapsed(tiny, folder, tmp_path):
    query = "  the red\tsquare  "
    released = load_model(str(place(folder, tmp_path / "LENS")), **tiny_overrides(tiny))
    assert LensPredictor(released).predict(scene(), query).query == query
    assert LensPredictor(tiny).predict(scene(), query).query == "the red square"


def test_pad_tokens_are_left_out_of_the_query_pass_as_the_authors_mask_did(tiny, folder, tmp_path):
    """The authors rebuild the mask-pass attention as ``ids != pad``: an answer that ends in
    <|endoftext|> (an end id, and Qwen's pad) has that token masked."""
    released = load_model(str(place(folder, tmp_path / "LENS")), **tiny_overrides(tiny))
    encoded = released.encode_image(scene())
    vision = [released.vision_embeds(encoded)]
    inputs = released.encode_inputs(["the red square"], [encoded], vision)
    prompts = inputs.prompts
    generation = released.generate(inputs, max_new_tokens=4)
    pad = released.processor.pad_token_id
    generation.ids[0, -1] = pad  # the answer ends with <|endoftext|>
    states = released(inputs, generation, return_query_states=True).query_states
    ids = torch.cat([prompts.input_ids, generation.ids], dim=1)
    authors_mask = (ids != pad).long()
    prompt_length = prompts.input_ids.shape[1]
    expected = full_query_pass(released.reasoner, prompts, encoded.grid_thw, torch.cat(vision),
                               generation.ids, authors_mask[:, prompt_length:], released.context.context_queries,
                               pad, "sequential").query_states
    assert torch.equal(states, expected)
    released.config.preprocessing.mask_pad_in_query_pass = False  # this project's convention: attend to it
    assert not torch.allclose(released(inputs, generation, return_query_states=True).query_states, expected)


def test_dataset_images_keep_their_stored_orientation_as_the_authors_pil_path(tmp_path):
    """EXIF orientation: datasets are read without it (the authors' evaluation opens images with PIL,
    which does not apply it, and the annotations use the stored pixel grid)."""
    from training.data.images import read_rgb

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(np.zeros((250, 333, 3), np.uint8)).save(path, exif=exif)
    assert read_rgb(path).shape == (250, 333, 3) == np.asarray(Image.open(path).convert("RGB")).shape
