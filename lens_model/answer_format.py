"""Write answers in the exact format the reasoner produces (the inverse of ``answer_parser``).

Used for teacher forcing (alignment, SFT): the queries must be aligned on the same kind of text the
model generates at inference, not on a different special-token format (a bug of the authors' stage 1).
An answer lists one object per referent; the empty list ``[]`` is the no-target answer.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

from lens_model.result import Box

NO_TARGET_JSON = "[]"


def objects_json(objects: Sequence[tuple[Box, str]]) -> str:
    """Qwen2.5-VL's native grounding JSON, integer pixel coordinates; ``[]`` for no objects."""
    return json.dumps([{"bbox_2d": [int(round(v)) for v in box], "label": label} for box, label in objects],
                      ensure_ascii=False)


def format_answer(objects: Sequence[tuple[Box, str]], template: str, reasoning: str = "") -> str:
    """The completion text (without the end-of-turn token) for ``template`` "direct" or "reasoning"."""
    if template == "reasoning":
        return f"<think>{reasoning.strip()}</think><answer>{objects_json(objects)}</answer>"
    return f"```json\n{objects_json(objects)}\n```"


def to_reasoner_frame(box: Box, original_size: tuple[int, int], resized_size: tuple[int, int]) -> Box:
    """Map a box from original pixels (width, height) into the reasoner's resized frame."""
    sx, sy = resized_size[0] / original_size[0], resized_size[1] / original_size[1]
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
