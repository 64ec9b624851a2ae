"""Fuzzing what a model folder's config.json can hold: only CheckpointFormatError, never anything else."""
from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lens_model import sam_arch
from lens_model.config import LensConfig
from lens_model.errors import CheckpointFormatError
from lens_model.modeling import meta_device
from lens_model.sam_head import resolve_sam2_config
from lens_model.tiny import TINY_SAM2_OVERRIDES

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["${oc.env:HOME}", "os.system", "sam2.build_sam.os.system"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
DEFAULT = LensConfig().to_dict()
SAM_DESCRIPTION = resolve_sam2_config("configs/sam2/sam2_hiera_t.yaml", list(TINY_SAM2_OVERRIDES))


def _paths(node, prefix=()):
    """Every key path in a JSON tree (dicts and lists)."""
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        yield from _paths(value, prefix + (key,))


def _replace(tree, path, value):
    tree = copy.deepcopy(tree)
    if not path:
        return value
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return tree


@FUZZ
@given(field=st.sampled_from(sorted(DEFAULT)), value=json_values)
def test_any_value_in_any_lens_config_field(field, value):
    data = {**DEFAULT, field: value}
    try:
        config = LensConfig.from_dict(json.loads(json.dumps(data)))
    except CheckpointFormatError as exc:
        assert "\n" not in str(exc)
        return
    assert LensConfig.from_dict(config.to_dict()) == config  # what loads round-trips


@FUZZ
@given(data=json_values)
def test_any_json_document_as_lens_config(data):
    with pytest.raises(CheckpointFormatError):
        LensConfig.from_dict(data if not isinstance(data, dict) else {**data, "model_type": 1})


@FUZZ
@given(path=st.sampled_from(list(_paths(SAM_DESCRIPTION))), value=json_values)
def test_any_value_anywhere_in_the_sam2_description(path, value):
    description = _replace(SAM_DESCRIPTION, path, value)
    try:
        with meta_device():
            sam_arch.build_sam2_base(description)
    except CheckpointFormatError as exc:
        assert "\n" not in str(exc)
