"""The message classes of one middleware, so that core code can build messages by field name.

rclpy, the CycloneDDS IDL types and rosbags all construct messages with keyword arguments named
after the ROS fields; they differ only in the Python types of a few fields, which the three
adapter callables below smooth over. The vision_msgs types may be None: a ROS 2 installation without
vision_msgs still runs the node, without the detections output.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Attribute name on MessageKit -> ROS 2 type name.
ROS_TYPES: dict[str, str] = {
    "Time": "builtin_interfaces/msg/Time",
    "Header": "std_msgs/msg/Header",
    "String": "std_msgs/msg/String",
    "Image": "sensor_msgs/msg/Image",
    "CompressedImage": "sensor_msgs/msg/CompressedImage",
    "Point": "geometry_msgs/msg/Point",
    "Quaternion": "geometry_msgs/msg/Quaternion",
    "Pose": "geometry_msgs/msg/Pose",
    "PoseWithCovariance": "geometry_msgs/msg/PoseWithCovariance",
    "Point2D": "vision_msgs/msg/Point2D",
    "Pose2D": "vision_msgs/msg/Pose2D",
    "BoundingBox2D": "vision_msgs/msg/BoundingBox2D",
    "ObjectHypothesis": "vision_msgs/msg/ObjectHypothesis",
    "ObjectHypothesisWithPose": "vision_msgs/msg/ObjectHypothesisWithPose",
    "Detection2D": "vision_msgs/msg/Detection2D",
    "Detection2DArray": "vision_msgs/msg/Detection2DArray",
    "KeyValue": "diagnostic_msgs/msg/KeyValue",
    "DiagnosticStatus": "diagnostic_msgs/msg/DiagnosticStatus",
    "DiagnosticArray": "diagnostic_msgs/msg/DiagnosticArray",
}


@dataclass(frozen=True)
class MessageKit:
    Time: type
    Header: type
    String: type
    Image: type
    CompressedImage: type
    Point: type
    Quaternion: type
    Pose: type
    PoseWithCovariance: type
    Point2D: type | None
    Pose2D: type | None
    BoundingBox2D: type | None
    ObjectHypothesis: type | None
    ObjectHypothesisWithPose: type | None
    Detection2D: type | None
    Detection2DArray: type | None
    KeyValue: type
    DiagnosticStatus: type
    DiagnosticArray: type
    uint8_sequence: Callable[[bytes], Any]  # value for a uint8[] field
    float64_array: Callable[[Sequence[float]], Any]  # value for a float64[N] field
    byte: Callable[[int], Any]  # value for a ``byte`` field

    @property
    def has_detections(self) -> bool:
        return self.Detection2DArray is not None

    @classmethod
    def from_resolver(
        cls,
        resolve: Callable[[str], type | None],
        *,
        uint8_sequence: Callable[[bytes], Any],
        float64_array: Callable[[Sequence[float]], Any],
        byte: Callable[[int], Any],
    ) -> MessageKit:
        return cls(
            **{name: resolve(ros_type) for name, ros_type in ROS_TYPES.items()},
            uint8_sequence=uint8_sequence,
            float64_array=float64_array,
            byte=byte,
        )

