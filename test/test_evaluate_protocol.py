"""``training.evaluate --protocol paper|corrected`` on hand-made datasets where the two differ:
overlapping polygons, an ignore region with several queries per image, a GroundingSuite caption
and the distributed sampler's padding duplicates."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lens_model.tiny import build_tiny_random
from lens_model.released_profiles import AUTHORS_LENGTH_CAP
from lens_model.result import SegmentationResult
from training import evaluate
from training.data.masks import Polygons, mask_to_rle
from training.data.registry import load_dataset
from training.iou import histogram_intersection_union, mask_intersection_union
from training.metrics import SegmentationMeter
from training.protocol import paper_model_config

H, W = 40, 60
# Two polygons of one object that overlap in x 20..29 (10 x 20 = 200 pixels counted twice by the authors).
LEFT = [10, 10, 29, 10, 29, 29, 10, 29]
RIGHT = [20, 10, 39, 10, 39, 29, 20, 29]


class Oracle:
    """Predicts a fixed mask for every query and records the queries it was asked."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.queries: list[str] = []

    def predict_many(self, image, queries, template=None, max_new_tokens=None):
        self.queries += queries
        return [SegmentationResult(query=q, mask=self.mask.copy(), box=(0.0, 0.0, 1.0, 1.0), box_status="ok",
                                   label=None, score=1.0, reasoning="", answer="", random_weights=True,
                                   generated_tokens=3) for q in queries]


def _polygon_mask(*polygons) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    for polygon in polygons:
        cv2.fillPoly(mask, [np.asarray(polygon, np.int32).reshape(-1, 2)], 1)
    return mask.astype(bool)


def _coco_mask(polygon) -> np.ndarray:
    return Polygons((tuple(float(v) for v in polygon),)).to_mask(H, W)  # the RefCOCO loader's rasteriser


def _write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(path)


@pytest.fixture
def refcoco(tmp_path) -> Path:
    """refcoco val: ref 0 (two sentences) is the object of two overlapping polygons; refs 1 and 2 are plain."""
    root = tmp_path / "data"
    (root / "refcoco").mkdir(parents=True)
    _write_image(root / "images" / "mscoco" / "images" / "train2014" / "a.png")
    polygons = {0: [LEFT, RIGHT], 1: [LEFT], 2: [RIGHT]}
    annotations = [{"id": i, "image_id": 1, "segmentation": p, "bbox": [10, 10, 30, 20], "category_id": 1}
                   for i, p in polygons.items()]
    instances = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}], "annotations": annotations}
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    refs = [{"ref_id": i, "ann_id": i, "image_id": 1, "split": "val",
             "sentences": [{"sent": f"object {i} sentence {k}", "sent_id": 10 * i + k} for k in range(2 if i == 0 else 1)]}
            for i in polygons]
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    return root


def test_histogram_iou_drops_overlaps_from_the_target_but_not_from_the_union():
    values = np.zeros((1, 4), np.uint8)
    values[0, :3] = 1
    values[0, 3] = 2  # two polygons overlap here
    pred = np.ones((1, 4), bool)
    assert histogram_intersection_union(pred, values) == (3, 4)  # 0.75, where the binarised ground truth gives 1.0
    assert mask_intersection_union(pred, values) == (4, 4)
    ignored = values.copy()
    ignored[0, 3] = 255
    assert histogram_intersection_union(pred, ignored) == (3, 3)  # 255 is ignored, in the prediction too


def test_overlapping_polygons(refcoco):
    dataset = load_dataset("refcoco", refcoco, "val")
    union = _coco_mask(LEFT) | _coco_mask(RIGHT)
    overlap = _coco_mask(LEFT) & _coco_mask(RIGHT)
    corrected = evaluate.run_evaluation(Oracle(union), dataset, SegmentationMeter(), progress=False)
    paper = evaluate.run_evaluation(Oracle(union), dataset, SegmentationMeter(), progress=False, protocol="paper")
    assert corrected.masks["0"] == corrected.masks["1"] == (union.sum(), union.sum()) and overlap.any()
    expected = (union.sum() - overlap.sum(), union.sum())  # overlap pixels: out of the target, in the union
    assert paper.masks["0"] == paper.masks["1"] == expected
    assert corrected.summary()["num_expressions"] == paper.summary()["num_expressions"] == 4
    assert paper.summary()["cIoU"] < corrected.summary()["cIoU"]


@pytest.fixture
def reasonseg(tmp_path) -> Path:
    root = tmp_path / "data"
    folder = root / "reason_seg" / "ReasonSeg" / "val"
    _write_image(folder / "img.png")
    shapes = [{"label": "target", "points": [[10, 10], [29, 10], [29, 29], [10, 29]]},
              {"label": "ignore", "points": [[30, 10], [39, 10], [39, 29], [30, 29]]}]
    texts = ["the first query", "a second query", "a third one"]
    (folder / "img.json").write_text(json.dumps({"shapes": shapes, "text": texts, "is_sentence": True}))
    return root


def test_ignore_region_and_several_queries_per_image(reasonseg):
    dataset = load_dataset("reasonseg", reasonseg, "val")
    target = _polygon_mask(LEFT)
    ignore = _polygon_mask([30, 10, 39, 10, 39, 29, 30, 29])
    prediction = target | ignore
    oracle = Oracle(prediction)
    corrected = evaluate.run_evaluation(oracle, dataset, SegmentationMeter(), progress=False)
    assert corrected.summary()["num_expressions"] == 3 and corrected.summary()["gIoU"] == 1.0  # ignore left out
    oracle = Oracle(prediction)
    paper = evaluate.run_evaluation(oracle, dataset, SegmentationMeter(), progress=False, protocol="paper")
    assert oracle.queries == ["the first query"]  # only the first sentence per image
    assert paper.masks == {"img:0": (int(target.sum()), int(prediction.sum()))}  # ignore is background


def test_groundingsuite_caption_edit(tmp_path):
    root = tmp_path / "data"
    _write_image(root / "coco" / "unlabeled2017" / "g.png")
    target = _polygon_mask(LEFT)
    record = {"image_path": "unlabeled2017/g.png", "caption": "This is a car that Is there", "box": [10, 10, 30, 30],
              "segmentation": [mask_to_rle(target), mask_to_rle(_polygon_mask(RIGHT))], "idx": 7}
    (root / "groundingsuite").mkdir()
    (root / "groundingsuite" / "GroundingSuite-Eval.jsonl").write_text(json.dumps(record) + "\n")
    dataset = load_dataset("groundingsuite", root)
    union = _polygon_mask(LEFT, RIGHT)
    oracle = Oracle(union)
    corrected = evaluate.run_evaluation(oracle, dataset, SegmentationMeter(), progress=False)
    assert oracle.queries == ["This is a car that Is there"] and corrected.masks["7"] == (union.sum(), union.sum())
    oracle = Oracle(union)
    paper = evaluate.run_evaluation(oracle, dataset, SegmentationMeter(), progress=False, protocol="paper")
    assert oracle.queries == ["th  a car that is there"]  # "is"/"are" deleted anywhere (case-sensitively), then lower-cased
    overlap = _polygon_mask(LEFT) & _polygon_mask(RIGHT)
    assert paper.masks["7"] == (union.sum() - overlap.sum(), union.sum())  # summed RLEs, as RefCOCO's polygons


def test_distributed_sampler_padding_duplicates(refcoco):
    """3 refs over 2 processes: the paper protocol deals ref 0 a second time (with both its sentences)."""
    dataset = load_dataset("refcoco", refcoco, "val")
    union = _coco_mask(LEFT) | _coco_mask(RIGHT)

    def merged(protocol):
        meters = [evaluate.run_evaluation(Oracle(union), dataset, SegmentationMeter(), progress=False,
                                          rank=rank, world_size=2, protocol=protocol) for rank in (0, 1)]
        meters[0].merge(meters[1])
        return meters[0]

    assert set(merged("corrected").masks) == {"0", "1", "10", "20"}
    paper = merged("paper")
    assert set(paper.masks) == {"0", "1", "10", "20", "0~pad3", "1~pad3"}
    assert paper.masks["0~pad3"] == paper.masks["0"]


def test_paper_protocol_runs_the_model_with_the_scripts_inputs(refcoco, reasonseg):
    model = build_tiny_random()
    for root, name, split, side, resize in ((refcoco, "refcoco", "val", 0, "pil_bilinear"),
                                            (reasonseg, "reasonseg", "val", 640, "cv2_linear")):
        config = paper_model_config(model.config, load_dataset(name, root, split))
        assert (config.preprocessing.reasoner_longest_side, config.preprocessing.sam_resize) == (side, resize)
        assert config.preprocessing.collapse_whitespace is False and config.preprocessing.mask_pad_in_query_pass
        assert config.generation.max_length == AUTHORS_LENGTH_CAP


def test_cli_protocol_paper(refcoco, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert evaluate.main(["--model", "tiny-random", "--data", str(refcoco), "--dataset", "refcoco", "--split", "val",
                          "--output", str(out), "--max-new-tokens", "3", "--protocol", "paper"]) == 0
    result = json.loads(out.read_text())
    assert result["run"]["protocol"] == "paper" and result["metrics"]["num_expressions"] == 4
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("")
    assert evaluate.main(["--model", "tiny-random", "--data", str(jsonl), "--dataset", "jsonl",
                          "--protocol", "paper"]) == 2
    assert "--protocol paper" in capsys.readouterr().err
