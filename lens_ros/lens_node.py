"""``lens_node``: the LENS segmentation node, over rclpy (default) or straight over CycloneDDS.

    lens_node [--transport ros] [--ros-args ...]            # what ``ros2 run`` and launch files do
    lens_node --transport dds --params-file config/lens.yaml [--namespace /lens] [--model NAME] [--tracking] ...
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from lens_model.errors import LensError
from lens_ros.core.params import LensParams, ParameterError, command_line_overrides, read_params_file

log = logging.getLogger("lens_node")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lens_node", description=__doc__.split("\n\n")[0],
        epilog="Arguments after --ros-args go to rclpy (ros transport only).")
    parser.add_argument("--transport", choices=("ros", "dds"), default="ros",
                        help="ros: an rclpy lifecycle node; dds: ROS 2 wire format over CycloneDDS, no ROS install")
    parser.add_argument("--params-file", help="ROS 2 parameters YAML (/**: ros__parameters: ...)")
    parser.add_argument("--namespace", default="/lens", help="node namespace (default /lens)")
    parser.add_argument("--node-name", default="lens_node")
    parser.add_argument("--model", help="override model.name")
    parser.add_argument("--device", help="override model.device")
    parser.add_argument("--image-topic", help="override topics.image")
    parser.add_argument("--tracking", action="store_true", default=None,
                        help="set tracking.enabled: track each query's target on every later frame")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def split_ros_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Our own arguments, and everything from ``--ros-args`` on (left for rclpy)."""
    argv = list(argv)
    if "--ros-args" in argv:
        cut = argv.index("--ros-args")
        return argv[:cut], argv[cut:]
    return argv, []


def overrides(args: argparse.Namespace) -> dict[str, str]:
    return command_line_overrides(model=args.model, device=args.device, image_topic=args.image_topic,
                                  tracking=args.tracking)


def run_dds(args: argparse.Namespace) -> int:
    from lens_ros.transports.dds import DdsNode

    values = read_params_file(args.params_file, args.node_name, args.namespace) if args.params_file else {}
    values.update(overrides(args))
    params = LensParams.from_ros(values)
    if not params.autostart:
        log.warning("autostart is false, but the dds transport has no lifecycle services: activating anyway")
    node = DdsNode(params, namespace=args.namespace, node_name=args.node_name)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    node.run(stop)
    return 0


def rcl_arguments(args: argparse.Namespace, user_ros_args: list[str]) -> list[str]:
    """The rcl arguments in rising precedence (rcl applies parameters in order, the last one winning):
    our --params-file, then the user's --ros-args (so their ``-p`` beats the file), then our shortcuts."""
    first = ["--ros-args", "--params-file", args.params_file, "--"] if args.params_file else []
    shortcuts = [arg for name, value in overrides(args).items() for arg in ("-p", f"{name}:={value}")]
    return first + user_ros_args + (["--ros-args", *shortcuts] if shortcuts else [])


def run_ros(args: argparse.Namespace, ros_args: list[str]) -> int:
    """Run the rclpy node, then end the process at once (see ``exit_now``)."""
    try:
        from lens_ros.transports.rclpy_node import spin_lifecycle_node
        code = spin_lifecycle_node(args.node_name, args.namespace, rcl_arguments(args, ros_args))
    except ImportError as exc:  # no rclpy, or a message package missing from the ROS installation
        log.error("a ROS 2 Python package is not importable (%s): source your ROS 2 setup.bash, "
                  "or use --transport dds", exc)
        return 2
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown. The node has shut down in order by now;
    tearing down torch and a loaded model takes another 1-3 s (measured with tiny-random, more with
    a GPU model), which made ``ros2 launch`` escalate to SIGTERM."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    own, ros_args = split_ros_args(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    logging.basicConfig(level=args.log_level.upper(), format="[%(levelname)s] [%(name)s] %(message)s")
    try:
        return run_dds(args) if args.transport == "dds" else run_ros(args, ros_args)
    except (ParameterError, LensError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
