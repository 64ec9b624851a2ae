"""LENS for ROS 2: text-prompted segmentation node, DDS transport and bag mode.

``lens_ros.core`` holds all logic and imports no ROS package; ``lens_ros.transports`` adapts it
to rclpy or to the ROS 2 wire format over CycloneDDS; ``lens_ros.bag`` replays rosbag2 files.
"""
