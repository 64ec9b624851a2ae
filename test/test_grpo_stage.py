"""The GRPO stage: rollouts, the single policy pass, KL consistency, inner iterations, resume, DeepSpeed."""
import pytest
import torch

from stage_fixtures import QUIET, assert_exact_resume, run_stage, run_stage_process, synthetic_data
from training.common.config import load_config
from training.common.logging import read_metrics
from training.grpo.__main__ import main as grpo_main
from lens_model import sam_head
from lens_model.answer_format import format_answer
from lens_model.answer_parser import parse_answer
from lens_model.config import GenerationConfig
from training.batches import BatchEncoder, training_dataset
from training.grpo.config import GRPOConfig
from training.grpo.rollout import RolloutSampler
from training.grpo.trainer import reference_policy
from training.grpo.update import answer_masks, policy_loss
from training.starting_model import build_model

CONFIG = "training/configs/grpo_tiny.yaml"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("syn"), images=8, seed=7, size=112)


def config(data_root, tmp_path, *overrides):
    return load_config(GRPOConfig, CONFIG, [f"data.root={data_root}", f"output_dir={tmp_path}",
                                             "rollout.sampling.max_new_tokens=12", *overrides])


def generate(model, reference, encoder, samples, cfg):
    """A rollout, with the model as its own engine (calling it runs its forward, as the engines do)."""
    sampler = RolloutSampler(GenerationConfig(**cfg.rollout.sampling), cfg.rollout.group_size, reference, None)
    return sampler(model, encoder, samples)


@pytest.fixture()
def setup(data_root, tmp_path):
    cfg = config(data_root, tmp_path, "objective.beta=0.0")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    dataset = training_dataset(cfg.data)
    samples = [dataset[0], dataset[1]]
    encoder = BatchEncoder(model, 8, vision_frozen=False, sam_encoder_frozen=True)
    return cfg, model, encoder, samples


def test_rollout_groups_and_advantages(setup):
    cfg, model, encoder, samples = setup
    rollout = generate(model, None, encoder, samples, cfg)
    group = cfg.rollout.group_size
    assert rollout.completions.ids.shape[0] == len(samples) * group == len(rollout) and rollout.group_size == group
    assert [s.sample_id for s in rollout.samples] == [s.sample_id for s in samples for _ in range(group)]
    loss, stats = policy_loss(model, encoder, rollout, cfg)
    assert torch.isfinite(loss) and stats == rollout.stats
    grouped = rollout.advantages.view(len(samples), group)
    assert torch.allclose(grouped.mean(dim=1), torch.zeros(len(samples)), atol=1e-4)
    for key in ("reward", "reward_format", "reward_box", "reward_mask", "kl", "clip_fraction", "completion_length",
                "parse_failure", "seg_loss"):
        assert key in rollout.stats


def test_one_policy_forward_and_one_vision_pass_per_image(setup, monkeypatch):
    cfg, model, encoder, samples = setup
    rollout = generate(model, None, encoder, samples, cfg)
    calls = {"forward": 0, "vision": 0}
    forward, vision = model.forward, model.vision_embeds

    def count_forward(*a, **k):
        calls["forward"] += 1
        return forward(*a, **k)

    def count_vision(*a, **k):
        calls["vision"] += 1
        return vision(*a, **k)

    monkeypatch.setattr(model, "forward", count_forward)
    monkeypatch.setattr(model, "vision_embeds", count_vision)
    policy_loss(model, encoder, rollout, cfg)[0].backward()
    assert calls == {"forward": 1, "vision": len(samples)}  # not len(samples) * group_size


def test_kl_is_zero_before_any_update(setup, data_root, tmp_path):
    """Policy and reference are scored through the same path and positions, so KL starts at 0."""
    _, model, encoder, samples = setup
    cfg = config(data_root, tmp_path, "objective.beta=0.04")
    reference = reference_policy(model, cfg)
    rollout = generate(model, reference, encoder, samples, cfg)
    policy_loss(model, encoder, rollout, cfg)
    assert rollout.stats["kl"] == pytest.approx(0.0, abs=1e-6)


def test_second_inner_iteration_uses_the_old_policy(data_root, tmp_path):
    cfg = config(data_root, tmp_path, "objective.inner_iterations=2", "objective.beta=0.0")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    dataset = training_dataset(cfg.data)
    encoder = BatchEncoder(model, 8, False, True)
    rollout = generate(model, None, encoder, [dataset[0]], cfg)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    policy_loss(model, encoder, rollout, cfg)[0].backward()
    optimizer.step()
    optimizer.zero_grad()
    first_old = rollout.logp_old.clone()
    policy_loss(model, encoder, rollout, cfg)
    assert torch.equal(rollout.logp_old, first_old)
    assert rollout.stats["ratio"] != pytest.approx(1.0, abs=1e-6)


def test_resume_after_a_crash_reaches_the_same_parameters(data_root, tmp_path, monkeypatch):
    assert_exact_resume(grpo_main, CONFIG, data_root, tmp_path, monkeypatch,
                        ("max_steps=4", "checkpoint.every_steps=2", "engine.lr=1e-3", "data.eval_limit=0",
                         "rollout.sampling.max_new_tokens=12"))
    curve = [r for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in curve] == [2, 4]


def test_grpo_under_deepspeed_zero3_bf16(data_root, tmp_path):
    """ZeRO-3 partitions parameters; the stage must still reach every one of them (and the reference)."""
    pytest.importorskip("deepspeed")
    run_stage_process("training.grpo", [
        "--config", CONFIG, f"data.root={data_root}", f"output_dir={tmp_path / 'ds'}", *QUIET, "max_steps=2",
        "engine.backend=deepspeed", "engine.zero_stage=3", "engine.bf16=true", "rollout.sampling.max_new_tokens=12",
        "data.eval_limit=0", "checkpoint.every_steps=2"])
    from lens_model.checkpoints import load_model

    load_model(str(tmp_path / "ds"))


def test_lora_adapters_train_and_merge_into_a_plain_checkpoint(data_root, tmp_path):
    from safetensors.torch import load_file

    from lens_model.checkpoints import load_model
    from lens_model.tiny import build_tiny_random

    run_stage(grpo_main, CONFIG, data_root, tmp_path / "out", "max_steps=2", "lora.rank=4", "engine.lr=1e-2",
              "rollout.sampling.max_new_tokens=12", "data.eval_limit=0")
    trained = load_file(tmp_path / "out" / "model.safetensors")
    start = build_tiny_random().state_dict()
    assert trained.keys() == {k for k in start if k != "reasoner.lm_head.weight"}  # no adapter keys left
    changed = {k for k in trained if not torch.equal(trained[k], start[k])}
    assert any(k.startswith("reasoner.model.language_model.layers.") for k in changed)
    assert not any(k.startswith(("reasoner.model.visual.", "sam.image_encoder.")) for k in changed)
    load_model(str(tmp_path / "out"))


def test_grpo_raises_the_format_reward_of_a_briefly_warm_started_model(tmp_path):
    """The learning test: a short SFT leaves the tiny model writing a valid direct answer about half
    the time under sampling (the reward varies within groups); 24 GRPO steps on the format reward
    alone (8 prompts x G 8) must lift the mean reward clearly. Measured over seeds 0-2: the mean of
    the first six steps 0.51-0.58, of the last six 0.75-0.81; with lr 0 (a trainer that does not
    learn) 0.51 and 0.54, so the margin of 0.1 separates the two."""
    from training import sft

    data_root = synthetic_data(tmp_path / "syn", images=10, seed=5, size=112)
    run_stage(sft.main, "training/configs/sft_tiny.yaml", data_root, tmp_path / "sft", "model.lens.template=direct",
              "max_steps=100", "engine.lr=1e-2", "data.eval_limit=0", "checkpoint.every_steps=0")
    run_stage(grpo_main, CONFIG, data_root, tmp_path / "grpo", f"model.init={tmp_path / 'sft'}",
              "model.lens.template=direct", "rewards.weights.format=1.0", "rewards.weights.box=0.0",
              "rewards.weights.mask=0.0", "objective.beta=0.0", "objective.seg_weight=0.0", "max_steps=24",
              "engine.lr=1e-3", "engine.scheduler=constant", "engine.micro_batch_size=8", "rollout.group_size=8",
              "rollout.sampling.max_new_tokens=64", "log.every_steps=1", "data.eval_limit=0", "checkpoint.every_steps=0")
    curve = [r["reward"] for r in read_metrics(tmp_path / "grpo" / "metrics.jsonl") if "reward" in r]
    assert len(curve) == 24
    start, end = sum(curve[:6]) / 6, sum(curve[-6:]) / 6
    assert start < 0.7, f"the warm start already solves the task ({start:.2f}); nothing left to learn"
    assert end > start + 0.1, f"mean reward {start:.2f} -> {end:.2f}: GRPO did not learn ({[round(r, 2) for r in curve]})"


def test_answer_masks_are_the_masks_the_predictor_returns(setup):
    """One box: the LENS mask; several: with SAM 2's box masks of the others; []: empty."""
    cfg, model, encoder, samples = setup
    rollout = generate(model, None, encoder, samples, cfg)
    boxes = [[4.0, 6.0, 40.0, 50.0], [60.0, 10.0, 100.0, 40.0]]
    answers = [format_answer([(boxes[0], "x")], "direct"), format_answer([(b, "x") for b in boxes], "direct"),
               format_answer([], "direct")]
    rollout.parsed = [parse_answer(answers[row % 3]) for row in range(len(rollout))]
    with torch.no_grad():
        logits = model(rollout.inputs, rollout.completions, rollout.batch.sam_features,
                       rows_per_image=rollout.group_size).mask_logits
    masks = answer_masks(model, rollout, logits)
    for row, (mask, sample) in enumerate(zip(masks, rollout.samples)):
        lens = sam_head.upsample_logits(logits[row : row + 1], sample.height, sample.width)[0] > 0
        if row % 3 == 0:
            assert torch.equal(mask, lens)
        elif row % 3 == 1:
            image = row // rollout.group_size
            with torch.no_grad():
                later, _ = model.box_masks(rollout.batch.sam_features, [tuple(boxes[1])],
                                           rollout.batch.resized_sizes[image], [image])
            assert torch.equal(mask, lens | (sam_head.upsample_logits(later, sample.height, sample.width)[0] > 0))
        else:
            assert not mask.any() and mask.shape == lens.shape
