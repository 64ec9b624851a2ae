"""Build the test-only vision_msgs interface package into this Python environment (a venv with the
ROS 2 wheels of requirements-ros-test.txt), with the rosidl generator wheels and the system's cmake
and C/C++ compiler. Prints how long it took.

    .venv/bin/python test/ros_interfaces/build_vision_msgs.py [--build-dir build/ros_interfaces]

The .msg files come from lens_ros.msgs.rosbags_types.VISION_MSGS, the texts the bag mode and the
tests already use, so the definitions exist once.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy

from lens_ros.msgs.rosbags_types import VISION_MSGS

SOURCE = Path(__file__).resolve().parent / "vision_msgs"
# The wheels' exported CMake targets name the include paths of the machine that built them.
BUILDER_INCLUDES = {
    re.compile(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/_core/include"): numpy.get_include(),
    re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+"): sysconfig.get_paths()["include"],
}


def rewrite_builder_paths(prefix: Path) -> int:
    """Point the wheels' CMake exports at this Python's headers and numpy; returns the files changed."""
    changed = 0
    for path in prefix.glob("share/*/cmake/*.cmake"):
        text = path.read_text(encoding="utf-8")
        new = text
        for pattern, replacement in BUILDER_INCLUDES.items():
            new = pattern.sub(replacement, new)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed += 1
    return changed


def write_sources(build_dir: Path) -> Path:
    source = build_dir / "src" / "vision_msgs"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(SOURCE, source)
    (source / "msg").mkdir()
    for ros_type, text in VISION_MSGS.items():
        (source / "msg" / f"{ros_type.rsplit('/', 1)[1]}.msg").write_text(text, encoding="utf-8")
    return source


def run(command: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("w", encoding="utf-8") as out:
        if subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
            sys.exit(f"build_vision_msgs: {' '.join(command[:3])} ... failed; the last lines of {log}:\n"
                     + "\n".join(log.read_text(encoding="utf-8").splitlines()[-30:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=Path("build/ros_interfaces"))
    args = parser.parse_args()
    for tool in ("cmake", "c++", "cc"):
        if shutil.which(tool) is None:
            sys.exit(f"build_vision_msgs: {tool} not found; install cmake and g++ (Debian: apt-get install cmake g++)")
    started = time.monotonic()
    prefix = Path(sys.prefix)
    build_dir = args.build_dir.resolve()
    rewritten = rewrite_builder_paths(prefix)
    source = write_sources(build_dir)
    env = {**os.environ, "AMENT_PREFIX_PATH": str(prefix),  # rosidl finds its typesupports in the ament index
           "PATH": f"{prefix / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmake_build = build_dir / "cmake"
    shutil.rmtree(cmake_build, ignore_errors=True)
    run(["cmake", "-S", str(source), "-B", str(cmake_build), f"-DCMAKE_INSTALL_PREFIX={prefix}",
         f"-DCMAKE_PREFIX_PATH={prefix}", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF",
         "-DCMAKE_BUILD_TYPE=Release"], env, build_dir / "configure.log")
    run(["cmake", "--build", str(cmake_build), "--parallel", str(os.cpu_count() or 1)], env, build_dir / "build.log")
    run(["cmake", "--install", str(cmake_build)], env, build_dir / "install.log")
    print(f"build_vision_msgs: vision_msgs ({len(VISION_MSGS)} messages) built and installed into {prefix} in "
          f"{time.monotonic() - started:.0f} s ({rewritten} CMake export files pointed at this Python)")


if __name__ == "__main__":
    main()
