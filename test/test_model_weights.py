"""Weight folders are untrusted: an index names only regular files inside its folder, and a broken
index is a one-line CheckpointFormatError."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from lens_model.errors import CheckpointFormatError
from lens_model.weights import INDEX_FILE, MAX_INDEX_BYTES, iter_tensors, weight_files


def _index(folder, weight_map) -> None:
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture
def sharded(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"a": torch.zeros(2)}, str(folder / "model-1.safetensors"))
    save_file({"b": torch.ones(2)}, str(folder / "model-2.safetensors"))
    _index(folder, {"a": "model-1.safetensors", "b": "model-2.safetensors"})
    return folder


def test_a_sharded_folder_lists_its_shards(sharded):
    assert [f.name for f in weight_files(sharded)] == ["model-1.safetensors", "model-2.safetensors"]
    assert sorted(name for name, _ in iter_tensors(sharded)) == ["a", "b"]


def test_shards_in_the_hub_cache_layout_are_symlinks_and_load(tmp_path, sharded):
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for name in ("model-1.safetensors", "model-2.safetensors", INDEX_FILE):
        (sharded / name).rename(blobs / name)
        (snapshot / name).symlink_to(blobs / name)
    assert sorted(name for name, _ in iter_tensors(snapshot)) == ["a", "b"]


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors", ""])
def test_an_index_naming_files_outside_its_folder_is_refused(tmp_path, sharded, shard):
    save_file({"c": torch.ones(1)}, str(tmp_path / "outside.safetensors"))
    _index(sharded, {"a": "model-1.safetensors", "c": shard})
    with pytest.raises(CheckpointFormatError, match="outside its folder"):
        weight_files(sharded)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_shards_that_are_not_regular_files_are_refused(sharded, target):
    if target == "fifo":
        os.mkfifo(sharded / "fifo")  # opening it would block forever
        target = str(sharded / "fifo")
    (sharded / "model-2.safetensors").unlink()
    (sharded / "model-2.safetensors").symlink_to(target)
    with pytest.raises(CheckpointFormatError, match="not regular files"):
        weight_files(sharded)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[" * 100_000,
        "[]",
        '{"metadata": {}}',
        '{"weight_map": ["model-1.safetensors"]}',
        '{"weight_map": {"a": 1}}',
        '{"weight_map": {"a": ["model-1.safetensors"]}}',
        b"\xff\xfe{}",
    ],
)
def test_a_broken_index_is_a_one_line_error(sharded, content):
    path = sharded / INDEX_FILE
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CheckpointFormatError) as error:
        weight_files(sharded)
    assert "\n" not in str(error.value) and len(str(error.value)) < 400


def test_an_oversized_index_is_refused_before_it_is_read(sharded):
    with open(sharded / INDEX_FILE, "wb") as handle:
        handle.truncate(MAX_INDEX_BYTES + 1)  # sparse: no disk space used
    with pytest.raises(CheckpointFormatError, match="too large for an index"):
        weight_files(sharded)
