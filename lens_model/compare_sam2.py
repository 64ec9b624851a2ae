"""Compare a LENS model's SAM 2 with a public SAM 2 checkpoint, module by module.

    python -m lens_model.compare_sam2 --model LENS_FOLDER --sam2 sam2_hiera_large.pt

SAM 2's memory modules were trained on the features of its own image encoder. Memory tracking
with an official checkpoint's memory weights (``lens_model.tracker``, mode ``memory``) is only
SAM 2's own video propagation if the LENS model's image encoder (and prompt encoder and mask
decoder) still equal that checkpoint's. This prints, per module, how many tensors both hold and
their largest absolute difference, and whether they are equal once the checkpoint is rounded to
the LENS weights' dtype (the released checkpoints store bf16, SAM 2's are fp32). Tensors only one
side holds are listed (the released checkpoints delete the memory modules). Exit status 0 when
the image encoder is equal, 1 when it is not, 2 on an error.

Both files are read on the CPU: the SAM 2 ``.pt`` whole, with ``torch.load(weights_only=True)``
(about 0.9 GB for SAM 2-L), the model folder's ``sam.*`` tensors one shard at a time.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from lens_model.checkpoints import read_sam_tensors
from lens_model.errors import LensError
from lens_model.sam_head import read_sam2_checkpoint

IMAGE_ENCODER = "image_encoder"


@dataclass
class ModuleDifference:
    tensors: int = 0
    max_diff: float = 0.0
    equal_rounded: bool = True
    mismatched_shapes: list[str] = field(default_factory=list)


def module_of(key: str) -> str:
    """The group a tensor is reported under: two name levels (``image_encoder.trunk``, ``sam_mask_decoder.transformer``)."""
    return ".".join(key.split(".")[:2])


def compare(lens: dict[str, torch.Tensor], sam2: dict[str, torch.Tensor]) -> tuple[dict[str, ModuleDifference], list[str], list[str]]:
    """Per-module differences of the tensors both hold, and the names only LENS / only SAM 2 holds."""
    modules: dict[str, ModuleDifference] = defaultdict(ModuleDifference)
    for key in sorted(set(lens) & set(sam2)):
        ours, theirs = lens[key], sam2[key]
        module = modules[module_of(key)]
        module.tensors += 1
        if ours.shape != theirs.shape:
            module.mismatched_shapes.append(key)
            module.equal_rounded = False
            continue
        module.max_diff = max(module.max_diff, float((ours.double() - theirs.double()).abs().max()) if ours.numel() else 0.0)
        module.equal_rounded &= torch.equal(ours, theirs.to(ours.dtype))
    return dict(modules), sorted(set(lens) - set(sam2)), sorted(set(sam2) - set(lens))


def report(modules: dict[str, ModuleDifference], only_lens: list[str], only_sam2: list[str], dtype: str) -> str:
    width = max([len("module")] + [len(m) for m in modules])
    lines = [f"{'module':<{width}}  {'tensors':>7}  {'max |diff|':>10}  equal after rounding to {dtype}"]
    for name, module in sorted(modules.items()):
        equal = "yes" if module.equal_rounded else "NO"
        shapes = f" ({len(module.mismatched_shapes)} of another shape, e.g. {module.mismatched_shapes[0]})" \
            if module.mismatched_shapes else ""
        lines.append(f"{name:<{width}}  {module.tensors:>7}  {module.max_diff:>10.3g}  {equal}{shapes}")
    for side, names in (("only in the LENS model", only_lens), ("only in the SAM 2 checkpoint", only_sam2)):
        if names:
            counts: dict[str, int] = defaultdict(int)
            for name in names:
                counts[module_of(name)] += 1
            lines.append(f"{side}: " + ", ".join(f"{m} ({n})" for m, n in sorted(counts.items())))
    return "\n".join(lines)


def image_encoder_equal(modules: dict[str, ModuleDifference], only_lens: list[str], only_sam2: list[str]) -> bool:
    encoder = [m for name, m in modules.items() if name.startswith(IMAGE_ENCODER)]
    missing = [n for n in only_lens + only_sam2 if n.startswith(IMAGE_ENCODER)]
    return bool(encoder) and not missing and all(m.equal_rounded for m in encoder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lens_model.compare_sam2", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a LENS model folder (native or the authors' released layout)")
    parser.add_argument("--sam2", required=True, help="an official SAM 2 checkpoint (.pt), e.g. sam2_hiera_large.pt")
    args = parser.parse_args(argv)
    try:
        lens = read_sam_tensors(args.model)
        sam2 = read_sam2_checkpoint(args.sam2)
    except (LensError, OSError) as exc:
        print(f"compare_sam2: error: {exc}", file=sys.stderr)
        return 2
    modules, only_lens, only_sam2 = compare(lens, sam2)
    dtype = str(next(iter(lens.values())).dtype).replace("torch.", "")
    print(report(modules, only_lens, only_sam2, dtype))
    equal = image_encoder_equal(modules, only_lens, only_sam2)
    print(f"image encoder: {'EQUAL to' if equal else 'DIFFERENT from'} {args.sam2} (after rounding to {dtype})")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
