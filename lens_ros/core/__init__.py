"""ROS-free node logic: parameters, frame buffer, query queue, inference worker, conversions and
message construction. Messages are built and read by field name, so the same code serves rclpy,
the CycloneDDS transport and rosbags."""
