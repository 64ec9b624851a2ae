"""Atomic, resumable checkpoints under ``OUT/checkpoints``.

Layout::

    OUT/checkpoints/
        latest                  text file: name of the newest complete checkpoint, e.g. "step-1500"
        step-1000/  step-1500/
            trainable.safetensors   trainable parameters by name (every backend)
            optimizer.pt            torch backend: optimizer + LR scheduler + step (weights_only-loadable)
            deepspeed/              DeepSpeed backend: the engine's own (ZeRO-sharded) checkpoint
            trainer_state.json      global step, data order (sampler seed, epoch, position), extra
            rng_rank{R}.pt          python / numpy / torch (/ CUDA) RNG states of rank R
            config.yaml             the resolved run config
            manifest.json           size of every other file (see ``integrity``)

A checkpoint is written into ``.tmp-step-N``, every file is fsynced, the directory is renamed to
``step-N`` with ``os.replace``, and only then is ``latest`` replaced (write ``latest.tmp`` + rename).
A crash at any point leaves ``latest`` naming a complete checkpoint; leftovers are removed by the next
save. ``OUT`` must be on a filesystem all ranks share.

Resuming checks the checkpoint first (``integrity.damage``). If ``latest`` names a missing or damaged
one, rank 0 warns, naming what is damaged, falls back to the newest older checkpoint that is intact,
points ``latest`` at it and tells every rank; if none is intact, resuming stops with one line.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from training.common import distributed
from training.common.config import save_config
from training.common.engine import Engine
from training.common.integrity import damage, write_manifest
from training.common.rng import load_rng_state, save_rng_state
from training.common.sampler import SamplerState

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "latest"
TRAINER_STATE_NAME = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class NoIntactCheckpoint(RuntimeError):
    """``latest`` exists but neither it nor any older checkpoint can be resumed from."""


@dataclass
class TrainerState:
    """What the training loop needs besides the engine to continue exactly where it stopped."""

    global_step: int = 0
    data: SamplerState | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable stage extras (best metric, ...)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        raw = json.loads(text)
        data = SamplerState(**raw["data"]) if raw.get("data") is not None else None
        return cls(global_step=int(raw["global_step"]), data=data, extra=dict(raw.get("extra", {})))


class CheckpointManager:
    def __init__(self, output_dir: str | Path, keep_last: int = 3) -> None:
        self.root = Path(output_dir) / CHECKPOINTS_DIR
        self.keep_last = keep_last

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        if not self.root.is_dir():
            return []
        found = (_STEP_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> Path | None:
        """The checkpoint ``latest`` names, or None before the first save (or if it names none that exists)."""
        name = self._pointer()
        path = None if name is None else self.root / name
        return path if path is not None and path.is_dir() else None

    def save(self, engine: Engine, state: TrainerState, config: DictConfig | None = None) -> Path:
        """Write a checkpoint for ``state.global_step`` (collective: every rank calls it).
        Saving a step that ``latest`` already names returns that checkpoint unchanged."""
        final = self.root / f"step-{state.global_step}"
        if self.latest() == final:
            return final
        tmp = self.root / f".tmp-step-{state.global_step}"
        if distributed.is_main():
            self._remove_leftovers()
            tmp.mkdir(parents=True)
        distributed.barrier()
        engine.save(tmp)
        save_rng_state(tmp / _rng_file(distributed.rank()))
        if distributed.is_main():
            (tmp / TRAINER_STATE_NAME).write_text(state.to_json(), encoding="utf-8")
            if config is not None:
                save_config(config, tmp)
        _fsync_tree(tmp)
        distributed.barrier()
        if distributed.is_main():
            write_manifest(tmp)
            if final.exists():  # a complete but never-published step from a run that crashed; superseded
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._publish(final.name)
            self._prune(keep=final)
        distributed.barrier()
        return final

    def load(self, engine: Engine, path: str | Path) -> TrainerState:
        """Restore engine, this rank's RNG state and the trainer state from checkpoint ``path``."""
        path = Path(path)
        if not (path / TRAINER_STATE_NAME).is_file():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAINER_STATE_NAME})")
        engine.load(path)
        rng_path = path / _rng_file(distributed.rank())
        if rng_path.is_file():
            load_rng_state(rng_path)
        else:  # resumed with more ranks than were saved: data order is still exact, dropout noise is not
            log.warning("%s has no RNG state for rank %d; keeping this rank's current RNG", path, distributed.rank())
        return TrainerState.from_json((path / TRAINER_STATE_NAME).read_text(encoding="utf-8"))

    def resume(self, engine: Engine, resume: str = "auto") -> TrainerState | None:
        """``resume`` as in ``CheckpointConfig.resume``: "auto" loads ``latest`` if there is one,
        "never" loads nothing, anything else is a checkpoint directory that must exist."""
        if resume == "never":
            return None
        if resume == "auto":
            found: tuple[Path | None, str | None] = (None, None)
            if distributed.is_main():
                try:
                    found = (self._newest_intact(), None)
                except NoIntactCheckpoint as error:  # raised on every rank, or the others would wait forever
                    found = (None, str(error))
            path, failure = distributed.broadcast_object(found)
            if failure is not None:
                raise NoIntactCheckpoint(failure)
        else:
            path = Path(resume)
        if path is None:
            return None
        log.info("resuming from %s", path)
        return self.load(engine, path)

    def _pointer(self) -> str | None:
        """The step directory name ``latest`` holds, if it holds one."""
        try:
            name = (self.root / LATEST_NAME).read_text(encoding="utf-8").strip()
        except (OSError, ValueError):  # absent, or not text
            return None
        return name if _STEP_DIR.match(name) else None

    def _newest_intact(self) -> Path | None:
        """The checkpoint to resume from (rank 0 only): the one ``latest`` names, or the newest intact
        older one if that is damaged, with a warning; None when nothing was ever published."""
        if not (self.root / LATEST_NAME).exists():
            return None
        named = self._pointer()
        newest = int(named.removeprefix("step-")) if named else None
        candidates = [step for step in reversed(self.steps()) if newest is None or step < newest]
        names = ([named] if named else []) + [f"step-{step}" for step in candidates]
        damaged = [] if named else [f"{LATEST_NAME} names no checkpoint"]
        for name in names:
            problem = damage(self.root / name, TRAINER_STATE_NAME) or _trainer_state_damage(self.root / name)
            if problem is None:
                if damaged:
                    log.warning("resuming from %s instead: %s", name, "; ".join(damaged))
                    self._publish(name)
                return self.root / name
            damaged.append(f"{name} is damaged: {problem}")
        raise NoIntactCheckpoint(f"no intact checkpoint in {self.root} ({'; '.join(damaged)}); "
                                 "delete the checkpoints or set checkpoint.resume=never to start over")

    def _publish(self, name: str) -> None:
        pointer_tmp = self.root / f"{LATEST_NAME}.tmp"
        with open(pointer_tmp, "w", encoding="utf-8") as handle:
            handle.write(name + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(pointer_tmp, self.root / LATEST_NAME)
        _fsync_dir(self.root)

    def _prune(self, keep: Path) -> None:
        if self.keep_last <= 0:
            return
        for step in self.steps()[: -self.keep_last]:
            old = self.root / f"step-{step}"
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        """Drop half-written checkpoints of crashed saves; only one run writes to an output dir."""
        for path in self.root.glob(".tmp-step-*"):
            shutil.rmtree(path, ignore_errors=True)


def _trainer_state_damage(path: Path) -> str | None:
    try:
        TrainerState.from_json((path / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
        return f"{TRAINER_STATE_NAME} is not a trainer state ({type(error).__name__})"
    return None


def _rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
