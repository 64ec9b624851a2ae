"""The rclpy adapter: a lifecycle node that wires ROS parameters, subscriptions and lifecycle
publishers to ``LensService``. Importing it requires rclpy (a sourced ROS 2 installation).

configure: read parameters, create publishers. activate: load the model, create subscriptions (and,
with tracking, the ``~/stop_tracking`` service). deactivate: drop them, answer waiting queries, free
GPU memory. cleanup: destroy publishers. Diagnostics are published in every state, unconfigured and
inactive included.
"""
from __future__ import annotations

import array
import functools
import importlib
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.duration import Duration
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind
from rclpy.signals import SignalHandlerOptions
from std_srvs.srv import Trigger

from lens_ros.core import messages
from lens_ros.core.frames import Stamp
from lens_ros.core.message_kit import MessageKit
from lens_ros.core.names import resolve_topic
from lens_ros.core.params import LensParams, ParameterError, parameter_specs
from lens_ros.core.publishing import Output, history_depth, message_class_name, output_topics
from lens_ros.core.queries import QueryIds
from lens_ros.core.segmenter import TrackerOpener, load_segmenter, open_tracker
from lens_ros.core.service import RESULT_FLUSH_S, SHUTDOWN_GRACE_S, LensService, Loader
from lens_ros.core.stats import lifecycle_report

log = logging.getLogger(__name__)

# Message packages the node runs without: their types resolve to None and their outputs are not published.
OPTIONAL_PACKAGES = frozenset({"vision_msgs"})
# How long shutdown (SIGINT, SIGTERM, the lifecycle shutdown transition) waits for a running inference
# before answering its query with an error; with SPIN_PERIOD_S and the result flush it bounds stopping.
SPIN_PERIOD_S = 0.1  # how often the spin loop looks for a stop signal
STOP_TRACKING_SERVICE = "~/stop_tracking"  # std_srvs/Trigger, while active with tracking.enabled


def _message_class(ros_type: str) -> type | None:
    package, _, name = ros_type.split("/")
    try:
        module = importlib.import_module(f"{package}.msg")
    except ModuleNotFoundError as exc:
        if package in OPTIONAL_PACKAGES and exc.name in (package, f"{package}.msg"):
            return None
        raise
    return getattr(module, name)


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
    def __init__(self, node_name: str = "lens_node", namespace: str = "/lens", load: Loader = load_segmenter,
                 track: TrackerOpener = open_tracker) -> None:
        super().__init__(node_name, namespace=namespace)
        self._lens_load = load
        self._lens_track = track
        for spec in parameter_specs():
            # dynamic typing: LensParams checks types itself, with clearer messages (and 1 for 1.0 is fine)
            self.declare_parameter(spec.ros_name, spec.default,
                                   ParameterDescriptor(description=spec.doc, dynamic_typing=True))
        self._lens_kit = ros_kit()
        if not self._lens_kit.has_detections:
            self.get_logger().warning(
                "vision_msgs is not installed: running without the detections output (the box is in the result "
                "JSON). Install it to get vision_msgs/Detection2DArray, e.g. apt install ros-$ROS_DISTRO-vision-msgs")
        self._lens: LensService | None = None
        self._lens_ids = QueryIds()  # one id sequence per node run, across cleanup and configure
        self._lens_outputs: dict[Output, Any] = {}
        self._lens_inputs: list[Any] = []
        self._lens_stop_service: Any = None
        self._lens_phase = "unconfigured"  # the lifecycle state the diagnostics report while there is no service
        self._lens_failure: str | None = None  # why configure failed
        self._lens_diagnostics_name = f"{self.get_name()}: segmentation"  # as the DDS transport names it
        self._lens_diagnostics: tuple[str, float, Any, Any] | None = None  # topic, period, publisher, timer
        try:
            self._lens_watch_diagnostics(self._lens_params())
        except ParameterError:  # configure reports it; diagnose with the defaults until then
            self._lens_watch_diagnostics(LensParams())

    @property
    def finalized(self) -> bool:
        return self._lens_phase == "finalized"

    def _lens_now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _lens_params(self) -> LensParams:
        return LensParams.from_ros({s.ros_name: self.get_parameter(s.ros_name).value for s in parameter_specs()})

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

    def _lens_watch_diagnostics(self, params: LensParams) -> None:
        """(Re)create the diagnostics publisher and timer. Unlike the outputs they are plain, not lifecycle,
        entities: an inactive node, or one whose activate failed, must still say why it is not serving."""
        topic, period = params.diagnostics_topic, params.diagnostics_period_s
        if self._lens_diagnostics is not None:
            old_topic, old_period, publisher, timer = self._lens_diagnostics
            if (old_topic, old_period) == (topic, period):
                return
            self.destroy_timer(timer)
            self.destroy_publisher(publisher)
        publisher = self.create_publisher(
            self._lens_kit.DiagnosticArray, topic, qos_profile(params.output_reliability, params.output_depth))
        timer = self.create_timer(period, self._guarded(self._lens_publish_diagnostics))
        self._lens_diagnostics = (topic, period, publisher, timer)

    def _lens_publish_diagnostics(self) -> None:
        if self._lens is not None:
            self._lens.publish_diagnostics()
            return
        report = lifecycle_report(self._lens_diagnostics_name, self._lens_phase, self._lens_failure)
        self._lens_publish(Output.DIAGNOSTICS,
                           messages.diagnostics(self._lens_kit, Stamp.from_seconds(self._lens_now()), report))

    def _lens_publish(self, output: Output, msg: Any) -> None:
        if output is Output.DIAGNOSTICS:
            self._lens_diagnostics[2].publish(msg)
        else:
            self._lens_outputs[output].publish(msg)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # bad parameters or topic names: report them and stay unconfigured
            self._lens_failure = f"configure failed: {exc}"
            self.get_logger().error(self._lens_failure)
            self._drop_outputs()
            return TransitionCallbackReturn.FAILURE
        self._lens_failure = None
        return super().on_configure(state)

    def _configure(self) -> None:
        params = self._lens_params()
        image_source = resolve_topic(params.image_topic, self.get_namespace(), self.get_name())
        self._lens_watch_diagnostics(params)
        k = self._lens_kit
        for output, name in output_topics(params).items():
            msg_type = getattr(k, message_class_name(output))
            if output is Output.DIAGNOSTICS or msg_type is None:  # always on / vision_msgs missing (warned)
                continue
            qos = qos_profile(params.output_reliability, history_depth(params, output))
            self._lens_outputs[output] = self.create_lifecycle_publisher(msg_type, name, qos)
        self._lens = LensService(
            params, k, self._lens_publish, self._lens_now, image_source=image_source,
            diagnostics_name=self._lens_diagnostics_name, load=self._lens_load, track=self._lens_track,
            ids=self._lens_ids)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        service = self._lens
        try:
            service.activate()
        except Exception:  # a missing model or an unusable device must not kill the process
            self.get_logger().error(service.activation_error)
            return TransitionCallbackReturn.FAILURE
        result = super().on_activate(state)
        p, k = service.params, self._lens_kit
        image_qos = qos_profile(p.image_reliability, p.image_depth)
        image_events = SubscriptionEventCallbacks(incompatible_qos=self._lens_image_qos_mismatch)
        self._lens_inputs = [self.create_subscription(
            k.Image, p.image_topic, self._guarded(service.on_image), image_qos, event_callbacks=image_events)]
        if p.compressed_image_topic:
            self._lens_inputs.append(self.create_subscription(
                k.CompressedImage, p.compressed_image_topic, self._guarded(service.on_compressed_image), image_qos,
                event_callbacks=image_events))
        if p.tracking:  # before the queries: a stop and a query taken together stop the old track only
            stop_topic = resolve_topic(p.track_stop_topic, self.get_namespace(), self.get_name())
            self._lens_inputs.append(self.create_subscription(
                k.String, stop_topic, self._guarded(lambda msg: service.stop_tracking(f"stop requested on {stop_topic}")),
                qos_profile("reliable", 1)))
            self._lens_stop_service = self.create_service(Trigger, STOP_TRACKING_SERVICE, self._lens_stop_tracking)
        self._lens_inputs.append(self.create_subscription(
            k.String, p.query_topic, self._guarded(lambda msg: service.on_query(msg.data)),
            qos_profile("reliable", p.query_depth)))
        self.get_logger().info(f"active: model {p.model_name} on {p.device}, image {p.image_topic}")
        return result

    def _lens_stop_tracking(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Always succeeds (stopping is idempotent); the message says whether a track was running."""
        response.message = self._lens.stop_tracking(f"stop requested through {self._lens_stop_service.service_name}")
        response.success = True
        return response

    def _lens_image_qos_mismatch(self, event: Any) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        hint = (" The camera publishes best effort: set qos.image_reliability: best_effort "
                "(see docs/ros.md, Fast DDS)." if policy == "RELIABILITY" else "")
        self.get_logger().warning(
            f"an image publisher offers a QoS incompatible with this node's image subscription ({policy}); "
            f"no frames will arrive from it.{hint}")

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
            answered = self._lens.deactivate(SHUTDOWN_GRACE_S, free_memory=False)  # the process ends next
            result_publisher = self._lens_outputs.get(Output.RESULT)
            if answered and result_publisher is not None:  # let subscribers have these last error results
                result_publisher.wait_for_all_acked(Duration(seconds=RESULT_FLUSH_S))
        self._drop_outputs()
        self._lens_phase, self._lens_failure = "finalized", "node shut down"
        return super().on_shutdown(state)

    def _drop_inputs(self) -> None:
        for subscription in self._lens_inputs:
            self.destroy_subscription(subscription)
        self._lens_inputs = []
        if self._lens_stop_service is not None:
            self.destroy_service(self._lens_stop_service)
            self._lens_stop_service = None

    def _drop_outputs(self) -> None:
        for publisher in self._lens_outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._lens_outputs = {}
        self._lens = None


def spin_lifecycle_node(node_name: str, namespace: str, ros_args: list[str], load: Loader = load_segmenter,
                        track: TrackerOpener = open_tracker) -> int:
    """Run the node until SIGINT or SIGTERM, then take it through the lifecycle shutdown transition
    (or until that transition is requested through the lifecycle services).

    The signals only set a flag that the spin loop checks every SPIN_PERIOD_S: rclpy's own handlers
    would invalidate the context while the executor may be building a wait set (``RCLError: failed to
    initialize wait set``). A signal that arrives during a long callback (a model load) is handled after it.
    """
    rclpy.init(args=["lens_node", *ros_args], signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    node = None
    executor = SingleThreadedExecutor()
    try:
        node = LensLifecycleNode(node_name, namespace, load, track)
        logging.getLogger("lens_ros").addHandler(RclpyLogHandler(node.get_logger()))
        logging.getLogger("lens_ros").propagate = False
        executor.add_node(node)
        if node.get_parameter("autostart").value and not stop.is_set():
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS and not stop.is_set():
                node.trigger_activate()
        while not stop.is_set() and not node.finalized:  # finalized: the shutdown transition was requested
            try:
                executor.spin_once(timeout_sec=SPIN_PERIOD_S)
            except Exception as exc:  # rclpy's own services raise on some requests, e.g. a change_state
                # with a transition id the current state lacks: drop that request, keep the node up
                node.get_logger().error(f"dropped a request that failed: {type(exc).__name__}: {exc}")
        if not node.finalized:
            node.trigger_shutdown()
    finally:
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
