"""Atomic checkpoints (crash simulation), pruning, RNG capture and the resumable sampler."""
import json
import os
import random
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from training.common import checkpoint as checkpoint_module
from training.common.checkpoint import CheckpointManager, NoIntactCheckpoint, TrainerState
from training.common.config import load_config
from training.common.engine import build_engine
from training.common.rng import capture_rng_state, restore_rng_state, seed_everything
from training.common.sampler import ResumableSampler, SamplerState
from training.common.schema import EngineConfig, TrainConfig


def make_engine(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    return build_engine(model, model.parameters(), EngineConfig(lr=0.1, warmup_steps=1), total_steps=20)


def train_steps(engine, steps: int) -> None:
    for _ in range(steps):
        loss = engine(torch.randn(5, 3)).pow(2).mean()
        engine.backward(loss)
        assert engine.step()


def params(engine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.module.parameters()]


def save_at(manager, engine, step, **kwargs):
    return manager.save(engine, TrainerState(global_step=step, data=SamplerState(1, 0, step)), **kwargs)


def test_save_layout_and_round_trip(tmp_path):
    engine = make_engine()
    train_steps(engine, 2)
    cfg = load_config(TrainConfig, None, [f"output_dir={tmp_path}", "max_steps=20"])
    manager = CheckpointManager(tmp_path)
    state = TrainerState(global_step=2, data=SamplerState(seed=1, epoch=3, position=8), extra={"best": 0.5})
    path = manager.save(engine, state, cfg)
    assert path == tmp_path / "checkpoints" / "step-2"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-2"
    written = ["config.yaml", "optimizer.pt", "rng_rank0.pt", "trainable.safetensors", "trainer_state.json"]
    assert sorted(os.listdir(path)) == sorted([*written, "manifest.json"])
    sizes = json.loads((path / "manifest.json").read_text())["files"]
    assert sizes == {name: (path / name).stat().st_size for name in written}
    assert json.loads((path / "trainer_state.json").read_text())["data"] == {"seed": 1, "epoch": 3, "position": 8}

    expected_params, expected_lr = params(engine), engine.lr
    fresh = make_engine(seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(params(fresh), expected_params))
    restored = manager.load(fresh, manager.latest())
    assert restored == state
    assert all(torch.equal(a, b) for a, b in zip(params(fresh), expected_params))
    assert fresh.global_step == 2 and fresh.lr == expected_lr
    assert torch.equal(fresh.optimizer.state_dict()["state"][0]["exp_avg"], engine.optimizer.state_dict()["state"][0]["exp_avg"])


def test_crash_before_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    engine = make_engine()
    train_steps(engine, 1)
    manager = CheckpointManager(tmp_path)
    save_at(manager, engine, 1)
    good_params = params(engine)
    train_steps(engine, 1)

    real_replace = os.replace

    def crash_on_directory_rename(src, dst):
        if os.path.basename(src).startswith(".tmp-step-"):
            raise OSError("simulated crash between writing and renaming")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", crash_on_directory_rename)
    with pytest.raises(OSError, match="simulated crash"):
        save_at(manager, engine, 2)
    monkeypatch.setattr(checkpoint_module.os, "replace", real_replace)

    assert (tmp_path / "checkpoints" / ".tmp-step-2" / "trainable.safetensors").exists()  # half-done save left behind
    assert manager.latest() == tmp_path / "checkpoints" / "step-1"
    assert manager.steps() == [1]
    fresh = make_engine(seed=3)
    assert manager.resume(fresh).global_step == 1
    assert all(torch.equal(a, b) for a, b in zip(params(fresh), good_params))

    save_at(manager, engine, 2)  # the next save cleans up the leftover
    assert not (tmp_path / "checkpoints" / ".tmp-step-2").exists()
    assert manager.latest().name == "step-2"


def test_crash_while_publishing_latest_keeps_previous_pointer(tmp_path, monkeypatch):
    engine = make_engine()
    manager = CheckpointManager(tmp_path)
    train_steps(engine, 1)
    save_at(manager, engine, 1)
    train_steps(engine, 1)
    real_replace = os.replace

    def crash_on_pointer(src, dst):
        if os.path.basename(dst) == "latest":
            raise OSError("simulated crash while updating latest")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", crash_on_pointer)
    with pytest.raises(OSError, match="latest"):
        save_at(manager, engine, 2)
    monkeypatch.setattr(checkpoint_module.os, "replace", real_replace)

    assert manager.latest().name == "step-1"  # step-2 is complete on disk but was never published
    assert manager.load(make_engine(), manager.latest()).global_step == 1
    fresh = make_engine()
    manager.load(fresh, manager.latest())
    train_steps(fresh, 1)
    save_at(manager, fresh, 2)  # the unpublished step-2 is replaced by the new one
    assert manager.latest().name == "step-2" and manager.steps() == [1, 2]


def test_keep_last_prunes_oldest(tmp_path):
    engine = make_engine()
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in range(1, 5):
        train_steps(engine, 1)
        save_at(manager, engine, step)
    assert manager.steps() == [3, 4]
    assert manager.latest().name == "step-4"
    keep_all = CheckpointManager(tmp_path / "all", keep_last=0)
    for step in range(1, 4):
        save_at(keep_all, engine, step)
    assert keep_all.steps() == [1, 2, 3]


def test_saving_the_latest_step_again_is_a_no_op(tmp_path):
    engine = make_engine()
    train_steps(engine, 1)
    manager = CheckpointManager(tmp_path)
    first = save_at(manager, engine, 1)
    stamp = (first / "trainable.safetensors").stat().st_mtime_ns
    assert save_at(manager, engine, 1) == first
    assert (first / "trainable.safetensors").stat().st_mtime_ns == stamp


def test_resume_modes(tmp_path):
    manager = CheckpointManager(tmp_path)
    engine = make_engine()
    assert manager.resume(engine, "auto") is None  # nothing saved yet
    train_steps(engine, 1)
    path = save_at(manager, engine, 1)
    assert manager.resume(make_engine(), "never") is None
    assert manager.resume(make_engine(), str(path)).global_step == 1
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        manager.resume(make_engine(), str(tmp_path / "checkpoints" / "step-9"))


def test_save_in_the_middle_of_accumulation_is_refused(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    engine = build_engine(model, model.parameters(), EngineConfig(grad_accum_steps=2), total_steps=5)
    engine.backward(model(torch.ones(1, 2)).sum())
    assert not engine.step()
    with pytest.raises(RuntimeError, match="gradient accumulation"):
        CheckpointManager(tmp_path).save(engine, TrainerState(global_step=0))


def test_rng_state_round_trip_covers_python_numpy_torch():
    seed_everything(5)
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2).tolist(), torch.nn.functional.dropout(torch.ones(8), 0.5).tolist())
    seed_everything(6)
    restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(2).tolist(), torch.nn.functional.dropout(torch.ones(8), 0.5).tolist())
    assert first == second


def test_sampler_is_a_deterministic_permutation_per_epoch():
    sampler = ResumableSampler(10, seed=7, rank=0, world_size=1)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(10))
    assert list(ResumableSampler(10, seed=7, rank=0, world_size=1)) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0 and sorted(sampler) == list(range(10))
    assert list(ResumableSampler(10, seed=8, rank=0, world_size=1)) != epoch0
    assert list(ResumableSampler(5, seed=7, shuffle=False, rank=0, world_size=1)) == [0, 1, 2, 3, 4]


def test_sampler_resumes_mid_epoch():
    sampler = ResumableSampler(10, seed=3, rank=0, world_size=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.advance(4)
    saved = sampler.state()
    assert saved == SamplerState(seed=3, epoch=2, position=4)
    resumed = ResumableSampler(10, seed=3, rank=0, world_size=1)
    resumed.load_state(saved)
    assert list(resumed) == full[4:] and len(resumed) == 6
    resumed.advance(6)
    assert resumed.position == resumed.epoch_length and len(resumed) == 0
    with pytest.raises(ValueError, match="seed"):
        ResumableSampler(10, seed=4, rank=0, world_size=1).load_state(saved)


def test_sampler_shards_across_ranks_and_resumes_with_them():
    n, world = 11, 3
    shards = [ResumableSampler(n, seed=1, rank=r, world_size=world) for r in range(world)]
    order = shards[0].permutation(0)
    assert len(order) == 12  # padded to a multiple of the world size by repeating
    assert sorted(set(order.tolist())) == list(range(n))
    reads = [list(s) for s in shards]
    assert [len(r) for r in reads] == [4, 4, 4]
    assert sorted(i for r in reads for i in r) == sorted(order.tolist())
    for s in shards:
        s.advance(2)  # each rank consumed 2 samples: 6 of the global order
    assert shards[1].state().position == 6
    assert [list(s) for s in shards] == [r[2:] for r in reads]
    dropped = ResumableSampler(n, seed=1, drop_last=True, rank=0, world_size=world)
    assert dropped.epoch_length == 9 and len(dropped) == 3


def _three_checkpoints(tmp_path):
    engine = make_engine()
    manager = CheckpointManager(tmp_path)
    saved = {}
    for step in (1, 2, 3):
        train_steps(engine, 1)
        save_at(manager, engine, step)
        saved[step] = params(engine)
    return manager, saved


def _overwrite(path, data: bytes) -> None:
    path.write_bytes(data)


def _flip_a_byte_inside(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


DAMAGE = {
    "a corrupt trainable.safetensors": (lambda step3: _overwrite(step3 / "trainable.safetensors", b"\0" * 300),
                                        "step-3 is damaged: trainable.safetensors"),
    "a truncated optimizer.pt": (lambda step3: _truncate(step3 / "optimizer.pt"), "step-3 is damaged: optimizer.pt has"),
    "a flipped byte in an RNG state": (lambda step3: _flip_a_byte_inside(step3 / "rng_rank0.pt"), "step-3 is damaged: rng_rank0.pt"),
    "an unparseable trainer_state.json": (lambda step3: _overwrite(step3 / "trainer_state.json", b'{"global_step": 3, "da'),
                                          "step-3 is damaged: trainer_state.json"),
    "a deleted manifest.json and trainer_state.json": (
        lambda step3: [(step3 / name).unlink() for name in ("manifest.json", "trainer_state.json")],
        "step-3 is damaged: trainer_state.json is missing"),
    "latest naming a missing directory": (lambda step3: shutil.rmtree(step3), "step-3 is damaged: the directory does not exist"),
    "latest naming an empty directory": (lambda step3: [shutil.rmtree(step3), step3.mkdir()], "step-3 is damaged: trainer_state.json is missing"),
    "a garbage latest pointer": (lambda step3: _overwrite(step3.parent / "latest", b"../../etc\n"), "latest names no checkpoint"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, kind):
    manager, saved = _three_checkpoints(tmp_path)
    step3 = tmp_path / "checkpoints" / "step-3"
    spoil, named = DAMAGE[kind]
    spoil(step3)
    if kind == "a garbage latest pointer":
        _overwrite(step3 / "trainable.safetensors", b"")  # step-3 is also damaged: fall back past it
    fresh = make_engine(seed=7)
    state = manager.resume(fresh)
    assert state.global_step == 2 and fresh.global_step == 2
    assert all(torch.equal(a, b) for a, b in zip(params(fresh), saved[2]))
    assert "resuming from step-2 instead" in caplog.text and named in caplog.text
    assert manager.latest().name == "step-2"  # so that the next save of step 3 replaces the damaged one
    train_steps(fresh, 1)
    save_at(manager, fresh, 3)
    assert manager.resume(make_engine()).global_step == 3


def test_resume_without_any_intact_checkpoint_is_a_one_line_error(tmp_path):
    manager, _ = _three_checkpoints(tmp_path)
    for step in (1, 2, 3):
        (tmp_path / "checkpoints" / f"step-{step}" / "optimizer.pt").write_bytes(b"")
    with pytest.raises(NoIntactCheckpoint, match="step-3 is damaged.*step-2 is damaged.*step-1 is damaged") as error:
        manager.resume(make_engine())
    assert "\n" not in str(error.value)
    assert manager.resume(make_engine(), "never") is None


def test_unpublished_newer_steps_are_not_resumed_from(tmp_path):
    manager, saved = _three_checkpoints(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("step-2\n")  # step-3 was renamed, then the run died
    fresh = make_engine(seed=7)
    assert manager.resume(fresh).global_step == 2
    assert all(torch.equal(a, b) for a, b in zip(params(fresh), saved[2]))
