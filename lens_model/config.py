"""LensConfig: everything needed to rebuild a LENS model offline, stored as ``config.json``."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lens_model.errors import CheckpointFormatError
from lens_model.prompts import check_instruction

PromptCollapse = Literal["conv1d", "none"]
QueryPositions = Literal["sequential", "mrope"]
Template = Literal["direct", "reasoning"]

# The SAM 2 overrides the authors' build adds (dynamic multimask fallback in eval mode).
RELEASED_SAM2_OVERRIDES = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)


@dataclass
class ConnectorConfig:
    """The shallow transformer between the reasoner's query states and SAM 2's prompt space."""

    depth: int = 4
    num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0


@dataclass
class LensConfig:
    """Configuration of a LENS model.

    ``prompt_collapse`` and ``query_positions`` select between the authors' released conventions
    (``"conv1d"``: the M query states are collapsed into one SAM prompt token by a kernel-M Conv1d;
    ``"sequential"``: the query pass uses plain 1-D positions, which forces a full re-forward) and a
    cleaner variant (``"none"``: all M tokens are SAM prompts; ``"mrope"``: the query pass continues
    the generation's M-RoPE positions and reuses its KV cache). The default loads released checkpoints.
    """

    reasoner: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    reasoner_config: dict[str, Any] | None = None  # embedded Qwen2.5-VL config once saved
    num_queries: int = 64
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    prompt_collapse: PromptCollapse = "conv1d"
    query_positions: QueryPositions = "sequential"
    sam2_config: str = "configs/sam2/sam2_hiera_l.yaml"
    sam2_overrides: list[str] = field(default_factory=lambda: list(RELEASED_SAM2_OVERRIDES))
    sam2_checkpoint: str | None = None  # a foreign SAM 2 .pt, read with weights_only=True
    sam2_model_config: dict[str, Any] | None = None  # embedded resolved SAM 2 model config once saved
    sam_image_size: int = 1024
    min_pixels: int = 3136
    max_pixels: int = 1_000_000
    template: Template = "direct"
    system_prompt: str = "You are a helpful assistant. "
    # The user turn for ``template``, a format pattern with {query}; empty: the template's built-in
    # prompt (the paper's). Models trained with their own wording (for example from
    # ``training.demo.init_model --instruction``) carry it here.
    instruction: str = ""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    mask_threshold: float = 0.0
    max_query_chars: int = 2000
    random_weights: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.connector, dict):
            self.connector = ConnectorConfig(**self.connector)
        if isinstance(self.generation, dict):
            self.generation = GenerationConfig(**self.generation)
        if self.prompt_collapse not in ("conv1d", "none"):
            raise CheckpointFormatError(f"prompt_collapse must be 'conv1d' or 'none', got {self.prompt_collapse!r}")
        if self.query_positions not in ("sequential", "mrope"):
            raise CheckpointFormatError(f"query_positions must be 'sequential' or 'mrope', got {self.query_positions!r}")
        if self.template not in ("direct", "reasoning"):
            raise CheckpointFormatError(f"template must be 'direct' or 'reasoning', got {self.template!r}")
        if self.num_queries < 1:
            raise CheckpointFormatError("num_queries must be at least 1")
        if self.instruction:
            check_instruction(self.instruction)

    @property
    def reuses_kv_cache(self) -> bool:
        return self.query_positions == "mrope"

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "lens", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LensConfig":
        data = dict(data)
        if data.pop("model_type", "lens") != "lens":
            raise CheckpointFormatError("config.json is not a LENS config (model_type != 'lens')")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointFormatError(f"unknown LensConfig fields in config.json: {unknown}")
        return cls(**data)

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> "LensConfig":
        path = Path(directory) / "config.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointFormatError(f"cannot read {path}: {exc}") from exc
        return cls.from_dict(data)
