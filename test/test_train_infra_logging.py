"""RunLogger: windowed averages, throughput, JSONL + TensorBoard output, resume truncation, rank gating."""
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from training.common.logging import RunLogger, read_metrics


def scalars(tb_dir, tag):
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_windowed_means_throughput_and_both_sinks(tmp_path):
    with RunLogger(tmp_path, total_steps=5, every_steps=2, progress_bar=False) as logger:
        for step, loss in enumerate([4.0, 2.0, 1.0, 3.0, 0.5], start=1):
            logger.step(step, {"loss": loss, "reward": step / 10}, num_samples=8, lr=0.1 * step)
        logger.write(5, {"eval/miou": 0.75})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 5, 5]  # windows end at multiples of 2 and at the last step
    assert [r.get("loss") for r in records[:3]] == [3.0, 2.0, 0.5]
    assert records[0]["reward"] == pytest.approx(0.15)
    assert [r["lr"] for r in records[:3]] == pytest.approx([0.2, 0.4, 0.5])  # lr: the latest value, not a mean
    assert all(r["samples_per_s"] > 0 for r in records[:3])
    assert records[3] == {"step": 5, "time": records[3]["time"], "eval/miou": 0.75}
    assert scalars(tmp_path / "tb", "loss") == [(2, 3.0), (4, 2.0), (5, 0.5)]
    assert scalars(tmp_path / "tb", "eval/miou") == [(5, 0.75)]


def test_resume_drops_records_past_the_checkpoint(tmp_path):
    with RunLogger(tmp_path, total_steps=10, every_steps=1, progress_bar=False) as logger:
        for step in range(1, 8):  # the run got to step 7, then crashed; the checkpoint is at 6
            logger.step(step, {"loss": float(step)}, num_samples=1)
    with RunLogger(tmp_path, total_steps=10, start_step=6, every_steps=1, progress_bar=False) as logger:
        for step in range(7, 11):
            logger.step(step, {"loss": 100.0 + step}, num_samples=1)
    losses = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert losses == [(s, float(s)) for s in range(1, 7)] + [(s, 100.0 + s) for s in range(7, 11)]
    assert scalars(tmp_path / "tb", "loss")[-4:] == [(s, 100.0 + s) for s in range(7, 11)]
    assert [s for s, _ in scalars(tmp_path / "tb", "loss")] == list(range(1, 11))  # step 7 of the crash purged


def test_fresh_run_in_an_old_output_dir_starts_a_new_curve(tmp_path):
    with RunLogger(tmp_path, total_steps=2, every_steps=1, tensorboard=False, progress_bar=False) as logger:
        logger.step(1, {"loss": 1.0}, num_samples=1)
    with RunLogger(tmp_path, total_steps=2, every_steps=1, tensorboard=False, progress_bar=False) as logger:
        logger.step(1, {"loss": 5.0}, num_samples=1)
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [5.0]
    assert not (tmp_path / "tb").exists()


def test_non_main_ranks_write_nothing(tmp_path):
    with RunLogger(tmp_path / "rank1", total_steps=3, enabled=False) as logger:
        logger.step(1, {"loss": 1.0}, num_samples=4)
        logger.write(1, {"eval": 1.0})
    assert not (tmp_path / "rank1").exists()


def test_progress_bar_shows_loss_lr_and_throughput(tmp_path, capsys):
    with RunLogger(tmp_path, total_steps=2, every_steps=1, tensorboard=False) as logger:
        logger.step(1, {"loss": 0.25}, num_samples=2, lr=3e-5)
        logger.step(2, {"loss": 0.125}, num_samples=2, lr=3e-5)
    err = capsys.readouterr().err
    assert "2/2" in err and "loss=0.125" in err and "lr=3e-05" in err and "samples/s=" in err


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    with RunLogger(tmp_path, total_steps=10, every_steps=1, tensorboard=False, progress_bar=False) as logger:
        for step in range(1, 4):
            logger.step(step, {"loss": float(step)}, num_samples=1)
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 4, "time": 17')  # the crash hit in the middle of a write
    with RunLogger(tmp_path, total_steps=10, start_step=3, every_steps=1, tensorboard=False, progress_bar=False) as logger:
        logger.step(4, {"loss": 40.0}, num_samples=1)
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert "metrics.jsonl:4 is not a metrics record" in caplog.text
