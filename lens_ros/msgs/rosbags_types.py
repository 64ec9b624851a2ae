"""rosbags typestore with vision_msgs registered, and the MessageKit that builds rosbags messages."""
from __future__ import annotations

import numpy as np
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from lens_ros.core.message_kit import MessageKit

# vision_msgs 4.x (ROS 2 Humble and Jazzy), the part this node publishes. rosbags does not ship
# vision_msgs; these texts are the upstream .msg files without comments.
VISION_MSGS: dict[str, str] = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n"),
    "vision_msgs/msg/Detection2D": (
        "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
        "vision_msgs/BoundingBox2D bbox\nstring id\n"),
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
}


def lens_typestore(store: Stores = Stores.ROS2_HUMBLE) -> Typestore:
    """A typestore of the given ROS 2 distribution plus vision_msgs."""
    typestore = get_typestore(store)
    types = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, name))
    typestore.register(types)
    return typestore


def rosbags_kit(typestore: Typestore) -> MessageKit:
    return MessageKit.from_resolver(
        typestore.types.__getitem__,
        uint8_sequence=lambda data: np.frombuffer(data, dtype=np.uint8),
        float64_array=lambda values: np.asarray(values, dtype=np.float64),
        byte=int,
    )
