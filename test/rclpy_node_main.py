"""``lens_node`` (rclpy transport) with stand-in models, run as its own process by the rclpy tests:

    python test/rclpy_node_main.py [lens_node arguments] [--ros-args ...]

It goes through lens_node's own argument handling, spin loop and exit; only loading differs:
model ``fake`` is ros_fixtures.FakeSegmenter, ``fake-slow`` takes SLOW_PREDICT_S per query, any
other name fails to load. LENS_TEST_HIDE_VISION_MSGS=1 runs it as on a ROS install without vision_msgs.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

from ros_fixtures import FakeSegmenter

if os.environ.get("LENS_TEST_HIDE_VISION_MSGS") == "1":
    sys.modules["vision_msgs"] = None  # import vision_msgs now raises ModuleNotFoundError, as when not installed

from lens_ros.lens_node import build_parser, exit_now, rcl_arguments, split_ros_args  # noqa: E402
from lens_ros.transports.rclpy_node import spin_lifecycle_node  # noqa: E402

SLOW_PREDICT_S = 30.0


class SlowSegmenter(FakeSegmenter):
    def predict(self, image_rgb: Any, query: str, **kwargs: Any) -> Any:
        time.sleep(SLOW_PREDICT_S)
        return super().predict(image_rgb, query, **kwargs)


def load(name: str, device: str, dtype: str) -> FakeSegmenter:
    if name == "fake":
        return FakeSegmenter()
    if name == "fake-slow":
        return SlowSegmenter()
    raise FileNotFoundError(f"no model named {name!r} here")


def main() -> None:
    own, ros_args = split_ros_args(sys.argv[1:])
    args = build_parser().parse_args(own)
    exit_now(spin_lifecycle_node(args.node_name, args.namespace, rcl_arguments(args, ros_args), load=load))


if __name__ == "__main__":
    main()
