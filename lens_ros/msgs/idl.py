"""ROS 2 messages as CycloneDDS IDL structs, named as rmw_cyclonedds names them on the wire.

Field order and types follow the ROS 2 Humble/Jazzy definitions (vision_msgs 4.x); the CDR these
produce is byte-identical to rosbags' ``serialize_cdr`` (checked in test/test_ros_msgs.py).
"""
from dataclasses import dataclass

from cyclonedds.idl import IdlStruct
from cyclonedds.idl._machinery import BytesMachine
from cyclonedds.idl.types import array, byte, float64, int32, sequence, uint8, uint32

from lens_ros.core.message_kit import MessageKit


def _wire_name(ros_type: str) -> str:
    package, _, name = ros_type.split("/")
    return f"{package}::msg::dds_::{name}_"


@dataclass
class Time(IdlStruct, typename=_wire_name("builtin_interfaces/msg/Time")):
    sec: int32
    nanosec: uint32


@dataclass
class Header(IdlStruct, typename=_wire_name("std_msgs/msg/Header")):
    stamp: Time
    frame_id: str


@dataclass
class String(IdlStruct, typename=_wire_name("std_msgs/msg/String")):
    data: str


@dataclass
class Image(IdlStruct, typename=_wire_name("sensor_msgs/msg/Image")):
    header: Header
    height: uint32
    width: uint32
    encoding: str
    is_bigendian: uint8
    step: uint32
    data: sequence[uint8]  # holds bytes, see _serialise_as_bytes


@dataclass
class CompressedImage(IdlStruct, typename=_wire_name("sensor_msgs/msg/CompressedImage")):
    header: Header
    format: str
    data: sequence[uint8]  # holds bytes, see _serialise_as_bytes


def _serialise_as_bytes(cls: type, field: str) -> None:
    """Make a ``sequence<uint8>`` field (de)serialise as one ``bytes`` copy.

    cyclonedds' Python machinery packs such sequences element by element (about 0.3 s for a
    1080p frame). Its bytes machine writes the same wire format (uint32 length, raw bytes), so
    it is swapped in; the declared type, and so the XTypes type information, stays sequence<uint8>.
    """
    cls.__idl__.populate()
    for machine in (cls.__idl__.v1_machine, cls.__idl__.v2_machine):
        machine.members_machines[field] = BytesMachine()


_serialise_as_bytes(Image, "data")
_serialise_as_bytes(CompressedImage, "data")


@dataclass
class Point(IdlStruct, typename=_wire_name("geometry_msgs/msg/Point")):
    x: float64
    y: float64
    z: float64


@dataclass
class Quaternion(IdlStruct, typename=_wire_name("geometry_msgs/msg/Quaternion")):
    x: float64
    y: float64
    z: float64
    w: float64


@dataclass
class Pose(IdlStruct, typename=_wire_name("geometry_msgs/msg/Pose")):
    position: Point
    orientation: Quaternion


@dataclass
class PoseWithCovariance(IdlStruct, typename=_wire_name("geometry_msgs/msg/PoseWithCovariance")):
    pose: Pose
    covariance: array[float64, 36]


@dataclass
class Point2D(IdlStruct, typename=_wire_name("vision_msgs/msg/Point2D")):
    x: float64
    y: float64


@dataclass
class Pose2D(IdlStruct, typename=_wire_name("vision_msgs/msg/Pose2D")):
    position: Point2D
    theta: float64


@dataclass
class BoundingBox2D(IdlStruct, typename=_wire_name("vision_msgs/msg/BoundingBox2D")):
    center: Pose2D
    size_x: float64
    size_y: float64


@dataclass
class ObjectHypothesis(IdlStruct, typename=_wire_name("vision_msgs/msg/ObjectHypothesis")):
    class_id: str
    score: float64


@dataclass
class ObjectHypothesisWithPose(IdlStruct, typename=_wire_name("vision_msgs/msg/ObjectHypothesisWithPose")):
    hypothesis: ObjectHypothesis
    pose: PoseWithCovariance


@dataclass
class Detection2D(IdlStruct, typename=_wire_name("vision_msgs/msg/Detection2D")):
    header: Header
    results: sequence[ObjectHypothesisWithPose]
    bbox: BoundingBox2D
    id: str


@dataclass
class Detection2DArray(IdlStruct, typename=_wire_name("vision_msgs/msg/Detection2DArray")):
    header: Header
    detections: sequence[Detection2D]


@dataclass
class KeyValue(IdlStruct, typename=_wire_name("diagnostic_msgs/msg/KeyValue")):
    key: str
    value: str


@dataclass
class DiagnosticStatus(IdlStruct, typename=_wire_name("diagnostic_msgs/msg/DiagnosticStatus")):
    level: byte
    name: str
    message: str
    hardware_id: str
    values: sequence[KeyValue]


@dataclass
class DiagnosticArray(IdlStruct, typename=_wire_name("diagnostic_msgs/msg/DiagnosticArray")):
    header: Header
    status: sequence[DiagnosticStatus]


BY_ROS_TYPE: dict[str, type] = {
    cls.__idl_typename__.replace("::msg::dds_::", "/msg/").removesuffix("_"): cls
    for cls in (Time, Header, String, Image, CompressedImage, Point, Quaternion, Pose, PoseWithCovariance, Point2D,
                Pose2D, BoundingBox2D, ObjectHypothesis, ObjectHypothesisWithPose, Detection2D, Detection2DArray,
                KeyValue, DiagnosticStatus, DiagnosticArray)
}


def dds_kit() -> MessageKit:
    return MessageKit.from_resolver(BY_ROS_TYPE.__getitem__, uint8_sequence=bytes, float64_array=list, byte=int)
