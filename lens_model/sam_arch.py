"""SAM 2's architecture as data: the exact ``sam2`` classes a description may name, and their fields.

A SAM 2 is described as a tree of ``{"_target_": "<class path>", "<field>": value, ...}`` nodes, the
layout of SAM 2's own YAML files; LENS checkpoints embed that tree in ``config.json``. A model
folder is untrusted data, so the tree is rebuilt here instead of by Hydra's ``instantiate``:

* a ``_target_`` must be one of the class paths in :data:`ARCHITECTURE`, spelled exactly; the class
  is imported from this table, never looked up from the string (no attribute walks);
* each node may only set the fields its entry lists, with values of the declared type and range
  (no callables, no file paths, no ``${...}`` interpolation), and must set the required ones.

Ranges cover every SAM 2 / 2.1 size (tiny to large) with headroom; they keep a description from
naming absurd sizes, and the loaders additionally check the whole model against its weight files
before allocating it (``lens_model.weights``).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lens_model.errors import CheckpointFormatError, one_line
from lens_model.typed_json import check_value, refuse

TARGET = "_target_"


class FieldSpec(Protocol):
    def check(self, value: Any, where: str) -> Any:
        """``value`` if it is acceptable (a built module for nodes), else CheckpointFormatError."""


@dataclass(frozen=True)
class Flag:
    def check(self, value: Any, where: str) -> bool:
        return check_value(value, bool, where)


@dataclass(frozen=True)
class Number:
    """An integer (``integer=True``) or a real number within [low, high]; passed on unchanged."""

    low: float
    high: float
    integer: bool = True

    def check(self, value: Any, where: str) -> int | float:
        return check_value(value, int if self.integer else float, where, (self.low, self.high))


def Int(low: int, high: int) -> Number:
    return Number(low, high, integer=True)


def Real(low: float, high: float) -> Number:
    return Number(low, high, integer=False)


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]

    def check(self, value: Any, where: str) -> Any:
        # Compare with types too: JSON ``0`` must not pass for ``False``.
        if not any(type(value) is type(v) and value == v for v in self.values):
            raise refuse(where, f"must be one of {list(self.values)}", value)
        return value


@dataclass(frozen=True)
class Ints:
    """A list of integers in [low, high] whose length lies in [min_len, max_len]."""

    min_len: int
    max_len: int
    low: int
    high: int

    def check(self, value: Any, where: str) -> list[int]:
        if not isinstance(value, list) or not self.min_len <= len(value) <= self.max_len:
            raise refuse(where, f"must be a list of {self.min_len}..{self.max_len} integers", value)
        item = Int(self.low, self.high)
        return [item.check(v, f"{where}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class Nullable:
    inner: FieldSpec

    def check(self, value: Any, where: str) -> Any:
        return None if value is None else self.inner.check(value, where)


@dataclass(frozen=True)
class Fields:
    """A plain mapping (no ``_target_``) with only the listed keys."""

    specs: dict[str, FieldSpec]

    def check(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise refuse(where, "must be a mapping", value)
        return {key: _field(self.specs, key, item, where).check(item, f"{where}.{key}") for key, item in value.items()}


@dataclass(frozen=True)
class Node:
    """A nested module: a node whose ``_target_`` is one of ``targets``."""

    targets: tuple[str, ...]

    def check(self, value: Any, where: str) -> Any:
        return build_node(value, where, self.targets)


@dataclass(frozen=True)
class ClassSpec:
    fields: dict[str, FieldSpec]
    required: frozenset[str] = field(default_factory=frozenset)


def _field(specs: dict[str, FieldSpec], key: Any, value: Any, where: str) -> FieldSpec:
    if key not in specs:
        raise refuse(where, f"has no field {key!r} (allowed: {', '.join(sorted(specs))})", value)
    return specs[key]


BASE = "sam2.modeling.sam2_base.SAM2Base"
IMAGE_ENCODER = "sam2.modeling.backbones.image_encoder.ImageEncoder"
HIERA = "sam2.modeling.backbones.hieradet.Hiera"
FPN_NECK = "sam2.modeling.backbones.image_encoder.FpnNeck"
SINE = "sam2.modeling.position_encoding.PositionEmbeddingSine"
MEMORY_ATTENTION = "sam2.modeling.memory_attention.MemoryAttention"
MEMORY_ATTENTION_LAYER = "sam2.modeling.memory_attention.MemoryAttentionLayer"
ROPE_ATTENTION = "sam2.modeling.sam.transformer.RoPEAttention"
MEMORY_ENCODER = "sam2.modeling.memory_encoder.MemoryEncoder"
MASK_DOWNSAMPLER = "sam2.modeling.memory_encoder.MaskDownSampler"
FUSER = "sam2.modeling.memory_encoder.Fuser"
CX_BLOCK = "sam2.modeling.memory_encoder.CXBlock"

WIDTH = Int(1, 4096)  # channel widths
PROBABILITY = Real(0.0, 1.0)
KERNEL = Int(1, 31)
PADDING = Int(0, 15)
STRIDE = Int(1, 16)

ARCHITECTURE: dict[str, ClassSpec] = {
    BASE: ClassSpec({
        "image_encoder": Node((IMAGE_ENCODER,)),
        "memory_attention": Node((MEMORY_ATTENTION,)),
        "memory_encoder": Node((MEMORY_ENCODER,)),
        "num_maskmem": Int(1, 64),
        "image_size": Int(32, 4096),
        "backbone_stride": Int(1, 64),
        "sigmoid_scale_for_mem_enc": Real(-1e4, 1e4),
        "sigmoid_bias_for_mem_enc": Real(-1e4, 1e4),
        "binarize_mask_from_pts_for_mem_enc": Flag(),
        "use_mask_input_as_output_without_sam": Flag(),
        "max_cond_frames_in_attn": Int(-1, 4096),
        "directly_add_no_mem_embed": Flag(),
        "use_high_res_features_in_sam": Flag(),
        "multimask_output_in_sam": Flag(),
        "multimask_min_pt_num": Int(0, 1024),
        "multimask_max_pt_num": Int(0, 1024),
        "multimask_output_for_tracking": Flag(),
        "use_multimask_token_for_obj_ptr": Flag(),
        "iou_prediction_use_sigmoid": Flag(),
        "memory_temporal_stride_for_eval": Int(1, 1024),
        "non_overlap_masks_for_mem_enc": Flag(),
        "use_obj_ptrs_in_encoder": Flag(),
        "max_obj_ptrs_in_encoder": Int(1, 1024),
        "add_tpos_enc_to_obj_ptrs": Flag(),
        "proj_tpos_enc_in_obj_ptrs": Flag(),
        "use_signed_tpos_enc_to_obj_ptrs": Flag(),
        "only_obj_ptrs_in_the_past_for_eval": Flag(),
        "pred_obj_scores": Flag(),
        "pred_obj_scores_mlp": Flag(),
        "fixed_no_obj_ptr": Flag(),
        "soft_no_obj_ptr": Flag(),
        "use_mlp_for_obj_ptr_proj": Flag(),
        "no_obj_embed_spatial": Flag(),
        "sam_mask_decoder_extra_args": Nullable(Fields({
            "dynamic_multimask_via_stability": Flag(),
            "dynamic_multimask_stability_delta": PROBABILITY,
            "dynamic_multimask_stability_thresh": PROBABILITY,
        })),
        "compile_image_encoder": Choice((False,)),  # loading never triggers a compiler
    }, frozenset({"image_encoder", "memory_attention", "memory_encoder"})),
    IMAGE_ENCODER: ClassSpec({
        "trunk": Node((HIERA,)), "neck": Node((FPN_NECK,)), "scalp": Int(0, 3),
    }, frozenset({"trunk", "neck"})),
    # No ``weights_path``: Hiera would torch.load that file.
    HIERA: ClassSpec({
        "embed_dim": Int(1, 1024),
        "num_heads": Int(1, 64),
        "drop_path_rate": PROBABILITY,
        "q_pool": Int(0, 8),
        "q_stride": Ints(2, 2, 1, 8),
        "stages": Ints(1, 8, 1, 128),
        "dim_mul": Real(1.0, 4.0),
        "head_mul": Real(1.0, 4.0),
        "window_pos_embed_bkg_spatial_size": Ints(2, 2, 1, 256),
        "window_spec": Ints(1, 8, 0, 256),
        "global_att_blocks": Ints(0, 256, 0, 1024),
        "return_interm_layers": Flag(),
    }),
    FPN_NECK: ClassSpec({
        "position_encoding": Node((SINE,)),
        "d_model": WIDTH,
        "backbone_channel_list": Ints(1, 8, 1, 16384),
        "kernel_size": KERNEL,
        "stride": STRIDE,
        "padding": PADDING,
        "fpn_interp_model": Choice(("nearest", "bilinear")),
        "fuse_type": Choice(("sum", "avg")),
        "fpn_top_down_levels": Nullable(Ints(0, 8, 0, 7)),
    }, frozenset({"position_encoding", "d_model", "backbone_channel_list"})),
    SINE: ClassSpec({
        "num_pos_feats": Int(2, 4096),
        "temperature": Real(1.0, 1e9),
        "normalize": Flag(),
        "scale": Nullable(Real(0.0, 1e4)),
        "warmup_cache": Flag(),
        "image_size": Int(32, 4096),
        "strides": Ints(1, 8, 1, 128),
    }, frozenset({"num_pos_feats"})),
    MEMORY_ATTENTION: ClassSpec({
        "d_model": WIDTH,
        "pos_enc_at_input": Flag(),
        "layer": Node((MEMORY_ATTENTION_LAYER,)),
        "num_layers": Int(0, 64),
        "batch_first": Flag(),
    }, frozenset({"d_model", "pos_enc_at_input", "layer", "num_layers"})),
    MEMORY_ATTENTION_LAYER: ClassSpec({
        "activation": Choice(("relu", "gelu", "glu")),
        "cross_attention": Node((ROPE_ATTENTION,)),
        "self_attention": Node((ROPE_ATTENTION,)),
        "d_model": WIDTH,
        "dim_feedforward": Int(1, 65536),
        "dropout": PROBABILITY,
        "pos_enc_at_attn": Flag(),
        "pos_enc_at_cross_attn_keys": Flag(),
        "pos_enc_at_cross_attn_queries": Flag(),
    }, frozenset({"activation", "cross_attention", "self_attention", "d_model", "dim_feedforward", "dropout",
                  "pos_enc_at_attn", "pos_enc_at_cross_attn_keys", "pos_enc_at_cross_attn_queries"})),
    ROPE_ATTENTION: ClassSpec({
        "embedding_dim": WIDTH,
        "num_heads": Int(1, 64),
        "downsample_rate": Int(1, 64),
        "dropout": PROBABILITY,
        "kv_in_dim": Nullable(WIDTH),
        "rope_theta": Real(1.0, 1e9),
        "rope_k_repeat": Flag(),
        "feat_sizes": Ints(2, 2, 1, 1024),
    }, frozenset({"embedding_dim", "num_heads"})),
    MEMORY_ENCODER: ClassSpec({
        "out_dim": WIDTH,
        "mask_downsampler": Node((MASK_DOWNSAMPLER,)),
        "fuser": Node((FUSER,)),
        "position_encoding": Node((SINE,)),
        "in_dim": WIDTH,
    }, frozenset({"out_dim", "mask_downsampler", "fuser", "position_encoding"})),
    MASK_DOWNSAMPLER: ClassSpec({
        "embed_dim": WIDTH, "kernel_size": KERNEL, "stride": STRIDE, "padding": PADDING, "total_stride": Int(1, 256),
    }),
    FUSER: ClassSpec({
        "layer": Node((CX_BLOCK,)), "num_layers": Int(0, 64), "dim": Nullable(WIDTH), "input_projection": Flag(),
    }, frozenset({"layer", "num_layers"})),
    CX_BLOCK: ClassSpec({
        "dim": WIDTH, "kernel_size": KERNEL, "padding": PADDING, "drop_path": PROBABILITY,
        "layer_scale_init_value": Real(0.0, 10.0), "use_dwconv": Flag(),
    }, frozenset({"dim"})),
}


def build_sam2_base(description: Any, reuse: Mapping[str, Any] | None = None) -> Any:
    """The SAM2Base a description names, after checking every node and field against the table.

    ``reuse`` passes already built modules for some of its top-level fields (the tracker's video
    SAM 2 reuses a LensModel's image encoder, built from this same description): those fields must
    be allowed ones, and their nodes are not built again."""
    return build_node(description, "sam2_model_config", (BASE,), reuse or {})


def build_node(node: Any, where: str, targets: tuple[str, ...], reuse: Mapping[str, Any] | None = None) -> Any:
    if not isinstance(node, Mapping):
        raise refuse(where, "must be a mapping with a _target_", node)
    target = node.get(TARGET)
    if target not in targets:
        raise refuse(where, f"names a class that is not allowed here (allowed: {', '.join(targets)})", target)
    spec = ARCHITECTURE[target]
    missing = sorted(spec.required - set(node))
    if missing:
        raise refuse(where, f"lacks required field(s) {missing}", target)
    reuse = reuse or {}
    unknown = sorted(set(reuse) - set(node))
    if unknown:
        raise refuse(where, "cannot reuse modules for fields it does not set", unknown)
    # Children are built in the description's order, as Hydra does, so random initialisation is unchanged.
    kwargs = {}
    for key, value in node.items():
        if key != TARGET:
            checker = _field(spec.fields, key, value, where)
            kwargs[key] = reuse[key] if key in reuse else checker.check(value, f"{where}.{key}")
    module_name, _, class_name = target.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        return cls(**kwargs)
    except (AssertionError, TypeError, ValueError, RuntimeError, IndexError, ZeroDivisionError) as exc:
        # Fields that are each valid can still disagree (e.g. stages vs window_spec lengths).
        raise CheckpointFormatError(f"{where} ({class_name}) is inconsistent: {one_line(exc)}") from None
