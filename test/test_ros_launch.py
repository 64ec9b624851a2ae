"""The launch file, where the ROS 2 launch stack is installed. The Python package index has no
launch/launch_ros wheels, so CI skips this (docs/ros.md, "Tested with"); colcon's install layout of
the file is checked in test_ros_colcon.py."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("launch_ros", reason="launch_ros is not installable from the Python package index")

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "segment.launch.py"


def test_launch_file_declares_the_documented_arguments():
    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {arg.name for arg in description.get_launch_arguments()}
    assert names == {"namespace", "image_topic", "params_file", "model", "device", "debug_image", "tracking"}
