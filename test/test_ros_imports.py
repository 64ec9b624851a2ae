"""Layering: the core imports no middleware and no torch; everything imports without ROS installed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE_MODULES = [f"lens_ros.core.{path.stem}" for path in sorted((REPO / "lens_ros" / "core").glob("*.py"))
                if path.stem != "__init__"]
ENTRY_MODULES = ["lens_ros.lens_node", "lens_ros.bag", "lens_ros.dds_client", "lens_ros.transports.dds"]


def imported_after(modules: list[str]) -> set[str]:
    """Top-level packages in sys.modules after importing ``modules`` in a fresh interpreter."""
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout))


def test_core_imports_no_middleware_and_no_torch():
    assert len(CORE_MODULES) >= 10
    loaded = imported_after(CORE_MODULES)
    assert not loaded & {"rclpy", "cyclonedds", "rosbags", "torch", "transformers", "sensor_msgs"}


def test_entry_points_import_without_ros_and_without_torch():
    loaded = imported_after(ENTRY_MODULES)
    assert "rclpy" not in loaded and "torch" not in loaded
