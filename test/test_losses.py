"""Mask losses against hand-computed values, with ignore masks and under autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.data.sample import NO_BOX, Sample
from training.instance_targets import answered_instance_mask, first_instance_mask
from training.losses import MaskLossWeights, bce_loss, dice_loss, focal_loss, mask_loss, segmentation_loss

LN2 = math.log(2)


def _targets() -> torch.Tensor:
    targets = torch.zeros(2, 4, 5)
    targets[0, :2, :] = 1  # 10 of 20 pixels
    targets[1, 0, 0] = 1  # 1 of 20 pixels
    return targets


def test_zero_logits_by_hand() -> None:
    logits = torch.zeros(2, 4, 5)
    targets = _targets()
    assert bce_loss(logits, targets).item() == pytest.approx(LN2)
    # p = 0.5 everywhere: sum(pq) = k/2, sum(p) = 10, sum(q) = k
    per_sample = [1 - (k + 1) / (10 + k + 1) for k in (10, 1)]
    assert dice_loss(logits, targets).item() == pytest.approx(sum(per_sample) / 2)
    # (1 - p_t)^2 = 1/4; alpha_t = 0.25 on target pixels, 0.75 elsewhere
    focal = [(k * 0.25 + (20 - k) * 0.75) * 0.25 * LN2 / 20 for k in (10, 1)]
    assert focal_loss(logits, targets).item() == pytest.approx(sum(focal) / 2)


def test_bce_matches_torch_and_focal_reduces_to_bce() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 7, generator=generator) * 3
    targets = (torch.rand(3, 6, 7, generator=generator) > 0.6).float()
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    assert bce_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    assert focal_loss(logits, targets, alpha=-1, gamma=0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_confident_correct_logits_give_near_zero_loss() -> None:
    targets = _targets()
    logits = (targets * 2 - 1) * 30
    parts = mask_loss(logits, targets, weights=MaskLossWeights(focal=1.0))
    assert all(value.item() < 1e-6 for value in parts.values())


def test_ignored_pixels_take_no_part_and_averaging_is_per_sample() -> None:
    logits = torch.tensor([[[2.0, -1.0, 5.0]], [[0.0, 0.0, 0.0]]])
    targets = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]]])
    ignore = torch.tensor([[[False, False, True]], [[False, True, True]]])
    first = (F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(-1.0))).item() / 2  # BCE of the 2 valid pixels
    assert bce_loss(logits, targets, ignore).item() == pytest.approx((first + LN2) / 2)
    p = torch.sigmoid(torch.tensor([2.0, -1.0]))
    dice_first = 1 - (2 * p[0] + 1) / (p.sum() + 1 + 1)
    dice_second = 1 - (2 * 0.5 + 1) / (0.5 + 1 + 1)
    assert dice_loss(logits, targets, ignore).item() == pytest.approx(((dice_first + dice_second) / 2).item())
    everything_ignored = torch.ones_like(ignore)
    assert bce_loss(logits, targets, everything_ignored).item() == 0.0


def test_total_is_the_weighted_sum_of_enabled_components() -> None:
    generator = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(2, 4, 5, generator=generator), _targets()
    default = mask_loss(logits, targets)
    assert set(default) == {"bce", "dice", "total"}
    assert default["total"].item() == pytest.approx((default["bce"] + default["dice"]).item())
    weights = MaskLossWeights(bce=2.0, dice=0.0, focal=3.0, focal_alpha=0.5, focal_gamma=1.0)
    parts = mask_loss(logits, targets, weights=weights)
    assert set(parts) == {"bce", "focal", "total"}
    expected_focal = focal_loss(logits, targets, alpha=0.5, gamma=1.0)
    assert parts["total"].item() == pytest.approx((2 * parts["bce"] + 3 * expected_focal).item())
    for bad in ({"bce": -1.0}, {"bce": 0.0, "dice": 0.0}, {"focal_gamma": -1.0}):
        with pytest.raises(ValueError, match="must be"):
            MaskLossWeights(**bad)


def test_gradients_are_correct() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = (torch.rand(2, 3, 4, generator=generator) > 0.5).double()
    ignore = torch.rand(2, 3, 4, generator=generator) > 0.7
    weights = MaskLossWeights(focal=0.5)
    assert torch.autograd.gradcheck(lambda x: mask_loss(x, targets, ignore, weights)["total"], (logits,))
    bce_loss(logits, targets).backward()
    assert torch.allclose(logits.grad, (torch.sigmoid(logits) - targets) / 12 / 2)  # d mean-BCE / d logit


def test_half_precision_logits_are_computed_in_float32() -> None:
    logits = torch.zeros(1, 2, 2, dtype=torch.bfloat16, requires_grad=True)
    loss = mask_loss(logits, torch.ones(1, 2, 2, dtype=torch.bool))["total"]
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        bce_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="ignore"):
        dice_loss(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), torch.zeros(2, 4, 3, dtype=torch.bool))


def _sample(instances):
    mask = np.logical_or.reduce([m for _, m in instances]) if instances else np.zeros((8, 8), bool)
    return Sample(np.zeros((8, 8, 3), np.uint8), "x", mask, instances[0][0] if instances else NO_BOX,
                  "i", "r", "s", "test", instances=tuple(instances))


def _square(x1, y1, x2, y2):
    mask = np.zeros((8, 8), bool)
    mask[y1:y2, x1:x2] = True
    return (float(x1), float(y1), float(x2), float(y2)), mask


def test_segmentation_loss_takes_the_given_targets_and_defaults_to_the_sample_masks() -> None:
    left, right = _square(0, 0, 3, 3), _square(5, 5, 8, 8)
    samples = [_sample([left, right]), _sample([left])]
    logits = torch.full((2, 2, 2), -5.0)
    logits[0, 0, 0] = 5.0  # the top-left quarter of the first row's 2x2 logits
    default, _, ious = segmentation_loss(logits, samples, MaskLossWeights())
    targets = [left[1], left[1]]
    chosen, _, chosen_ious = segmentation_loss(logits, samples, MaskLossWeights(), targets)
    assert chosen < default and chosen_ious[0] > ious[0] and chosen_ious[1] == ious[1]
    with pytest.raises(ValueError):
        segmentation_loss(logits, samples, MaskLossWeights(), targets[:1])
    # a row without target takes no part; with none at all the loss is a zero that still back-propagates
    logits.requires_grad_(True)
    one, parts, one_ious = segmentation_loss(logits, samples, MaskLossWeights(), [None, left[1]])
    alone, alone_parts, _ = segmentation_loss(logits[1:], samples[1:], MaskLossWeights(), [left[1]])
    assert torch.equal(one, alone) and parts == alone_parts and one_ious == [chosen_ious[1]]
    nothing, parts, ious = segmentation_loss(logits, samples, MaskLossWeights(), [None, None])
    nothing.backward()
    assert nothing.item() == 0.0 and parts == {} and ious == [] and torch.equal(logits.grad, torch.zeros_like(logits))


def test_the_lens_mask_learns_the_first_or_the_answered_instance() -> None:
    left, right = _square(0, 0, 3, 3), _square(5, 5, 8, 8)
    two, one, none = _sample([left, right]), _sample([right]), _sample([])
    assert first_instance_mask(one) is one.mask  # a single object's target is its mask, as always
    np.testing.assert_array_equal(first_instance_mask(two), left[1])
    assert first_instance_mask(none) is None
    boxes = [left[0], right[0]]
    np.testing.assert_array_equal(answered_instance_mask(two, (5, 4, 8, 8), boxes), right[1])
    np.testing.assert_array_equal(answered_instance_mask(two, None, boxes), left[1])
    assert answered_instance_mask(one, (0, 0, 1, 1), [right[0]]) is one.mask
    assert answered_instance_mask(none, (0, 0, 3, 3), []) is None
