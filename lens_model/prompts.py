"""Prompt templates: the authors' direct-answer prompt and the paper's think/answer prompt."""
from __future__ import annotations

from typing import Any

from lens_model.errors import CheckpointFormatError, InputError

# The authors' "pr1_grounding" question template (used by the released RefCOCO checkpoints).
DIRECT_TEMPLATE = "Output the bounding box of the {query} in the image."
# The paper's reasoning format: reasoning in think tags, then a JSON box list in answer tags.
REASONING_TEMPLATE = (
    'Find "{query}" in the image. Compare the candidate objects and pick the one that best matches. '
    "Write your reasoning between <think> and </think>, then give the answer between <answer> and "
    '</answer> as JSON, for example <think>reasoning</think><answer>[{{"bbox_2d": [x1, y1, x2, y2], '
    '"label": "object"}}]</answer>.'
)
TEMPLATES = {"direct": DIRECT_TEMPLATE, "reasoning": REASONING_TEMPLATE}
DEFAULT_MAX_QUERY_CHARS = 2000  # the model's and the node's limit unless configured otherwise
# The authors' "samr1_v4" user turn, word for word (their sentences are joined without spaces): the
# prompt ``OuyBin/LENS_ReasonSeg_CoT`` was trained and evaluated with. It asks for the think/answer
# format, so that checkpoint loads with template "reasoning" and this as its ``instruction``.
SAMR1_V4_INSTRUCTION = (
    'Locate "{query}", report the bbox coordinates in JSON format.'
    "Compare the difference between objects and find the most closely matched one."
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    "Output the one bbox inside the interested object in JSON format."
    "i.e., <think>thinking process here</think>"
    "<answer>answer here</answer>"
)


def query_text(data: object) -> str:
    """The text of a query as received (a string, or UTF-8 bytes), or InputError when it is not valid
    UTF-8 text. rclpy decodes strings with ``errors="replace"``, so invalid UTF-8 sent to the node
    reaches it as U+FFFD; undecodable command-line bytes arrive as lone surrogates."""
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"query is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    if not isinstance(data, str):
        raise InputError(f"query must be a string, got {type(data).__name__}")
    if "\ufffd" in data:
        raise InputError("query is not valid UTF-8 (it contains U+FFFD replacement characters)")
    try:
        data.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("query is not valid UTF-8 (it holds lone surrogates)") from None
    return data


def clean_query(query: object, max_chars: int, collapse_whitespace: bool = True, limit_name: str = "") -> str:
    """Validate a referring expression: non-empty UTF-8 text of at most ``max_chars`` characters.

    With ``collapse_whitespace`` runs of whitespace become one space and the ends are stripped;
    without it the text is returned as given (the authors' code tokenises queries verbatim).
    ``limit_name`` names the setting behind ``max_chars`` in the error.
    """
    text = query_text(query)
    if collapse_whitespace:
        text = " ".join(text.split())
    if not text.strip():
        raise InputError("query is empty")
    if len(text) > max_chars:
        setting = f" ({limit_name})" if limit_name else ""
        raise InputError(f"query is {len(text)} characters long; the limit is {max_chars}{setting}")
    return text


def check_instruction(instruction: str) -> None:
    """A model's custom user turn (``LensConfig.instruction``) must be a ``str.format`` pattern whose
    only field is ``{query}`` (literal braces doubled, as in the built-in templates)."""
    marker = "\0"
    try:
        filled = instruction.format(query=marker)
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointFormatError(
            f"instruction {instruction!r} is not a format pattern with the one field {{query}}: {exc}") from exc
    if marker not in filled:
        raise CheckpointFormatError(f"instruction must contain the field {{query}}, got {instruction!r}")


def build_messages(query: str, template: str, system_prompt: str, instruction: str = "") -> list[dict[str, Any]]:
    """Chat messages in the Qwen2.5-VL format: system prompt, then the image followed by the question
    (``instruction`` with the query filled in, or the template's built-in text when it is empty)."""
    if template not in TEMPLATES:
        raise InputError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
    question = (instruction or TEMPLATES[template]).format(query=query)
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": question}],
        },
    ]
