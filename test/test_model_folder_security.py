"""A model folder is data, never code: every attack form through config.json is refused and runs nothing.

Each hostile folder is the tiny model saved normally, then one field of its config.json (or one of
its other files) changed the way an attacker would. The payloads are real: if the loader ran them,
a marker file would appear or a victim file would be truncated, and the tests check both.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lens_model.config import LensConfig
from lens_model.errors import CheckpointFormatError, LensError, ModelNotFoundError
from lens_model.checkpoints import save_model, load_model
from lens_model.hub import locate, resolve_device
from lens_model.modeling import meta_device
from lens_model.sam_head import resolve_sam2_config
from model_fixtures import tiny_model

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good") / "model"
    save_model(tiny_model(), folder)
    return folder


@pytest.fixture
def evil(saved, tmp_path):
    """A copy of the saved model whose config.json the test rewrites with ``edit(config)``."""
    folder = tmp_path / "evil"
    folder.mkdir()
    for path in saved.iterdir():
        (folder / path.name).symlink_to(path)
    (folder / "config.json").unlink()

    def write(edit) -> Path:
        config = json.loads((saved / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    return write


def _trunk(config: dict) -> dict:
    return config["sam2_model_config"]["image_encoder"]["trunk"]


def attacks(tmp: Path) -> dict[str, callable]:
    """Each edit plants a payload whose effect (a marker file, a truncated victim) the test checks."""
    marker, victim, pickle = tmp / "marker", tmp / "victim", tmp / "payload.pt"
    walk = "sam2.build_sam."  # sam2.build_sam imports os and torch: Hydra resolves these by attribute walking

    def set_trunk(node):
        return lambda c: c["sam2_model_config"]["image_encoder"].__setitem__("trunk", node)

    return {
        "torch_load": set_trunk({"_target_": walk + "torch.load", "f": str(pickle), "weights_only": False}),
        "os_system": set_trunk({"_target_": walk + "os.system", "command": f"touch {marker}"}),
        "os_open": set_trunk({"_target_": walk + "os.open", "path": str(victim), "flags": os.O_WRONLY | os.O_TRUNC}),
        "attribute_walk": lambda c: c["sam2_model_config"].__setitem__(
            "_target_", "sam2.modeling.sam2_base.torch.serialization.load"),
        # Placed under a field SAM 2 accepts as a bool: the model would load and predict normally.
        "nested_target_in_bool_field": lambda c: c["sam2_model_config"].__setitem__(
            "compile_image_encoder", {"_target_": walk + "os.system", "command": f"touch {marker}"}),
        "nested_target_in_list": lambda c: _trunk(c).__setitem__(
            "stages", [{"_target_": walk + "os.system", "command": f"touch {marker}"}, 1, 2, 1]),
        "hiera_weights_path": lambda c: _trunk(c).__setitem__("weights_path", str(pickle)),
        "env_interpolation": lambda c: _trunk(c).__setitem__("embed_dim", "${oc.env:LENS_TEST_SECRET}"),
        "hub_attention_kernel": lambda c: c["reasoner_config"].__setitem__(
            "attn_implementation", "kernels-community/flash-attn"),
        "nested_hub_attention_kernel": lambda c: c["reasoner_config"]["text_config"].__setitem__(
            "attn_implementation", "evil-org/kernel"),
        "remote_code_map": lambda c: c["reasoner_config"].__setitem__("auto_map", {"AutoModel": "evil.Model"}),
    }


ATTACKS = sorted(attacks(Path("/tmp")))


@pytest.mark.parametrize("attack", ATTACKS)
def test_hostile_config_is_refused_and_runs_nothing(evil, tmp_path, attack, monkeypatch):
    marker, victim, pickle = tmp_path / "marker", tmp_path / "victim", tmp_path / "payload.pt"
    torch.save(Payload(marker), pickle)
    victim.write_text("precious")
    monkeypatch.setenv("LENS_TEST_SECRET", "s3cr3t-value")
    folder = evil(attacks(tmp_path)[attack])
    with pytest.raises(CheckpointFormatError) as refused:
        load_model(str(folder))
    message = str(refused.value)
    assert "\n" not in message and "s3cr3t-value" not in message
    assert not marker.exists(), "the payload ran"
    assert victim.read_text() == "precious", "the victim file was touched"


def test_hostile_model_folder_is_a_one_line_cli_error(evil, tmp_path):
    marker = tmp_path / "marker"
    folder = evil(attacks(tmp_path)["os_system"])
    image = REPO / "examples" / "scene.png"
    proc = subprocess.run(
        [sys.executable, "-m", "lens_model.cli", "--image", str(image), "--query", "x", "--model", str(folder),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lens-segment: error:")]
    assert len(errors) == 1 and "not allowed" in errors[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, overrides, message", [
    ("configs/../build_sam.py", [], "not one of the installed"),
    ("configs/../../../../../../etc/passwd", [], "not one of the installed"),
    ("/etc/hostname", [], "not one of the installed"),
    ("configs/sam2/sam2_hiera_t.yaml", ["++model.image_size=${oc.env:HOME}"], "plain value"),
    ("configs/sam2/sam2_hiera_t.yaml", ["++hydra.job.name=x"], "plain value"),
    ("configs/sam2/sam2_hiera_t.yaml", ["model.image_encoder.trunk._target_=os.system"], "plain value"),
])
def test_sam2_config_names_and_overrides_are_data_only(name, overrides, message):
    with pytest.raises(CheckpointFormatError, match=message):
        resolve_sam2_config(name, overrides)


def test_every_shipped_sam2_config_passes_the_allow_list():
    from lens_model import sam_arch

    for name in ("sam2/sam2_hiera_t", "sam2/sam2_hiera_s", "sam2/sam2_hiera_b+", "sam2/sam2_hiera_l",
                 "sam2.1/sam2.1_hiera_t", "sam2.1/sam2.1_hiera_s", "sam2.1/sam2.1_hiera_b+", "sam2.1/sam2.1_hiera_l"):
        description = resolve_sam2_config(f"configs/{name}.yaml", [])
        with meta_device():  # checks every node and field without allocating the tensors
            sam_arch.build_sam2_base(description)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.__setitem__("num_queries", "16"), r"config.json.num_queries must be an integer|LensConfig.num_queries"),
    (lambda c: c.__setitem__("num_queries", True), "must be an integer"),
    (lambda c: c.__setitem__("num_queries", 10**9), "must lie in"),
    (lambda c: c["connector"].__setitem__("depth", 2.5), "depth must be an integer"),
    (lambda c: c["generation"].__setitem__("max_new_tokens", 0), "max_new_tokens must lie in"),
    (lambda c: c["generation"].__setitem__("temperature", "hot"), "temperature must be a finite number"),
    (lambda c: c.__setitem__("template", 3), "template must be one of"),
    (lambda c: c.__setitem__("max_pixels", 10**12), "max_pixels must lie in"),
    (lambda c: c.__setitem__("sam2_overrides", "++model.image_size=1"), "sam2_overrides must be a list"),
    (lambda c: c.__setitem__("connector", [1, 2]), "connector must be a JSON object"),
    (lambda c: c.__setitem__("generation", {"beams": 4}), r"unknown fields in .*generation: \['beams'\]"),
    (lambda c: c.__setitem__("reasoner_config", {"model_type": ["qwen2_5_vl"]}), "unsupported reasoner type"),
    (lambda c: c["reasoner_config"]["text_config"].__setitem__("hidden_size", "wide"), "reasoner|config"),
    (lambda c: _trunk(c).__setitem__("embed_dim", 16.0), "embed_dim must be an integer"),
    (lambda c: _trunk(c).__setitem__("stages", [1, 1, 2]), "inconsistent"),
    (lambda c: _trunk(c).__setitem__("num_heads", -1), "must lie in"),
])
def test_malformed_config_is_one_line_error(evil, edit, message):
    with pytest.raises(CheckpointFormatError, match=message) as refused:
        load_model(str(evil(edit)))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("edit", [
    # Each describes a model thousands of times bigger than the saved weights: allocating it first
    # would take many gigabytes (or fail); it must be refused from the files' headers alone.
    lambda c: c["reasoner_config"]["text_config"].update(num_hidden_layers=4000, layer_types=["full_attention"] * 4000),
    lambda c: c["reasoner_config"]["text_config"].update(vocab_size=50_000_000),
    lambda c: (_trunk(c).update(embed_dim=1024, stages=[1, 1, 100, 1]), c["sam2_model_config"]["image_encoder"][
        "neck"].update(backbone_channel_list=[8192, 4096, 2048, 1024])),
    lambda c: c.update(num_queries=4096),
])
def test_config_describing_more_than_its_weights_is_refused_before_allocation(evil, edit):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointFormatError, match="does not match the model|checkpoint shape"):
        load_model(str(evil(edit)))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500, f"peak memory grew by {grown_mb:.0f} MB while refusing"


@pytest.mark.parametrize("file, content, message", [
    ("tokenizer.json", "{not json", "cannot load the tokenizer"),
    ("preprocessor_config.json", json.dumps({"patch_size": 0}), "patch_size must lie in"),
    ("preprocessor_config.json", json.dumps({"merge_size": "2"}), "merge_size must be an integer"),
    ("preprocessor_config.json", json.dumps({"image_std": [0.0, 1.0, 1.0]}), "image_std must be 3 numbers"),
    ("preprocessor_config.json", "[1, 2]", "does not hold a JSON object"),
    ("preprocessor_config.json", "[" * 100_000, "cannot read"),
    ("config.json", "[" * 100_000, "cannot read"),
    ("config.json", "[]", "must hold a JSON object"),
])
def test_broken_model_files_are_one_line_errors(saved, tmp_path, file, content, message):
    folder = tmp_path / "m"
    folder.mkdir()
    for path in saved.iterdir():
        (folder / path.name).symlink_to(path)
    (folder / file).unlink()
    (folder / file).write_text(content)
    with pytest.raises(CheckpointFormatError, match=message) as refused:
        load_model(str(folder))
    assert "\n" not in str(refused.value)


def test_config_types_are_checked_when_built_in_code_too():
    with pytest.raises(CheckpointFormatError, match="LensConfig.num_queries must lie in"):
        LensConfig(num_queries=0)
    with pytest.raises(CheckpointFormatError, match="min_pixels 10 exceeds max_pixels 5"):
        LensConfig(min_pixels=10, max_pixels=5)
    config = LensConfig(connector={"depth": 2}, generation={"max_new_tokens": 8})
    assert config.connector.depth == 2 and config.generation.max_new_tokens == 8


@pytest.mark.parametrize("device", ["cuda:abc", "tpu", "", "cpu:x", "meta"])
def test_bad_device_is_a_clear_error(device):
    with pytest.raises(LensError, match="is not one of cpu, cuda, mps"):
        resolve_device(device)


@pytest.mark.parametrize("repo_id", ["a--b/c", "owner/na me", "-a/b", "a/b..c"])
def test_invalid_hub_id_is_a_clear_error(repo_id, capsys):
    with pytest.raises(ModelNotFoundError, match="not a valid hub id"):
        locate(repo_id)
    assert "Fetching" not in capsys.readouterr().err
