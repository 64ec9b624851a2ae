"""The rclpy adapter: a lifecycle node that wires ROS parameters, subscriptions and lifecycle
publishers to ``LensService``. Importing it requires a sourced ROS 2 installation.

configure: read parameters, create publishers. activate: load the model, create subscriptions and
the diagnostics timer. deactivate: drop subscriptions, answer waiting queries, free GPU memory.
cleanup: destroy publishers.
"""
from __future__ import annotations

import array
import functools
import importlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from lens_ros.core.message_kit import MessageKit
from lens_ros.core.names import resolve_topic
from lens_ros.core.params import LensParams, parameter_specs
from lens_ros.core.publishing import Output, message_class_name, output_topics
from lens_ros.core.segmenter import load_segmenter
from lens_ros.core.service import LensService, Loader

log = logging.getLogger(__name__)


def _message_class(ros_type: str) -> type:
    package, _, name = ros_type.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def ros_kit() -> MessageKit:
    return MessageKit.from_resolver(
        _message_class,
        uint8_sequence=lambda data: array.array("B", data),  # rclpy stores uint8[] as array.array('B')
        float64_array=lambda values: np.asarray(values, dtype=np.float64),
        byte=lambda value: bytes([value]),  # rclpy represents ROS ``byte`` as a 1-byte bytes object
    )


def qos_profile(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(
        depth=depth,
        history=HistoryPolicy.KEEP_LAST,
        durability=DurabilityPolicy.VOLATILE,
        reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
    )


class RclpyLogHandler(logging.Handler):
    """Forwards the core's Python logging to the node's rcutils logger (so it shows in /rosout)."""

    def __init__(self, logger: Any) -> None:
        super().__init__()
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.levelno >= logging.ERROR:
            self._logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(text)
        elif record.levelno >= logging.INFO:
            self._logger.info(text)
        else:
            self._logger.debug(text)


class LensLifecycleNode(LifecycleNode):
    def __init__(self, node_name: str = "lens_node", namespace: str = "/lens", load: Loader = load_segmenter) -> None:
        super().__init__(node_name, namespace=namespace)
        self._lens_load = load
        for spec in parameter_specs():
            # dynamic typing: LensParams checks types itself, with clearer messages (and 1 for 1.0 is fine)
            self.declare_parameter(spec.ros_name, spec.default,
                                   ParameterDescriptor(description=spec.doc, dynamic_typing=True))
        self._lens_kit = ros_kit()
        self._lens: LensService | None = None
        self._lens_outputs: dict[Output, Any] = {}
        self._lens_inputs: list[Any] = []
        self._lens_timer = None

    def _lens_now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    @staticmethod
    def _guarded(callback: Callable[..., None]) -> Callable[..., None]:
        """An exception in a callback would end rclpy.spin; log it instead and keep serving."""
        @functools.wraps(callback)
        def wrapper(*args: Any) -> None:
            try:
                callback(*args)
            except Exception:
                log.exception("callback %s failed", getattr(callback, "__name__", callback))
        return wrapper

    def _lens_publish(self, output: Output, msg: Any) -> None:
        self._lens_outputs[output].publish(msg)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # bad parameters or topic names: report them and stay unconfigured
            self.get_logger().error(f"configure failed: {exc}")
            self._drop_outputs()
            return TransitionCallbackReturn.FAILURE
        return super().on_configure(state)

    def _configure(self) -> None:
        params = LensParams.from_ros({s.ros_name: self.get_parameter(s.ros_name).value for s in parameter_specs()})
        image_source = resolve_topic(params.image_topic, self.get_namespace(), self.get_name())
        qos = qos_profile(params.output_reliability, params.output_depth)
        k = self._lens_kit
        for output, name in output_topics(params).items():
            msg_type = getattr(k, message_class_name(output))
            self._lens_outputs[output] = self.create_lifecycle_publisher(msg_type, name, qos)
        self._lens = LensService(
            params, k, self._lens_publish, self._lens_now, image_source=image_source,
            diagnostics_name=f"{self.get_fully_qualified_name()}: segmentation", load=self._lens_load)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        service = self._lens
        try:
            service.activate()
        except Exception as exc:  # a missing model or an unusable device must not kill the process
            self.get_logger().error(f"activate failed: cannot load model: {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE
        result = super().on_activate(state)
        p, k = service.params, self._lens_kit
        image_qos = qos_profile(p.image_reliability, p.image_depth)
        self._lens_inputs = [
            self.create_subscription(k.Image, p.image_topic, self._guarded(service.on_image), image_qos)]
        if p.compressed_image_topic:
            self._lens_inputs.append(self.create_subscription(
                k.CompressedImage, p.compressed_image_topic, self._guarded(service.on_compressed_image), image_qos))
        self._lens_inputs.append(self.create_subscription(
            k.String, p.query_topic, self._guarded(lambda msg: service.on_query(msg.data)),
            qos_profile("reliable", p.query_depth)))
        self._lens_timer = self.create_timer(p.diagnostics_period_s, self._guarded(service.publish_diagnostics))
        self.get_logger().info(f"active: model {p.model_name} on {p.device}, image {p.image_topic}")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._drop_inputs()
        self._lens.deactivate()  # waiting queries get their error results while publishers are active
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._drop_outputs()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._lens is not None and self._lens.active:
            self._drop_inputs()
            self._lens.deactivate()
        self._drop_outputs()
        return super().on_shutdown(state)

    def _drop_inputs(self) -> None:
        for subscription in self._lens_inputs:
            self.destroy_subscription(subscription)
        self._lens_inputs = []
        if self._lens_timer is not None:
            self.destroy_timer(self._lens_timer)
            self._lens_timer = None

    def _drop_outputs(self) -> None:
        for publisher in self._lens_outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._lens_outputs = {}
        self._lens = None


def spin_lifecycle_node(node_name: str, namespace: str, ros_args: list[str]) -> int:
    rclpy.init(args=["lens_node", *ros_args])
    node = LensLifecycleNode(node_name, namespace)
    logging.getLogger("lens_ros").addHandler(RclpyLogHandler(node.get_logger()))
    logging.getLogger("lens_ros").propagate = False
    if node.get_parameter("autostart").value:
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if rclpy.ok():  # after an external shutdown the context is gone; the process exit frees the model
            node.trigger_shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
