"""GRPO stage configuration (YAML + ``key=value`` overrides, validated against these dataclasses)."""
from __future__ import annotations

from dataclasses import dataclass, field

from lens_model.config import GenerationConfig
from training.lora import LoraSection
from training.losses import MaskLossWeights
from training.stage_config import StageConfig


@dataclass
class RolloutConfig:
    group_size: int = 8  # G completions per prompt
    # How completions are sampled; they end at the model's own end tokens.
    sampling: GenerationConfig = field(default_factory=lambda: GenerationConfig(
        do_sample=True, temperature=0.9, top_p=0.9, top_k=50, max_new_tokens=768))


@dataclass
class RewardConfig:
    # λ weights of the unified reward; 0 switches a reward off.
    weights: dict[str, float] = field(default_factory=lambda: {"format": 1.0, "box": 1.0, "mask": 1.0})
    squared: bool = False  # True: IoU² as in the released code; False: IoU as in the paper


@dataclass
class ObjectiveConfig:
    beta: float = 0.04  # KL(π_θ || π_ref) coefficient, k3 estimator; 0 drops the reference model
    epsilon: float = 0.2  # PPO clip range (used when inner_iterations > 1)
    inner_iterations: int = 1  # optimizer passes over each rollout batch (μ); 1 = the authors' setting
    normalisation: str = "sequence"  # "sequence": per-completion token mean, then mean; "token": global token mean
    advantage_eps: float = 1e-4
    unbiased_std: bool = True
    seg_weight: float = 1.0  # α of α·(BCE + Dice) on the masks of all completions
    seg_loss: MaskLossWeights = field(default_factory=MaskLossWeights)


@dataclass
class GRPOConfig(StageConfig):
    # engine.micro_batch_size counts prompts; each brings group_size completions.
    trainable: list[str] = field(default_factory=lambda: [
        "reasoner.", "context.", "sam.sam_prompt_encoder.", "sam.sam_mask_decoder.",
    ])
    lora: LoraSection = field(default_factory=LoraSection)  # rank > 0: the reasoner learns through adapters
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
