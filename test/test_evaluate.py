"""training.evaluate: end to end on synthetic data, resumable partial results, batching by image."""
import json
from functools import partial

import pytest

from training import evaluate
from training.data.registry import load_dataset
from training.metrics import SegmentationMeter
from training.synthetic import main as synthetic_main


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    synthetic_main(["--out", str(root), "--images", "30", "--seed", "3", "--size", "128"])
    return root


@pytest.fixture(scope="module")
def model():
    from lens_model.predictor import LensPredictor
    from lens_model.tiny import build_tiny_random

    return LensPredictor(build_tiny_random().eval())


def test_cli_writes_metrics_json(data_root, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = evaluate.main(["--model", "tiny-random", "--data", str(data_root), "--dataset", "synthetic",
                          "--split", "val", "--output", str(out), "--limit", "6", "--max-new-tokens", "4"])
    assert code == 0
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert metrics["num_expressions"] == 6 and 0 <= metrics["gIoU"] <= 1 and 0 <= metrics["cIoU"] <= 1
    assert result["random_weights"] is True
    assert "gIoU" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.partial.*"))


def test_metrics_per_expression_type(data_root, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert evaluate.main(["--model", "tiny-random", "--data", str(data_root), "--dataset", "synthetic", "--split", "val",
                          "--output", str(out), "--limit", "8", "--max-new-tokens", "4", "--group-by", "expression_type"]) == 0
    result = json.loads(out.read_text())
    dataset = load_dataset("synthetic", data_root, "val", per="sentence")
    expected = {dataset[i].meta["expression_type"] for i in range(8)}
    assert set(result["by_group"]) == expected and len(expected) > 1
    assert sum(m["num_expressions"] for m in result["by_group"].values()) == result["metrics"]["num_expressions"] == 8
    assert result["run"]["group_by"] == "expression_type"
    printed = capsys.readouterr().out
    assert all(label in printed for label in expected)


def test_a_sample_without_the_field_is_grouped_as_missing(data_root):
    sample = load_dataset("synthetic", data_root, "val", per="sentence")[0]
    assert evaluate.group_label(sample, "is_sentence") == "missing"
    assert evaluate.group_label(sample, "expression_type") == sample.meta["expression_type"]


def test_progress_redraws_at_most_once_per_mininterval(data_root, model, monkeypatch, capsys):
    """Logs stay readable: the running gIoU/cIoU do not force a redraw per batch (TQDM_MININTERVAL)."""
    # tqdm reads TQDM_MININTERVAL when it is imported, so the test passes the interval itself.
    monkeypatch.setattr(evaluate, "tqdm", partial(evaluate.tqdm, mininterval=60))
    dataset = load_dataset("synthetic", data_root, "train", per="sentence")
    evaluate.run_evaluation(model, dataset, SegmentationMeter(), limit=12, batch_size=3, max_new_tokens=4)
    redraws = capsys.readouterr().err.count("evaluate:")
    assert redraws <= 2  # the first draw and close(); not one per batch


def test_resume_after_a_crash_gives_the_same_metrics(data_root, model, tmp_path):
    dataset = load_dataset("synthetic", data_root, "train", per="sentence")
    full = evaluate.run_evaluation(model, dataset, SegmentationMeter(), limit=12, batch_size=3,
                                   max_new_tokens=4, progress=False)
    partial = evaluate.PartialResults(tmp_path / "r.json", {"run": 1}, rank=0)
    calls = {"n": 0}

    def crash_after_two(meter):
        partial.save(meter)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate.run_evaluation(model, dataset, SegmentationMeter(), limit=12, batch_size=3, max_new_tokens=4,
                                on_batch=crash_after_two, progress=False)
    resumed_meter = partial.load()
    assert 0 < len(resumed_meter) < 12
    resumed = evaluate.run_evaluation(model, dataset, resumed_meter, limit=12, batch_size=3, max_new_tokens=4, progress=False)
    assert resumed.summary() == full.summary()


def test_partial_results_of_another_run_are_refused(tmp_path):
    evaluate.PartialResults(tmp_path / "r.json", {"model": "a"}, 0).save(SegmentationMeter())
    with pytest.raises(SystemExit, match="different run"):
        evaluate.PartialResults(tmp_path / "r.json", {"model": "b"}, 0).load()


def test_batches_never_mix_images(data_root):
    dataset = load_dataset("synthetic", data_root, "train", per="sentence")
    batches = list(evaluate.image_batches(iter(dataset), 2))
    assert sum(len(b) for b in batches) == len(dataset)
    assert all(len({s.image_id for s in b}) == 1 and len(b) <= 2 for b in batches)


def test_sharding_covers_every_sample_once(data_root, model):
    dataset = load_dataset("synthetic", data_root, "val", per="sentence")
    meters = [evaluate.run_evaluation(model, dataset, SegmentationMeter(), rank=r, world_size=2, max_new_tokens=2,
                                      progress=False) for r in range(2)]
    merged = SegmentationMeter()
    for meter in meters:
        merged.merge(meter)
    assert len(merged) == len(dataset)


def test_score_treats_no_target_and_empty_masks_as_nothing_and_boxes_only_single_targets():
    """Hand-computed: a no-target sample answered no_target (with a stray mask) and one answered with a box,
    a two-object sample answered with one of them, a single-object sample answered with an empty mask."""
    import numpy as np

    from lens_model.result import NO_TARGET, Instance, SegmentationResult
    from training.data.sample import NO_BOX, Sample

    image = np.zeros((2, 4, 3), np.uint8)
    left, right = np.zeros((2, 4), bool), np.zeros((2, 4), bool)
    left[:, :2] = True
    right[:, 2:] = True
    nothing = np.zeros((2, 4), bool)

    def sample(name, mask, instances=None):  # None: one referent; (): none
        box = NO_BOX if instances == () else (0, 0, 2, 2)
        return Sample(image, "x", mask, box, "i", name, name, "test", instances=instances)

    def answer(mask, status="ok"):
        box = None if status != "ok" else (0.0, 0.0, 2.0, 2.0)
        instances = [] if box is None else [Instance(box, mask, 0.9, "x")]
        return SegmentationResult("x", mask, box, NO_TARGET if status == "no_target" else status, "x", 0.9, "", "",
                                  instances=instances)

    meter = SegmentationMeter()
    evaluate.score(meter, sample("nt-right", nothing, ()), answer(left, "no_target"))  # stray mask ignored: I=0, U=0
    evaluate.score(meter, sample("nt-wrong", nothing, ()), answer(left))  # I=0, U=4
    both = sample("two", left | right, (((0, 0, 2, 2), left), ((2, 0, 4, 2), right)))
    evaluate.score(meter, both, answer(left))  # I=4, U=8, no box scored
    evaluate.score(meter, sample("missed", left), answer(nothing))  # answered with nothing: I=0, U=4
    summary = meter.summary()
    assert summary["gIoU"] == pytest.approx((1.0 + 0.0 + 0.5 + 0.0) / 4)
    assert summary["cIoU"] == pytest.approx(4 / (0 + 4 + 8 + 4))
    assert (summary["N_acc"], summary["T_acc"]) == (0.5, 0.5)
    assert set(meter.boxes) == {"missed"}
    assert meter.generations["nt-right"] == (True, 0)  # an empty list is a parsed answer
