"""``python -m training.grpo --config FILE [key=value ...]``: LENS stage 2, GRPO with unified rewards.

Under DeepSpeed: ``deepspeed --num_gpus 8 -m training.grpo --config training/configs/grpo_qwen2p5_3b.yaml``.
"""
from __future__ import annotations

import sys

from training.common.config import parse_cli, stage_main
from training.grpo.config import GRPOConfig
from training.grpo.trainer import train


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(argv, GRPOConfig, description="LENS stage 2: GRPO with format, box-IoU and mask-IoU rewards")

    def run() -> int:
        train(cfg)
        return 0

    return stage_main("grpo", run)


if __name__ == "__main__":
    sys.exit(main())
