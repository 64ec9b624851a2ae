"""The synthetic generator: determinism, exact masks, and referring expressions with exactly one referent.

Uniqueness is checked by an independent reader: the emitted sentence text is parsed here and
evaluated against the object attributes saved in instances.json, without the generator's code.
"""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training.data import load_dataset
from training.data.masks import Polygons
from training.data.synthetic_expressions import EXPRESSION_TYPES, parse_scene_listing
from training.data.synthetic_scenes import COLORS
from training.synthetic import generate_dataset, main

COLOR_WORDS = "|".join(COLORS)
SHAPE_WORDS = "circle|square|triangle|diamond|star|shape"
AXES = {
    "leftmost": [(0, -1)],
    "rightmost": [(0, 1)],
    "top": [(1, -1)],
    "bottom": [(1, 1)],
    "top left": [(1, -1), (0, -1)],
    "top right": [(1, -1), (0, 1)],
    "bottom left": [(1, 1), (0, -1)],
    "bottom right": [(1, 1), (0, 1)],
}
RELATION_AXES = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}


def _phrase(prefix: str) -> str:
    return rf"(?:(?P<{prefix}size>small|large) )?(?:(?P<{prefix}color>{COLOR_WORDS}) )?(?P<{prefix}shape>{SHAPE_WORDS})"


POSITION_RE = re.compile(
    rf"^the (?P<position>top left|top right|bottom left|bottom right|leftmost|rightmost|top|bottom) {_phrase('t')}$"
)
RELATION_RE = re.compile(rf"^the {_phrase('t')} (?P<relation>left of|right of|above|below) the {_phrase('a')}$")
PLAIN_RE = re.compile(rf"^the {_phrase('t')}$")


def _matching(objects: list[dict], groups: dict, prefix: str) -> list[int]:
    words = {key: groups[prefix + key] for key in ("size", "color", "shape")}
    wanted = {key: word for key, word in words.items() if word not in (None, "shape")}  # "shape" = any shape
    return [i for i, obj in enumerate(objects) if all(obj[key] == word for key, word in wanted.items())]


def referents(text: str, objects: list[dict]) -> list[int]:
    """Objects a literal reader could pick, with a 1 px tolerance on positions."""
    matches = [m for m in (POSITION_RE.match(text), RELATION_RE.match(text), PLAIN_RE.match(text)) if m]
    assert len(matches) == 1, f"unparseable or ambiguous grammar: {text!r}"
    match = matches[0]
    candidates = _matching(objects, match.groupdict(), "t")
    if match.re is POSITION_RE:
        possible: set[int] = set()
        for axis, sign in AXES[match["position"]]:
            best = max(sign * objects[i]["center"][axis] for i in candidates)
            possible |= {i for i in candidates if sign * objects[i]["center"][axis] >= best - 1}
        return sorted(possible)
    if match.re is RELATION_RE:
        anchors = _matching(objects, match.groupdict(), "a")
        axis, sign = RELATION_AXES[match["relation"]]
        return sorted(
            {
                i
                for a in anchors
                for i in candidates
                if i != a and sign * (objects[i]["center"][axis] - objects[a]["center"][axis]) > 0
            }
        )
    return candidates


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, num_images=40, seed=1, size=128)
    return root


def _load(root: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    refs = pickle.loads((root / "synthetic" / "refs(unc).p").read_bytes())
    instances = json.loads((root / "synthetic" / "instances.json").read_text())
    per_image: dict[int, list[dict]] = {}
    for ann in instances["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    return refs, per_image


def _single(refs: list[dict]) -> list[dict]:
    return [ref for ref in refs if not isinstance(ref["ann_id"], list)]


def test_every_sentence_has_exactly_one_referent(generated: Path) -> None:
    refs, per_image = _load(generated)
    kinds = set()
    for ref in _single(refs):
        anns = per_image[ref["image_id"]]
        objects = [ann["attributes"] for ann in anns]
        target = [ann["id"] for ann in anns].index(ref["ann_id"])
        texts = [sentence["sent"] for sentence in ref["sentences"]]
        assert len(set(texts)) == len(texts)
        for sentence in ref["sentences"]:
            assert referents(sentence["sent"], objects) == [target], sentence["sent"]
            kinds.add(sentence["expression_type"])
    assert kinds == {"shape", "color", "size", "position", "relation"}


def test_reasoning_names_the_candidates_and_the_target(generated: Path) -> None:
    refs, per_image = _load(generated)
    for ref in _single(refs)[:60]:
        target = next(ann["attributes"] for ann in per_image[ref["image_id"]] if ann["id"] == ref["ann_id"])
        for sentence in ref["sentences"]:
            reasoning = sentence["reasoning"]
            assert f"the {target['size']} {target['color']} {target['shape']} at (" in reasoning
            assert sentence["sent"] in reasoning and reasoning.endswith("so it is the target.")
            assert reasoning.count(" at (") >= 2  # at least one other object was compared


def test_reasoning_opens_with_every_shape_in_reading_order(generated: Path) -> None:
    refs, per_image = _load(generated)
    for ref in refs[:60]:
        attributes = [ann["attributes"] for ann in per_image[ref["image_id"]]]
        # four bands of 128 / 4 px, top to bottom, each left to right (centres as saved, to 0.1 px)
        ordered = sorted(attributes, key=lambda a: (min(int(a["center"][1] // 32), 3), a["center"][0]))
        expected = [(a["size"], a["color"], a["shape"]) for a in ordered]
        for sentence in ref["sentences"]:
            listed = parse_scene_listing(sentence["reasoning"])
            assert [(shape.size, shape.color, shape.shape) for shape in listed] == expected
            for shape, a in zip(listed, ordered):
                assert np.abs(np.subtract(shape.center, a["center"])).max() <= 0.6


def test_masks_match_the_painted_pixels_exactly(generated: Path) -> None:
    _, per_image = _load(generated)
    dataset = load_dataset("synthetic", generated, "val")
    checked = 0
    for sample in dataset:
        anns = per_image[int(sample.image_id)]
        for color in {ann["attributes"]["color"] for ann in anns}:
            painted = (sample.image == COLORS[color]).all(axis=2)
            union = np.zeros_like(painted)
            for ann in anns:
                if ann["attributes"]["color"] == color:
                    union |= Polygons(tuple(tuple(p) for p in ann["segmentation"])).to_mask(*painted.shape)
            np.testing.assert_array_equal(painted, union)
        checked += 1
    assert checked > 0


GROUP_RE = re.compile(rf"^(?:all the|the (?P<count>two|three|four|five|six)) {_phrase('t')}s$")
ABSENT_RE = re.compile(rf"^the {_phrase('t')}$")
COUNTS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def test_group_expressions_name_every_match_or_none(generated: Path) -> None:
    refs, per_image = _load(generated)
    groups = [ref for ref in refs if isinstance(ref["ann_id"], list)]
    kinds = Counter(ref["sentences"][0]["expression_type"] for ref in groups)
    assert set(kinds) == {"multiple", "absent"}
    for ref in groups:
        anns = per_image[ref["image_id"]]
        objects = [ann["attributes"] for ann in anns]
        (sentence,) = ref["sentences"]
        text, reasoning = sentence["sent"], sentence["reasoning"]
        if sentence["expression_type"] == "absent":
            match = ABSENT_RE.match(text)
            assert ref["ann_id"] == [] and match and _matching(objects, match.groupdict(), "t") == []
            assert reasoning.endswith("so nothing matches.")
            continue
        match = GROUP_RE.match(text)
        assert match, text
        wanted = [anns[i]["id"] for i in _matching(objects, match.groupdict(), "t")]
        assert len(wanted) >= 2 and sorted(ref["ann_id"]) == sorted(wanted)
        assert match["count"] is None or COUNTS[match["count"]] == len(wanted)
        # the answer's order is the reading order of the listing
        centres = [next(a["attributes"]["center"] for a in anns if a["id"] == i) for i in ref["ann_id"]]
        listed = [tuple(map(int, p)) for p in re.findall(r"\((\d+), (\d+)\)", reasoning.rsplit("There are ", 1)[1])]
        assert len(listed) == len(centres)
        assert np.abs(np.subtract(listed, centres)).max() <= 1
        assert reasoning.endswith("are the targets.")


def test_group_samples_carry_their_instances(generated: Path) -> None:
    dataset = load_dataset("synthetic", generated, "train")
    seen = Counter()
    for sample in dataset:
        kind = sample.meta["expression_type"]
        seen[kind] += 1
        if kind == "absent":
            assert sample.no_target and not sample.mask.any() and sample.boxes == []
        elif kind == "multiple":
            assert len(sample.instances) >= 2 and sample.box == sample.boxes[0]
            np.testing.assert_array_equal(sample.mask, np.logical_or.reduce([m for _, m in sample.instances]))
        else:
            assert len(sample.instances) == 1 and sample.instances[0][1] is sample.mask
    assert seen["multiple"] and seen["absent"]


def test_group_expressions_leave_the_single_object_dataset_unchanged(tmp_path: Path) -> None:
    """Images, annotations and single-object refs are those of a dataset without group expressions."""
    generate_dataset(tmp_path / "all", num_images=12, seed=5, size=96)
    generate_dataset(tmp_path / "single", num_images=12, seed=5, size=96, expression_types=list(EXPRESSION_TYPES))
    refs_all, _ = _load(tmp_path / "all")
    refs_single, _ = _load(tmp_path / "single")
    assert _single(refs_all) == refs_single and len(refs_all) > len(refs_single)
    for name in ["instances.json", *(f"images/{p.name}" for p in (tmp_path / "single" / "synthetic" / "images").iterdir())]:
        assert (tmp_path / "all" / "synthetic" / name).read_bytes() == (tmp_path / "single" / "synthetic" / name).read_bytes()


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    def snapshot(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for name in ("a", "b"):
        generate_dataset(tmp_path / name, num_images=8, seed=5, size=96)
    generate_dataset(tmp_path / "c", num_images=8, seed=6, size=96)
    first, second, other = (snapshot(tmp_path / name) for name in "abc")
    assert first == second
    assert first.keys() == other.keys() and first != other


def test_splits_are_80_10_10_by_image(generated: Path) -> None:
    refs, _ = _load(generated)
    images = {split: {ref["image_id"] for ref in refs if ref["split"] == split} for split in ("train", "val", "test")}
    assert [len(images[s]) for s in ("val", "test")] == [4, 4] and 28 <= len(images["train"]) <= 32
    assert not (images["train"] & images["val"]) and not (images["val"] & images["test"])


def test_expression_types_can_be_restricted(tmp_path: Path) -> None:
    generate_dataset(tmp_path, num_images=6, seed=2, size=96, expression_types=["position", "relation"])
    refs, _ = _load(tmp_path)
    types = {s["expression_type"] for ref in refs for s in ref["sentences"]}
    assert types and types <= {"position", "relation"}
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, num_images=1, expression_types=["colour"])


def test_object_count_range(tmp_path: Path) -> None:
    """One-object scenes (the grounding diagnostic of recipes/demo/RESEARCH_LOG.md) and other ranges."""
    generate_dataset(tmp_path / "one", num_images=5, seed=4, size=96, objects=(1, 1))
    instances = json.loads((tmp_path / "one" / "synthetic" / "instances.json").read_text())
    per_image = Counter(a["image_id"] for a in instances["annotations"])
    assert sorted(per_image.values()) == [1] * 5
    generate_dataset(tmp_path / "many", num_images=5, seed=4, size=128, objects=(4, 5))
    instances = json.loads((tmp_path / "many" / "synthetic" / "instances.json").read_text())
    assert set(Counter(a["image_id"] for a in instances["annotations"]).values()) <= {4, 5}
    with pytest.raises(ValueError, match="object count"):
        generate_dataset(tmp_path / "bad", num_images=1, objects=(0, 2))


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(
        ["--out", str(tmp_path), "--images", "4", "--size", "80", "--seed", "3", "--expression-types", "color", "size"]
    )
    output = capsys.readouterr().out
    assert "train" in output and (tmp_path / "synthetic" / "refs(unc).p").is_file()
    assert len(list((tmp_path / "synthetic" / "images").glob("*.png"))) == 4
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--expression-types", "smell"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--size", "10"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--objects", "3", "2"])
