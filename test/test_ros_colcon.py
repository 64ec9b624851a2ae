"""lens_ros as a ROS 2 package: what ``colcon build`` installs, and what package.xml declares."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rclpy_fixtures import REPO, ros_import

from lens_ros.core.message_kit import ROS_TYPES

ros_import("colcon_core")
catkin_package = ros_import("catkin_pkg.package")

# The ROS packages of the test environment (the wheels lay an ament index into the venv), and the launch
# stack, which is not on the Python package index.
ROS_PACKAGES = {p.name for p in (Path(sys.prefix) / "share/ament_index/resource_index/packages").iterdir()} | {
    "launch", "launch_ros"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, list[str]]:
    """A colcon workspace with this working tree (tracked and new files) under src/, built; and the
    packages colcon finds in it."""
    workspace = tmp_path_factory.mktemp("colcon_ws")
    source = workspace / "src" / "lens_ros"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AMENT_", "COLCON_", "CMAKE_"))}
    built = subprocess.run([sys.executable, "-m", "colcon", "build", "--packages-select", "lens_ros"],
                           cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    listing = subprocess.run([sys.executable, "-m", "colcon", "list", "--names-only"], cwd=workspace, env=env,
                             capture_output=True, text=True, check=True)
    return workspace, listing.stdout.split()


def test_colcon_finds_only_lens_ros_not_the_test_interfaces(workspace):
    assert workspace[1] == ["lens_ros"]


def test_colcon_build_installs_the_executable_launch_file_config_and_ament_index_entry(workspace):
    prefix = workspace[0] / "install" / "lens_ros"
    executable = prefix / "lib" / "lens_ros" / "lens_node"  # where ros2 run looks
    assert os.access(executable, os.X_OK)
    assert executable.read_text().splitlines()[0] == f"#!{sys.executable}"
    assert (prefix / "share" / "lens_ros" / "launch" / "segment.launch.py").is_file()
    assert (prefix / "share" / "lens_ros" / "config" / "lens.yaml").read_text() == \
        (REPO / "config" / "lens.yaml").read_text()
    assert (prefix / "share" / "lens_ros" / "package.xml").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "lens_ros").is_file()
    shown = subprocess.run([str(executable), "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "--transport" in shown.stdout, shown.stderr


def imported_ros_packages(path: Path) -> set[str]:
    """Top-level modules ``path`` imports that are ROS packages."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names & ROS_PACKAGES


def test_package_xml_declares_every_ros_package_the_node_uses():
    package = catkin_package.parse_package(REPO / "package.xml")
    package.validate()
    declared = {d.name for d in package.build_depends} | {d.name for d in package.exec_depends}
    used = {ros_type.split("/")[0] for ros_type in ROS_TYPES.values()}
    for path in (REPO / "lens_ros" / "transports" / "rclpy_node.py", *sorted((REPO / "launch").glob("*.py"))):
        used |= imported_ros_packages(path)
    assert {"rclpy", "rcl_interfaces", "geometry_msgs", "launch_ros"} <= used  # the scan sees what it should
    assert sorted(used - declared) == []


def test_package_xml_leaves_the_pinned_ml_stack_to_pip():
    package = catkin_package.parse_package(REPO / "package.xml")
    keys = [d.name for d in (*package.build_depends, *package.exec_depends, *package.test_depends)]
    assert [key for key in keys if key.endswith("-pip")] == []
    assert "python3-pytest" in {d.name for d in package.test_depends}
