"""Run logging on rank 0: a tqdm bar, TensorBoard scalars in OUT/tb and a JSONL curve in OUT/metrics.jsonl.

Per-step metrics are averaged over a window of ``every_steps`` optimizer steps; each window writes one
record ``{"step", "time", <metric means>, "lr", "samples_per_s"}`` to both sinks. ``write`` records
values immediately (evaluation results). After a resume from step S, records past S from the crashed
run are dropped from the JSONL file and TensorBoard (``purge_step``), so both show one clean curve;
so is a line that is not a record (the last one, torn by a crash), with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm

from training.common import distributed

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
log = logging.getLogger(__name__)


class RunLogger:
    def __init__(
        self,
        output_dir: str | Path,
        total_steps: int,
        *,
        start_step: int = 0,
        every_steps: int = 10,
        tensorboard: bool = True,
        progress_bar: bool = True,
        enabled: bool | None = None,
        desc: str = "train",
    ) -> None:
        self.enabled = distributed.is_main() if enabled is None else enabled
        self.every_steps = max(1, every_steps)
        self.total_steps = total_steps
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._window_samples = 0
        self._window_start = time.perf_counter()
        self._writer: Any = None
        self._bar: tqdm | None = None
        if not self.enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.metrics_path = out / METRICS_NAME
        _truncate_after(self.metrics_path, start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=start_step + 1)
        self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True, disable=not progress_bar)

    def step(self, step: int, metrics: Mapping[str, Any], *, num_samples: int, lr: float | None = None) -> None:
        """Account one optimizer step that processed ``num_samples`` samples on this rank."""
        if not self.enabled:
            return
        for key, value in metrics.items():
            self._sums[key] += float(value)
            self._counts[key] += 1
        self._window_samples += num_samples
        if step % self.every_steps == 0 or step >= self.total_steps:
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            record = {key: self._sums[key] / self._counts[key] for key in self._sums}
            record["samples_per_s"] = self._window_samples / elapsed
            if lr is not None:
                record["lr"] = lr
            self.write(step, record)
            self._set_postfix(record)
            self._sums.clear()
            self._counts.clear()
            self._window_samples = 0
            self._window_start = time.perf_counter()
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` at ``step`` now, without averaging."""
        if not self.enabled:
            return
        values = {key: float(value) for key, value in metrics.items()}
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _set_postfix(self, record: Mapping[str, float]) -> None:
        if self._bar is None:
            return
        shown = {key: record[key] for key in ("loss", "lr") if key in record}
        shown["samples/s"] = record["samples_per_s"]
        self._bar.set_postfix({key: f"{value:.4g}" for key, value in shown.items()}, refresh=False)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file, in order. A line that is not a record with a step (a
    write torn by a crash) is left out, with a warning."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                record = None
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
            else:
                log.warning("%s:%d is not a metrics record (a write torn by a crash?); dropped", path, number)
    return records


def _truncate_after(path: Path, step: int) -> None:
    """Drop records after ``step``; a fresh run (step 0) thereby starts a new curve."""
    if not path.exists():
        return
    kept = [record for record in read_metrics(path) if record["step"] <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")
    os.replace(tmp, path)
