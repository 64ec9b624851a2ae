"""The released layout's Conv1d collapse (kernel M over M tokens) computed as one matrix product:
the convolution's result up to summation order, with the checkpoint layout unchanged."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lens_model.config import ConnectorConfig
from lens_model.context import ContextModule, SequenceCollapse


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_collapse_equals_the_convolution(dtype, tolerance):
    torch.manual_seed(0)
    collapse = SequenceCollapse(256, 64).to(dtype)
    x = torch.randn(3, 64, 256, dtype=dtype)
    convolved = F.conv1d(x.transpose(1, 2), collapse.weight, collapse.bias).transpose(1, 2)
    ours = collapse(x)
    assert ours.shape == convolved.shape == (3, 1, 256)
    # fp32: the two sum 16,384 products in different orders; relative to the output's scale.
    assert (ours - convolved).abs().max() <= tolerance * convolved.abs().max()


def test_layout_is_the_released_conv1d():
    module = ContextModule(128, 64, ConnectorConfig(depth=1, num_heads=4), collapse=True)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items() if k.startswith("query_collapse")}
    assert shapes == {"query_collapse.weight": (128, 128, 64), "query_collapse.bias": (128,)}
    assert isinstance(module.query_collapse, torch.nn.Conv1d)
    with pytest.raises(ValueError, match="takes 64 tokens"):
        module.query_collapse(torch.zeros(1, 8, 128))
