"""The grounding diagnostic: the coordinate gap measures only what the image contributes."""
import dataclasses
import json

import pytest

from lens_model.tiny import build_tiny_random
from stage_fixtures import synthetic_data
from training.data.registry import load_dataset
from training.data.synthetic_expressions import ListedShape
from recipes.demo import grounding_gap


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("syn"), images=8, seed=2, size=112)


@pytest.fixture(scope="module")
def samples(data_root):
    dataset = load_dataset("synthetic", data_root, "train", per="sentence")
    return [dataset[i] for i in range(0, len(dataset), 10)][:6]


def test_the_gap_is_zero_when_every_image_looks_the_same(samples):
    model = build_tiny_random()
    same = [dataclasses.replace(s, image=samples[0].image, mask=samples[0].mask) for s in samples]
    result = grounding_gap.grounding_gap(model, same, generate=0)
    assert result["coordinate_gap"] == pytest.approx(0.0, abs=1e-6)
    assert result["coordinate_nll_own"] > 0


def test_a_random_model_already_depends_on_the_image_a_little(samples):
    result = grounding_gap.grounding_gap(build_tiny_random(), samples, generate=2)
    assert result["coordinate_gap"] != pytest.approx(0.0, abs=1e-6)
    assert result["generated"] == 2 and 0.0 <= result["mean_box_iou"] <= 1.0


def test_one_image_is_refused(samples):
    with pytest.raises(ValueError, match="two different images"):
        grounding_gap.grounding_gap(build_tiny_random(), [samples[0]] * 3, generate=0)


def test_listing_scores_compare_each_listed_shape_with_the_nearest_real_one():
    truth = [ListedShape("small", "red", "star", (10, 10)), ListedShape("large", "blue", "circle", (60, 60))]
    generated = [ListedShape("small", "red", "circle", (12, 15)),  # 5.4 px from the star: located, kind wrong
                 ListedShape("large", "red", "circle", (80, 60))]  # 20 px from anything: not located
    scores = grounding_gap.listing_scores([(generated, truth), (truth, truth), ([], truth)], radius=7.0)
    assert scores["listing_count_right"] == pytest.approx(2 / 3)
    assert scores["listing_located"] == pytest.approx(3 / 4)
    assert scores["listing_size_right"] == 1.0 and scores["listing_color_right"] == 1.0
    assert scores["listing_shape_right"] == pytest.approx(2 / 3)


def test_cli_prints_the_numbers(data_root, capsys):
    assert grounding_gap.main(["--model", "tiny-random", "--data", str(data_root), "--split", "train",
                               "--limit", "4", "--generate", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["expressions"] == 4 and set(result) >= {"coordinate_gap", "box_accuracy", "listing_located"}
