"""GRPO rewards against hand-computed values, on real parser output including malformed completions."""
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lens_model.answer_parser import map_box, parse_answer
from training.grpo.rewards import (
    box_iou_reward,
    box_reward,
    format_reward,
    instances_box_reward,
    mask_iou_reward,
    reward_components,
    unified_reward,
)
from training.iou import box_iou, mask_iou

REASONING_OK = '<think>the cup is left</think><answer>[{"bbox_2d": [0, 0, 10, 10], "label": "cup"}]</answer>'
DIRECT_OK = '```json\n[{"bbox_2d": [5, 5, 15, 15], "label": "cup"}]\n```'


@pytest.mark.parametrize(
    "text, template, expected",
    [
        (REASONING_OK, "reasoning", 1.0),
        (REASONING_OK, "direct", 1.0),  # JSON with a box is all "direct" asks for
        (DIRECT_OK, "direct", 1.0),
        (DIRECT_OK, "reasoning", 0.0),  # no think/answer tags
        ('<think>x</think>[{"bbox_2d": [0, 0, 10, 10]}]', "reasoning", 0.0),  # answer tags missing
        ('<think>x<answer>[{"bbox_2d": [0, 0, 10, 10]}]</answer>', "reasoning", 0.0),  # think never closed
        ('<think>x</think><answer>[{"bbox_2d": (0, 0, 10, 10)}]</answer>', "reasoning", 0.0),  # not JSON
        ('[{"bbox_2d": (0, 0, 10, 10)}]', "direct", 0.0),  # not JSON; the regex fallback still finds a box
        ('<think>x</think><answer>[{"label": "cup"}]</answer>', "reasoning", 0.0),  # no box
        ('[{"bbox_2d": [3, 3, 3, 9]}]', "direct", 0.0),  # zero-width box
        ("", "direct", 0.0),
        ("", "reasoning", 0.0),
    ],
)
def test_format_reward(text, template, expected):
    assert format_reward(parse_answer(text), template) == expected


def test_format_reward_rejects_unknown_template():
    with pytest.raises(ValueError, match="template"):
        format_reward(parse_answer(DIRECT_OK), "reasonning")


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 5, 15, 15), 25 / 175),
        ((0, 0, 10, 10), (0, 0, 10, 20), 100 / 200),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((-100, -100, 200, 200), (0, 0, 100, 100), 10_000 / 90_000),  # out of the frame, not clipped
        ((0.5, 0.5, 2.5, 1.5), (1.5, 0.5, 3.5, 1.5), 1 / 3),
    ],
)
def test_box_iou_hand_values(pred, gt, expected):
    assert box_iou(pred, gt) == pytest.approx(expected)
    assert box_iou(gt, pred) == pytest.approx(expected)
    assert box_iou_reward(pred, gt) == pytest.approx(expected)
    assert box_iou_reward(pred, gt, squared=True) == pytest.approx(expected**2)


@pytest.mark.parametrize(
    "pred, gt",
    [
        (None, (0, 0, 10, 10)),
        ((0, 0, 10, 10), None),
        ((0, 0, 0, 10), (0, 0, 10, 10)),  # zero width
        ((5, 5, 5, 5), (5, 5, 5, 5)),  # both points: the authors' compute_iou divided by zero here
        ((0, 0, 0, 0), (0, 0, 0, 0)),
        ((10, 10, 0, 0), (0, 0, 10, 10)),  # inverted corners count as degenerate
        ((0, 0, math.nan, 10), (0, 0, 10, 10)),
        ((0, 0, math.inf, 10), (0, 0, 10, 10)),
    ],
)
def test_box_iou_reward_is_zero_for_missing_or_degenerate_boxes(pred, gt):
    assert box_iou_reward(pred, gt) == 0.0
    assert box_iou_reward(pred, gt, squared=True) == 0.0


@pytest.mark.parametrize("text", ['[{"bbox_2d": [15, 15, 5, 5]}]', "[15, 15, 5, 5]"])
def test_box_reward_from_parsed_inverted_box_uses_parser_ordering(text):
    parsed = parse_answer(text)
    assert parsed.box == (5.0, 5.0, 15.0, 15.0)
    assert box_iou_reward(parsed.box, (0, 0, 10, 10)) == pytest.approx(25 / 175)


def test_box_iou_is_the_same_in_resized_and_original_frame():
    resized, original = (448, 336), (1000, 750)
    pred, gt = (40.0, 30.0, 200.0, 210.0), (60.0, 20.0, 220.0, 190.0)
    in_resized = box_iou(pred, gt)
    in_original = box_iou(map_box(pred, resized, original), map_box(gt, resized, original))
    assert in_original == pytest.approx(in_resized)


finite = st.floats(-1e4, 1e4, allow_nan=False)


@given(st.tuples(finite, finite, finite, finite), st.tuples(finite, finite, finite, finite))
def test_box_iou_is_bounded_and_symmetric(a, b):
    iou = box_iou(a, b)
    assert 0.0 <= iou <= 1.0
    assert iou == box_iou(b, a)


def test_mask_iou_hand_values():
    pred = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    gt = np.array([[1, 0, 0], [1, 1, 0]], dtype=bool)
    assert mask_iou(pred, gt) == pytest.approx(2 / 4)
    assert mask_iou_reward(pred, gt, squared=True) == pytest.approx(1 / 4)
    ignore = np.array([[0, 0, 0], [0, 1, 0]], dtype=bool)  # hides the one GT pixel the prediction missed
    assert mask_iou(pred, gt, ignore=ignore) == pytest.approx(2 / 3)


def test_mask_iou_accepts_torch_numpy_and_integer_masks():
    pred = torch.tensor([[1, 1], [0, 0]], dtype=torch.uint8)
    gt = np.array([[1, 0], [0, 0]], dtype=np.int64)
    assert mask_iou(pred, gt) == pytest.approx(0.5)
    assert mask_iou(pred.bool(), torch.from_numpy(gt).bool()) == pytest.approx(0.5)


def test_mask_iou_empty_cases():
    empty = np.zeros((4, 4), dtype=bool)
    full = np.ones((4, 4), dtype=bool)
    assert mask_iou(empty, empty) == 1.0  # nothing to find, nothing predicted
    assert mask_iou(full, empty) == 0.0
    assert mask_iou(empty, full) == 0.0
    assert mask_iou(full, full, ignore=full) == 1.0  # everything ignored: union is empty


def test_mask_iou_rejects_float_and_mismatched_masks():
    with pytest.raises(TypeError, match="threshold"):
        mask_iou(np.full((2, 2), 0.7), np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="differ in shape"):
        mask_iou(np.ones((2, 2), dtype=bool), np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="ignore .* differ in shape"):
        mask_iou(np.ones((2, 2), dtype=bool), np.ones((2, 2), dtype=bool), ignore=np.ones((3, 2), dtype=bool))


def test_unified_reward_weighted_sum_and_key_check():
    components = {"format": 1.0, "box": 0.5, "mask": 0.25}
    assert unified_reward(components, {"format": 1.0, "box": 1.0, "mask": 1.0}) == pytest.approx(1.75)
    assert unified_reward(components, {"format": 0.0, "box": 2.0, "mask": 4.0}) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="different rewards"):
        unified_reward(components, {"format": 1.0, "box": 1.0})
    with pytest.raises(ValueError, match="different rewards"):
        unified_reward(components, {"format": 1.0, "box": 1.0, "masks": 1.0})


GT_BOX = (0.0, 0.0, 10.0, 10.0)
GT_MASK = np.pad(np.ones((2, 2), dtype=bool), 1)  # 4x4 with a 2x2 object
PRED_MASK = np.pad(np.ones((2, 1), dtype=bool), ((1, 1), (1, 2)))  # half of it


@pytest.mark.parametrize(
    "text, expected_format, expected_box",
    [
        (REASONING_OK, 1.0, 1.0),
        ('<think>a</think><answer>[{"bbox_2d": [5, 5, 15, 15]}]</answer>', 1.0, 25 / 175),
        ("<think>no answer at all</think>", 0.0, 0.0),
        ('<think>a</think><answer>{"bbox_2d": [0, 0, 10</answer>', 0.0, 0.0),  # truncated JSON, no box
        ("<answer>[0, 0, 10, 10]</answer>", 0.0, 1.0),  # bare list: JSON ok but no think tags
        ("the box is (0, 0, 10, 10)", 0.0, 1.0),  # regex fallback: a box but no valid JSON
        ('[{"bbox_2d": [12, 12, 12, 30]}]', 0.0, 0.0),
        ('[{"bbox_2d": [1e9, 1e9, 2e9, 2e9]}]', 0.0, 0.0),  # far outside: valid but no overlap
        ("", 0.0, 0.0),
        (None, 0.0, 0.0),
    ],
)
def test_reward_components_on_malformed_completions(text, expected_format, expected_box):
    components = reward_components(
        parse_answer(text), template="reasoning", gt_boxes=[GT_BOX], pred_mask=PRED_MASK, gt_mask=GT_MASK
    )
    assert components == {"format": expected_format, "box": pytest.approx(expected_box), "mask": 0.5}


def test_reward_components_squared():
    parsed = parse_answer('<think>a</think><answer>[{"bbox_2d": [5, 5, 15, 15]}]</answer>')
    components = reward_components(
        parsed, template="reasoning", gt_boxes=[GT_BOX], pred_mask=PRED_MASK, gt_mask=GT_MASK, squared=True
    )
    assert components == {"format": 1.0, "box": pytest.approx((25 / 175) ** 2), "mask": 0.25}


def test_huge_completion_is_scored_quickly_and_safely():
    text = "<think>" + "very long reasoning " * 100_000 + "</think><answer>[0, 0, 10, 10]</answer>"
    start = time.perf_counter()
    components = reward_components(
        parse_answer(text), template="reasoning", gt_boxes=[GT_BOX], pred_mask=GT_MASK, gt_mask=GT_MASK
    )
    assert time.perf_counter() - start < 2.0
    # The parser only reads the first MAX_PARSE_CHARS characters, so the cut-off answer holds no box.
    assert components == {"format": 0.0, "box": 0.0, "mask": 1.0}


def _answer(*boxes) -> str:
    objects = ", ".join(f'{{"bbox_2d": {list(box)}, "label": "x"}}' for box in boxes)
    return f"<think>a</think><answer>[{objects}]</answer>"


A, B, C = (0, 0, 10, 10), (20, 0, 30, 10), (40, 0, 50, 20)


@pytest.mark.parametrize("text", [_answer((5, 5, 15, 15)), _answer(A), _answer((12, 12, 12, 30)), DIRECT_OK,
                                  "the box is (0, 0, 10, 10)", "<answer>[0, 0, 10, 10]</answer>", "", "<think>x</think>"])
@pytest.mark.parametrize("squared", [False, True])
def test_one_box_against_one_target_is_rewarded_as_before(text, squared):
    """The box reward of a one-box answer on a one-object sample is the IoU (squared) of the two boxes."""
    parsed = parse_answer(text)
    assert box_reward(parsed, [GT_BOX], squared) == box_iou_reward(parsed.box, GT_BOX, squared)


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ([A, B], [A, B, C], 2 / 3),  # one object missed
        ([A, B, C], [A, B], 2 / 3),  # one extra box
        ([B, A], [A, B], 1.0),  # the order does not matter
        ([A, A], [A], 1 / 2),  # one object boxed twice counts once
        ([(0, 0, 10, 20), B], [A, B], (1 / 2 + 1) / 2),
        ([(5, 0, 25, 10)], [A, B], (50 / 250) / 2),  # one box between two objects matches one of them
        ([], [A], 0.0),
        ([A], [], 0.0),
    ],
)
def test_instances_box_reward_matches_one_to_one_and_penalises_wrong_counts(pred, gt, expected):
    assert instances_box_reward(pred, gt) == pytest.approx(expected)
    assert instances_box_reward(pred, gt, squared=True) <= instances_box_reward(pred, gt) + 1e-12


@pytest.mark.parametrize(
    "text, gt_boxes, expected",
    [
        ("<think>nothing</think><answer>[]</answer>", [], 1.0),  # [] when nothing matches
        ("```json\n[]\n```", [], 1.0),
        (_answer(A), [], 0.0),  # any box when nothing matches
        ("<think>nothing</think><answer>[]</answer>", [A], 0.0),  # [] when something does
        ("<think>no answer at all</think>", [], 0.0),  # no usable answer is not "nothing matches"
        (_answer(A, B), [A, B], 1.0),
        (_answer(A, B), [A], 0.5),
    ],
)
def test_box_reward_with_several_objects_or_none(text, gt_boxes, expected):
    assert box_reward(parse_answer(text), gt_boxes) == pytest.approx(expected)


def test_reward_components_of_a_correct_no_target_answer():
    empty = np.zeros((4, 4), dtype=bool)
    components = reward_components(parse_answer("<think>none</think><answer>[]</answer>"), template="reasoning",
                                   gt_boxes=[], pred_mask=empty, gt_mask=empty)
    assert components == {"format": 1.0, "box": 1.0, "mask": 1.0}
