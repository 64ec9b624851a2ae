"""GRPO objective against hand-computed numbers and autograd gradient checks."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from training.grpo.objective import clipped_surrogate, group_advantages, grpo_loss, kl_k3, masked_mean

E_HALF = math.exp(0.5)


def test_group_advantages_unbiased_and_biased_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.4, 0.6, 0.8]])
    unbiased = group_advantages(rewards)
    std0 = math.sqrt(4 * 0.25 / 3)  # Bessel: sum of squared deviations / (G - 1)
    expected0 = [0.5, -0.5, -0.5, 0.5]
    assert unbiased[0].tolist() == pytest.approx([d / (std0 + 1e-4) for d in expected0], rel=1e-6)
    std1 = math.sqrt((0.3**2 + 0.1**2 + 0.1**2 + 0.3**2) / 3)
    assert unbiased[1].tolist() == pytest.approx([d / (std1 + 1e-4) for d in (-0.3, -0.1, 0.1, 0.3)], rel=1e-5)
    biased = group_advantages(rewards, unbiased=False)
    assert biased[0].tolist() == pytest.approx([d / (0.5 + 1e-4) for d in expected0], rel=1e-6)


def test_group_advantages_flat_input_matches_grouped():
    rewards = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.0, 1.0, 1.0, 0.25])
    flat = group_advantages(rewards, group_size=4)
    assert flat.shape == (8,)
    assert torch.equal(flat, group_advantages(rewards.reshape(2, 4)).reshape(-1))
    assert torch.allclose(flat.reshape(2, 4).mean(dim=1), torch.zeros(2), atol=1e-6)


def test_group_advantages_equal_rewards_give_exactly_zero():
    rewards = torch.tensor([[0.1] * 7, [0.3] * 7, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    adv = group_advantages(rewards)
    assert torch.equal(adv[:2], torch.zeros(2, 7))
    assert adv[2, 1] > 0 and (adv[2, [0, 2, 3, 4, 5, 6]] < 0).all()


def test_group_advantages_scale_none_only_centres():
    adv = group_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), scale="none")
    assert adv.tolist() == [[-2.0, -1.0, 0.0, 3.0]]


@pytest.mark.parametrize(
    "rewards, kwargs, match",
    [
        (torch.zeros(6), {}, "group_size"),
        (torch.zeros(6), {"group_size": 4}, "group_size"),
        (torch.zeros(3, 1), {}, "at least 2"),
        (torch.zeros(2, 2, 2), {}, "shape"),
        (torch.zeros(2, 2), {"scale": "mad"}, "scale"),
    ],
)
def test_group_advantages_rejects_bad_input(rewards, kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, **kwargs)


def test_clipped_surrogate_hand_values():
    # One token per completion: log-ratio +0.5 (ratio e^0.5 = 1.6487) or -0.5 (ratio 0.6065), A = ±1.
    logp_old = torch.zeros(4, 1)
    logp_new = torch.tensor([[0.5], [0.5], [-0.5], [-0.5]])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clip_fraction = clipped_surrogate(logp_new, logp_old, adv, torch.ones(4, 1))
    expected = [
        -1.2,  # ratio above 1.2 with A>0: clipped to 1.2
        E_HALF,  # A<0: min picks the unclipped, larger penalty
        -math.exp(-0.5),  # A>0 below 0.8: unclipped (pessimistic)
        0.8,  # A<0 below 0.8: clipped to 0.8
    ]
    assert loss.squeeze(1).tolist() == pytest.approx(expected, rel=1e-6)
    assert clip_fraction.item() == pytest.approx(0.5)


def test_clipped_surrogate_asymmetric_range():
    loss, clip_fraction = clipped_surrogate(
        torch.tensor([[0.25]]), torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), eps_low=0.2, eps_high=0.28
    )
    assert loss.item() == pytest.approx(-1.28)
    assert clip_fraction.item() == 1.0


def test_surrogate_gradient_on_policy_is_minus_advantage():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -4.0, -1.0]], requires_grad=True)
    adv = torch.tensor([0.7, -1.3])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss, clip_fraction = clipped_surrogate(logp, logp.detach(), adv, mask)
    loss.sum().backward()
    assert torch.allclose(logp.grad, -adv[:, None] * mask)
    assert clip_fraction.item() == 0.0


def test_clipping_stops_gradient_outside_the_range():
    logp_old = torch.zeros(4, 1)
    logp_new = torch.tensor([[0.5], [0.5], [-0.5], [-0.5]], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, _ = clipped_surrogate(logp_new, logp_old, adv, torch.ones(4, 1))
    loss.sum().backward()
    # d(-ratio·A)/dlogp = -A·ratio where unclipped; 0 where the clip is active.
    assert logp_new.grad.squeeze(1).tolist() == pytest.approx([0.0, E_HALF, -math.exp(-0.5), 0.0], rel=1e-6)


def test_kl_k3_hand_values_and_gradient():
    logp_new = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.3)], requires_grad=True)
    logp_ref = torch.tensor([math.log(0.25), math.log(0.5), math.log(0.3)])
    kl = kl_k3(logp_new, logp_ref)
    expected = [0.5 - math.log(0.5) - 1, 2.0 - math.log(2.0) - 1, 0.0]
    assert kl.tolist() == pytest.approx(expected, abs=1e-7)
    kl.sum().backward()
    # d/dnew [exp(ref-new) - (ref-new) - 1] = 1 - π_ref/π_new
    assert logp_new.grad.tolist() == pytest.approx([1 - 0.5, 1 - 2.0, 0.0], abs=1e-6)


@given(st.floats(-20, 0), st.floats(-20, 0))
def test_kl_k3_is_non_negative(new, ref):
    assert kl_k3(torch.tensor([new], dtype=torch.float64), torch.tensor([ref], dtype=torch.float64)).item() >= 0.0


# Two completions, 3 token slots; the second has 1 real token. Hand-computed values below.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
ADV = torch.tensor([1.0, -1.0])


def test_grpo_loss_sequence_vs_token_normalisation_on_policy():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 9.0, 9.0]])
    seq, stats = grpo_loss(logp, None, None, ADV, MASK, beta=0.0, normalisation="sequence")
    tok, _ = grpo_loss(logp, None, None, ADV, MASK, beta=0.0, normalisation="token")
    # per-token loss = -A: row 0 is -1 on 3 tokens, row 1 is +1 on 1 token
    assert seq.item() == pytest.approx((-3 / 3 + 1 / 1) / 2)  # 0.0
    assert tok.item() == pytest.approx((-3 + 1) / 4)  # -0.5
    assert stats.as_dict() == {"kl": 0.0, "clip_fraction": 0.0, "ratio": 1.0}


def test_grpo_loss_with_kl_and_old_policy_hand_values():
    logp_new = torch.tensor([[math.log(0.5), math.log(0.5), math.log(0.5)], [math.log(0.5), 0.0, 0.0]])
    logp_old = torch.full((2, 3), math.log(0.5))
    logp_ref = torch.tensor([[math.log(0.25)] * 3, [math.log(0.5), 0.0, 0.0]])
    k3 = 0.5 - math.log(0.5) - 1  # π_ref/π_new = 0.5 on row 0; 0 on row 1 (ref == new)
    beta = 0.1
    loss, stats = grpo_loss(logp_new, logp_old, logp_ref, ADV, MASK, beta=beta, eps=0.2, normalisation="sequence")
    row0 = -1.0 + beta * k3  # ratio 1: per-token -A + β·k3, averaged over 3 identical tokens
    row1 = 1.0
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    tok, _ = grpo_loss(logp_new, logp_old, logp_ref, ADV, MASK, beta=beta, normalisation="token")
    assert tok.item() == pytest.approx((3 * row0 + row1) / 4, rel=1e-6)
    assert stats.kl.item() == pytest.approx(3 * k3 / 4, rel=1e-6)


def test_grpo_loss_ignores_padding_garbage():
    base = torch.tensor([[-1.0, -2.0, -0.5], [-0.7, -1.0, -1.0]])
    garbage = base.clone()
    garbage[1, 1:] = torch.tensor([1e4, -math.inf])
    ref = base - 0.1
    ref_garbage = ref.clone()
    ref_garbage[1, 1:] = torch.tensor([-1e4, math.inf])
    clean_loss, _ = grpo_loss(base, base - 0.05, ref, ADV, MASK, beta=0.04)
    x = garbage.clone().requires_grad_(True)
    garbage_loss, stats = grpo_loss(x, base - 0.05, ref_garbage, ADV, MASK, beta=0.04)
    garbage_loss.backward()
    assert garbage_loss.item() == pytest.approx(clean_loss.item())
    assert torch.isfinite(x.grad).all() and (x.grad[1, 1:] == 0).all()
    assert math.isfinite(stats.kl.item()) and math.isfinite(stats.ratio.item())


def test_grpo_loss_gradient_matches_policy_gradient_on_a_tiny_policy():
    """With old = new (one update per rollout batch) and beta = 0, the "sequence" loss gradient is
    -(1/B) Σ_i A_i/|o_i| Σ_t ∇ log π(o_i,t): the REINFORCE-with-group-baseline gradient."""
    torch.manual_seed(0)
    policy = torch.nn.Linear(4, 5)
    features = torch.randn(2, 3, 4)
    tokens = torch.randint(0, 5, (2, 3))

    def token_logp() -> torch.Tensor:
        return torch.log_softmax(policy(features), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    loss, _ = grpo_loss(token_logp(), None, None, ADV, MASK, beta=0.0)
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    lengths = MASK.sum(dim=1)
    reference = -((ADV / lengths)[:, None] * token_logp() * MASK).sum() / 2
    expected = torch.autograd.grad(reference, list(policy.parameters()))
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-6)


def test_grpo_loss_argument_checks():
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="logp_ref"):
        grpo_loss(logp, None, None, ADV, MASK, beta=0.04)
    with pytest.raises(ValueError, match="normalisation"):
        grpo_loss(logp, None, None, ADV, MASK, beta=0.0, normalisation="batch")
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, None, None, torch.zeros(3), MASK, beta=0.0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        grpo_loss(logp, None, None, ADV, MASK[:, :2], beta=0.0)


def test_masked_mean_of_empty_mask_is_zero():
    assert masked_mean(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0
