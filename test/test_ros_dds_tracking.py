"""Tracking on the DDS transport in this process, with FakeTracker, and a CycloneDDS peer speaking the
ROS 2 wire format: the track topics stamped per frame, and the track/stop topic."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from ros_fixtures import FakeSegmenter, loopback_dds, marked, open_fake_tracker, unique_domain_id, wait_until

from lens_ros.core.frames import Stamp
from lens_ros.core.params import LensParams
from lens_ros.dds_client import LensDdsClient
from lens_ros.transports.dds import DdsNode

TIMEOUT_S = 30
T0 = 1_700_000_000.0


@pytest.fixture
def served():
    """A DdsNode with tracking on, and a client; on a DDS domain of its own."""
    segmenter = FakeSegmenter()
    params = LensParams.from_ros({"tracking.enabled": True, "frames.max_age_s": 0.0, "diagnostics.period_s": 60.0})
    with loopback_dds(unique_domain_id(offset=2)) as domain_id:
        node = DdsNode(params, node_name="lens_track", domain_id=domain_id, load=lambda *_: segmenter,
                       track=open_fake_tracker)
        stop = threading.Event()
        thread = threading.Thread(target=node.run, args=(stop,), daemon=True)
        thread.start()
        client = LensDdsClient(params, domain_id=domain_id)
        try:
            assert wait_until(lambda: client.node_is_listening()
                              and client.stop_writer.get_publication_matched_status().current_count >= 1,
                              TIMEOUT_S, 0.1)
            yield client, segmenter
        finally:
            stop.set()
            thread.join(10)
            client.close()


def test_track_topics_stamped_per_frame_and_a_stop_on_the_topic(served):
    client, segmenter = served
    tracker = segmenter.fake_tracker
    stamps = {0: client.send_image(marked(0), Stamp.from_seconds(T0), "f0")}
    assert client.ask("the thing")["status"] == "ok"
    assert wait_until(lambda: tracker.started_on == [0], TIMEOUT_S)
    for index in (1, 2):
        stamps[index] = client.send_image(marked(index), Stamp.from_seconds(T0 + index / 10), f"f{index}")
        assert wait_until(lambda: len(client.track_statuses()) == index, TIMEOUT_S), client.track_statuses()
    assert wait_until(lambda: len(client.received("track_mask")) == len(client.received("track_detections"))
                      == len(client.received("track_instances")) == 2, 5)
    for index, mask, instances, detections in zip((1, 2), client.received("track_mask"),
                                                  client.received("track_instances"),
                                                  client.received("track_detections"), strict=True):
        for header in (mask.header, instances.header, detections.header, detections.detections[0].header):
            assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (
                stamps[index].sec, stamps[index].nanosec, f"f{index}")
        pixels = np.frombuffer(mask.data, np.uint8).reshape(mask.height, mask.width)
        assert np.argwhere(pixels)[0].tolist() == [index, index]  # the square of the frame the step ran on
    assert [(s["status"], s["frame_id"], s["query_id"]) for s in client.track_statuses()] == [
        ("tracking", "f1", 1), ("tracking", "f2", 1)]
    assert len(client.received("mask")) == len(client.results()) == 1  # the query's own outputs, once
    (instances,) = client.received("instances")  # the query's instance image, stamped with its frame
    assert (instances.header.stamp.sec, instances.header.frame_id, instances.encoding) == (stamps[0].sec, "f0", "mono8")
    assert np.frombuffer(instances.data, np.uint8).max() == 1

    client.stop_tracking()
    assert wait_until(lambda: len(client.track_statuses()) == 3, TIMEOUT_S)
    stopped = client.track_statuses()[2]
    assert (stopped["status"], stopped["reason"]) == ("stopped", "stop requested on /lens/track/stop")
    client.send_image(marked(3), Stamp.from_seconds(T0 + 0.3), "f3")
    assert not wait_until(lambda: len(tracker.stepped) > 2, 0.5)  # no step after the stop
