"""Build the untrained demo LENS that every demo stage starts from (``model.init=DIR``).

    python -m recipes.demo.init_model --data DIR --out DIR [--hidden 128 --layers 4 ...]

* Reasoner: the Qwen2.5-VL architecture from a config (no pretrained weights), with a byte-level BPE
  tokenizer trained on the synthetic training split (expressions, reasoning, answers in both
  templates, the prompts) plus Qwen's special tokens, and a small vision tower.
* SAM 2: the tiny Hiera/SAM 2 of ``tiny-random`` at ``--sam-image-size``, without the dynamic
  multimask fallback (only the single-mask output is trained, by ``recipes.demo.sam_pretrain``);
  its weights come from their own seed, ``--sam-seed``.
* Context module: ``--num-queries`` queries, every one a SAM 2 prompt token (``prompt_collapse``
  "none"); ``query_positions`` "mrope", so inference reuses the generation's KV cache.
* ``template`` "reasoning" with the short user turn ``--instruction`` (default ``'Find "{query}".'``:
  a model trained from scratch learns the answer format from SFT, and the paper's 80-token
  description would be a quarter of every training sequence; ``--instruction ''`` keeps the paper's
  prompt), and the reasoner sees images at exactly ``--image-size`` pixels (a multiple of 28), so its
  frame and the synthetic images' pixel frame coincide.
* Two departures from Qwen's defaults for a from-scratch model on these scenes: pixel
  normalisation centred on the backgrounds, and ``--lm-init-std`` 0.088 (= 128 ** -0.5) as the
  language model's initial weight scale instead of Qwen's 0.02.

The defaults build the untrained model of the shipped ``lens-synth-demo`` (``pipeline.sh``).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import Qwen2VLImageProcessorPil

from lens_model import sam_head, tiny
from lens_model.answer_format import format_answer
from lens_model.builtin import DEMO_MODEL
from lens_model.config import ConnectorConfig, GenerationConfig, LensConfig
from lens_model.checkpoints import save_model
from lens_model.modeling import LensModel, build_lens
from lens_model.processor import ReasonerProcessor
from lens_model.prompts import TEMPLATES
from training.data.dataset import TargetDataset
from training.data.registry import load_dataset

SHIPPED_INSTRUCTION = 'Find "{query}".'
SHIPPED_SAM_SEED = 2


@dataclass(frozen=True)
class DemoArchitecture:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    vision_hidden: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    image_size: int = 112
    # Vision patch side and merge factor (Qwen2.5-VL: 14 px patches merged 2x2 into one language token).
    patch_size: int = 14
    merge_size: int = 2
    sam_image_size: int = 128
    sam_embed_dim: int = 16
    num_queries: int = 16
    connector_depth: int = 2
    vocab_size: int = 1024
    max_new_tokens: int = 224
    # Qwen's text RoPE base. Image tokens carry their position in their content (the pretrained
    # tower's dense targets), so the base mattered little for grounding; base 10 scrambled long-range
    # content attention (RESEARCH_LOG.md).
    rope_theta: float = 1e6
    # Pixel normalisation of the reasoner's image processor (every channel), centred on the synthetic
    # scenes' light backgrounds (0.81 ± 0.07) so that background patches embed near zero and the
    # shapes carry the patch embeddings (CLIP's statistics map the background to about +1.1).
    pixel_mean: float = 0.8
    pixel_std: float = 0.25
    # Standard deviation of the language model's initial weights (embeddings included): 128 ** -0.5.
    # Qwen's 0.02 suits its widths (0.02 ~ 2048 ** -0.5); at width 128 binding a query to one of
    # several candidates started about twice as early with 0.088 (RESEARCH_LOG.md).
    lm_init_std: float = 0.088

    def __post_init__(self) -> None:
        merged_patch = self.patch_size * self.merge_size
        if self.image_size % merged_patch:
            raise ValueError(f"image_size must be a multiple of patch_size x merge_size = {merged_patch}, got {self.image_size}")
        if self.sam_image_size % 32:
            raise ValueError(f"sam_image_size must be a multiple of 32 (Hiera's stride), got {self.sam_image_size}")
        if not self.lm_init_std > 0:
            raise ValueError(f"lm_init_std must be positive, got {self.lm_init_std}")
        if self.hidden % self.heads or (self.hidden // self.heads) % 8:
            raise ValueError("hidden / heads must be a multiple of 8 (M-RoPE sections)")


def tokenizer_corpus(dataset: TargetDataset, instruction: str = "") -> Iterator[str]:
    """Every expression, its reasoning and its answers in both templates, and every prompt."""
    if instruction:
        yield instruction
    for template in TEMPLATES.values():
        yield template
    for index, target in enumerate(dataset.targets):
        sample = dataset[index]
        if sample is None:
            continue
        for query in target.queries:
            yield query.text
            objects = [(box, query.text) for box in sample.boxes]
            yield format_answer(objects, "reasoning", query.reasoning or "")
            yield format_answer(objects, "direct")


def sam2_overrides(arch: DemoArchitecture) -> list[str]:
    """The tiny SAM 2 of ``tiny-random``, resized; channel widths double at each of Hiera's 4 stages."""
    channels = [arch.sam_embed_dim * 2**i for i in (3, 2, 1, 0)]
    return [
        *tiny.TINY_SAM2_OVERRIDES,
        f"++model.image_size={arch.sam_image_size}",
        f"++model.image_encoder.trunk.embed_dim={arch.sam_embed_dim}",
        f"++model.image_encoder.neck.backbone_channel_list=[{','.join(map(str, channels))}]",
    ]


def build_demo_model(dataset: TargetDataset, arch: DemoArchitecture, seed: int = 0, sam_seed: int = 0,
                     instruction: str = "") -> LensModel:
    torch.manual_seed(seed)
    tokenizer = tiny.build_tokenizer(list(tokenizer_corpus(dataset, instruction)), arch.vocab_size)
    pixels = arch.image_size**2
    config = LensConfig(
        reasoner=DEMO_MODEL,
        num_queries=arch.num_queries,
        connector=ConnectorConfig(depth=arch.connector_depth, num_heads=arch.heads),
        prompt_collapse="none",
        query_positions="mrope",
        sam2_config="configs/sam2/sam2_hiera_t.yaml",
        sam2_overrides=sam2_overrides(arch),
        sam_image_size=arch.sam_image_size,
        min_pixels=pixels,
        max_pixels=pixels,
        template="reasoning",
        instruction=instruction,
        generation=GenerationConfig(max_new_tokens=arch.max_new_tokens),
        random_weights=True,
        name=DEMO_MODEL,
    )
    reasoner_config = tiny.reasoner_config(tokenizer, arch.hidden, arch.layers, arch.heads)
    reasoner_config.text_config.rope_parameters["rope_theta"] = arch.rope_theta
    reasoner_config.text_config.initializer_range = arch.lm_init_std
    reasoner_config.vision_config.update(dict(
        depth=arch.vision_depth, hidden_size=arch.vision_hidden, intermediate_size=2 * arch.vision_hidden,
        num_heads=arch.vision_heads, window_size=arch.image_size, fullatt_block_indexes=[arch.vision_depth - 1],
        patch_size=arch.patch_size, spatial_merge_size=arch.merge_size,
    ))
    config.reasoner_config = reasoner_config.to_dict()
    config.sam2_model_config = sam_head.resolve_sam2_config(config.sam2_config, config.sam2_overrides)
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=arch.patch_size, temporal_patch_size=2,
        merge_size=arch.merge_size,
        image_mean=[arch.pixel_mean] * 3, image_std=[arch.pixel_std] * 3)
    processor = ReasonerProcessor(tokenizer, image_processor, tiny.CHAT_TEMPLATE)
    # SAM 2 gets its own random stream: drawn after the reasoner, its weights would change with the
    # tokenizer's size and the reasoner's shape, and whether box pretraining leaves its "every
    # object" plateau depends on SAM 2's initial weights.
    return build_lens(config, processor, sam_seed=sam_seed)


def parameter_counts(model: LensModel) -> dict[str, int]:
    parts = {"reasoner.model.visual.": 0, "reasoner.": 0, "context.": 0, "sam.": 0}
    for name, param in model.named_parameters():
        prefix = next(p for p in parts if name.startswith(p))
        parts[prefix] += param.numel()
    return {"vision": parts["reasoner.model.visual."], "language": parts["reasoner."], "context": parts["context."],
            "sam": parts["sam."]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recipes.demo.init_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="root of `python -m training.synthetic --out` (train split used)")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--out", required=True, help="folder for the untrained model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the reasoner's and context module's weights")
    parser.add_argument("--sam-seed", type=int, default=SHIPPED_SAM_SEED,
                        help=f"seed of SAM 2's weights (default {SHIPPED_SAM_SEED}: its box pretraining leaves the "
                             "'every object' plateau; another seed may not, and sam_pretrain then stops the pipeline)")
    parser.add_argument("--instruction", default=SHIPPED_INSTRUCTION,
                        help=f"user turn, a format pattern with {{query}} (default {SHIPPED_INSTRUCTION!r}); "
                             "'' for the paper's reasoning prompt")
    for name, value in asdict(DemoArchitecture()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    arch = DemoArchitecture(**{name: getattr(args, name) for name in asdict(DemoArchitecture())})
    start = time.perf_counter()
    model = build_demo_model(load_dataset(args.dataset, args.data, "train", per="ref"), arch, args.seed, args.sam_seed,
                             args.instruction)
    save_model(model, Path(args.out))
    counts = parameter_counts(model)
    size_mb = (Path(args.out) / "model.safetensors").stat().st_size / 1e6
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: vocabulary {len(model.processor.tokenizer)}, "
          f"parameters {', '.join(f'{k} {v / 1e6:.2f}M' for k, v in counts.items())}, {size_mb:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
