"""Exceptions with messages meant for the person running the command or the node."""


class LensError(Exception):
    """Base class for errors this project raises on purpose."""


class InputError(LensError, ValueError):
    """Bad input from the caller: an unreadable image, an empty or oversized query."""


class ModelNotFoundError(LensError, FileNotFoundError):
    """A model name or path that can be resolved neither locally nor (offline) on the hub."""


class CheckpointFormatError(LensError, ValueError):
    """A checkpoint whose files or keys do not match any layout this project can load."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, for errors that must stay on one line."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
