"""The CycloneDDS IDL types against the ROS 2 definitions in rosbags: same fields, byte-identical CDR."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from ros_fixtures import KIT, TYPESTORE, pattern_image
from rosbags.typesys import Stores, get_typestore

from lens_model.result import Instance, SegmentationResult
from lens_ros.core import messages
from lens_ros.core.frames import Frame, Stamp
from lens_ros.core.image_codec import encode_image, image_msg_to_rgb
from lens_ros.core.message_kit import ROS_TYPES
from lens_ros.core.outcome import QueryOutcome
from lens_ros.core.stats import NodeState, NodeStats, diagnostic_report
from lens_ros.msgs import idl
from lens_ros.transports.dds import string_payload

DDS_KIT = idl.dds_kit()

# vision_msgs 4.x as published upstream (ros-perception/vision_msgs, ros2 branch), written out
# independently of lens_ros.msgs so that a wrong definition there fails here.
VISION_MSGS_4 = {
    "vision_msgs/msg/Detection2DArray": ["header", "detections"],
    "vision_msgs/msg/Detection2D": ["header", "results", "bbox", "id"],
    "vision_msgs/msg/ObjectHypothesisWithPose": ["hypothesis", "pose"],
    "vision_msgs/msg/ObjectHypothesis": ["class_id", "score"],
    "vision_msgs/msg/BoundingBox2D": ["center", "size_x", "size_y"],
    "vision_msgs/msg/Pose2D": ["position", "theta"],
    "vision_msgs/msg/Point2D": ["x", "y"],
}


def field_names(ros_type: str) -> list[str]:
    return [name for name, _ in TYPESTORE.fielddefs[ros_type][1]]


@pytest.mark.parametrize("ros_type", sorted(ROS_TYPES.values()))
def test_idl_types_have_the_ros_field_names_in_order(ros_type):
    assert [f.name for f in dataclasses.fields(idl.BY_ROS_TYPE[ros_type])] == field_names(ros_type)


@pytest.mark.parametrize("ros_type", sorted(ROS_TYPES.values()))
def test_idl_wire_type_names_follow_rmw_cyclonedds(ros_type):
    package, _, name = ros_type.split("/")
    assert idl.BY_ROS_TYPE[ros_type].__idl_typename__ == f"{package}::msg::dds_::{name}_"


def test_registered_vision_msgs_match_the_upstream_4x_layout():
    for ros_type, names in VISION_MSGS_4.items():
        assert field_names(ros_type) == names
    fields = dict(TYPESTORE.fielddefs["vision_msgs/msg/ObjectHypothesis"][1])
    assert fields["class_id"][1] == ("string", 0) and fields["score"][1] == ("float64", 0)
    pose_field = dict(TYPESTORE.fielddefs["vision_msgs/msg/ObjectHypothesisWithPose"][1])["pose"]
    assert pose_field[1] == "geometry_msgs/msg/PoseWithCovariance"
    center = dict(TYPESTORE.fielddefs["vision_msgs/msg/BoundingBox2D"][1])["center"]
    assert center[1] == "vision_msgs/msg/Pose2D"  # 4.x: vision_msgs/Pose2D, not geometry_msgs/Pose2D


@pytest.mark.parametrize("ros_type", [t for t in ROS_TYPES.values() if not t.startswith("vision_msgs/")])
def test_humble_and_jazzy_agree_on_the_standard_types(ros_type):
    jazzy = get_typestore(Stores.ROS2_JAZZY)
    assert get_typestore(Stores.ROS2_HUMBLE).fielddefs[ros_type] == jazzy.fielddefs[ros_type]


def sample_outcome() -> QueryOutcome:
    rgb = pattern_image(6, 8)
    cup, saucer = np.zeros((6, 8), bool), np.zeros((6, 8), bool)
    cup[1:3, 2:5] = True
    saucer[4:6, 0:2] = True
    instances = [Instance((2.0, 1.0, 5.5, 3.25), cup, 0.625, "cup"), Instance((0.0, 4.0, 2.0, 6.0), saucer, 0.5, None)]
    result = SegmentationResult("the cup", cup | saucer, (2.0, 1.0, 5.5, 3.25), "ok", "cup", 0.625, "think",
                                "answer", {"generate": 3.0}, instances=instances)
    frame = Frame.from_msg(messages.image(KIT, messages.header(KIT, Stamp(12, 345), "cam"), encode_image(rgb, "rgb8")),
                           compressed=False, received_s=12.0)
    return QueryOutcome(7, "the cup", "ok", frame=frame, frame_age_s=0.01, result=result)


def build_all(kit):
    """One message of every output type, with distinct non-default values in every field."""
    outcome = sample_outcome()
    hdr = messages.header(kit, Stamp(12, 345), "cam")
    stats = NodeStats()
    stats.result_published("ok", None, 12.5)
    state = NodeState(True, {"name": "m", "device": "cpu", "dtype": "float32", "random_weights": True},
                      "/camera/image_raw", 3, 1, 0.2, 1.0, 0)
    return {
        "sensor_msgs/msg/Image": messages.image(kit, hdr, encode_image(pattern_image(6, 8), "rgb8")),
        "sensor_msgs/msg/CompressedImage": kit.CompressedImage(header=hdr, format="png",
                                                               data=kit.uint8_sequence(b"\x89PNG..")),
        "std_msgs/msg/String": messages.string(kit, outcome.to_json()),
        "vision_msgs/msg/Detection2DArray": messages.detections(kit, hdr, outcome),
        "diagnostic_msgs/msg/DiagnosticArray": messages.diagnostics(
            kit, Stamp(5, 6), diagnostic_report("n", stats, state)),
    }


@pytest.mark.parametrize("ros_type", sorted(build_all(KIT)))
def test_dds_serialisation_is_byte_identical_to_rosbags(ros_type):
    dds_bytes = build_all(DDS_KIT)[ros_type].serialize()
    rosbags_bytes = bytes(TYPESTORE.serialize_cdr(build_all(KIT)[ros_type], ros_type))
    assert dds_bytes == rosbags_bytes
    # each side reads the other's bytes without loss
    assert bytes(TYPESTORE.serialize_cdr(TYPESTORE.deserialize_cdr(dds_bytes, ros_type), ros_type)) == dds_bytes
    assert idl.BY_ROS_TYPE[ros_type].deserialize(rosbags_bytes) == build_all(DDS_KIT)[ros_type]


def test_detection_fields_carry_box_centre_size_label_score_and_header():
    array = TYPESTORE.deserialize_cdr(build_all(DDS_KIT)["vision_msgs/msg/Detection2DArray"].serialize(),
                                      "vision_msgs/msg/Detection2DArray")
    det, second = array.detections  # one per instance, in the answer's order
    assert (second.id, second.results[0].hypothesis.class_id, second.bbox.size_x) == ("7/2", "the cup", 2.0)
    assert (array.header.stamp.sec, array.header.stamp.nanosec, array.header.frame_id) == (12, 345, "cam")
    assert det.header == array.header and det.id == "7/1"
    assert (det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.center.theta) == (3.75, 2.125, 0.0)
    assert (det.bbox.size_x, det.bbox.size_y) == (3.5, 2.25)
    hypothesis = det.results[0].hypothesis
    assert (hypothesis.class_id, hypothesis.score) == ("cup", 0.625)
    assert det.results[0].pose.pose.orientation.w == 1.0


def test_no_box_gives_an_empty_detection_array_with_the_frame_header():
    outcome = sample_outcome()
    outcome.result.box, outcome.result.instances = None, []
    outcome.status = "no_box"
    array = messages.detections(KIT, messages.header(KIT, Stamp(1, 2), "cam"), outcome)
    assert array.detections == [] and array.header.frame_id == "cam"


def test_diagnostics_report_values_and_level():
    array = TYPESTORE.deserialize_cdr(build_all(DDS_KIT)["diagnostic_msgs/msg/DiagnosticArray"].serialize(),
                                      "diagnostic_msgs/msg/DiagnosticArray")
    (status,) = array.status
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == 1 and "random weights" in status.message  # WARN: meaningless outputs
    assert status.hardware_id == "cpu"
    assert values["model"] == "m" and values["results_ok"] == "1" and values["last_latency_ms"] == "12.5"
    assert values["frames_dropped"] == "1" and values["frame_age_s"] == "0.200"


def test_dds_image_with_bytes_data_decodes():
    rgb = pattern_image(6, 8)
    msg = idl.Image.deserialize(build_all(DDS_KIT)["sensor_msgs/msg/Image"].serialize())
    assert isinstance(msg.data, bytes)
    np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)


@pytest.mark.parametrize("text", ["", "the red cup", "le caf\u00e9 \u2615"])
def test_string_payload_reads_the_raw_utf8_of_a_ros_string(text):
    cdr = bytes(TYPESTORE.serialize_cdr(KIT.String(data=text), "std_msgs/msg/String"))
    assert string_payload(cdr) == text.encode("utf-8")


def test_string_payload_keeps_invalid_utf8_and_rejects_malformed_samples():
    raw = b"caf\xff"
    cdr = b"\x00\x01\x00\x00" + (len(raw) + 1).to_bytes(4, "little") + raw + b"\x00"
    assert string_payload(cdr) == raw
    big_endian = b"\x00\x00\x00\x00" + (len(raw) + 1).to_bytes(4, "big") + raw + b"\x00"
    assert string_payload(big_endian) == raw
    with pytest.raises(ValueError, match="declares 99 bytes"):
        string_payload(b"\x00\x01\x00\x00" + (99).to_bytes(4, "little") + b"ab\x00")


def test_result_json_round_trips_through_a_ros_string():
    text = messages.string(DDS_KIT, sample_outcome().to_json())
    decoded = TYPESTORE.deserialize_cdr(text.serialize(), "std_msgs/msg/String")
    assert json.loads(decoded.data)["query_id"] == 7
