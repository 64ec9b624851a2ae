"""``lens-segment``: segment what a sentence refers to in an image, from the command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lens_model.builtin import DEMO_MODEL, TINY_RANDOM


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lens-segment",
        description="Find what QUERY refers to in IMAGE; write mask.png, overlay.png and result.json to --out.",
    )
    parser.add_argument("--image", required=True, help="input image (PNG, JPEG, ...)")
    parser.add_argument("--query", required=True, help='referring expression, e.g. "the mug nearest the sink"')
    parser.add_argument("--model", default=DEMO_MODEL,
                        help=f"built-in name ({TINY_RANDOM}, {DEMO_MODEL}), checkpoint folder or hub id "
                             f"such as OuyBin/LENS (default: {DEMO_MODEL}, the small synthetic-scene model "
                             "that ships with the package)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--template", choices=["direct", "reasoning"], default=None,
                        help="prompt: the authors' direct answer or think/answer reasoning (default: the model's)")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--out", default="lens_out", help="output folder (default: lens_out)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line, not a traceback, for anything the user can fix
        from lens_model.errors import LensError

        if isinstance(exc, (LensError, OSError)):
            print(f"lens-segment: error: {exc}", file=sys.stderr)
            return 2
        raise


def _run(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from lens_model.errors import InputError
    from lens_model.prompts import clean_query

    query = clean_query(args.query, max_chars=2000)
    image_path = Path(args.image)
    if not image_path.is_file():
        raise InputError(f"image {image_path} does not exist")
    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"image {image_path} could not be decoded (corrupt or unsupported format)")
    image = np.ascontiguousarray(bgr[:, :, ::-1])

    from lens_model.hub import load_model
    from lens_model.visualize import draw_overlay

    print(f"Loading model {args.model} on {args.device}...", file=sys.stderr)
    start = time.perf_counter()
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    print(f"Model ready in {time.perf_counter() - start:.1f} s.", file=sys.stderr)
    if model.config.random_weights:
        print("WARNING: this model has RANDOM weights (a smoke-test model); its masks and answers are meaningless.",
              file=sys.stderr)
    result = model.predict(image, query, template=args.template, max_new_tokens=args.max_new_tokens)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_png(out / "mask.png", result.mask.astype(np.uint8) * 255)
    _write_png(out / "overlay.png", draw_overlay(image, result)[:, :, ::-1])
    summary = {"image": str(image_path), "model": args.model, **result.to_dict()}
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    box = "none (" + result.box_status + ")" if result.box is None else "[" + ", ".join(f"{v:.1f}" for v in result.box) + "]"
    print(f"query: {query}\nbox: {box}\nlabel: {result.label}\nscore: {result.score:.3f}")
    if result.reasoning:
        print(f"reasoning: {result.reasoning}")
    print(f"wrote {out / 'mask.png'}, {out / 'overlay.png'}, {out / 'result.json'} ({result.timings_ms['total']:.0f} ms)")
    return 0


def _write_png(path: Path, array) -> None:
    import cv2

    tmp = path.with_suffix(".tmp.png")
    if not cv2.imwrite(str(tmp), array):
        raise OSError(f"could not write {path}")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
