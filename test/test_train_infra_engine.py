"""The torch engine (accumulation, clipping, schedule, freezing, autocast) and the DeepSpeed config builder."""
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from training.common.deepspeed_engine import deepspeed_config
from training.common.engine import build_engine, select_trainable
from training.common.schema import EngineConfig


def toy_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def test_gradient_accumulation_matches_one_big_batch():
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    big_model, accumulated_model = toy_model(), toy_model()
    big = build_engine(big_model, big_model.parameters(), EngineConfig(lr=0.01, max_grad_norm=0), total_steps=10)
    accumulated = build_engine(
        accumulated_model,
        accumulated_model.parameters(),
        EngineConfig(lr=0.01, grad_accum_steps=2, max_grad_norm=0),
        total_steps=10,
    )
    for _ in range(3):
        big.backward(nn.functional.mse_loss(big(x), y))
        assert big.step()
        stepped = []
        for half in (slice(0, 4), slice(4, 8)):
            accumulated.backward(nn.functional.mse_loss(accumulated(x[half]), y[half]))
            stepped.append(accumulated.step())
        assert stepped == [False, True]
    assert big.global_step == accumulated.global_step == 3
    for a, b in zip(big.module.parameters(), accumulated.module.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_clipping_limits_the_gradient_the_optimizer_sees():
    model = toy_model()
    engine = build_engine(model, model.parameters(), EngineConfig(max_grad_norm=0.01), total_steps=10)
    seen = []

    def record_grad_norm(optimizer, args, kwargs):
        seen.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())

    engine.optimizer.register_step_pre_hook(record_grad_norm)
    engine.backward(model(torch.randn(16, 4)).pow(2).sum())
    engine.step()
    assert engine.grad_norm > 0.01  # reported norm is the one before clipping
    assert seen[0] == pytest.approx(0.01, rel=1e-4)
    assert all(p.grad is None for p in model.parameters())  # zeroed after the step


def test_warmup_cosine_schedule():
    model = toy_model()
    engine = build_engine(model, model.parameters(), EngineConfig(lr=1.0, warmup_steps=2, scheduler="cosine"), total_steps=10)
    lrs = [engine.lr]
    for _ in range(10):
        engine.backward(model(torch.randn(2, 4)).sum())
        engine.step()
        lrs.append(engine.lr)
    expected = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 11)]
    assert lrs == pytest.approx(expected, abs=1e-9)


def test_linear_schedule_without_warmup_like_the_authors_stage2():
    model = toy_model()
    engine = build_engine(model, model.parameters(), EngineConfig(lr=3e-6, scheduler="linear"), total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(engine.lr)
        engine.backward(model(torch.randn(2, 4)).sum())
        engine.step()
    assert lrs == pytest.approx([3e-6, 2.25e-6, 1.5e-6, 0.75e-6])


def test_trainable_params_decide_what_learns():
    model = toy_model()
    head = model[2]
    engine = build_engine(model, head.parameters(), EngineConfig(lr=0.1), total_steps=5)
    frozen_before = model[0].weight.detach().clone()
    head_before = head.weight.detach().clone()
    engine.backward(model(torch.randn(4, 4)).sum())
    engine.step()
    assert not model[0].weight.requires_grad and head.weight.requires_grad
    assert torch.equal(model[0].weight, frozen_before)
    assert not torch.equal(head.weight, head_before)


def test_param_groups_keep_their_own_settings():
    model = toy_model()
    groups = [{"params": model[0].parameters(), "lr": 0.5}, {"params": model[2].parameters()}]
    engine = build_engine(model, groups, EngineConfig(lr=0.1, scheduler="constant"), total_steps=5)
    assert [g["lr"] for g in engine.optimizer.param_groups] == [0.5, 0.1]


def test_select_trainable_rejects_bad_input():
    model = toy_model()
    with pytest.raises(ValueError, match="not parameters of the model"):
        select_trainable(model, [nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match="no trainable"):
        select_trainable(model, [])
    with pytest.raises(TypeError, match="mix"):
        select_trainable(model, [model[0].weight, {"params": [model[0].bias]}])
    with pytest.raises(ValueError, match="backend"):
        build_engine(model, model.parameters(), EngineConfig(backend="fsdp"), total_steps=1)


def test_bf16_autocast_on_the_torch_backend():
    model = toy_model()
    engine = build_engine(model, model.parameters(), EngineConfig(bf16=True), total_steps=1)
    with engine.autocast():
        out = engine(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    assert model[0].weight.dtype == torch.float32
    assert engine.rank == 0 and engine.world_size == 1 and engine.is_main and engine.device.type == "cpu"


def test_deepspeed_config_zero2_and_zero3():
    zero2 = deepspeed_config(EngineConfig(micro_batch_size=8, grad_accum_steps=4, lr=3e-6, max_grad_norm=1.0, bf16=True))
    assert zero2["train_micro_batch_size_per_gpu"] == 8 and zero2["gradient_accumulation_steps"] == 4
    assert zero2["gradient_clipping"] == 1.0 and zero2["bf16"] == {"enabled": True}
    assert zero2["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": 3e-6, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "torch_adam": True},
    }
    assert zero2["zero_optimization"] == {"stage": 2}
    assert "train_batch_size" not in zero2  # DeepSpeed derives it from micro batch x accumulation x world size
    zero3 = deepspeed_config(EngineConfig(zero_stage=3))
    assert zero3["zero_optimization"] == {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}


def test_deepspeed_overrides_are_deep_merged():
    cfg = OmegaConf.structured(EngineConfig)
    cfg.deepspeed_overrides = {"zero_optimization": {"overlap_comm": True, "offload_optimizer": {"device": "cpu"}},
                               "optimizer": {"params": {"torch_adam": False}}}
    config = deepspeed_config(cfg)
    assert config["zero_optimization"] == {"stage": 2, "overlap_comm": True, "offload_optimizer": {"device": "cpu"}}
    assert config["optimizer"]["params"]["torch_adam"] is False and config["optimizer"]["params"]["lr"] == 1e-5
    with pytest.raises(ValueError, match="zero_stage"):
        deepspeed_config(EngineConfig(zero_stage=4))
