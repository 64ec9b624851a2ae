"""LensConfig: everything needed to rebuild a LENS model offline, stored as ``config.json``."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lens_model.errors import CheckpointFormatError, one_line
from lens_model.prompts import DEFAULT_MAX_QUERY_CHARS, check_instruction
from lens_model.typed_json import CheckedFields, bounded, from_json

PromptCollapse = Literal["conv1d", "none"]
QueryPositions = Literal["sequential", "mrope"]
Template = Literal["direct", "reasoning"]
SamResize = Literal["pil_bilinear", "cv2_linear"]
MAX_TOKEN_ID = 10_000_000

MAX_REASONER_PIXELS = 16_777_216  # 4096 x 4096; Qwen2.5-VL's own default maximum is 12,845,056

# The SAM 2 overrides the authors' build adds (dynamic multimask fallback in eval mode).
RELEASED_SAM2_OVERRIDES = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)


@dataclass
class ConnectorConfig(CheckedFields):
    """The shallow transformer between the reasoner's query states and SAM 2's prompt space."""

    depth: int = bounded(4, 1, 64)
    num_heads: int = bounded(16, 1, 256)
    mlp_ratio: float = bounded(4.0, 0.01, 64.0)
    norm_eps: float = bounded(1e-6, 0.0, 1.0)


@dataclass
class GenerationConfig(CheckedFields):
    """Decoding settings, passed to Hugging Face ``generate``. A released checkpoint's
    ``generation_config.json`` sets ``repetition_penalty``, ``eos_token_ids`` and ``no_repeat_ngram_size``
    (``lens_model.generation_file``); its profile sets the length cap."""

    max_new_tokens: int = bounded(256, 1, 32768)
    # Cap on prompt + answer tokens (the authors' evaluation: 768); None: only ``max_new_tokens`` caps.
    # When set, an answer stops at whichever cap it reaches first.
    max_length: int | None = bounded(None, 2, 1_000_000)
    do_sample: bool = False
    temperature: float = bounded(1.0, 1e-6, 100.0)
    top_p: float = bounded(1.0, 0.0, 1.0)
    top_k: int = bounded(0, 0, 1_000_000)
    repetition_penalty: float = bounded(1.0, 1e-6, 100.0)
    no_repeat_ngram_size: int = bounded(0, 0, 1024)
    # Tokens that end an answer; None: the tokenizer's <|im_end|> and <|endoftext|>.
    eos_token_ids: list[int] | None = None
    # Never emit the vision placeholders (<|image_pad|> ...): see docs/model.md, "Reproducing the paper".
    suppress_placeholders: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eos_token_ids is not None and (
                not 1 <= len(self.eos_token_ids) <= 16 or not all(0 <= t < MAX_TOKEN_ID for t in self.eos_token_ids)):
            raise CheckpointFormatError(
                f"GenerationConfig.eos_token_ids must be 1 to 16 token ids, got {str(self.eos_token_ids)[:60]}")


@dataclass
class Preprocessing(CheckedFields):
    """How an image, a query and a generated answer become model inputs.

    The defaults are this project's; the authors' released checkpoints load with their own settings
    (``lens_model.released_profiles``): ReasonSeg models saw images resized to 640 px on the longest
    side and a SAM 2 input resized by OpenCV, and the authors' code keeps query text verbatim and
    drops every pad token from the query pass.
    """

    # Resize the image so its longest side is this many pixels (PIL bicubic, sizes truncated to
    # integers, also enlarging) before the reasoner's smart resize; 0: no such resize.
    reasoner_longest_side: int = bounded(0, 0, 16384)
    # The SAM 2 input squash: "pil_bilinear" (PIL, antialiased) or "cv2_linear" (cv2.resize
    # INTER_LINEAR, no antialiasing).
    sam_resize: SamResize = "pil_bilinear"
    # Queries: runs of whitespace become one space and the ends are stripped; False: kept verbatim.
    collapse_whitespace: bool = True
    # The query pass leaves every pad-token position (<|endoftext|> for Qwen) out of attention,
    # including an answer's final one, as the authors' mask pass does.
    mask_pad_in_query_pass: bool = False


@dataclass
class LensConfig(CheckedFields):
    """Configuration of a LENS model.

    ``prompt_collapse`` and ``query_positions`` select between the authors' released conventions
    (``"conv1d"``: the M query states are collapsed into one SAM prompt token by a kernel-M Conv1d;
    ``"sequential"``: the query pass uses plain 1-D positions, which forces a full re-forward) and a
    cleaner variant (``"none"``: all M tokens are SAM prompts; ``"mrope"``: the query pass continues
    the generation's M-RoPE positions and reuses its KV cache). The default loads released checkpoints.
    """

    reasoner: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    reasoner_config: dict[str, Any] | None = None  # embedded Qwen2.5-VL config once saved
    num_queries: int = bounded(64, 1, 4096)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    prompt_collapse: PromptCollapse = "conv1d"
    query_positions: QueryPositions = "sequential"
    sam2_config: str = "configs/sam2/sam2_hiera_l.yaml"
    sam2_overrides: list[str] = field(default_factory=lambda: list(RELEASED_SAM2_OVERRIDES))
    sam2_checkpoint: str | None = None  # a foreign SAM 2 .pt, read with weights_only=True
    sam2_model_config: dict[str, Any] | None = None  # embedded resolved SAM 2 model config once saved
    sam_image_size: int = bounded(1024, 32, 4096)
    # The reasoner's resolution bounds; the upper bound keeps a config from blowing up every image.
    min_pixels: int = bounded(3136, 1, MAX_REASONER_PIXELS)
    max_pixels: int = bounded(1_000_000, 1, MAX_REASONER_PIXELS)
    template: Template = "direct"
    system_prompt: str = "You are a helpful assistant. "
    # The user turn for ``template``, a format pattern with {query}; empty: the template's built-in
    # prompt (the paper's). Models trained with their own wording (for example from
    # ``recipes.demo.init_model --instruction``) carry it here.
    instruction: str = ""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    # The released checkpoint whose settings this config carries ("OuyBin/LENS", ...); "" otherwise.
    profile: str = ""
    mask_threshold: float = bounded(0.0, -1e4, 1e4)
    max_query_chars: int = bounded(DEFAULT_MAX_QUERY_CHARS, 1, 100_000)
    random_weights: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()  # types and ranges of every field; dicts become ConnectorConfig etc.
        if self.min_pixels > self.max_pixels:
            raise CheckpointFormatError(f"min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}")
        if self.instruction:
            check_instruction(self.instruction)

    @property
    def reuses_kv_cache(self) -> bool:
        return self.query_positions == "mrope"

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "lens", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LensConfig":
        """A config from untrusted JSON: unknown fields, wrong types and out-of-range values are refused."""
        if not isinstance(data, dict):
            raise CheckpointFormatError(f"config.json must hold a JSON object, got {type(data).__name__}")
        data = dict(data)
        if data.pop("model_type", "lens") != "lens":
            raise CheckpointFormatError("config.json is not a LENS config (model_type != 'lens')")
        return from_json(cls, data, "config.json")

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> "LensConfig":
        path = Path(directory) / "config.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise CheckpointFormatError(f"cannot read {path}: {one_line(exc)}") from None
        return cls.from_dict(data)
