"""Put one LENS model's SAM 2 weights into another: joins the two demo branches trained in parallel.

    python -m recipes.demo.graft_sam --model SFT_DIR --sam SAM_DIR --out DIR

SAM 2 box pretraining (``sam.*`` only) and SFT (``reasoner.*`` only) start from the same untrained
model and touch disjoint weights, so the demo pipeline runs them side by side on two cores; this
writes ``--model`` with the ``sam.*`` tensors of ``--sam``. Both must have the same SAM 2 config.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lens_model.config import LensConfig
from lens_model.checkpoints import load_model, save_model
from lens_model.weights import iter_tensors


def graft_sam(model_dir: Path, sam_dir: Path, out: Path) -> None:
    if LensConfig.load(model_dir).sam2_model_config != LensConfig.load(sam_dir).sam2_model_config:
        raise ValueError(f"{model_dir} and {sam_dir} have different SAM 2 configs")
    model = load_model(str(model_dir))
    sam_weights = {name[len("sam."):]: tensor for name, tensor in iter_tensors(sam_dir) if name.startswith("sam.")}
    with torch.no_grad():
        model.sam.load_state_dict(sam_weights, strict=True)
    save_model(model, out)
    info_path = model_dir / "training_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        (out / "training_info.json").write_text(json.dumps({**info, "sam_from": str(sam_dir)}, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.demo.graft_sam", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="LENS model whose every other weight is kept")
    parser.add_argument("--sam", type=Path, required=True, help="LENS model whose sam.* weights are taken")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    graft_sam(args.model, args.sam, args.out)
    print(f"wrote {args.out}: {args.model} with the SAM 2 of {args.sam}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
