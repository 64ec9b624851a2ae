"""SAM 2's video propagation around a LensModel (lens_model.sam_video) and the tracker's memory mode,
on the tiny random model: what is shared, where memory weights come from, and the bounded memory."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lens_model import sam_arch, sam_head, sam_video
from lens_model.errors import CheckpointFormatError, InputError
from lens_model.tracker import LensTracker, TrackerConfig
from model_fixtures import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def random_sam2(model, **overrides) -> torch.nn.Module:
    """A whole SAM 2 (memory included) of the model's description: an official checkpoint stand-in."""
    description = sam_head.resolve_sam2_config(model.config.sam2_config, model.config.sam2_overrides + list(overrides.get("extra", [])))
    torch.manual_seed(overrides.get("seed", 1))
    return sam_arch.build_sam2_base(description)


def perturbed(video: torch.nn.Module, model, seed: int = 3) -> dict[str, torch.Tensor]:
    """Video tensors unlike a fresh build's (every fresh build draws the same initialisation): those
    of a SAM 2 initialised from another seed."""
    other = random_sam2(model, seed=seed).state_dict()
    return {k: other[k] for k in sam_video.video_keys(video)}


def test_the_video_sam_shares_the_models_image_path_and_leaves_the_model_alone(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    video = sam_video.build_video_sam(model)
    assert torch.equal(torch.random.get_rng_state(), rng)  # building drew from a forked stream
    for name in sam_video.SHARED:
        assert getattr(video, name) is getattr(model.sam, name)
    keys = sam_video.video_keys(video)
    assert {k.split(".")[0] for k in keys} >= {"memory_attention", "memory_encoder", "maskmem_tpos_enc", "obj_ptr_proj"}
    assert not any(k.startswith(sam_video.SHARED) for k in keys)
    assert model.state_dict().keys() == before.keys()  # no memory modules grafted onto the LensModel
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_reuse_only_stands_in_for_fields_the_description_sets(model):
    with pytest.raises(CheckpointFormatError, match="cannot reuse modules for fields it does not set"):
        sam_arch.build_sam2_base(model.config.sam2_model_config, reuse={"trunk": model.sam.image_encoder})


def test_a_bf16_model_gets_a_float32_copy_of_its_image_path():
    model = tiny_model().to(torch.bfloat16)
    video = sam_video.build_video_sam(model)
    assert video.image_encoder is not model.sam.image_encoder
    assert all(p.dtype == torch.float32 for p in video.parameters())
    assert torch.equal(video.no_mem_embed, model.sam.no_mem_embed.float())


def test_safetensors_memory_weights_round_trip(model, tmp_path):
    source = sam_video.build_video_sam(model)
    wanted = perturbed(source, model)
    source.load_state_dict(wanted, strict=False)
    sam_video.save_video_weights(source, tmp_path / "memory.safetensors")
    assert load_file(tmp_path / "memory.safetensors").keys() == wanted.keys()  # the video tensors only
    target = sam_video.build_video_sam(model)
    sam_video.load_video_weights(target, tmp_path / "memory.safetensors")
    assert all(torch.equal(target.state_dict()[k], v) for k, v in wanted.items())


def test_an_official_sam2_checkpoint_gives_its_memory_weights(model, tmp_path):
    official = random_sam2(model)
    torch.save({"model": official.state_dict()}, tmp_path / "sam2.pt")
    video = sam_video.build_video_sam(model)
    image_path = {k: v.clone() for k, v in video.state_dict().items() if k not in sam_video.video_keys(video)}
    sam_video.load_video_weights(video, tmp_path / "sam2.pt")
    state = video.state_dict()
    assert all(torch.equal(state[k], official.state_dict()[k]) for k in sam_video.video_keys(video))
    assert all(torch.equal(state[k], v) for k, v in image_path.items())  # the model's own image path is kept


def test_a_checkpoint_of_another_sam2_size_is_refused(model, tmp_path):
    # The memory modules have the same shapes in every SAM 2 size: the image path tells them apart.
    other = random_sam2(model, extra=["++model.image_encoder.trunk.embed_dim=24",
                                      "++model.image_encoder.neck.backbone_channel_list=[192,96,48,24]"])
    torch.save({"model": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointFormatError, match="not a SAM 2 of this model's architecture"):
        sam_video.load_video_weights(sam_video.build_video_sam(model), tmp_path / "other.pt")


def test_broken_memory_weights_are_refused_before_anything_is_copied(model, tmp_path):
    video = sam_video.build_video_sam(model)
    fresh = {k: v.clone() for k, v in video.state_dict().items()}
    state = perturbed(video, model)
    missing = dict(state)
    missing.pop("maskmem_tpos_enc")
    save_file(missing, tmp_path / "missing.safetensors")
    reshaped = dict(state, maskmem_tpos_enc=torch.zeros(3))
    save_file(reshaped, tmp_path / "reshaped.safetensors")
    extra = dict(state, **{"image_encoder.trunk.extra": torch.zeros(1)})
    torch.save({"model": extra}, tmp_path / "extra.pt")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "memory.bin").write_bytes(b"")
    with open(tmp_path / "code.pt", "wb") as handle:  # a pickle that would run code on load
        pickle.dump({"model": Exploit()}, handle, protocol=2)
    for name, message in [("missing.safetensors", "1 missing"), ("reshaped.safetensors", "1 of another shape"),
                          ("extra.pt", "1 unexpected"), ("garbage.safetensors", "cannot read"),
                          ("memory.bin", "must be an official SAM 2 .pt or a .safetensors"),
                          ("code.pt", "cannot read SAM 2 checkpoint"), ("absent.pt", "cannot read")]:
        with pytest.raises(CheckpointFormatError, match=message):
            sam_video.load_video_weights(video, tmp_path / name)
    assert all(torch.equal(video.state_dict()[k], v) for k, v in fresh.items())
    assert not EXPLOITED


EXPLOITED: list[str] = []


class Exploit:
    def __reduce__(self):
        return EXPLOITED.append, ("ran",)


def frames(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, 256, 256, generator=generator) for _ in range(count)]


def official_track(video: torch.nn.Module, pixels: list[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    """SAM 2's public ``track_step`` with the whole history in its output dict (no eviction)."""
    history = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    track = sam_video.VideoTrack(video)
    logits = []
    for index, frame in enumerate(pixels):
        features = track.encode(frame)
        resized = torch.nn.functional.interpolate(mask[None, None].float(), size=(256, 256), mode="bilinear",
                                                  align_corners=False, antialias=True) >= 0.5
        out = video.track_step(index, index == 0, features.features, features.positions, features.sizes, None,
                               resized.float() if index == 0 else None, history,
                               max(index + 1, video.max_obj_ptrs_in_encoder))
        history["cond_frame_outputs" if index == 0 else "non_cond_frame_outputs"][index] = out
        logits.append(out["pred_masks"][0, 0])
    return logits[1:]


@torch.inference_mode()
def test_the_bounded_memory_gives_the_results_of_the_whole_history():
    model = tiny_model()
    # The object is "present" on every frame, so each frame's object pointer differs (an absent
    # object's pointers are all one learned vector, and dropping one of equal tokens changes nothing).
    model.sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    video = sam_video.build_video_sam(model)
    video.load_state_dict(perturbed(video, model), strict=False)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[10:40, 20:50] = True
    pixels = frames(24)
    track = sam_video.VideoTrack(video)
    assert track.bank.window == 15  # 16 object pointers (the tiny config) reach 15 frames back
    track.seed(track.encode(pixels[0]), mask)
    ours = []
    for frame in pixels[1:]:
        ours.append(track.propagate(track.encode(frame)).low_res_logits)
        assert len(track.bank.outputs["non_cond_frame_outputs"]) <= track.bank.window
        assert list(track.bank.outputs["cond_frame_outputs"]) == [0]
    expected = official_track(video, pixels, mask)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, expected))


@torch.inference_mode()
def test_the_seed_mask_is_in_the_memory(model):
    video = sam_video.build_video_sam(model)
    video.load_state_dict(perturbed(video, model), strict=False)
    pixels = frames(3)
    results = []
    for box in ((10, 40, 20, 50), (0, 20, 0, 20)):
        mask = torch.zeros(64, 64, dtype=torch.bool)
        mask[box[0]:box[1], box[2]:box[3]] = True
        track = sam_video.VideoTrack(video)
        track.seed(track.encode(pixels[0]), mask)
        results.append([track.propagate(track.encode(f)).low_res_logits for f in pixels[1:]])
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(*results))


def test_memory_mode_tracks_with_explicit_weights(model, tmp_path):
    video = sam_video.build_video_sam(model)
    video.load_state_dict(perturbed(video, model), strict=False)
    sam_video.save_video_weights(video, tmp_path / "memory.safetensors")
    tracker = LensTracker(model, TrackerConfig(mode="memory"), memory_weights=tmp_path / "memory.safetensors")
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    mask = np.zeros((48, 80), bool)
    mask[10:30, 20:50] = True
    tracker.start(image, mask)
    step = tracker.step(image)
    assert step.mask.shape == (48, 80) and 0.0 <= step.score <= 1.0
    assert set(step.timings_ms) == {"preprocess", "sam_image_encoder", "memory_track_step", "postprocess", "total"}
    with pytest.raises(InputError):
        tracker.step(image[..., :2])
    assert tracker._track.frame == 1  # the bad frame left the memory as it was
    tracker.step(image)
    assert tracker._track.frame == 2
