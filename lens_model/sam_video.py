"""SAM 2's own video propagation around a LensModel's SAM 2: memory attention, memory encoder, object pointers.

LENS keeps SAM 2 without its memory modules (``sam_head.build_sam2``), and the authors' released
checkpoints delete them. :func:`build_video_sam` rebuilds the whole ``SAM2Base`` from the model's own
SAM 2 description (checked by ``lens_model.sam_arch``) around the model's image encoder, prompt
encoder, mask decoder and no-memory embedding (:data:`SHARED`), which it shares, so tracking uses
the very SAM 2 the queries use. Everything else (:func:`video_keys`: the memory attention and
encoder, their temporal encoding, the object-pointer projections, the no-object embeddings) only
video tracking reads, and it comes from a memory weights file (:func:`load_video_weights`):

* an official SAM 2 checkpoint (``{"model": state_dict}``, read with ``torch.load(weights_only=True)``)
  of the same architecture: SAM 2-L (``sam2_hiera_large.pt``) for ``OuyBin/LENS*``. Its other
  tensors must have the model's shapes, because the memory modules of every SAM 2 size have the same
  shapes and only the image path tells a SAM 2-T checkpoint from a SAM 2-L one; their values are
  not used (``python -m lens_model.compare_sam2`` compares them);
* a safetensors file of exactly the video tensors, as :func:`save_video_weights` writes it
  (``recipes/demo/memory_pretrain.py`` trains the demo's).

:class:`VideoTrack` runs SAM 2's ``track_step`` machinery on a stream, one frame at a time, with a
memory of fixed size (:class:`MemoryBank`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lens_model import sam_head
from lens_model.errors import CheckpointFormatError
from lens_model.modeling import LensModel
from lens_model.sam_arch import build_sam2_base

# What the video SAM 2 shares with the LensModel's (the image path LENS queries run).
SHARED = ("image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "no_mem_embed")
WEIGHTS_FORMAT = "lens-sam2-video"


def build_video_sam(model: LensModel) -> torch.nn.Module:
    """SAM2Base with memory around ``model.sam``'s image path; the video tensors are freshly
    initialised (load them with :func:`load_video_weights`; only training starts from these).

    It runs in float32, as SAM 2's video predictor keeps its weights (its video path mixes float32
    prompts and masks into the decoder): a float32 model's image path is shared, that of a bf16 or
    fp16 model is copied once in float32 (for SAM 2-L, 0.9 GB more)."""
    shared = {name: getattr(model.sam, name) for name in SHARED}
    if model.dtype != torch.float32:
        shared = {name: _float_copy(part) for name, part in shared.items()}
    with torch.random.fork_rng(devices=[]):  # building must not move the caller's random stream
        video = build_sam2_base(model.config.sam2_model_config, reuse={"image_encoder": shared["image_encoder"]})
    for name, module in shared.items():
        setattr(video, name, module)
    for name, child in video.named_children():
        if name not in SHARED:
            child.to(model.device, torch.float32)
    for name, param in video.named_parameters(recurse=False):
        if name not in SHARED:
            param.data = param.data.to(model.device, torch.float32)
    set_video_training(video, False)
    return video


def _float_copy(part: torch.nn.Module | torch.nn.Parameter) -> torch.nn.Module | torch.nn.Parameter:
    if isinstance(part, torch.nn.Parameter):
        return torch.nn.Parameter(part.detach().float(), requires_grad=part.requires_grad)
    return copy.deepcopy(part).float()


def set_video_training(video: torch.nn.Module, mode: bool) -> None:
    """Train or eval mode for the video parts only: the shared modules keep the LensModel's modes."""
    video.training = mode
    for name, child in video.named_children():
        if name not in SHARED:
            child.train(mode)


def video_keys(video: torch.nn.Module) -> dict[str, torch.Size]:
    """Names and shapes of the tensors only video tracking reads (those a memory weights file holds)."""
    return {k: v.shape for k, v in video.state_dict().items() if not _is_shared(k)}


def video_parameters(video: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for name, p in video.named_parameters() if not _is_shared(name)]


def _is_shared(key: str) -> bool:
    return key.split(".")[0] in SHARED


def save_video_weights(video: torch.nn.Module, path: str | Path) -> None:
    """Write the video tensors as one safetensors file (:func:`load_video_weights` reads it)."""
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in video.state_dict().items() if not _is_shared(k)}
    save_file(state, str(path), metadata={"format": WEIGHTS_FORMAT})


def load_video_weights(video: torch.nn.Module, path: str | Path) -> None:
    """Copy the video tensors from an official SAM 2 ``.pt`` or this project's safetensors file
    (module docstring). Every name and shape is checked before anything is copied."""
    path = Path(path)
    expected = video_keys(video)
    if path.suffix == ".safetensors":
        state = _read_safetensors(path, expected)
    elif path.suffix in (".pt", ".pth"):
        state = _video_part_of_sam2(sam_head.read_sam2_checkpoint(path), video, path)
    else:
        raise CheckpointFormatError(f"memory weights {path.name!r} must be an official SAM 2 .pt or a .safetensors file")
    targets = video.state_dict()
    with torch.no_grad():
        for key, tensor in state.items():
            targets[key].copy_(tensor.to(targets[key].dtype))


def _read_safetensors(path: Path, expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            _check_names_and_shapes(shapes, expected, path)
            return {key: handle.get_tensor(key) for key in shapes}
    except (OSError, SafetensorError) as exc:
        raise CheckpointFormatError(f"cannot read memory weights {path}: {exc}") from None


def _video_part_of_sam2(state: dict[str, torch.Tensor], video: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    shapes = {k: v.shape for k, v in video.state_dict().items()}
    unexpected = sorted(k for k in state if k not in shapes)
    wrong = sorted(k for k in state if k in shapes and _is_shared(k) and tuple(state[k].shape) != tuple(shapes[k]))
    if unexpected or wrong:
        raise CheckpointFormatError(
            f"{path} is not a SAM 2 of this model's architecture: {len(unexpected)} unexpected tensors "
            f"(e.g. {unexpected[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]})")
    video_state = {k: v for k, v in state.items() if not _is_shared(k)}
    _check_names_and_shapes({k: tuple(v.shape) for k, v in video_state.items()}, video_keys(video), path)
    return video_state


def _check_names_and_shapes(found: dict[str, tuple[int, ...]], expected: dict[str, torch.Size], path: Path) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    if missing or unexpected or wrong:
        raise CheckpointFormatError(
            f"memory weights {path} do not match the model's SAM 2: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]})")


class MemoryBank:
    """SAM 2's ``output_dict`` for a stream: the seed frame, plus only the recent frames SAM 2 reads.

    For frame t SAM 2 reads the memories of frames t-1 and, with stride r, back to
    t-1-(num_maskmem-2)*r, and the object pointers of up to max_obj_ptrs_in_encoder-1 frames
    before t (``_prepare_memory_conditioned_features``); older frames are dropped, so a track of any
    length holds at most ``window`` + 1 frames of memory, and its results are those of a full history.
    """

    KEPT = ("maskmem_features", "maskmem_pos_enc", "obj_ptr")  # what later frames read

    def __init__(self, video: torch.nn.Module) -> None:
        stride = max(1, video.memory_temporal_stride_for_eval)
        memories = 0 if video.num_maskmem < 2 else 1 + max(0, video.num_maskmem - 2) * stride
        pointers = video.max_obj_ptrs_in_encoder - 1 if video.use_obj_ptrs_in_encoder else 0
        self.window = max(memories, pointers)
        self.outputs: dict[str, dict[int, dict[str, Any]]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}

    def add(self, frame: int, output: dict[str, Any], seed: bool) -> None:
        kept = {key: output[key] for key in self.KEPT}
        if seed:
            self.outputs["cond_frame_outputs"] = {frame: kept}
            self.outputs["non_cond_frame_outputs"] = {}
            return
        recent = self.outputs["non_cond_frame_outputs"]
        recent[frame] = kept
        for old in [t for t in recent if t <= frame - self.window]:
            del recent[old]


@dataclass
class FrameFeatures:
    """One frame through SAM 2's image encoder, flattened as ``track_step`` reads it."""

    features: list[torch.Tensor]
    positions: list[torch.Tensor]
    sizes: list[tuple[int, int]]


@dataclass
class Propagated:
    low_res_logits: torch.Tensor  # (S/4, S/4) fp32 mask logits in SAM 2's square input frame
    score: float  # SAM 2's predicted IoU of the chosen mask
    object_score: torch.Tensor  # SAM 2's logit that the object is visible (a mask is empty where it is <= 0)


def encode_frame(video: torch.nn.Module, pixels: torch.Tensor) -> FrameFeatures:
    """SAM 2's image encoder on one frame (1, 3, S, S), with the mask decoder's high-resolution
    projections: what every track of ``video`` reads that frame from (it holds no track state)."""
    _, features, positions, sizes = video._prepare_backbone_features(video.forward_image(pixels))
    return FrameFeatures(features, positions, sizes)


class VideoTrack:
    """One object through a stream of frames: seeded with a mask, then propagated frame by frame."""

    def __init__(self, video: torch.nn.Module) -> None:
        self.video = video
        self.bank = MemoryBank(video)
        self.frame = -1

    def encode(self, pixels: torch.Tensor) -> FrameFeatures:
        return encode_frame(self.video, pixels)

    def seed(self, frame: FrameFeatures, mask: torch.Tensor) -> None:
        """Start from ``mask`` (bool H x W, any size), as SAM 2's ``add_new_mask`` does: the mask,
        resized to SAM 2's square input, is the seed frame's output and first memory."""
        size = self.video.image_size
        resized = F.interpolate(mask[None, None].float(), size=(size, size), mode="bilinear",
                                align_corners=False, antialias=True) >= 0.5
        output, _, _ = self._track_step(0, frame, resized.to(frame.features[-1].dtype))
        self.bank.add(0, output, seed=True)
        self.frame = 0

    def propagate(self, frame: FrameFeatures) -> Propagated:
        """The next frame's mask from the memory of the previous ones (no prompt)."""
        index = self.frame + 1
        output, ious, object_score = self._track_step(index, frame, None)
        self.bank.add(index, output, seed=False)
        self.frame = index
        # With several candidate masks SAM 2 keeps the one of highest predicted IoU.
        return Propagated(output["pred_masks"][0, 0].float(), float(ious.detach().max()), object_score.reshape(()))

    def _track_step(self, index: int, frame: FrameFeatures,
                    mask: torch.Tensor | None) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """``SAM2Base.track_step`` in its two halves (it does not return the predicted IoU)."""
        video = self.video
        # The normalisation of object pointers' temporal encoding is that of a video of at least
        # max_obj_ptrs_in_encoder frames, as SAM 2's video predictor has on any long video.
        frames = max(index + 1, video.max_obj_ptrs_in_encoder)
        output, sam_outputs, _, _ = video._track_step(index, mask is not None, frame.features, frame.positions,
                                                      frame.sizes, None, mask, self.bank.outputs, frames, False, None)
        _, _, ious, low_res, high_res, obj_ptr, object_score = sam_outputs
        output.update(pred_masks=low_res, obj_ptr=obj_ptr)
        video._encode_memory_in_output(frame.features, frame.sizes, None, True, high_res, object_score, output)
        return output, ious, object_score
