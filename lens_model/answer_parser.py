"""Parse the reasoner's free text into reasoning, boxes and labels. Never raises on model text.

Qwen2.5-VL grounding answers look like ``[{"bbox_2d": [x1, y1, x2, y2], "label": "cup"}]``, often
inside a ```json fence, and with the reasoning prompt inside ``<think>…</think><answer>…</answer>``.
Several referents are several objects in that list; "nothing matches" is the empty list ``[]``
(``no_target``), which is a definite answer, unlike an answer with no usable box.
Real outputs break every rule: tags go missing, JSON is truncated, several boxes appear, numbers are
out of the frame or inverted. The parser tries strict JSON first, then falls back to the regex forms
the authors' code accepted, and reports what it did instead of guessing silently.

Coordinates are in the frame the reasoner saw (the smart-resized image); ``map_box`` converts them
to original-image pixels.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from lens_model.result import NO_TARGET, Box

_SPECIAL_TOKENS = re.compile(r"<\|(?:im_end|im_start|endoftext|box_start|box_end|object_ref_start|object_ref_end)\|>")
_THINK = re.compile(r"<think>(.*?)(?:</think>|(?=<answer>)|\Z)", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.DOTALL)
_THINK_TO_ANSWER = re.compile(r"</think>\s*<answer>")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|\Z)", re.DOTALL)
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
# The bracket forms the authors' regex accepted, tried in this order.
_REGEX_BOXES = (
    re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]"),
    re.compile(r"\(" + ",".join([_NUM] * 4) + r"\)"),
    re.compile(r"\(" + _NUM + "," + _NUM + r"\)\s*(?:,\s*)?\(" + _NUM + "," + _NUM + r"\)"),
)
_BOX_KEYS = ("bbox_2d", "bbox", "box", "box_2d")
_CLOSING = {"[": "]", "{": "}"}
MAX_PARSE_CHARS = 20_000
MAX_INSTANCES = 32  # boxes kept from one answer (each one costs a mask decode)


@dataclass(frozen=True)
class ParsedAnswer:
    """The parts of one generated answer. Boxes are in the reasoner's (resized) frame.

    ``boxes`` are the answer's valid boxes in its order (corners sorted, at most ``MAX_INSTANCES``)
    with their ``labels``; ``box`` and ``label`` are the first of them. ``no_target`` is True when
    the answer is the empty list ``[]``: the model says nothing matches (``status`` "no target").
    """

    reasoning: str
    answer_text: str
    box: Box | None
    label: str | None
    status: str  # "ok", "no target", or why there is no box
    num_boxes: int  # boxes found in the answer, valid or not
    has_think_tags: bool
    has_answer_tags: bool
    json_ok: bool
    boxes: tuple[Box, ...] = ()
    labels: tuple[str | None, ...] = ()
    no_target: bool = False

    def format_ok(self, template: str) -> bool:
        """Whether the answer follows ``template`` ("reasoning" or "direct") and carries a valid box
        or the no-target answer."""
        if self.box is None and not self.no_target:
            return False
        if template == "reasoning":
            return self.has_think_tags and self.has_answer_tags and self.json_ok
        return self.json_ok


def parse_answer(text: str) -> ParsedAnswer:
    """Split ``text`` into reasoning and answer and extract the first valid box from the answer."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = _SPECIAL_TOKENS.sub("", text[:MAX_PARSE_CHARS]).strip()
    strict = _strict_reasoning_format(text)
    think_match = _THINK.search(text)
    answer_match = _ANSWER.search(text)
    reasoning = think_match.group(1).strip() if think_match else ""
    if answer_match:
        answer_text = answer_match.group(1).strip()
    elif "</think>" in text:
        answer_text = text.split("</think>", 1)[1].strip()
    elif think_match:
        answer_text = ""
    else:
        answer_text = text
    boxes, labels, json_ok = _boxes_from_json(answer_text)
    if not boxes:
        empty_list, json_ok = json_ok, False
        boxes = _boxes_from_regex(answer_text)
        labels = [None] * len(boxes)
        if not boxes and empty_list:  # the empty list and no box anywhere: nothing matches
            return ParsedAnswer(reasoning, answer_text, None, None, NO_TARGET, 0, strict, strict, True, no_target=True)
    if not boxes:
        status = "no box in answer" if answer_text else "empty answer"
        return ParsedAnswer(reasoning, answer_text, None, None, status, 0, strict, strict, False)
    valid = _valid_boxes(boxes)
    return ParsedAnswer(
        reasoning=reasoning,
        answer_text=answer_text,
        box=valid[0][1] if valid else None,
        label=labels[valid[0][0]] if valid else None,
        status="ok" if valid else "degenerate box",
        num_boxes=len(boxes),
        has_think_tags=strict,
        has_answer_tags=strict,
        json_ok=json_ok,
        boxes=tuple(box for _, box in valid),
        labels=tuple(labels[index] for index, _ in valid),
    )


def _strict_reasoning_format(text: str) -> bool:
    """Whether stripped ``text`` is exactly ``<think>R</think> <answer>A</answer>`` with non-empty R and A
    (whitespace allowed between the two parts), checked in linear time."""
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return False
    # The first "</think>" after a non-empty R also leaves the most room for A.
    middle = _THINK_TO_ANSWER.search(text, len("<think>") + 1)
    return middle is not None and middle.end() < len(text) - len("</answer>")


def clip_box(box: Box, width: float, height: float) -> Box | None:
    """Order the corners and clip to ``[0, width] x [0, height]``; ``None`` if nothing is left."""
    x1, x2 = sorted((box[0], box[2]))
    y1, y2 = sorted((box[1], box[3]))
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None
    return (x1, y1, x2, y2)


def map_box(box: Box, src_size: tuple[int, int], dst_size: tuple[int, int]) -> Box | None:
    """Map a box from a ``src_size`` (width, height) frame into ``dst_size``, clipped to it."""
    sw, sh = src_size
    dw, dh = dst_size
    clipped = clip_box(box, float(sw), float(sh))
    if clipped is None or sw <= 0 or sh <= 0:
        return None
    sx, sy = dw / sw, dh / sh
    return clip_box((clipped[0] * sx, clipped[1] * sy, clipped[2] * sx, clipped[3] * sy), float(dw), float(dh))


def _valid_boxes(boxes: list[Box]) -> list[tuple[int, Box]]:
    """(index, box with sorted corners) of the finite, non-degenerate boxes, the first ``MAX_INSTANCES``."""
    valid: list[tuple[int, Box]] = []
    for index, box in enumerate(boxes):
        if all(math.isfinite(v) for v in box):
            x1, x2 = sorted((box[0], box[2]))
            y1, y2 = sorted((box[1], box[3]))
            if x2 > x1 and y2 > y1:
                valid.append((index, (x1, y1, x2, y2)))
                if len(valid) == MAX_INSTANCES:
                    break
    return valid


def _boxes_from_json(answer: str) -> tuple[list[Box], list[str | None], bool]:
    """Boxes and labels of the first JSON fragment that holds any, and whether it was valid JSON;
    no boxes and ``True`` when the answer's JSON is only an empty list (the no-target answer)."""
    candidates = [m.group(1) for m in _FENCE.finditer(answer)] or [answer]
    empty_list = False
    for candidate in candidates:
        for fragment in _json_fragments(candidate):
            try:
                data = json.loads(fragment)
            except (ValueError, RecursionError):
                continue
            boxes, labels = _collect_boxes(data)
            if boxes:
                # A bare [x1, y1, x2, y2] pulled out of broken JSON is a regex-level find, not valid JSON.
                return boxes, labels, not (isinstance(data, list) and _as_box(data) is not None)
            empty_list = empty_list or data == []
    return [], [], empty_list


def _json_fragments(text: str) -> list[str]:
    """Balanced ``[...]``/``{...}`` substrings, outermost first, in one linear pass.

    Each fragment starts at the first bracket, after the previous fragment, whose scan (a fresh one,
    outside any string) closes it; a bracket that never closes is skipped, and its successor tried.
    """
    fragments: list[str] = []
    closes = _closing_positions(text)
    i = 0
    while i < len(text) and len(fragments) < 32:
        end = closes[i]
        if end >= 0:
            fragments.append(text[i : end + 1])
            i = end + 1
        else:
            i += 1
    return fragments


def _closing_positions(text: str) -> list[int]:
    """For each ``[`` or ``{``, the position of the bracket that closes it when a scan starts there
    outside any string (quotes open strings, backslashes escape inside them); -1 if a mismatched
    bracket or the end of the text comes first, and for every other character.

    Filled right to left, so every lookup is O(1): ``depth0[p]`` is the first closing bracket a scan
    meets from ``p`` at its starting depth (nested pairs and strings skipped), -1 if the scan fails
    first; ``quote_end[p]`` is the quote that ends a string whose contents start at ``p``.
    """
    n = len(text)
    closes = [-1] * (n + 2)
    depth0 = [-1] * (n + 2)
    quote_end = [-1] * (n + 2)
    for p in range(n - 1, -1, -1):
        ch = text[p]
        if ch == '"':
            quote_end[p] = p
            end = quote_end[p + 1]
            depth0[p] = depth0[end + 1] if end >= 0 else -1
        else:
            quote_end[p] = quote_end[p + 2] if ch == "\\" else quote_end[p + 1]
            if ch in _CLOSING:
                first = depth0[p + 1]
                closes[p] = first if first >= 0 and text[first] == _CLOSING[ch] else -1
                depth0[p] = depth0[closes[p] + 1] if closes[p] >= 0 else -1
            elif ch in "]}":
                depth0[p] = p
            else:
                depth0[p] = depth0[p + 1]
    return closes


def _collect_boxes(data: object, depth: int = 0) -> tuple[list[Box], list[str | None]]:
    boxes: list[Box] = []
    labels: list[str | None] = []
    if depth > 8:
        return boxes, labels
    if isinstance(data, dict):
        for key in _BOX_KEYS:
            box = _as_box(data.get(key))
            if box is not None:
                label = data.get("label")
                boxes.append(box)
                labels.append(str(label) if isinstance(label, (str, int, float)) else None)
                break
    elif isinstance(data, list):
        box = _as_box(data)
        if box is not None:
            return [box], [None]
        for item in data:
            b, lab = _collect_boxes(item, depth + 1)
            boxes += b
            labels += lab
    return boxes, labels


def _as_box(value: object) -> Box | None:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    return (float(value[0]), float(value[1]), float(value[2]), float(value[3]))


def _boxes_from_regex(answer: str) -> list[Box]:
    for pattern in _REGEX_BOXES:
        found = [tuple(float(g) for g in m.groups()) for m in pattern.finditer(answer)]
        if found:
            return [(b[0], b[1], b[2], b[3]) for b in found]
    return []
