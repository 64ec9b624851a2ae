"""Text + image preprocessing for Qwen2.5-VL / Qwen2-VL reasoners.

The stock ``Qwen2_5_VLProcessor`` insists on a video processor, which cannot be built without
torchvision (absent on CPU-only installs), and it re-processes the image once per prompt. LENS
keeps the two parts it needs (tokenizer + Qwen2-VL image processor + chat template) and expands
the ``<|image_pad|>`` placeholder itself, so one image is processed once for any number of queries.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase, Qwen2TokenizerFast, Qwen2VLImageProcessorPil

from lens_model.errors import CheckpointFormatError, one_line
from lens_model.prompts import build_messages
from lens_model.typed_json import CheckedFields, bounded, from_json

CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
IMAGE_PAD = "<|image_pad|>"
END_OF_TURN = "<|im_end|>"
PATCHING_KEYS = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
PLACEHOLDER_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


@dataclass
class EncodedImage:
    pixel_values: torch.Tensor  # (patches, C*T*P*P)
    grid_thw: torch.Tensor  # (1, 3)
    resized_size: tuple[int, int]  # (width, height) of the frame the reasoner sees
    num_tokens: int  # image placeholder tokens after the merge (merge_size x merge_size patches each)


@dataclass
class EncodedPrompts:
    input_ids: torch.Tensor  # (B, L), left-padded
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor  # 1 at image tokens, 0 elsewhere


def token_at(point: tuple[float, float], size: tuple[float, float], grid: tuple[int, int]) -> int:
    """Raster index of the merged image token holding pixel ``point`` (x, y) of an image of ``size``
    (width, height) split into ``grid`` (rows, columns) tokens."""
    rows, cols = grid
    row = min(max(int(point[1] * rows / size[1]), 0), rows - 1)
    col = min(max(int(point[0] * cols / size[0]), 0), cols - 1)
    return row * cols + col


def resize_longest(image: Image.Image, longest_side: int) -> Image.Image:
    """``image`` scaled so its longest side is ``longest_side`` (also enlarging), with the authors'
    arithmetic (sizes truncated to integers) and PIL's default bicubic filter."""
    width, height = image.size
    scale = longest_side / width if width > height else longest_side / height
    return image.resize((max(int(width * scale), 1), max(int(height * scale), 1)), Image.BICUBIC)


class ReasonerProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor: Qwen2VLImageProcessorPil, chat_template: str):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.eos_token_ids = sorted(
            {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")} - {None, tokenizer.unk_token_id}
        )
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[-1]
        # What ends an assistant turn in the chat format, and so every teacher-forced answer.
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if self.end_of_turn_id in (None, tokenizer.unk_token_id):
            raise CheckpointFormatError(f"the tokenizer has no {END_OF_TURN} token, which ends every chat turn")
        # Vision placeholders belong to prompts only; generation must never emit them.
        self.placeholder_token_ids = sorted(
            {tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDER_TOKENS} - {None, tokenizer.unk_token_id}
        )

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)

    def token_grid(self, grid_thw: torch.Tensor) -> tuple[int, int]:
        """Rows and columns of the merged image tokens of one image's (t, h, w) patch grid; the
        language model sees them in raster order."""
        _, rows, cols = (int(v) for v in grid_thw)
        return rows // self.merge_size, cols // self.merge_size

    def render(self, query: str, template: str, system_prompt: str, instruction: str = "") -> str:
        messages = build_messages(query, template, system_prompt, instruction)
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )

    def encode_image(self, image: np.ndarray, longest_side: int = 0) -> EncodedImage:
        """Patches of ``image`` at the reasoner's resolution (smart resize to min..max pixels, multiple
        of patch x merge size); ``longest_side`` first resizes it to that longest side, as the authors'
        ReasonSeg pipeline did (``Preprocessing.reasoner_longest_side``)."""
        pil = Image.fromarray(image)
        if longest_side:
            pil = resize_longest(pil, longest_side)
        out = self.image_processor(images=[pil], return_tensors="pt")
        grid = out["image_grid_thw"]
        patch = int(self.image_processor.patch_size)
        _, gh, gw = (int(v) for v in grid[0])
        return EncodedImage(out["pixel_values"], grid, (gw * patch, gh * patch), int(grid.prod()) // self.merge_size**2)

    def encode_prompts(self, texts: list[str], image_tokens: list[int]) -> EncodedPrompts:
        """Tokenise rendered prompts, expanding each one's single image placeholder to its token count."""
        expanded = [text.replace(IMAGE_PAD, IMAGE_PAD * n, 1) for text, n in zip(texts, image_tokens)]
        enc = self.tokenizer(expanded, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
        ids = enc["input_ids"]
        return EncodedPrompts(ids, enc["attention_mask"], (ids == self.image_token_id).long())

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        (directory / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, min_pixels: int, max_pixels: int) -> "ReasonerProcessor":
        """The processor files of a model folder (untrusted: any defect is a CheckpointFormatError)."""
        directory = Path(directory)
        try:
            # Qwen2-VL and Qwen2.5-VL share the Qwen2 tokenizer; naming it avoids AutoTokenizer reading
            # LENS's config.json. The tokenizers library raises plain Exceptions for malformed files.
            tokenizer = Qwen2TokenizerFast.from_pretrained(directory, local_files_only=True)
        except Exception as exc:
            raise CheckpointFormatError(f"cannot load the tokenizer in {directory}: {one_line(exc)}") from None
        patching = _vision_patching(directory)
        image_processor = Qwen2VLImageProcessorPil(
            **{k: v for k, v in dataclasses.asdict(patching).items() if v is not None},
            # The LENS config decides the resolution the reasoner sees, whatever the checkpoint shipped with.
            size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
        template = _chat_template(directory, tokenizer)
        if not template:
            raise CheckpointFormatError(f"no chat template in {directory} (chat_template.jinja/.json or tokenizer config)")
        return cls(tokenizer, image_processor, template)


@dataclass
class VisionPatching(CheckedFields):
    """What a checkpoint's preprocessor config may set: patch geometry and pixel normalisation."""

    patch_size: int = bounded(14, 1, 64)
    temporal_patch_size: int = bounded(2, 1, 8)
    merge_size: int = bounded(2, 1, 8)
    image_mean: list[float] | None = None  # None: the image processor's default
    image_std: list[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low in (("image_mean", float("-inf")), ("image_std", 0.0)):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or not all(low < v < 1e6 for v in value)):
                raise CheckpointFormatError(f"preprocessor config {name} must be 3 numbers above {low}, got {value}")


def _vision_patching(directory: Path) -> VisionPatching:
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = directory / name
        if path.is_file():
            data = _read_json(path)
            data = data.get("image_processor", data) if isinstance(data, dict) else data
            if not isinstance(data, dict):
                raise CheckpointFormatError(f"{path} does not hold a JSON object")
            return from_json(VisionPatching, {k: data[k] for k in PATCHING_KEYS if k in data}, str(path))
    return VisionPatching()


def _chat_template(directory: Path, tokenizer: PreTrainedTokenizerBase) -> str | None:
    for name in CHAT_TEMPLATE_FILES:
        path = directory / name
        if path.is_file():
            if not name.endswith(".json"):
                return path.read_text(encoding="utf-8")
            data = _read_json(path)
            template = data.get("chat_template") if isinstance(data, dict) else None
            if not isinstance(template, str):
                raise CheckpointFormatError(f"{path} has no chat_template string")
            return template
    return getattr(tokenizer, "chat_template", None)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointFormatError(f"cannot read {path}: {one_line(exc)}") from None
