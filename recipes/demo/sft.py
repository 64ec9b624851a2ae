"""SFT for the demo recipe: ``training.sft`` plus the attention-grounding term its from-scratch
reasoner needs (``recipes.demo.grounding_attention``).

    python -m recipes.demo.sft --config recipes/demo/configs/sft.yaml [key=value ...]
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from training.common.config import parse_cli, stage_main
from recipes.demo.grounding_attention import AttentionGrounding, GroundingAttentionSection
from training.sft import SFTConfig, train


@dataclass
class DemoSFTConfig(SFTConfig):
    grounding_attention: GroundingAttentionSection = field(default_factory=GroundingAttentionSection)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(argv, DemoSFTConfig, description="Demo recipe SFT: the answer format, with attention grounding")
    grounding = cfg.grounding_attention

    def run() -> int:
        train(cfg, aux=AttentionGrounding(grounding) if grounding.weight > 0 else None)
        return 0

    return stage_main("sft", run)


if __name__ == "__main__":
    sys.exit(main())
