"""Helpers of the tests that run against real rclpy (Jazzy wheels, Fast DDS): the ROS environment,
a peer node in the test process, and lens_node processes.

Where rclpy is missing the tests skip, except under CI (``CI`` set), where they fail: CI installs the
ROS test environment (make test-env), so a skip there would hide a broken install.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from ros_fixtures import environment

REPO = Path(__file__).resolve().parents[1]
NODE_MAIN = Path(__file__).resolve().parent / "rclpy_node_main.py"
# A domain of its own: 10 + pid % 200 is the DDS tests' domain in this process (ros_fixtures.unique_domain_id).
DOMAIN_ID = 10 + (os.getpid() + 100) % 200
ROS_ENV = {"ROS_DOMAIN_ID": str(DOMAIN_ID), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
STARTUP_TIMEOUT_S = 90  # the tiny-random model loads in 5-15 s on a busy 2-core machine
RESULT_TIMEOUT_S = 30
STOP_TIMEOUT_S = 3.0  # generous: the node stops in about 0.1 s when idle (docs/ros.md)


def ros_import(module: str) -> ModuleType:
    """``pytest.importorskip`` that never skips under CI."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason="the ROS 2 test environment is not installed (make test-env)")


ros_import("rclpy")
ros_import("vision_msgs.msg")
ros_import("std_srvs.srv")

import rclpy  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter, parameter_value_to_python  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from lens_ros.core import messages  # noqa: E402
from lens_ros.core.frames import Stamp  # noqa: E402
from lens_ros.core.image_codec import encode_image  # noqa: E402
from lens_ros.transports.rclpy_node import qos_profile, ros_kit  # noqa: E402

TRANSITIONS = {"configure": Transition.TRANSITION_CONFIGURE, "cleanup": Transition.TRANSITION_CLEANUP,
               "activate": Transition.TRANSITION_ACTIVATE, "deactivate": Transition.TRANSITION_DEACTIVATE}
OUTPUTS = ("result", "mask", "detections", "reasoning")


def ros_environment() -> AbstractContextManager[None]:
    """This process and the node processes it starts talk on DOMAIN_ID, on this host only."""
    return environment(ROS_ENV)


class Peer:
    """A real rclpy node in the test process (own context): publishes frames and queries, records
    every output (the track outputs too), and calls the node's lifecycle, parameter and stop services."""

    def __init__(self, namespace: str = "/lens", node_name: str = "lens_node", result_depth: int = 1000) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.node = rclpy.create_node("lens_test_peer", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.kit = ros_kit()
        self.received: dict[str, list[Any]] = defaultdict(list)
        types = {"result": self.kit.String, "mask": self.kit.Image, "detections": self.kit.Detection2DArray,
                 "reasoning": self.kit.String, "track/mask": self.kit.Image,
                 "track/detections": self.kit.Detection2DArray, "track/status": self.kit.String}
        for name, msg_type in types.items():
            depth = result_depth if name == "result" else 100
            self._record(msg_type, f"{namespace}/{name}", name, qos_profile("reliable", depth))
        self._record(self.kit.DiagnosticArray, "/diagnostics", "diagnostics", qos_profile("reliable", 10))
        self.image_pub = self.node.create_publisher(self.kit.Image, "/camera/image_raw", qos_profile("reliable", 1))
        self.query_pub = self.node.create_publisher(self.kit.String, f"{namespace}/query",
                                                    qos_profile("reliable", 1000))
        base = f"{namespace}/{node_name}"
        self._clients = {
            "change_state": self.node.create_client(ChangeState, f"{base}/change_state"),
            "get_state": self.node.create_client(GetState, f"{base}/get_state"),
            "get_parameters": self.node.create_client(GetParameters, f"{base}/get_parameters"),
            "set_parameters": self.node.create_client(SetParameters, f"{base}/set_parameters"),
            "stop_tracking": self.node.create_client(Trigger, f"{base}/stop_tracking"),
        }

    def _record(self, msg_type: type, topic: str, name: str, qos: Any) -> None:
        self.node.create_subscription(msg_type, topic, self.received[name].append, qos)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def spin_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)
        return predicate()

    def linger(self, seconds: float) -> None:
        """Keep receiving for a while, so that a duplicate or late message would arrive."""
        self.spin_until(lambda: False, seconds)

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(msg.data) for msg in self.received["result"]]

    def node_is_listening(self) -> bool:
        self.executor.spin_once(timeout_sec=0.05)
        return self.query_pub.get_subscription_count() >= 1 and self.image_pub.get_subscription_count() >= 1

    def send_image(self, pixels: np.ndarray, frame_id: str = "camera_optical") -> Stamp:
        """Publish a frame until the node's diagnostics show it as the newest, so that a query sent next
        finds it. (Reliable, yet a volatile reader that is still matching the publisher skips a sample.)"""
        stamp = Stamp.from_seconds(time.time())
        msg = messages.image(self.kit, messages.header(self.kit, stamp, frame_id), encode_image(pixels, "rgb8"))
        for _ in range(10):
            self.image_pub.publish(msg)
            if self.spin_until(lambda: self._newest_frame_is(stamp), 1.0):
                return stamp
        raise AssertionError("the node's diagnostics never showed the frame")

    def _newest_frame_is(self, stamp: Stamp) -> bool:
        """Diagnostics give the node clock (header) and the newest frame's age, to the millisecond."""
        if not self.received["diagnostics"]:
            return False
        newest = self.received["diagnostics"][-1]
        age = {kv.key: kv.value for kv in newest.status[0].values}.get("frame_age_s", "n/a")
        return age != "n/a" and abs(Stamp.of(newest.header.stamp).seconds - float(age) - stamp.seconds) < 0.002

    def send_query(self, text: str) -> None:
        self.query_pub.publish(self.kit.String(data=text))

    def ask(self, text: str, timeout_s: float = RESULT_TIMEOUT_S) -> dict[str, Any]:
        before = len(self.received["result"])
        self.send_query(text)
        assert self.spin_until(lambda: len(self.received["result"]) > before, timeout_s), f"no result for {text[:40]!r}"
        return self.results()[before]

    def call(self, service: str, request: Any, timeout_s: float = 30.0) -> Any:
        client = self._clients[service]
        assert self.spin_until(client.service_is_ready, 10), f"service {service} is not available"
        future = client.call_async(request)
        assert self.spin_until(future.done, timeout_s), f"{service} did not answer"
        return future.result()

    def transition(self, name: str) -> bool:
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[name]
        return self.call("change_state", request).success

    def state(self) -> str:
        return self.call("get_state", GetState.Request()).current_state.label

    def get_parameter(self, name: str) -> Any:
        values = self.call("get_parameters", GetParameters.Request(names=[name])).values
        return parameter_value_to_python(values[0])

    def set_parameter(self, name: str, value: Any) -> None:
        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        assert all(r.successful for r in self.call("set_parameters", request).results)

    def newest_diagnostics(self, after: int = 0) -> Any:
        """The first DiagnosticStatus published after ``after`` diagnostics messages had arrived."""
        assert self.spin_until(lambda: len(self.received["diagnostics"]) > after, 10), "no diagnostics"
        return self.received["diagnostics"][after].status[0]

    def fresh_diagnostics(self) -> Any:
        """A DiagnosticStatus published after this call (the node's state may just have changed)."""
        return self.newest_diagnostics(len(self.received["diagnostics"]) + 1)


def start_node(args: list[str], log_path: Path, *, fake: bool = False, env: dict[str, str] | None = None,
               ) -> subprocess.Popen:
    """Start lens_node (or, with ``fake``, rclpy_node_main.py with its stand-in models) as a process."""
    entry = [str(NODE_MAIN)] if fake else ["-m", "lens_ros.lens_node"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, *entry, *args], cwd=REPO, env={**os.environ, **(env or {})},
                                   stdout=log, stderr=subprocess.STDOUT)
    process.log_path = log_path
    return process


def node_log(process: subprocess.Popen) -> str:
    return process.log_path.read_text(errors="replace")[-4000:]


def wait_for_node(peer: Peer, process: subprocess.Popen, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    assert peer.spin_until(lambda: peer.node_is_listening() or process.poll() is not None, timeout_s) \
        and process.poll() is None, f"node did not come up:\n{node_log(process)}"


def interrupt(process: subprocess.Popen, signum: int = signal.SIGINT) -> tuple[int, float]:
    """Send ``signum``; return the exit code and the seconds the process took to end."""
    started = time.monotonic()
    process.send_signal(signum)
    try:
        code = process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise AssertionError(f"node ignored signal {signum} for 30 s:\n{node_log(process)}") from None
    return code, time.monotonic() - started


def kill_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)
