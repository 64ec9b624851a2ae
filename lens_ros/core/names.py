"""ROS 2 topic name resolution for transports that do not have rcl to do it."""
from __future__ import annotations

import re

from lens_ros.core.params import ParameterError

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_tokens(name: str, what: str) -> None:
    tokens = name.strip("/").split("/")
    if not all(_TOKEN.fullmatch(token) for token in tokens):
        raise ParameterError(
            f"invalid {what} {name!r}: use '/'-separated tokens of letters, digits and underscores, "
            "not starting with a digit")


def validate_namespace(namespace: str) -> str:
    if not namespace.startswith("/"):
        namespace = "/" + namespace
    if namespace != "/":
        _check_tokens(namespace, "namespace")
    return namespace.rstrip("/") or "/"


def resolve_topic(name: str, namespace: str, node_name: str) -> str:
    """Fully qualified name of ``name``: absolute as is, ``~/x`` under the node, else under the namespace."""
    namespace = validate_namespace(namespace)
    base = namespace.rstrip("/")
    if name.startswith("~"):
        resolved = f"{base}/{node_name}{name[1:]}" if name != "~" else f"{base}/{node_name}"
    elif name.startswith("/"):
        resolved = name
    else:
        resolved = f"{base}/{name}"
    if resolved.endswith("/"):
        raise ParameterError(f"invalid topic name {name!r}: it must not end with '/'")
    _check_tokens(resolved, "topic name")
    return resolved


def dds_topic_name(fully_qualified: str) -> str:
    """The DDS topic rmw_cyclonedds uses for a ROS 2 topic (the ``rt`` prefix marks ROS topics)."""
    return "rt" + fully_qualified
