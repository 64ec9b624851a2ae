"""Construction of every output message, by field name, for any MessageKit."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lens_model.result import Box
from lens_ros.core.frames import Stamp
from lens_ros.core.image_codec import EncodedImage
from lens_ros.core.outcome import QueryOutcome

_ZERO_COVARIANCE = (0.0,) * 36


def header(kit: Any, stamp: Stamp, frame_id: str) -> Any:
    return kit.Header(stamp=kit.Time(sec=stamp.sec, nanosec=stamp.nanosec), frame_id=frame_id)


def image(kit: Any, hdr: Any, encoded: EncodedImage) -> Any:
    return kit.Image(
        header=hdr,
        height=encoded.height,
        width=encoded.width,
        encoding=encoded.encoding,
        is_bigendian=encoded.is_bigendian,
        step=encoded.step,
        data=kit.uint8_sequence(encoded.data),
    )


def string(kit: Any, text: str) -> Any:
    return kit.String(data=text)


def detections(kit: Any, hdr: Any, outcome: QueryOutcome) -> Any:
    """A query's Detection2DArray: one detection per instance, in the answer's order (none for ``no_target``
    and ``no_box``). ``class_id`` is the instance's grounded label (the query text when the model gave none).
    """
    instances = [] if outcome.result is None else outcome.result.instances
    return kit.Detection2DArray(header=hdr, detections=[
        detection(kit, hdr, instance.box, instance.label or outcome.query, instance.score,
                  detection_id(outcome.query_id, number))
        for number, instance in enumerate(instances, start=1)])


def detection_id(query_id: int, number: int) -> str:
    """``Detection2D.id`` of instance ``number`` (from 1: its pixel value on the instance image) of a query:
    ``"7/2"``; the same object keeps it on the track outputs."""
    return f"{query_id}/{number}"


def detection(kit: Any, hdr: Any, box: Box, class_id: str, score: float, identity: str) -> Any:
    """A Detection2D of ``box`` (x1, y1, x2, y2) in pixels, with one hypothesis and ``id`` = ``identity``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    pose = kit.Pose(
        position=kit.Point(x=0.0, y=0.0, z=0.0), orientation=kit.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))
    hypothesis = kit.ObjectHypothesisWithPose(
        hypothesis=kit.ObjectHypothesis(class_id=class_id, score=float(score)),
        pose=kit.PoseWithCovariance(pose=pose, covariance=kit.float64_array(_ZERO_COVARIANCE)),
    )
    bbox = kit.BoundingBox2D(
        center=kit.Pose2D(position=kit.Point2D(x=(x1 + x2) / 2.0, y=(y1 + y2) / 2.0), theta=0.0),
        size_x=x2 - x1,
        size_y=y2 - y1,
    )
    return kit.Detection2D(header=hdr, results=[hypothesis], bbox=bbox, id=identity)


@dataclass(frozen=True)
class DiagnosticReport:
    """One diagnostic_msgs/DiagnosticStatus without the message class."""

    level: int  # 0 OK, 1 WARN, 2 ERROR, 3 STALE
    name: str
    message: str
    hardware_id: str
    values: tuple[tuple[str, str], ...]


def diagnostics(kit: Any, stamp: Stamp, report: DiagnosticReport) -> Any:
    status = kit.DiagnosticStatus(
        level=kit.byte(report.level),
        name=report.name,
        message=report.message,
        hardware_id=report.hardware_id,
        values=[kit.KeyValue(key=key, value=value) for key, value in report.values],
    )
    return kit.DiagnosticArray(header=header(kit, stamp, ""), status=[status])
