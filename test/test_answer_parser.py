"""The answer parser never raises on model text and extracts boxes from every format seen in practice."""
import json
import math
import re
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lens_model import answer_parser
from lens_model.answer_parser import MAX_INSTANCES, clip_box, map_box, parse_answer

REASONING = '<think>Two circles; the red one is left.</think><answer>[{"bbox_2d": [10, 20, 50, 60], "label": "red circle"}]</answer>'


def test_reasoning_format():
    parsed = parse_answer(REASONING)
    assert parsed.box == (10, 20, 50, 60) and parsed.label == "red circle"
    assert parsed.reasoning == "Two circles; the red one is left."
    assert parsed.format_ok("reasoning") and parsed.format_ok("direct")


def test_fenced_json_direct_answer():
    parsed = parse_answer('```json\n[\n  {"bbox_2d": [1, 2, 30, 40], "label": "mug"}\n]\n```<|im_end|>')
    assert parsed.box == (1, 2, 30, 40) and parsed.label == "mug"
    assert parsed.format_ok("direct") and not parsed.format_ok("reasoning")


def test_missing_closing_answer_tag_still_parses_box_but_fails_format():
    parsed = parse_answer('<think>hmm</think><answer>[{"bbox_2d": [1, 2, 3, 4]}]')
    assert parsed.box == (1, 2, 3, 4)
    assert not parsed.format_ok("reasoning")


def test_missing_think_close_tag():
    parsed = parse_answer('<think>looking<answer>[{"bbox_2d": [5, 5, 9, 9]}]</answer>')
    assert parsed.reasoning == "looking" and parsed.box == (5, 5, 9, 9)


def test_broken_json_falls_back_to_regex():
    parsed = parse_answer('<answer>[{"bbox_2d": [10, 20, 30, 40], "label": "cup"</answer>')
    assert parsed.box == (10, 20, 30, 40) and not parsed.json_ok


@pytest.mark.parametrize("text,box", [
    ("(10, 20, 30, 40)", (10, 20, 30, 40)),
    ("(10,20),(30,40)", (10, 20, 30, 40)),
    ("box: [1.5, 2.5, 3.5, 4.5]", (1.5, 2.5, 3.5, 4.5)),
])
def test_authors_regex_forms(text, box):
    assert parse_answer(text).box == box


def test_several_boxes_keep_every_valid_one_and_the_first_is_the_box():
    parsed = parse_answer('[{"bbox_2d": [5, 5, 5, 9]}, {"bbox_2d": [1, 2, 3, 4], "label": "b"}, {"bbox_2d": [9, 9, 7, 7]}]')
    assert parsed.num_boxes == 3 and parsed.box == (1, 2, 3, 4) and parsed.label == "b"
    assert parsed.boxes == ((1, 2, 3, 4), (7, 7, 9, 9)) and parsed.labels == ("b", None) and not parsed.no_target


def test_the_boxes_of_one_answer_are_bounded():
    parsed = parse_answer(json.dumps([{"bbox_2d": [i, i, i + 5, i + 5]} for i in range(MAX_INSTANCES + 10)]))
    assert parsed.num_boxes == MAX_INSTANCES + 10 and len(parsed.boxes) == MAX_INSTANCES


@pytest.mark.parametrize("text", ["<think>No mug in view.</think><answer>[]</answer>", "```json\n[]\n```", "[]"])
def test_the_empty_list_is_the_no_target_answer(text):
    parsed = parse_answer(text)
    assert parsed.no_target and parsed.status == "no target" and parsed.box is None and parsed.boxes == ()
    assert parsed.json_ok and parsed.format_ok("direct")
    assert parsed.format_ok("reasoning") == text.startswith("<think>")


@pytest.mark.parametrize("text", ["[] but (10, 20, 30, 40)", "[{}]", "[[]]", "nothing here", "[1, 2]"])
def test_only_a_bare_empty_list_means_no_target(text):
    assert not parse_answer(text).no_target


def test_inverted_coordinates_are_reordered():
    assert parse_answer('[{"bbox_2d": [30, 40, 10, 20]}]').box == (10, 20, 30, 40)


@pytest.mark.parametrize("text,status", [
    ("", "empty answer"),
    ("I cannot see it.", "no box in answer"),
    ('[{"bbox_2d": [3, 3, 3, 3]}]', "degenerate box"),
    ("<think>only thinking", "empty answer"),
])
def test_no_box_reasons(text, status):
    parsed = parse_answer(text)
    assert parsed.box is None and parsed.status == status and not parsed.format_ok("direct")


def test_non_string_and_huge_inputs():
    assert parse_answer(None).box is None
    assert parse_answer("[" * 100_000).box is None
    assert parse_answer('{"a": ' * 5000 + "1" + "}" * 5000).box is None


def test_map_box_from_resized_to_original_frame():
    # reasoner saw 224x112, original is 448x224 -> coordinates double
    assert map_box((10, 20, 30, 40), (224, 112), (448, 224)) == (20, 40, 60, 80)
    # out-of-range coordinates are clipped to the frame first
    assert map_box((-10, -10, 300, 50), (224, 112), (448, 224)) == (0, 0, 448, 100)
    assert map_box((300, 300, 400, 400), (224, 112), (448, 224)) is None


@given(st.text(max_size=400))
@settings(max_examples=150, deadline=None)
def test_never_raises_on_arbitrary_text(text):
    parsed = parse_answer(text)
    if parsed.box is not None:
        x1, y1, x2, y2 = parsed.box
        assert x1 < x2 and y1 < y2 and all(math.isfinite(v) for v in parsed.box)


box_values = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)


@given(st.tuples(box_values, box_values, box_values, box_values), st.sampled_from(["json", "fenced", "reasoning", "tuple"]))
@settings(max_examples=100, deadline=None)
def test_round_trip_of_valid_boxes(box, style):
    x1, y1, x2, y2 = (round(v, 2) for v in box)
    body = f'[{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}], "label": "x"}}]'
    text = {"json": body, "fenced": f"```json\n{body}\n```", "reasoning": f"<think>t</think><answer>{body}</answer>",
            "tuple": f"({x1}, {y1}, {x2}, {y2})"}[style]
    parsed = parse_answer(text)
    if min(x1, x2) == max(x1, x2) or min(y1, y2) == max(y1, y2):
        assert parsed.box is None
    else:
        assert parsed.box == (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


@given(st.tuples(box_values, box_values, box_values, box_values), st.floats(1, 4000), st.floats(1, 4000))
@settings(max_examples=100, deadline=None)
def test_clip_box_stays_inside(box, w, h):
    clipped = clip_box(box, w, h)
    if clipped is not None:
        assert 0 <= clipped[0] < clipped[2] <= w and 0 <= clipped[1] < clipped[3] <= h


# Inputs whose bracket scan was quadratic (about 24 s together before the linear scan; ~0.1 s after).
PATHOLOGICAL = ("[" * 200_000, '{"bbox_2d": [' * 20_000, '["' * 100_000, "(1,1)" + " " * 30_000 + "x",
                "<think>" + "</think><answer>" * 2_000)


def test_pathological_answers_parse_in_linear_time():
    start = time.perf_counter()
    for text in PATHOLOGICAL:
        assert parse_answer(text).box is None
    assert time.perf_counter() - start < 2.0  # generous: only a quadratic scan comes near it


def old_json_fragments(text: str) -> list[str]:
    """The quadratic scan the linear one replaced, kept to check that they agree."""
    fragments: list[str] = []
    i = 0
    while i < len(text) and len(fragments) < 32:
        if text[i] in "[{":
            end = old_matching_bracket(text, i)
            if end is not None:
                fragments.append(text[i : end + 1])
                i = end + 1
                continue
        i += 1
    return fragments


def old_matching_bracket(text: str, start: int) -> int | None:
    stack: list[str] = []
    in_string = escaped = False
    for j in range(start, len(text)):
        ch = text[j]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append("]" if ch == "[" else "}")
        elif ch in "]}":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return j
    return None


def joined(pieces: list[str], max_size: int) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pieces), max_size=max_size).map("".join)


@given(joined(["[", "]", "{", "}", '"', "\\", '\\"', "\\\\", " ", ",", "1", "x"], 60))
@settings(max_examples=800, deadline=None, derandomize=True)
def test_linear_bracket_scan_finds_the_same_fragments_as_the_old_one(text):
    assert answer_parser._json_fragments(text) == old_json_fragments(text)


OLD_STRICT = re.compile(r"\A\s*<think>(.+?)</think>\s*<answer>(.+?)</answer>\s*\Z", re.DOTALL)


tagged = st.tuples(st.sampled_from(["<think>", " <think>", ""]),
                   joined(["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x", "<"], 8),
                   st.sampled_from(["</answer>", "</answer>\n", ""])).map("".join)


@given(tagged)
@example("<think></think><answer>x</answer>")
@example("<think>x</think><answer></answer>")
@settings(max_examples=800, deadline=None, derandomize=True)
def test_strict_format_check_agrees_with_the_old_regex(text):
    assert answer_parser._strict_reasoning_format(text.strip()) == bool(OLD_STRICT.match(text.strip()))


OLD_PAIR_FORM = re.compile(r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)\s*,?\s*\("
                           r"\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)")


@given(joined(["(1,2)", "(3, 4)", " ", ",", "(", ")", "5", "x"], 16))
@settings(max_examples=500, deadline=None, derandomize=True)
def test_point_pair_regex_agrees_with_the_old_one(text):
    pair_form = answer_parser._REGEX_BOXES[2]
    assert [m.span() for m in pair_form.finditer(text)] == [m.span() for m in OLD_PAIR_FORM.finditer(text)]
    assert pair_form.findall(text) == OLD_PAIR_FORM.findall(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(["bbox_2d", "label", "x"]), children, max_size=3),
    max_leaves=20,
)


@given(json_values, st.integers(min_value=0, max_value=200), st.sampled_from(["", "<answer>", "<think>t</think><answer>", "```json\n"]))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_never_raises_on_json_like_answers_cut_anywhere(value, cut, prefix):
    parsed = parse_answer(prefix + json.dumps(value)[:cut])
    assert parsed.box is None or all(math.isfinite(v) for v in parsed.box)


@pytest.mark.parametrize("template", ["direct", "reasoning"])
def test_formatted_answers_parse_back_to_their_objects(template):
    from lens_model.answer_format import format_answer

    two = parse_answer(format_answer([((1, 2, 30, 40), "left cup"), ((50, 2, 90, 40), "right cup")], template, "Two cups."))
    assert two.boxes == ((1, 2, 30, 40), (50, 2, 90, 40)) and two.labels == ("left cup", "right cup")
    assert two.format_ok(template)
    none = parse_answer(format_answer([], template, "No cup in view."))
    assert none.no_target and none.format_ok(template)
