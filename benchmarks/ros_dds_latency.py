"""Query-to-result latency over DDS on loopback, with ``lens_node --transport dds`` and the tiny model.

    python -m benchmarks.ros_dds_latency [--queries N] [--size 640x480] [--max-new-tokens T] [--burst B]

Starts the node as a separate process, publishes a frame and a query from a CycloneDDS client
and times the round trip at the client. Also times queries the node rejects at once (empty
text), which is the transport and node cost with no model in the way, and counts the results
that a burst of queries written back to back gets.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from lens_ros.dds_client import LensDdsClient
from lens_ros.msgs import idl
from lens_ros.transports.dds import LOOPBACK_CYCLONEDDS_URI

REPO = Path(__file__).resolve().parents[1]


def summary(values_ms: list[float]) -> str:
    return (f"median {statistics.median(values_ms):8.1f} ms   min {min(values_ms):8.1f}   "
            f"max {max(values_ms):8.1f}   (n={len(values_ms)})")


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return (time.perf_counter() - start) * 1000.0, value


def burst(client: LensDdsClient, count: int, timeout_s: float) -> str:
    """Write ``count`` queries back to back; report how many results (and distinct query ids) came back."""
    before = len(client.received("result"))
    start = time.perf_counter()
    for i in range(count):
        client.query_writer.write(idl.String(data=f"burst query {i}"))
    try:
        client.next_result(before + count - 1, timeout_s)
        waited = f"in {(time.perf_counter() - start) * 1000.0:.0f} ms"
    except TimeoutError:
        waited = f"within {timeout_s:.0f} s"
    time.sleep(0.5)  # any duplicate or late result arrives by now
    results = client.results()[before:]
    ids = {r["query_id"] for r in results}
    return f"{len(results)} results / {count} queries sent ({len(ids)} distinct query ids) {waited}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=5, help="model queries to time (after one warm-up)")
    parser.add_argument("--rejected", type=int, default=20, help="instantly rejected queries to time")
    parser.add_argument("--size", default="640x480", help="frame WIDTHxHEIGHT")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--burst", type=int, default=200, help="queries written back to back at the end; 0 = none")
    parser.add_argument("--image-reliability", choices=("best_effort", "reliable"), default="best_effort",
                        help="image QoS of the node; best-effort frames above ~1 MB need larger socket buffers "
                             "(see docs/ros.md), reliable ones are retransmitted")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    os.environ.setdefault("CYCLONEDDS_URI", LOOPBACK_CYCLONEDDS_URI)
    os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 200))

    with tempfile.TemporaryDirectory() as workdir:
        params = Path(workdir) / "params.yaml"
        node_params = {"model": {"name": "tiny-random", "max_new_tokens": args.max_new_tokens},
                       "frames": {"max_age_s": 0.0}, "qos": {"image_reliability": args.image_reliability}}
        params.write_text(yaml.safe_dump({"/**": {"ros__parameters": node_params}}))
        log_path = Path(workdir) / "node.log"
        with open(log_path, "wb") as log:
            start = time.perf_counter()
            node = subprocess.Popen([sys.executable, "-m", "lens_ros.lens_node", "--transport", "dds",
                                     "--params-file", str(params)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        client = LensDdsClient()
        try:
            if not client.wait_for_node(120):
                sys.exit(f"node did not come up:\n{log_path.read_text()[-2000:]}")
            print(f"node up (process start, torch import, model load, DDS discovery): "
                  f"{time.perf_counter() - start:.1f} s")
            frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
            client.send_image(frame)
            warm_up = client.ask("warm-up", 120)
            if warm_up["status"] == "error":
                sys.exit(f"warm-up failed: {warm_up['error']} (frames this large may need --image-reliability "
                         "reliable or larger socket buffers, see docs/ros.md)")

            model_round_trips, model_totals, node_totals = [], [], []
            for i in range(args.queries):
                client.send_image(frame)
                elapsed, result = timed(lambda text=f"the object number {i}": client.ask(text, 120))
                assert result["status"] != "error", result
                model_round_trips.append(elapsed)
                model_totals.append(result["timings_ms"].get("total", float("nan")))
                node_totals.append(result["timings_ms"]["node_total"])
            rejected = [timed(lambda: client.ask("   ", 30))[0] for _ in range(args.rejected)]
            burst_line = burst(client, args.burst, 120) if args.burst else None
        finally:
            client.close()
            node.send_signal(signal.SIGINT)
            node.wait(30)

    print(f"frame {width}x{height} ({args.image_reliability}), tiny-random, max_new_tokens {args.max_new_tokens}, CPU")
    print(f"query -> result over DDS      : {summary(model_round_trips)}")
    print(f"  of which model (its 'total'): {summary(model_totals)}")
    print(f"  node decode+model (node_total): {summary(node_totals)}")
    overhead = [rt - m for rt, m in zip(model_round_trips, model_totals, strict=True)]
    print(f"  round trip minus model      : {summary(overhead)}")
    print(f"rejected query -> error result: {summary(rejected)}")
    if burst_line:
        print(f"burst of {args.burst} queries      : {burst_line}")


if __name__ == "__main__":
    main()
