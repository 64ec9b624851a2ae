"""A ``GenerationConfig`` as the keyword arguments of Hugging Face ``generate``."""
from __future__ import annotations

from typing import Any

from lens_model.config import GenerationConfig
from lens_model.errors import InputError


def generate_kwargs(gen: GenerationConfig, prompt_length: int, placeholder_ids: list[int],
                    **overrides: Any) -> dict[str, Any]:
    """Decoding settings for prompts ``prompt_length`` tokens wide (padding included, as Hugging Face
    counts them). ``overrides`` that are not None replace the config's values; an explicit
    ``max_new_tokens`` replaces both length caps."""
    settings: dict[str, Any] = dict(
        max_new_tokens=gen.max_new_tokens, do_sample=gen.do_sample, temperature=gen.temperature, top_p=gen.top_p,
        top_k=gen.top_k, repetition_penalty=gen.repetition_penalty,
        no_repeat_ngram_size=gen.no_repeat_ngram_size or None,
    )
    explicit = {k: v for k, v in overrides.items() if v is not None}
    settings.update(explicit)
    if gen.max_length is not None and "max_new_tokens" not in explicit:
        # Hugging Face's max_length: prompt + answer; stopping after max_length - prompt_length new
        # tokens is the same thing, and lets the smaller of the two caps win.
        room = gen.max_length - prompt_length
        if room < 1:
            raise InputError(
                f"the prompt is {prompt_length} tokens, but this model caps prompt + answer at {gen.max_length} "
                "(generation.max_length); use a smaller image (max_pixels) or pass max_new_tokens")
        settings["max_new_tokens"] = min(settings["max_new_tokens"], room)
    if not settings["do_sample"]:
        settings.update(temperature=None, top_p=None, top_k=None)
    if gen.suppress_placeholders:
        settings["suppress_tokens"] = placeholder_ids
    return settings
