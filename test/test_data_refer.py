"""RefCOCO-family loader: the refer layout written by the generator and by hand, broken refs, safe pickles."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import load_dataset
from lens_model.result import mask_to_box
from training.data.refer import ReferDataset
from training.data.safe_pickle import load_plain_pickle
from training.synthetic import generate_dataset

HEIGHT, WIDTH = 20, 30


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refer")
    generate_dataset(root, num_images=12, seed=0, size=96)
    return root


def test_generator_output_loads_one_sample_per_sentence(synthetic_root: Path) -> None:
    refs = pickle.loads((synthetic_root / "synthetic" / "refs(unc).p").read_bytes())
    for split in ("train", "val", "test"):
        dataset = load_dataset("synthetic", synthetic_root, split)
        split_refs = [ref for ref in refs if ref["split"] == split]
        assert len(dataset) == sum(len(ref["sentences"]) for ref in split_refs)
        samples = list(dataset)
        assert len(samples) == len(dataset) and dataset.skips.total == 0
        for sample in samples:
            assert sample.mask.dtype == np.bool_ and sample.mask.any() != sample.no_target
            for box, mask in sample.instances:  # the generator writes each mask's own bbox
                assert box == mask_to_box(mask)
            assert sample.reasoning and sample.meta["split"] == split
            assert sample.meta["expression_type"] in {"shape", "color", "size", "position", "relation", "multiple", "absent"}
            assert sample.source == "synthetic" and sample.image.shape == (96, 96, 3)
        assert len(load_dataset("synthetic", synthetic_root, split, per="ref")) == len(split_refs)


def _image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(
        path, format="PNG"
    )


def _ref(
    ref_id: int, ann_id: int, image_id: int, split: str = "testA", texts: tuple[str, ...] = ("the thing",)
) -> dict:
    sentences = [
        {"tokens": t.split(), "raw": t.upper(), "sent": t, "sent_id": 100 * ref_id + k} for k, t in enumerate(texts)
    ]
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "split": split,
        "sentences": sentences,
        "sent_ids": [s["sent_id"] for s in sentences],
        "file_name": f"COCO_train2014_{image_id:012d}_{ref_id}.jpg",
    }


def _ann(ann_id: int, image_id: int, segmentation: object, bbox: list[float] | None = None) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "segmentation": segmentation,
        "bbox": bbox or [1, 1, 5, 5],
        "iscrowd": 0,
    }


@pytest.fixture
def refcoco_root(tmp_path: Path) -> Path:
    """A refcoco folder in the LISA/refer layout with valid and broken refs."""
    images_dir = tmp_path / "images" / "mscoco" / "images" / "train2014"
    _image(images_dir / "COCO_train2014_000000000042.jpg")  # found by the id-based fallback name
    _image(images_dir / "custom.png", seed=1)  # found through instances.json file_name
    (images_dir / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    column = [HEIGHT * 5 + 3, 4, HEIGHT * WIDTH - HEIGHT * 5 - 7]  # uncompressed RLE: column 5, rows 3-6
    annotations = [
        _ann(1, 42, [[2, 2, 8, 2, 8, 8, 2, 8], [5, 5, 12, 5, 12, 10, 5, 10]], [1, 2, 10, 5]),
        _ann(2, 43, {"size": [HEIGHT, WIDTH], "counts": column}),
        _ann(3, 44, [[1, 1, 4, 1, 4, 4]]),
        _ann(4, 42, []),
        _ann(5, 42, [[1, 1, 300, 1, 300, 9]]),
        _ann(6, 42, [[1, 2, 3]]),
        _ann(7, 45, [[1, 1, 4, 1, 4, 4]]),
        _ann(8, 42, {"size": [HEIGHT, WIDTH], "counts": [HEIGHT * WIDTH]}),
    ]
    images = [
        {"id": 42, "height": HEIGHT, "width": WIDTH},
        {"id": 43, "file_name": "custom.png", "height": HEIGHT, "width": WIDTH},
        {"id": 44, "file_name": "absent.jpg"},
        {"id": 45, "file_name": "corrupt.jpg"},
    ]
    refs = [
        _ref(0, 1, 42, texts=(" the left thing ", "the overlap")),
        _ref(1, 2, 43, split="testB"),
        _ref(2, 3, 44),  # missing image
        _ref(3, 4, 42),  # empty segmentation
        _ref(4, 5, 42),  # polygon far outside the image (found when decoding)
        _ref(5, 6, 42),  # odd-length polygon
        _ref(6, 999, 42),  # annotation not in instances.json
        _ref(7, 7, 45),  # undecodable image (found when decoding)
        _ref(8, 1, 42, texts=()),  # no sentences
        _ref(9, 8, 42),  # empty mask (found when decoding)
        _ref(10, 1, 42, split="train"),
    ]
    folder = tmp_path / "refcoco"
    folder.mkdir()
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))  # the released files are Python 2 pickles
    return tmp_path


def test_polygons_are_unioned_binarised_and_boxes_converted(refcoco_root: Path) -> None:
    dataset = load_dataset("refcoco", refcoco_root, "testA")
    first, second = dataset[0], dataset[1]
    assert first is not None and second is not None
    expected = np.zeros((HEIGHT, WIDTH), bool)
    expected[2:8, 2:8] = True
    expected[5:10, 5:12] = True  # overlap counted once, not as 2 (the LENS evaluation bug)
    np.testing.assert_array_equal(first.mask, expected)
    assert first.box == (1.0, 2.0, 11.0, 7.0)
    assert (first.text, second.text) == ("the left thing", "the overlap")
    assert (first.sample_id, first.ref_id, first.image_id) == ("0", "0", "42")
    assert first.meta == {"split": "testA", "ann_id": 1, "category_id": 1}


def test_a_list_of_ann_ids_gives_instances_and_the_empty_list_no_target(refcoco_root: Path) -> None:
    folder = refcoco_root / "refcoco"
    instances = json.loads((folder / "instances.json").read_text())
    instances["annotations"].append(_ann(9, 42, [[20, 10, 26, 10, 26, 16, 20, 16]], [20, 10, 6, 6]))
    (folder / "instances.json").write_text(json.dumps(instances))
    refs = [{**_ref(0, 1, 42, texts=("both",)), "ann_id": [9, 1]}, {**_ref(1, 1, 42, texts=("none",)), "ann_id": []},
            {**_ref(2, 1, 42, texts=("one",)), "ann_id": [1]}]
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    dataset = load_dataset("refcoco", refcoco_root, "testA")
    both, none, one = list(dataset)
    assert [t.referents for t in dataset.targets] == [2, 0, 1]
    assert both.boxes == [(20.0, 10.0, 26.0, 16.0), (1.0, 2.0, 11.0, 7.0)] and both.box == both.boxes[0]
    np.testing.assert_array_equal(both.mask, both.instances[0][1] | both.instances[1][1])
    assert both.instances[0][1].sum() == 36 and not (both.instances[0][1] & both.instances[1][1]).any()
    assert none.no_target and none.instances == () and not none.mask.any() and none.box == (0.0, 0.0, 0.0, 0.0)
    assert none.meta["category_id"] is None
    np.testing.assert_array_equal(one.mask, both.instances[1][1])
    assert len(one.instances) == 1 and one.box == (1.0, 2.0, 11.0, 7.0)


def test_rle_annotation_and_file_name_from_instances(refcoco_root: Path) -> None:
    (sample,) = list(load_dataset("refcoco", refcoco_root, "testB"))
    expected = np.zeros((HEIGHT, WIDTH), bool)
    expected[3:7, 5] = True
    np.testing.assert_array_equal(sample.mask, expected)
    np.testing.assert_array_equal(
        sample.image, np.array(Image.open(refcoco_root / "images/mscoco/images/train2014/custom.png"))
    )


def test_broken_refs_are_skipped_and_counted(refcoco_root: Path) -> None:
    dataset = load_dataset("refcoco", refcoco_root, "testA")
    assert len(dataset) == 5  # two sentences of ref 0 plus three refs that only fail when decoded
    assert [s.text for s in dataset] == ["the left thing", "the overlap"]
    assert dataset.skips.counts == {
        "missing image": 1,
        "empty segmentation": 1,
        "bad polygon": 1,
        "missing annotation": 1,
        "no sentences": 1,
        "polygon out of bounds": 1,
        "undecodable image": 1,
        "empty mask": 1,
    }


def test_splits_match_exactly(refcoco_root: Path) -> None:
    assert len(load_dataset("refcoco", refcoco_root, "train")) == 1
    with pytest.raises(ValueError, match="available: testA, testB, train"):
        load_dataset("refcoco", refcoco_root, "test")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_refs_pickle_is_refused(refcoco_root: Path) -> None:
    marker = refcoco_root / "pwned"
    (refcoco_root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([_Exploit(marker)]))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        ReferDataset(refcoco_root / "refcoco", "testA", image_dir=refcoco_root)
    assert not marker.exists()


def test_plain_pickles_load_including_python2_strings_and_sets(tmp_path: Path) -> None:
    data = [{"a": (1, 2.5, "x", None, True), "b": {3, 4}, "c": frozenset({"y"})}]
    for protocol in (0, 2, 5):  # protocol 2 names sets as __builtin__.set, like Python 2 did
        (tmp_path / "plain.p").write_bytes(pickle.dumps(data, protocol=protocol))
        assert load_plain_pickle(tmp_path / "plain.p") == data
    # Python 2 protocol 2: a list holding the byte string "café" (SHORT_BINSTRING), decoded as UTF-8.
    (tmp_path / "py2.p").write_bytes(b"\x80\x02]q\x00U\x05caf\xc3\xa9q\x01a.")
    assert load_plain_pickle(tmp_path / "py2.p") == ["café"]
    (tmp_path / "eval.p").write_bytes(pickle.dumps(eval))
    with pytest.raises(pickle.UnpicklingError):
        load_plain_pickle(tmp_path / "eval.p")


def _deep(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def test_hostile_refs_and_annotations_are_skipped_and_counted(refcoco_root: Path) -> None:
    folder = refcoco_root / "refcoco"
    instances = json.loads((folder / "instances.json").read_text())
    triangle = [[1, 1, 4, 1, 4, 4]]
    instances["annotations"] += [
        _ann(20, 42, triangle, [0, 0, 10**400, 5]),  # OverflowError in float()
        _ann(21, 42, {"size": [HEIGHT, WIDTH], "counts": [2**70]}),
        _ann(22, 42, {"size": [float("inf"), WIDTH], "counts": "0"}),
        _ann(23, 46, triangle),
        _ann(24, 47, triangle),
        _ann(25, 48, triangle),
        {"id": [25], "segmentation": triangle},  # an unhashable id is left out, not a crash
    ]
    instances["images"] += [
        {"id": 46, "file_name": "../refcoco/instances.json"},
        {"id": 47, "file_name": "/etc/hostname"},
        {"id": 48, "file_name": ["not", "a", "name"]},
    ]
    (folder / "instances.json").write_text(json.dumps(instances))
    refs = [_ref(0, 1, 42)] + [_ref(k, k, 42) for k in (20, 21, 22)] + [_ref(k, k, k + 23) for k in (23, 24, 25)]
    refs += [
        {**_ref(30, 1, 42), "ann_id": [[1]]},  # unhashable: TypeError in a dict lookup
        {**_ref(36, 1, 42), "ann_id": [1] * 33},  # more instances than an answer may hold
        {**_ref(31, 1, 42), "image_id": {"a": 1}},
        {**_ref(32, 1, 42), "ref_id": 10**5000},  # str() refuses integers past the digit limit
        {**_ref(33, 1, 42), "ref_id": "DEEP"},  # replaced below by a list 100,000 levels deep
        {**_ref(34, 1, 42), "sentences": [{"sent": "x", "sent_id": _deep(50)}]},
        {**_ref(35, 1, 42), "sentences": 7},
    ]
    # pickle.dumps itself recurses, so the deep list is spliced in as opcodes: MARK x N, LIST x N.
    deep = b"(" * 100_000 + b"l" * 100_000
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2).replace(b"X\x04\x00\x00\x00DEEP", deep))
    dataset = load_dataset("refcoco", refcoco_root, "testA")
    assert [s.text for s in dataset] == ["the thing"]
    assert dataset.skips.counts == {
        "bad box": 1, "bad rle": 2, "path outside the dataset": 2, "malformed ref": 5, "bad id": 3,
    }


@pytest.mark.parametrize(
    "content,message",
    [
        ("[" * 100_000, "nested too deeply"),
        ("[]", "holds a JSON list"),
        ('{"images": {"id": 1}}', "'images' is a dict"),
        ('{"annotations": [', "not valid JSON"),
    ],
)
def test_an_unusable_instances_file_is_a_one_line_error(refcoco_root: Path, content: str, message: str) -> None:
    (refcoco_root / "refcoco" / "instances.json").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset("refcoco", refcoco_root, "testA")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "content",
    [
        b"\x80\x02]q\x00(K\x01",  # truncated
        b"\x80\x02]r\x00\x00\x00\x01a.",  # APPEND onto an int
        b"garbage",
        b"",
    ],
)
def test_a_corrupt_refs_pickle_is_a_one_line_error(refcoco_root: Path, content: bytes) -> None:
    (refcoco_root / "refcoco" / "refs(unc).p").write_bytes(content)
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p") as error:
        load_dataset("refcoco", refcoco_root, "testA")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "content,expected",
    [
        # LONG_BINPUT 2**28: the C unpickler zero-fills a memo table of 2**29 pointers (4 GiB) for it.
        (b"\x80\x02]r\x00\x00\x00\x10.", "[]"),
        # BYTEARRAY8 of 8 GiB: a zero-filled buffer of the declared size.
        (b"\x80\x05\x96" + (2**33).to_bytes(8, "little") + b".", "NotPlainData"),
    ],
)
def test_a_pickle_cannot_make_the_loader_allocate_more_than_its_size(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / "bomb.p").write_bytes(content)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20))\n"
        "from training.data.safe_pickle import load_plain_pickle\n"
        "try:\n    print(load_plain_pickle(sys.argv[1]))\n"
        "except ValueError as error:\n    print(type(error).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "bomb.p")], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert (result.returncode, result.stdout.strip()) == (0, expected), result.stderr[-2000:]
