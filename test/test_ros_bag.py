"""lens-bag round trip: write a small camera bag, replay it through LENS, read every output back."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from image_fixtures import png_claiming, refuse_to_decode
from ros_fixtures import KIT, TYPESTORE, FakeSegmenter, ShiftedTracker, image_msg, open_fake_tracker, pattern_image
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer

from lens_model.errors import InputError
from lens_ros.bag import build_parser, load_params, main, replay
from lens_ros.core import messages
from lens_ros.core.frames import Stamp

T0 = 1_700_000_000.0
FRAME_STAMPS = [T0 + 0.1 * i for i in range(4)]


def write_input_bag(path: Path, storage: StoragePlugin = StoragePlugin.SQLITE3) -> None:
    """Four frames 0.1 s apart, raw and compressed, and two queries (after frames 1 and 3)."""
    with Writer(path, version=8, storage_plugin=storage) as writer:
        raw = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        compressed = writer.add_connection("/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                                           typestore=TYPESTORE)
        queries = writer.add_connection("/lens/query", "std_msgs/msg/String", typestore=TYPESTORE)
        for index, stamp in enumerate(FRAME_STAMPS):
            ns = int(stamp * 1e9)
            pixels = pattern_image()
            pixels[0, 0] = index  # tell the frames apart
            writer.write(raw, ns, TYPESTORE.serialize_cdr(image_msg(pixels, "rgb8", stamp, f"f{index}"), raw.msgtype))
            png = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))[1].tobytes()
            jpeg_msg = KIT.CompressedImage(header=messages.header(KIT, Stamp.from_seconds(stamp), f"f{index}"),
                                           format="png", data=KIT.uint8_sequence(png))
            writer.write(compressed, ns + 1, TYPESTORE.serialize_cdr(jpeg_msg, compressed.msgtype))
            if index in (1, 3):
                writer.write(queries, ns + 2, TYPESTORE.serialize_cdr(KIT.String(data=f"query after {index}"),
                                                                      queries.msgtype))


def read_bag(path: Path) -> dict[str, list]:
    topics: dict[str, list] = {}
    with AnyReader([path], default_typestore=TYPESTORE) as reader:
        for connection, timestamp, raw in reader.messages():
            topics.setdefault(connection.topic, []).append((timestamp, reader.deserialize(raw, connection.msgtype)))
    return topics


@pytest.fixture
def input_bag(tmp_path) -> Path:
    path = tmp_path / "camera"
    write_input_bag(path)
    return path


def run(argv: list[str], segmenter: FakeSegmenter, track=open_fake_tracker):
    args = build_parser().parse_args([*argv, "--no-progress"])
    return replay(args, load_params(args), load=lambda name, device, dtype: segmenter, track=track)


def track_statuses(topics: dict[str, list]) -> list[tuple[int, dict]]:
    return [(t, json.loads(msg.data)) for t, msg in topics.get("/lens/track/status", [])]


def test_track_gives_masks_for_every_frame_after_one_query_stamped_per_frame(tmp_path, input_bag):
    output = tmp_path / "out"
    segmenter = FakeSegmenter()
    statuses = run(["--input", str(input_bag), "--image-topic", "/camera/image_raw", "--query", "the cup",
                    "--track", "--output", str(output)], segmenter)
    assert statuses == {"ok": 1, "no_target": 0, "no_box": 0, "error": 0, "tracked": 3, "lost": 0}
    assert segmenter.fake_tracker.started_on == [0] and segmenter.fake_tracker.stepped == [1, 2, 3]
    topics = read_bag(output)
    assert len(topics["/lens/result"]) == len(topics["/lens/mask"]) == 1  # the query ran on the first frame only
    *tracked, (t_end, end) = track_statuses(topics)
    assert (t_end, end["status"], end["reason"]) == (int(FRAME_STAMPS[3] * 1e9), "stopped", "end of the input bag")
    for index, (t_mask, mask), (t_det, detections), (t_status, status) in zip(
            (1, 2, 3), topics["/lens/track/mask"], topics["/lens/track/detections"], tracked, strict=True):
        stamp = Stamp.from_seconds(FRAME_STAMPS[index])
        assert t_mask == t_det == t_status == int(FRAME_STAMPS[index] * 1e9)  # written at the frame's bag time
        assert (mask.header.stamp.sec, mask.header.stamp.nanosec, mask.header.frame_id) == (
            stamp.sec, stamp.nanosec, f"f{index}")
        assert detections.header == mask.header and detections.detections[0].id == "1/1"
        assert (status["status"], status["frame_id"], status["query_id"]) == ("tracking", f"f{index}", 1)
        assert status["stamp"] == {"sec": stamp.sec, "nanosec": stamp.nanosec}


def test_track_follows_every_instance_each_with_a_tracker_of_its_own(tmp_path, input_bag):
    output = tmp_path / "out"
    segmenter = FakeSegmenter("multi")
    first, second = segmenter.fake_tracker, ShiftedTracker(segmenter.activity)
    opened = iter([first, second])
    run(["--input", str(input_bag), "--image-topic", "/camera/image_raw", "--query", "the cups", "--track",
         "--output", str(output)], segmenter, track=lambda *_: next(opened))
    assert (first.started_on, second.started_on, first.stepped, second.stepped) == ([0], [0], [1, 2, 3], [1, 2, 3])
    topics = read_bag(output)
    for (_, mask), (_, instances), (_, detections) in zip(topics["/lens/track/mask"], topics["/lens/track/instances"],
                                                          topics["/lens/track/detections"], strict=True):
        assert instances.header == mask.header and set(np.asarray(instances.data).tolist()) == {0, 1, 2}
        assert [d.id for d in detections.detections] == ["1/1", "1/2"]


def test_track_with_recorded_queries_and_with_a_stride(tmp_path, input_bag):
    segmenter = FakeSegmenter()
    output = tmp_path / "topic"
    run(["--input", str(input_bag), "--image-topic", "/camera/image_raw", "--query-topic", "/lens/query", "--track",
         "--output", str(output)], segmenter)
    # query 1 after frame 1, its track on frames 2 and 3, then query 2 on frame 3
    assert segmenter.fake_tracker.started_on == [1, 3]
    assert [(s["frame_id"], s["query_id"], s["status"]) for _, s in track_statuses(read_bag(output))] == [
        ("f2", 1, "tracking"), ("f3", 1, "tracking"), (None, 2, "stopped")]
    segmenter = FakeSegmenter()
    run(["--input", str(input_bag), "--image-topic", "/camera/image_raw", "--query", "the cup", "--track",
         "--stride", "2", "--output", str(tmp_path / "stride")], segmenter)
    assert segmenter.fake_tracker.started_on == [0, 2] and segmenter.fake_tracker.stepped == [1, 2, 3]


def test_a_tracker_that_cannot_be_opened_leaves_no_output_bag(tmp_path, input_bag):
    def refuse(segmenter, params):
        raise InputError("tracking.memory_weights /w/sam2.pt does not exist")

    output = tmp_path / "out"
    with pytest.raises(InputError):
        run(["--input", str(input_bag), "--image-topic", "/camera/image_raw", "--query", "x", "--track",
             "--output", str(output)], FakeSegmenter(), track=refuse)
    assert not output.exists()


@pytest.mark.parametrize("image_topic", ["/camera/image_raw", "/camera/image_raw/compressed"])
def test_recorded_queries_run_on_the_newest_frame_and_all_outputs_are_written(tmp_path, input_bag, image_topic):
    output = tmp_path / "out"
    segmenter = FakeSegmenter("multi")
    statuses = run(["--input", str(input_bag), "--image-topic", image_topic, "--query-topic", "/lens/query",
                    "--output", str(output), "--debug-image"], segmenter)
    assert statuses == {"ok": 2, "no_target": 0, "no_box": 0, "error": 0, "tracked": 0, "lost": 0}
    assert [int(image[0, 0, 0]) for image in segmenter.images] == [1, 3]
    topics = read_bag(output)
    assert {"/lens/mask", "/lens/instances", "/lens/detections", "/lens/reasoning", "/lens/result",
            "/lens/debug_image", "/diagnostics"} <= set(topics)
    results = [json.loads(msg.data) for _, msg in topics["/lens/result"]]
    assert [(r["query"], r["frame_id"]) for r in results] == [("query after 1", "f1"), ("query after 3", "f3")]
    pairs = zip(topics["/lens/mask"], topics["/lens/instances"], topics["/lens/detections"], (1, 3), strict=True)
    for (_, mask), (_, instances), (_, detections), expected in pairs:
        stamp = Stamp.from_seconds(FRAME_STAMPS[expected])
        assert (mask.header.stamp.sec, mask.header.stamp.nanosec) == (stamp.sec, stamp.nanosec)
        assert instances.header == detections.header == mask.header and instances.encoding == "mono8"
        assert set(np.asarray(instances.data).tolist()) == {0, 1, 2}  # the two instances' numbers
        assert [d.results[0].hypothesis.class_id for d in detections.detections] == ["thing", "other thing"]
    # outputs are written at the bag time of the query that produced them
    assert [t for t, _ in topics["/lens/result"]] == [int(FRAME_STAMPS[i] * 1e9) + 2 for i in (1, 3)]


def test_fixed_query_runs_on_every_stride_th_frame(tmp_path, input_bag):
    segmenter = FakeSegmenter()
    statuses = run(["--input", str(input_bag), "--image-topic", "/camera/image_raw", "--query", "the cup",
                    "--stride", "2", "--output", str(tmp_path / "out"), "--storage", "mcap"], segmenter)
    assert statuses["ok"] == 2 and [int(image[0, 0, 0]) for image in segmenter.images] == [0, 2]


def test_bag_mode_with_the_tiny_random_model_end_to_end(tmp_path, input_bag, capsys):
    pytest.importorskip("lens_model.hub")
    output = tmp_path / "out"
    code = main(["--input", str(input_bag), "--image-topic", "/camera/image_raw", "--query", "the red circle",
                 "--stride", "4", "--output", str(output), "--storage", "mcap", "--model", "tiny-random",
                 "--no-progress"])
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    topics = read_bag(output)
    results = [json.loads(msg.data) for _, msg in topics["/lens/result"]]
    assert [r["frame_id"] for r in results] == ["f0"]
    assert results[0]["status"] in ("ok", "no_target", "no_box") and results[0]["random_weights"] is True
    (_, mask), = topics["/lens/mask"]
    assert (mask.encoding, mask.height, mask.width) == ("mono8", 48, 64)
    assert len(topics["/lens/detections"]) == len(topics["/lens/reasoning"]) == 1


@pytest.mark.parametrize("argv, message", [
    (["--image-topic", "/nope"], "image topic /nope is missing from the input bag; topics: /camera/image_raw"),
    (["--image-topic", "/lens/query"], "image topic /lens/query is std_msgs/msg/String in the input bag, not an image"),
    (["--image-topic", "/camera/image_raw", "--stride", "0"], "--stride must be >= 1"),
])
def test_bad_arguments_exit_with_a_message(tmp_path, input_bag, caplog, argv, message):
    code = main(["--input", str(input_bag), "--query", "x", "--output", str(tmp_path / "out"), *argv,
                 "--no-progress"])
    assert code == 2 and message in caplog.text


def test_missing_input_and_existing_output_are_reported(tmp_path, input_bag, caplog):
    assert main(["--input", str(tmp_path / "none"), "--image-topic", "/a", "--query", "x",
                 "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in caplog.text
    assert main(["--input", str(input_bag), "--image-topic", "/camera/image_raw", "--query", "x",
                 "--output", str(input_bag)]) == 2
    assert f"output {input_bag} exists already" in caplog.text


def test_unknown_model_fails_before_the_output_bag_is_created(tmp_path, input_bag, caplog):
    pytest.importorskip("lens_model.hub")
    output = tmp_path / "out"
    assert main(["--input", str(input_bag), "--image-topic", "/camera/image_raw", "--query", "x",
                 "--output", str(output), "--model", "no-such-model"]) == 2
    assert "no-such-model" in caplog.text and not output.exists()


def test_a_compressed_frame_over_the_pixel_budget_becomes_an_error_result_without_decoding(tmp_path, monkeypatch):
    source, output = tmp_path / "bomb", tmp_path / "out"
    with Writer(source, version=8) as writer:
        connection = writer.add_connection("/camera/compressed", "sensor_msgs/msg/CompressedImage",
                                           typestore=TYPESTORE)
        msg = KIT.CompressedImage(header=messages.header(KIT, Stamp.from_seconds(T0), "cam"), format="png",
                                  data=KIT.uint8_sequence(png_claiming(30_000, 30_000)))
        writer.write(connection, int(T0 * 1e9), TYPESTORE.serialize_cdr(msg, connection.msgtype))
    monkeypatch.setattr(cv2, "imdecode", refuse_to_decode)
    segmenter = FakeSegmenter()
    statuses = run(["--input", str(source), "--image-topic", "/camera/compressed", "--query", "x",
                    "--output", str(output)], segmenter)
    assert statuses == {"ok": 0, "no_target": 0, "no_box": 0, "error": 1, "tracked": 0, "lost": 0} and not segmenter.calls
    (_, result), = read_bag(output)["/lens/result"]
    assert "30000x30000 = 900.0 MP is over the pixel budget of 50 MP" in json.loads(result.data)["error"]
