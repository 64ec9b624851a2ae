"""Optional LoRA adapters (peft) on the reasoner's language model, merged back before export.

Adapters are injected in place (``peft.inject_adapter_in_model``), so the model keeps its own module
tree and every stage helper keeps working; the exported model is a plain LENS checkpoint with the
adapters merged into the weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from lens_model.modeling import LensModel
from training.loop import trainable_parameters

LORA_MARK = ".lora_"
log = logging.getLogger(__name__)


@dataclass
class LoraSection:
    rank: int = 0  # 0: no adapters (the ``trainable`` prefixes train full weights); > 0: see lora_trainable
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ])


def apply_lora(model: LensModel, section: LoraSection) -> None:
    """Inject adapters into ``model.reasoner.model.language_model`` (the vision tower keeps its weights)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=section.rank, lora_alpha=section.alpha, lora_dropout=section.dropout,
                        target_modules=list(section.target_modules), bias="none")
    inject_adapter_in_model(config, model.reasoner.model.language_model)


def lora_trainable(model: LensModel, prefixes: list[str]) -> list[torch.nn.Parameter]:
    """The parameters that learn when adapters are present: every adapter, plus what ``prefixes``
    select outside the reasoner. With adapters the reasoner learns only through them (the point of
    LoRA is not to hold optimizer state for its weights), so reasoner weights that ``prefixes`` select
    stay frozen; a warning says how many."""
    chosen, set_aside = [], 0
    for name, param in model.named_parameters():
        if LORA_MARK in name:
            chosen.append(param)
        elif name.startswith(tuple(prefixes)):
            if name.startswith("reasoner."):
                set_aside += 1
            else:
                chosen.append(param)
    if set_aside:
        log.warning("lora.rank > 0: the reasoner learns through its adapters only; %d reasoner weight tensors "
                    "selected by trainable %s stay frozen", set_aside, prefixes)
    if not chosen:
        raise ValueError("no LoRA adapters and no other trainable parameters")
    return chosen


def stage_trainable(model: LensModel, prefixes: list[str], section: LoraSection,
                    exclude: list[str] | None = None) -> list[torch.nn.Parameter]:
    """What a stage trains: without adapters the parameters ``prefixes`` select (minus ``exclude``);
    with ``section.rank > 0`` the adapters are injected first and ``lora_trainable`` decides."""
    if section.rank > 0:
        apply_lora(model, section)
        return lora_trainable(model, prefixes)
    return trainable_parameters(model, prefixes, exclude or [])


def merge_lora(model: LensModel) -> None:
    """Fold every adapter into its base layer and put the plain layer back in the module tree."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
