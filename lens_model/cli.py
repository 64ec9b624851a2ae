"""``lens-segment``: segment what a sentence refers to in an image, or track it through a video, from the
command line."""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import NoReturn

from lens_model.builtin import DEMO_MODEL, TINY_RANDOM
from lens_model.image_io import MAX_IMAGE_PIXELS, display_path, encode_png, read_image_file
from lens_model.result import SegmentationResult
from lens_model.staged_outputs import StagedOutputs

TRACK_MODES = ("box", "memory")  # lens_model.tracker.TrackMode


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line and exit code 2, like every other user error of lens-segment."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _utf8_text(value: str) -> str:
    """Command-line text that is valid UTF-8 (undecodable argv bytes arrive as lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("not valid UTF-8 text") from None
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="lens-segment",
        description="Find what QUERY refers to in IMAGE; write mask.png, instances.png, overlay.png and result.json "
                    "to --out. "
                    "With VIDEO: find it in the first frame and track it (every instance) through the rest; write "
                    "masks/, instances/, track.jsonl, overlay.mp4 and result.json to --out.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image",
                        help=f"input image, PNG or JPEG, at most {MAX_IMAGE_PIXELS // 10**6} megapixels "
                             "(EXIF orientation is applied)")
    source.add_argument("--video",
                        help=f"input video (MP4/MOV, AVI, Matroska or WebM, as OpenCV's FFmpeg decodes it), frames "
                             f"of at most {MAX_IMAGE_PIXELS // 10**6} megapixels")
    parser.add_argument("--query", required=True, type=_utf8_text,
                        help='referring expression, e.g. "the mug nearest the sink"')
    parser.add_argument("--model", default=DEMO_MODEL,
                        help=f"built-in name ({TINY_RANDOM}, {DEMO_MODEL}), checkpoint folder or hub id "
                             f"such as OuyBin/LENS (default: {DEMO_MODEL}, the small synthetic-scene model "
                             "that ships with the package)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--template", choices=["direct", "reasoning"], default=None,
                        help="prompt: the authors' direct answer or think/answer reasoning (default: the model's)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=None)
    parser.add_argument("--out", default="lens_out",
                        help="output folder (default: lens_out); its outputs are replaced only when all of "
                             "them are written")
    parser.add_argument("--max-frames", type=_positive_int, default=None,
                        help="with --video: stop after this many frames (default: all)")
    parser.add_argument("--track-mode", choices=TRACK_MODES, default="box",
                        help="with --video: box (the previous mask's box prompts SAM 2; any weights) or memory "
                             "(SAM 2's video memory; see --memory-weights)")
    parser.add_argument("--memory-weights",
                        help="with --video and --track-mode memory: a SAM 2 checkpoint holding the memory "
                             "modules (the authors' LENS checkpoints have none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image is not None and (args.max_frames or args.memory_weights or args.track_mode != "box"):
        parser.error("--max-frames, --track-mode and --memory-weights go with --video")
    try:
        return _run_video(args) if args.video is not None else _run(args)
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

    from lens_model.prompts import DEFAULT_MAX_QUERY_CHARS, clean_query

    from lens_model.hub import resolve_device, resolve_dtype

    query = clean_query(args.query, DEFAULT_MAX_QUERY_CHARS)  # before the model loads; the model checks its own limit
    image = read_image_file(args.image, apply_exif_orientation=True)
    dtype = resolve_dtype(args.dtype, resolve_device(args.device))
    with StagedOutputs(Path(args.out)) as outputs:  # an unusable --out fails here, before the model loads
        from lens_model.visualize import draw_overlay

        predictor = _load(args, dtype)
        # The model gets the query as typed: it decides how to normalise it (released checkpoints keep it verbatim).
        result = predictor.predict(image, args.query, template=args.template, max_new_tokens=args.max_new_tokens)

        outputs.write("mask.png", encode_png(result.mask.astype(np.uint8) * 255))
        outputs.write("instances.png", encode_png(result.instance_map()))
        outputs.write("overlay.png", encode_png(cv2.cvtColor(draw_overlay(image, result), cv2.COLOR_RGB2BGR)))
        summary = {"image": display_path(args.image), "model": args.model, **result.to_dict()}
        outputs.write("result.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
        outputs.commit()
    out = display_path(args.out)
    print(f"query: {query}\n{_status_line(result)}")
    for number, instance in enumerate(result.instances, start=1):
        box = ", ".join(f"{v:.1f}" for v in instance.box)
        print(f"instance {number}: box [{box}], label {instance.label}, score {instance.score:.3f}")
    if result.reasoning:
        print(f"reasoning: {result.reasoning}")
    print(f"wrote mask.png, instances.png, overlay.png and result.json to {out} "
          f"({result.timings_ms['total']:.0f} ms)")
    return 0


def _status_line(result: SegmentationResult) -> str:
    if result.status == "ok":
        count = len(result.instances)
        return f"status: ok, {count} instance{'s' if count > 1 else ''}"
    if result.status == "no_target":
        return "status: no_target (the model says nothing matches the query)"
    return f"status: no_box ({result.box_status})"


def _load(args: argparse.Namespace, dtype: str):
    from lens_model.predictor import LensPredictor

    print(f"Loading model {args.model} on {args.device}...", file=sys.stderr)
    start = time.perf_counter()
    predictor = LensPredictor.from_pretrained(args.model, device=args.device, dtype=dtype)
    print(f"Model ready in {time.perf_counter() - start:.1f} s.", file=sys.stderr)
    if predictor.model.config.random_weights:
        print("WARNING: this model has RANDOM weights (a smoke-test model); its masks and answers are meaningless.",
              file=sys.stderr)
    return predictor


def _run_video(args: argparse.Namespace) -> int:
    from lens_model.hub import resolve_device, resolve_dtype
    from lens_model.prompts import DEFAULT_MAX_QUERY_CHARS, clean_query
    from lens_model.video import OVERLAY, TRACK_LINES, VideoReader, result_summary, segment_video

    clean_query(args.query, DEFAULT_MAX_QUERY_CHARS)  # as for an image: user errors before the model loads
    dtype = resolve_dtype(args.dtype, resolve_device(args.device))
    with VideoReader(args.video) as reader, StagedOutputs(Path(args.out)) as outputs:
        print(f"Video {reader.shown}: {reader.container}, {reader.width}x{reader.height}, {reader.fps:g} frames/s, "
              f"{reader.frame_count or 'unknown number of'} frames.", file=sys.stderr)
        predictor = _load(args, dtype)
        from lens_model.tracker import TrackerConfig

        def new_tracker():  # one per instance of the query's result
            return predictor.tracker(TrackerConfig(mode=args.track_mode), memory_weights=args.memory_weights)

        # The first is opened before any frame is read, so that an unusable tracker fails before the query runs.
        trackers = itertools.chain([new_tracker()], iter(new_tracker, None))
        run = segment_video(predictor, lambda: next(trackers), reader, args.query, outputs, template=args.template,
                            max_new_tokens=args.max_new_tokens, max_frames=args.max_frames)
        summary = result_summary(args.video, args.model, run, args.track_mode)
        outputs.write("result.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
        outputs.commit()
    track = summary["track"]
    print(f"query on frame 0: {run.result.box_status}, score {run.result.score:.3f}; {run.frames} frames: "
          f"{track['tracking']} tracked, {track['lost']} lost, {track['error']} error, {track['no_track']} without "
          f"a track")
    print(f"wrote masks/, instances/, {TRACK_LINES}, {OVERLAY} and result.json to {display_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
