"""ROS 2 message type definitions usable without a ROS install (CycloneDDS IDL and rosbags)."""
