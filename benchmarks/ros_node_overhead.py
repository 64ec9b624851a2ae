"""Per-frame and per-query cost of lens_node outside the model, at 640x480 and 1920x1080.

    python -m benchmarks.ros_node_overhead [--repeats N]

Every frame: DDS deserialisation of the sensor_msgs/Image and buffering (what the receive thread
pays at camera rate). Every query: decoding the buffered frame (rgb8, bgr8, JPEG), building and
serialising mask, detections, reasoning and result, and the optional debug overlay. Every tracked frame
(tracking.enabled): decoding it and building and serialising its track mask, detections and status.
No model runs; the SegmentationResult is built directly with a rectangular mask.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np

from lens_model.instance_tracks import InstanceStep
from lens_model.result import Instance, SegmentationResult
from lens_ros.core import messages
from lens_ros.core.frames import Frame, LatestFrameBuffer, Stamp
from lens_ros.core.image_codec import compressed_msg_to_rgb, encode_image, image_msg_to_rgb
from lens_ros.core.outcome import TRACKING, QueryOutcome, TrackEvent
from lens_ros.core.publishing import OutcomePublisher, RateLimiter, TrackPublisher
from lens_ros.msgs import idl

KIT = idl.dds_kit()
SIZES = {"640x480": (480, 640), "1920x1080": (1080, 1920)}


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def scene(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), 200, np.uint8)
    image[height // 4: height // 2, width // 4: width // 2] = (220, 30, 30)
    return np.clip(image.astype(int) + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)


def stages(height: int, width: int) -> dict[str, Callable[[], object]]:
    rgb = scene(height, width)
    hdr = messages.header(KIT, Stamp(1, 0), "camera")
    rgb_msg = messages.image(KIT, hdr, encode_image(rgb, "rgb8"))
    bgr_msg = messages.image(KIT, hdr, encode_image(np.ascontiguousarray(rgb[..., ::-1]), "bgr8"))
    rgb_cdr = rgb_msg.serialize()
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    jpeg_msg = KIT.CompressedImage(header=hdr, format="jpeg", data=jpeg)
    buffer = LatestFrameBuffer()
    frame = Frame.from_msg(rgb_msg, compressed=False, received_s=1.0)
    mask = np.zeros((height, width), bool)
    mask[height // 4: height // 2, width // 4: width // 2] = True
    box = (width / 4, height / 4, width / 2, height / 2)
    result = SegmentationResult("the red box", mask, box, "ok", "red box", 0.9, "the red region is a box",
                                "<answer>...</answer>", {"generate": 100.0}, instances=[Instance(box, mask, 0.9, "red box")])
    outcome = QueryOutcome(1, "the red box", "ok", frame=frame, frame_age_s=0.01, result=result)

    def serialise(_output, msg) -> None:
        msg.serialize()

    event = TrackEvent(1, 1, "the red box", TRACKING, frame=frame, score=0.9, box=box, mask_area=int(mask.sum()),
                       instances=[InstanceStep(TRACKING, 0.9, box, mask)])
    track_publisher = TrackPublisher(KIT, serialise)
    publisher = OutcomePublisher(KIT, serialise, None)
    debug_publisher = OutcomePublisher(KIT, serialise, RateLimiter(1e9, time.perf_counter))
    return {
        "frame: DDS deserialise Image": lambda: idl.Image.deserialize(rgb_cdr),
        "frame: buffer (header read + swap)": lambda: buffer.put(Frame.from_msg(rgb_msg, False, 1.0)),
        "query: decode rgb8 (zero-copy view)": lambda: image_msg_to_rgb(rgb_msg),
        "query: decode bgr8": lambda: image_msg_to_rgb(bgr_msg),
        "query: decode JPEG q90": lambda: compressed_msg_to_rgb(jpeg_msg),
        "query: build + serialise outputs": lambda: publisher.publish(outcome, rgb),
        "query: same, with debug overlay": lambda: debug_publisher.publish(outcome, rgb),
        "tracked frame: build + serialise track outputs": lambda: track_publisher.publish(event, ["red box"]),
        "(reference) DDS serialise input Image": rgb_msg.serialize,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    table = {name: {label: median_ms(fn, args.repeats) for label, fn in stages(*shape).items()}
             for name, shape in SIZES.items()}
    labels = list(next(iter(table.values())))
    width = max(map(len, labels))
    print(f"{'median ms over ' + str(args.repeats) + ' runs':<{width}}  " + "  ".join(f"{n:>10}" for n in table))
    for label in labels:
        print(f"{label:<{width}}  " + "  ".join(f"{table[n][label]:>10.3f}" for n in table))


if __name__ == "__main__":
    main()
