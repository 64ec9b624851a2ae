"""The end of a stage: the trained model written as a folder that ``load_model`` reads directly."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from lens_model.checkpoints import save_model
from lens_model.modeling import LensModel
from training.common import distributed


def gathered_parameters(model: torch.nn.Module):
    """Under ZeRO-3 parameters are partitioned; gather them for a full save, else do nothing."""
    try:
        import deepspeed

        if any(hasattr(p, "ds_id") for p in model.parameters()):
            return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    except ImportError:
        pass
    return contextlib.nullcontext()


def export_model(model: LensModel, output_dir: str | Path, training_info: dict | None = None) -> None:
    """Write the final model into ``output_dir`` (rank 0), with ``training_info.json`` when given: a
    trained model is no longer random, whatever it started from."""
    with gathered_parameters(model):
        if distributed.is_main():
            model.config.random_weights = False if training_info is not None else model.config.random_weights
            save_model(model, output_dir)
            if training_info:
                (Path(output_dir) / "training_info.json").write_text(json.dumps(training_info, indent=2))
    distributed.barrier()
