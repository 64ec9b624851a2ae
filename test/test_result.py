"""A result's status tells "nothing matches" from "no usable answer", and its JSON lists the instances."""
import json

import numpy as np
import pytest

from lens_model.result import NO_TARGET, Instance, SegmentationResult, instance_map


def result(box_status: str, instances: list[Instance]) -> SegmentationResult:
    mask = np.zeros((4, 6), bool)
    for instance in instances:
        mask |= instance.mask
    box = instances[0].box if instances else None
    return SegmentationResult("the cups", mask, box, box_status, None, 0.0, "", "", instances=instances)


def test_the_status_of_each_kind_of_answer():
    cup = np.zeros((4, 6), bool)
    cup[1:3, 1:3] = True
    assert result("ok", [Instance((1, 1, 3, 3), cup, 0.9, "cup")]).status == "ok"
    assert result(NO_TARGET, []).status == "no_target"
    assert result("no box in answer", []).status == "no_box"
    assert result("box outside the image", []).status == "no_box"


def test_the_json_lists_every_instance_with_its_area():
    left, right = np.zeros((4, 6), bool), np.zeros((4, 6), bool)
    left[0:2, 0:2] = True
    right[1:4, 3:6] = True
    summary = json.loads(json.dumps(result("ok", [Instance((0, 0, 2, 2), left, 0.91234, "left"),
                                                   Instance((3, 1, 6, 4), right, 0.5, None)]).to_dict()))
    assert summary["status"] == "ok" and summary["mask_area"] == 13
    assert summary["instances"] == [{"box": [0, 0, 2, 2], "score": 0.9123, "label": "left", "mask_area": 4},
                                    {"box": [3, 1, 6, 4], "score": 0.5, "label": None, "mask_area": 9}]


def test_the_instance_image_numbers_instances_from_1_and_the_earlier_wins_an_overlap():
    first, second = np.zeros((4, 6), bool), np.zeros((4, 6), bool)
    first[0:2, 0:3] = True
    second[1:4, 2:6] = True
    image = result("ok", [Instance((0, 0, 3, 2), first, 0.9, "a"), Instance((2, 1, 6, 4), second, 0.8, "b")]).instance_map()
    assert image.dtype == np.uint8
    assert image.tolist() == [[1, 1, 1, 0, 0, 0],
                              [1, 1, 1, 2, 2, 2],
                              [0, 0, 2, 2, 2, 2],
                              [0, 0, 2, 2, 2, 2]]
    assert not result(NO_TARGET, []).instance_map().any()


def test_more_instances_than_a_uint8_holds_are_refused():
    masks = [np.zeros((2, 2), bool)] * 256
    assert instance_map(masks[:255], (2, 2)).shape == (2, 2)
    with pytest.raises(ValueError, match="256 instances"):
        instance_map(masks, (2, 2))
