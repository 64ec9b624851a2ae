"""SAM 2 as LENS's mask head: built from the ``sam2`` package's modeling code, prompted with embeddings.

The image path is split so that the frozen part (Hiera trunk + FPN neck) can be computed once per
image and cached, while the trainable part (``conv_s0``/``conv_s1`` high-res projections, prompt
encoder, mask decoder) runs per prompt. The memory modules (video tracking) are removed.

SAM 2 is built from a description checked by ``lens_model.sam_arch`` (never by Hydra's
``instantiate``): a description read from a model folder cannot choose code to run.
"""
from __future__ import annotations

import importlib.resources
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from lens_model.errors import CheckpointFormatError, one_line
from lens_model.sam_arch import build_sam2_base

MEMORY_MODULES = ("memory_attention", "memory_encoder", "maskmem_tpos_enc")
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
CONFIG_DIR = "configs"
TARGET_KEY = "_target_"
# ``[++|+]model.<dotted.key>=<value>``: a plain YAML value, never an interpolation or a class.
OVERRIDE = re.compile(r"\+{0,2}(model(?:\.[A-Za-z_][A-Za-z0-9_]*)+)=(.*)", re.DOTALL)


@dataclass
class SamImageFeatures:
    """Frozen-encoder outputs for a batch of images (before the trainable high-res projections)."""

    fpn: list[torch.Tensor]  # three levels, finest first: (B,256,S/4,S/4), (B,256,S/8,S/8), (B,256,S/16,S/16)

    def select(self, index: torch.Tensor | list[int]) -> "SamImageFeatures":
        return SamImageFeatures([level[index] for level in self.fpn])

    def to(self, device: torch.device | str) -> "SamImageFeatures":
        return SamImageFeatures([level.to(device) for level in self.fpn])


def resolve_sam2_config(config_name: str, overrides: list[str]) -> dict[str, Any]:
    """Load a SAM 2 YAML shipped with the ``sam2`` package and apply ``++model.key=value`` overrides.

    Only the package's own ``configs/**.yaml`` files can be named, and override values are plain YAML
    values (``${...}`` interpolations are refused), so the result is data for ``build_sam2`` to check.
    """
    root = Path(str(importlib.resources.files("sam2"))).resolve()
    path = (root / config_name).resolve()
    if path.suffix != ".yaml" or not path.is_relative_to(root / CONFIG_DIR) or not path.is_file():
        raise CheckpointFormatError(f"SAM 2 config {config_name!r} is not one of the installed sam2 package's configs")
    dotlist = []
    for item in overrides:
        match = OVERRIDE.fullmatch(item) if isinstance(item, str) else None
        if match is None or "${" in match.group(2) or TARGET_KEY in match.group(1).split("."):
            raise CheckpointFormatError(
                f"SAM 2 override {item!r} is not of the form ++model.key=value with a plain value (no class, no ${{...}})")
        dotlist.append(f"{match.group(1)}={match.group(2)}")
    try:
        cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(dotlist))
        return OmegaConf.to_container(cfg.model, resolve=True)
    except OmegaConfBaseException as exc:
        raise CheckpointFormatError(f"SAM 2 config {config_name!r} with overrides {overrides}: {exc}") from None


def build_sam2(model_config: dict[str, Any]) -> torch.nn.Module:
    """Build SAM2Base from a description (see ``lens_model.sam_arch``), without its memory modules."""
    sam = build_sam2_base(model_config)
    for name in MEMORY_MODULES:
        if hasattr(sam, name):
            delattr(sam, name)
    return sam


def read_sam2_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official SAM 2 ``.pt`` (``{"model": state_dict}``), read with ``weights_only=True``."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise CheckpointFormatError(f"cannot read SAM 2 checkpoint {path}: {one_line(exc)}") from None
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointFormatError(f"{path} holds no SAM 2 state dict of named tensors")
    return state


def load_sam2_checkpoint(sam: torch.nn.Module, path: str | Path) -> None:
    """Load an official SAM 2 ``.pt`` into a SAM 2 without memory modules (those tensors are skipped)."""
    state = {k: v for k, v in read_sam2_checkpoint(path).items() if not k.startswith(MEMORY_MODULES)}
    missing, unexpected = sam.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointFormatError(
            f"SAM 2 checkpoint {path} does not match the configured model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        )


def preprocess(image: np.ndarray, size: int, resize: str = "pil_bilinear") -> torch.Tensor:
    """RGB uint8 HxWx3 -> normalised float tensor (3, size, size), squashed without keeping aspect.

    ``resize``: "pil_bilinear" (PIL's antialiased bilinear filter, as torchvision resizes a PIL image:
    the authors' RefCOCO and GroundingSuite inputs) or "cv2_linear" (``cv2.resize`` INTER_LINEAR,
    no antialiasing: the authors' ReasonSeg inputs).
    """
    if resize == "cv2_linear":
        resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    else:
        resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.float32)
    tensor = torch.from_numpy(resized).permute(2, 0, 1)
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    return (tensor - mean) / std


def encode_images(sam: torch.nn.Module, pixels: torch.Tensor) -> SamImageFeatures:
    """Run the (frozen) Hiera trunk and FPN neck on a batch (B,3,S,S)."""
    out = sam.image_encoder(pixels)
    levels = out["backbone_fpn"][-sam.num_feature_levels :]
    return SamImageFeatures(list(levels))


def decode_masks(
    sam: torch.nn.Module,
    features: SamImageFeatures,
    prompts: torch.Tensor,
    repeat_image: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one mask per prompt set.

    ``prompts`` is (N, K, 256) sparse prompt embeddings. With ``repeat_image`` the features hold a
    single image shared by all N prompt sets; otherwise they hold N images. Returns low-resolution
    logits (N, S/4, S/4) and the predicted IoU (N,). In eval mode SAM 2's dynamic multimask
    fallback (stability-based) applies, as in the released model.
    """
    fine, mid, coarse = features.fpn
    decoder = sam.sam_mask_decoder
    high_res = [decoder.conv_s0(fine), decoder.conv_s1(mid)] if sam.use_high_res_features_in_sam else None
    b, c, h, w = coarse.shape
    image_embed = coarse
    if sam.directly_add_no_mem_embed:
        image_embed = coarse + sam.no_mem_embed.view(1, -1, 1, 1).to(coarse.dtype)
    _, dense = sam.sam_prompt_encoder(points=None, boxes=None, masks=None)
    dense = dense.to(prompts.dtype).expand(prompts.shape[0], -1, -1, -1)
    logits, iou, _, _ = decoder(
        image_embeddings=image_embed.to(prompts.dtype),
        image_pe=sam.sam_prompt_encoder.get_dense_pe().to(prompts.dtype),
        sparse_prompt_embeddings=prompts,
        dense_prompt_embeddings=dense,
        multimask_output=False,
        repeat_image=repeat_image,
        high_res_features=None if high_res is None else [f.to(prompts.dtype) for f in high_res],
    )
    return logits[:, 0], iou[:, 0]


def decode_box_masks(sam: torch.nn.Module, features: SamImageFeatures, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 2's own box prompts: (N, 4) boxes x1, y1, x2, y2 in SAM 2's input frame (0..image_size),
    box i on image i of ``features``; returns :func:`decode_masks`'s logits and predicted IoU."""
    sparse, _ = sam.sam_prompt_encoder(points=None, boxes=boxes.float(), masks=None)
    return decode_masks(sam, features, sparse.to(features.fpn[0].dtype), repeat_image=False)


def upsample_logits(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinearly upsample (N, h, w) low-res logits to the original (N, height, width) in fp32."""
    return F.interpolate(logits[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]
