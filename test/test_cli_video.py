"""lens-segment --video without the real tracker: the streaming pipeline (lens_model.video) with FakeSegmenter
and FakeTracker, staged outputs, and every refusal of a video file before the model loads.
The same command with tiny-random and lens-synth-demo is in test_tracking_e2e.py."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from image_fixtures import write_video
from ros_fixtures import FakeSegmenter, FakeTracker, ShiftedTracker, marked

from lens_model import image_io
from lens_model.cli import main
from lens_model.errors import InputError
from lens_model.staged_outputs import StagedOutputs
from lens_model.video import VideoReader, container_of, result_summary, segment_video

FRAMES = 6


@pytest.fixture
def video(tmp_path):
    """Six 64x48 frames, frame i with i in pixel [0, 0, 0], losslessly encoded."""
    path = tmp_path / "in.mkv"
    write_video(path, [marked(index) for index in range(FRAMES)])
    return path


def run_fake(video_path, out, segmenter: FakeSegmenter | None = None, new_tracker=None, **options):
    """segment_video with the fakes (by default every instance gets the segmenter's one FakeTracker), then
    commit; returns the run."""
    segmenter = segmenter or FakeSegmenter()
    with VideoReader(video_path) as reader, StagedOutputs(out) as outputs:
        run = segment_video(segmenter, new_tracker or segmenter.tracker, reader, "the thing", outputs, **options)
        outputs.write("result.json", json.dumps(result_summary(video_path, "fake", run, "box")).encode())
        outputs.commit()
    return run


def read_lines(out) -> list[dict]:
    return [json.loads(line) for line in (out / "track.jsonl").read_text().splitlines()]


def read_mask(out, index: int) -> np.ndarray:
    mask = cv2.imread(str(out / "masks" / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 255}
    return mask


def overlay_frames(out) -> int:
    capture = cv2.VideoCapture(str(out / "overlay.mp4"), cv2.CAP_FFMPEG)
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
    count = 0
    while capture.read()[0]:
        count += 1
    return count


def test_the_query_runs_on_the_first_frame_and_the_tracker_on_every_other(video, tmp_path):
    out = tmp_path / "out"
    segmenter = FakeSegmenter()
    run = run_fake(video, out, segmenter)
    assert segmenter.fake_tracker.started_on == [0] and segmenter.fake_tracker.stepped == [1, 2, 3, 4, 5]
    assert sorted(os.listdir(out)) == ["instances", "masks", "overlay.mp4", "result.json", "track.jsonl"]
    assert sorted(os.listdir(out / "instances")) == [f"{index:06d}.png" for index in range(FRAMES)]
    assert sorted(os.listdir(out / "masks")) == [f"{index:06d}.png" for index in range(FRAMES)]
    assert read_mask(out, 0)[:24, :32].all() and read_mask(out, 0).sum() == 24 * 32 * 255  # the query's mask
    for index in range(1, FRAMES):
        rows, cols = np.nonzero(read_mask(out, index))
        assert (rows.min(), cols.min(), len(rows)) == (index, index, 16)  # the square of the frame it ran on
    lines = read_lines(out)
    first = {"score": 0.75, "box": [0.0, 0.0, 32.0, 24.0], "mask_area": 768, "error": None}
    assert lines[0] == {"index": 0, "status": "query", **first, "instances": [{"status": "query", **first}]}
    for index, line in enumerate(lines[1:], start=1):
        step = {"score": 0.9, "box": [index, index, index + 4, index + 4], "mask_area": 16, "error": None}
        assert line == {"index": index, "status": "tracking", **step, "instances": [{"status": "tracking", **step}]}
    assert overlay_frames(out) == FRAMES
    result = json.loads((out / "result.json").read_text())
    assert (result["frame"], result["box"], result["label"]) == (0, [0.0, 0.0, 32.0, 24.0], "thing")
    assert result["track"] == {"mode": "box", "frames": 6, "tracking": 5, "lost": 0, "error": 0, "no_track": 0}
    assert run.frames == FRAMES


def test_a_lost_frame_has_no_mask_and_the_track_goes_on_as_after_a_rejected_frame(video, tmp_path):
    segmenter = FakeSegmenter()
    tracker = segmenter.tracker()
    tracker.lost_at = {4}
    encode = tracker.encode

    def refuse_frame_2(image):  # as LensTracker.encode refuses a bad frame, before any tracker steps
        if image[0, 0, 0] == 2:
            raise InputError("frame 2 is no good")
        return encode(image)

    tracker.encode = refuse_frame_2
    out = tmp_path / "out"
    run_fake(video, out, segmenter, lambda: tracker)
    lines = read_lines(out)
    assert [line["status"] for line in lines] == ["query", "tracking", "error", "tracking", "lost", "tracking"]
    assert lines[2]["error"] == "tracker rejected the frame: frame 2 is no good"
    assert lines[4] == {"index": 4, "status": "lost", "score": 0.1, "box": [4, 4, 8, 8], "mask_area": 0, "error": None,
                        "instances": [{"status": "lost", "score": 0.1, "box": [4, 4, 8, 8], "mask_area": 0,
                                       "error": None}]}
    assert [read_mask(out, index).any() for index in range(FRAMES)] == [True, True, False, True, False, True]
    assert not read_instances(out, 4).any()
    assert tracker.stepped == [1, 3, 4, 5]  # the refused frame left the tracker as it was; the lost one too


def test_a_query_that_finds_nothing_starts_no_track(video, tmp_path):
    out = tmp_path / "out"
    segmenter = FakeSegmenter("no_box")
    run_fake(video, out, segmenter)
    assert [line["status"] for line in read_lines(out)] == ["query", *["no_track"] * 5]
    assert segmenter.fake_tracker.started_on == [] and overlay_frames(out) == FRAMES
    assert json.loads((out / "result.json").read_text())["box_status"] == "no box in answer"


def test_max_frames_bounds_the_frames_read(video, tmp_path):
    out = tmp_path / "out"
    assert run_fake(video, out, max_frames=3).frames == 3
    assert len(read_lines(out)) == 3 and sorted(os.listdir(out / "masks")) == ["000000.png", "000001.png",
                                                                              "000002.png"]


def test_a_run_replaces_the_whole_masks_folder_and_a_failed_run_changes_nothing(video, tmp_path):
    out = tmp_path / "out"
    run_fake(video, out)
    before = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    segmenter = FakeSegmenter()
    segmenter.fake_tracker.fail_at = {3}
    with pytest.raises(RuntimeError, match="boom inside the tracker"):
        run_fake(video, out, segmenter)
    after = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert after == before and not [name for name in os.listdir(out) if name.startswith(".")]  # no staging left
    run_fake(video, out, max_frames=2)
    assert sorted(os.listdir(out / "masks")) == ["000000.png", "000001.png"]  # no file of the 6-frame run left


def test_an_mp4_file_is_read(tmp_path):
    path = tmp_path / "in.mp4"
    write_video(path, [marked(index) for index in range(4)], fourcc="mp4v")
    with VideoReader(path) as reader:
        assert (reader.container, reader.width, reader.height, reader.fps) == ("MP4/MOV", 64, 48, 10.0)
        assert len(list(reader.frames())) == 4


@pytest.mark.parametrize("head, container", [
    (b"\x00\x00\x00\x1cftypisom", "MP4/MOV"), (b"\x00\x00\x00\x08wide", "MP4/MOV"), (b"RIFF\x00\x00\x00\x00AVI ", "AVI"),
    (b"\x1aE\xdf\xa3\x9fB\x86\x81", "Matroska/WebM"), (b"#EXTM3U\n#EXT", None), (b"ffconcat ver", None),
    (b"\x89PNG\r\n\x1a\n", None), (b"RIFF\x00\x00\x00\x00WAVE", None), (b"", None),
])
def test_containers_are_recognised_by_their_first_bytes(head, container):
    assert container_of(head) == container


class NoDecoding:
    """cv2.VideoCapture that opens a file and reads its properties but refuses to decode a frame."""

    real = cv2.VideoCapture

    def __init__(self, *args) -> None:
        self._capture = self.real(*args)

    def __getattr__(self, name: str):
        return getattr(self._capture, name)

    def read(self, *args):
        raise AssertionError("a frame was decoded")


@pytest.mark.parametrize("case, message", [
    ("missing", "video {path} does not exist"),
    ("folder", "video {path} is not a regular file"),
    ("fifo", "video {path} is not a regular file"),
    ("text", "video {path} is not a video file this tool reads (MP4/MOV, AVI, Matroska or WebM)"),
    ("playlist", "video {path} is not a video file this tool reads (MP4/MOV, AVI, Matroska or WebM)"),
    ("garbage mp4", "video {path}: OpenCV's FFmpeg backend cannot decode this MP4/MOV file"),
    ("over budget", "video {path}: image of 64x48 = 0.0 MP is over the pixel budget of 0 MP (MAX_IMAGE_PIXELS)"),
    ("image options", "--max-frames, --track-mode and --memory-weights go with --video"),
])
def test_unusable_videos_are_one_line_errors_before_the_model_loads(case, message, video, tmp_path, monkeypatch,
                                                                    capsys):
    path = tmp_path / "bad"
    argv = ["--video", str(path)]
    if case == "missing":
        pass
    elif case == "folder":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "text":
        path.write_text("hello, this is not a video at all")
    elif case == "playlist":
        path.write_text(f"#EXTM3U\n#EXTINF:1,\n{video}\n")
    elif case == "garbage mp4":
        path.write_bytes(b"\x00\x00\x00\x1cftypisom" + os.urandom(2000))
    elif case == "over budget":
        path = video
        argv = ["--video", str(path)]
        monkeypatch.setattr(image_io, "MAX_IMAGE_PIXELS", 1000)
        monkeypatch.setattr(cv2, "VideoCapture", NoDecoding)
    else:
        argv = ["--image", str(path), "--max-frames", "3"]
    out = tmp_path / "out"
    try:  # an unknown model would be the error if the model loaded
        code = main([*argv, "--query", "x", "--model", "no/such-model", "--out", str(out)])
    except SystemExit as exit:  # a usage error, from argparse
        code = exit.code
    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lens-segment: error: ") and message.format(path=path) in lines[0]
    assert not out.exists()


def read_instances(out, index: int) -> np.ndarray:
    image = cv2.imread(str(out / "instances" / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (48, 64) and image.dtype == np.uint8
    return image


def test_every_instance_gets_a_tracker_of_its_own(video, tmp_path):
    out = tmp_path / "out"
    segmenter = FakeSegmenter("multi")
    first, second = FakeTracker(segmenter.activity), ShiftedTracker(segmenter.activity)
    second.lost_at, first.lost_at = {3, 5}, {5}
    trackers = iter([first, second])
    run = run_fake(video, out, segmenter, lambda: next(trackers))
    result = segmenter.predict(marked(0), "x")
    for tracker, instance in zip((first, second), result.instances, strict=True):  # each seeded with its own mask
        assert tracker.started_on == [0] and np.array_equal(tracker.seed_masks[0], instance.mask)
    assert first.stepped == second.stepped == [1, 2, 3, 4, 5]  # a lost instance is still followed

    lines = read_lines(out)
    assert [[step["status"] for step in line["instances"]] for line in lines] == [
        ["query", "query"], *[["tracking", "tracking"]] * 2, ["tracking", "lost"], ["tracking", "tracking"],
        ["lost", "lost"]]
    assert [line["status"] for line in lines] == ["query", "tracking", "tracking", "tracking", "tracking", "lost"]
    assert lines[0]["box"] == [0.0, 0.0, 32.0, 24.0] and lines[0]["mask_area"] == 2 * 768  # the query's result
    assert lines[1]["score"] == pytest.approx(0.7) and lines[1]["box"] == [1, 1, 15, 5]  # around both instances
    assert lines[1]["mask_area"] == 32 and lines[3]["score"] == 0.9 and lines[3]["box"] == [3, 3, 7, 7]
    assert lines[4]["box"] == [4, 4, 18, 8] and lines[4]["mask_area"] == 32  # the second found again
    assert (lines[5]["score"], lines[5]["box"], lines[5]["mask_area"]) == (0.1, [5, 5, 19, 9], 0)  # both lost

    assert np.array_equal(read_instances(out, 0), result.instance_map())
    instances = read_instances(out, 1)
    assert (instances[1:5, 1:5] == 1).all() and (instances[1:5, 11:15] == 2).all() and instances.sum() == 16 * 3
    assert set(np.unique(read_instances(out, 3))) == {0, 1} and set(np.unique(read_instances(out, 4))) == {0, 1, 2}
    assert not read_instances(out, 5).any() and not read_mask(out, 5).any()
    assert (read_mask(out, 1) > 0).sum() == 32
    assert run.statuses == {"query": 1, "tracking": 4, "lost": 1}


def test_no_target_starts_no_track(video, tmp_path):
    out = tmp_path / "out"
    segmenter = FakeSegmenter("no_target")
    run_fake(video, out, segmenter)
    assert [line["status"] for line in read_lines(out)] == ["query", *["no_track"] * 5]
    assert segmenter.fake_tracker.started_on == [] and not read_mask(out, 0).any()
    assert json.loads((out / "result.json").read_text())["status"] == "no_target"
