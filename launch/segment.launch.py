"""Start lens_node, a lifecycle node that configures and activates itself (parameter autostart).

    ros2 launch lens_ros segment.launch.py image_topic:=/camera/color/image_raw model:=OuyBin/LENS device:=cuda
    ros2 launch lens_ros segment.launch.py tracking:=true     # masks on every frame after a query

Empty arguments leave the value of the parameters file in place. The launch has no side effects:
it installs nothing and downloads nothing.
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from lens_ros.core.params import command_line_overrides

BOOLEANS = {"true": True, "false": False}


def _parse_bool(name: str, text: str) -> bool | None:
    if not text:
        return None
    if text.lower() not in BOOLEANS:
        raise ValueError(f"launch argument {name} must be true or false, got {text!r}")
    return BOOLEANS[text.lower()]


def _lens_node(context):
    def arg(name: str) -> str | None:
        return LaunchConfiguration(name).perform(context) or None

    overrides = command_line_overrides(
        model=arg("model"),
        device=arg("device"),
        image_topic=arg("image_topic"),
        debug_image=_parse_bool("debug_image", LaunchConfiguration("debug_image").perform(context)),
        tracking=_parse_bool("tracking", LaunchConfiguration("tracking").perform(context)),
    )
    return [Node(
        package="lens_ros",
        executable="lens_node",
        name="lens_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="lens",
                              description="Node namespace; outputs go to /<namespace>/..."),
        DeclareLaunchArgument("image_topic", default_value="",
                              description="sensor_msgs/Image input (empty: topics.image, default /camera/image_raw)"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([FindPackageShare("lens_ros"), "config", "lens.yaml"]),
                              description="ROS 2 parameters YAML"),
        DeclareLaunchArgument("model", default_value="",
                              description="Model name or path (empty: model.name; OuyBin/LENS for GPU robots)"),
        DeclareLaunchArgument("device", default_value="", description="cpu, cuda, cuda:1 ... (empty: model.device)"),
        DeclareLaunchArgument("debug_image", default_value="",
                              description="true/false: publish the overlay image (empty: debug_image.enabled)"),
        DeclareLaunchArgument("tracking", default_value="",
                              description="true/false: track each query's target on every later frame "
                                          "(empty: tracking.enabled)"),
        OpaqueFunction(function=_lens_node),
    ])
