"""Which of the authors' released checkpoints a folder holds, and the settings it loads with.

The four checkpoints were trained and evaluated with different inputs (hustvl/LENS: ``dataset.py``,
``eval/*.py``, ``demo.py``):

| repo id | reasoner image | SAM 2 input | prompt | length cap |
|---|---|---|---|---|
| ``OuyBin/LENS`` (RefCOCO) | smart resize | PIL bilinear | ``pr1_grounding`` | 256 new tokens |
| ``OuyBin/LENS_ReasonSeg`` (RefCOCO, 1500 steps) | smart resize | PIL bilinear | ``pr1_grounding`` | 256 new tokens |
| ``OuyBin/LENS_ReasonSeg_FT`` | 640 px longest side, then smart resize | ``cv2.resize`` | ``pr1_grounding`` | 768 prompt + answer |
| ``OuyBin/LENS_ReasonSeg_CoT`` | 640 px longest side, then smart resize | ``cv2.resize`` | ``samr1_v4`` | 768 prompt + answer |

The RefCOCO checkpoints' 256 new tokens are the authors' demo; their evaluation caps prompt + answer
at 768, which gives the same answers on RefCOCO's images (prompts under 600 tokens, answers of a few
dozen) and would refuse larger images. All four keep query text verbatim and leave pad tokens out
of the query pass, as the authors' code does.

Their config.json, generation_config.json and processor files are the same for all four, so the
files cannot tell them apart; the hub repo id decides, found in this order:

1. ``profile=`` given to ``load_model`` (one of the ids above);
2. the hub cache path: ``load_model("OuyBin/LENS_ReasonSeg_CoT")`` downloads to
   ``.../models--OuyBin--LENS_ReasonSeg_CoT/snapshots/<revision>`` (hub ids cannot contain "--", so
   the folder name is unambiguous);
3. config.json's ``_name_or_path`` when it is one of the ids (a copy re-saved by transformers);
4. the folder's own name, as ``huggingface-cli download OuyBin/LENS_ReasonSeg_CoT --local-dir
   LENS_ReasonSeg_CoT`` leaves it.

A folder none of these identify loads with ``OuyBin/LENS``'s settings and a logged warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lens_model.config import Preprocessing
from lens_model.errors import CheckpointFormatError
from lens_model.prompts import SAMR1_V4_INSTRUCTION

log = logging.getLogger(__name__)
OWNER = "OuyBin"
DEFAULT_PROFILE = "OuyBin/LENS"
HUB_CACHE_PREFIX = "models--"
AUTHORS_LENGTH_CAP = 768  # prompt + answer tokens, the authors' evaluation scripts and ReasonSeg training


@dataclass(frozen=True)
class ReleasedProfile:
    reasoner_longest_side: int
    sam_resize: str
    template: str
    instruction: str
    max_new_tokens: int
    max_length: int | None

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(reasoner_longest_side=self.reasoner_longest_side, sam_resize=self.sam_resize,
                             collapse_whitespace=False, mask_pad_in_query_pass=True)

    def settings(self, name: str) -> dict[str, Any]:
        """LensConfig fields; the generation fields are merged with generation_config.json's by the loader."""
        return {"preprocessing": self.preprocessing(), "template": self.template, "instruction": self.instruction,
                "profile": name}

    def length_cap(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "max_length": self.max_length}


REFCOCO = ReleasedProfile(0, "pil_bilinear", "direct", "", 256, None)
REASONSEG = ReleasedProfile(640, "cv2_linear", "direct", "", AUTHORS_LENGTH_CAP, AUTHORS_LENGTH_CAP)
PROFILES = {
    "OuyBin/LENS": REFCOCO,
    "OuyBin/LENS_ReasonSeg": REFCOCO,
    "OuyBin/LENS_ReasonSeg_FT": REASONSEG,
    "OuyBin/LENS_ReasonSeg_CoT": ReleasedProfile(640, "cv2_linear", "reasoning", SAMR1_V4_INSTRUCTION,
                                                 AUTHORS_LENGTH_CAP, AUTHORS_LENGTH_CAP),
}


def released_profile(name: str) -> ReleasedProfile:
    if name not in PROFILES:
        raise CheckpointFormatError(f"unknown profile {name!r}; the released checkpoints are {', '.join(PROFILES)}")
    return PROFILES[name]


def identify(directory: Path, raw_config: dict[str, Any]) -> str:
    """The repo id of the released checkpoint in ``directory`` (see the module docstring); the path as
    given and with symbolic links resolved both count."""
    paths = (Path(directory).absolute(), Path(directory).resolve())
    name_or_path = raw_config.get("_name_or_path")
    candidates = [*(_hub_repo_id(path) for path in paths), name_or_path if isinstance(name_or_path, str) else None,
                  *(f"{OWNER}/{path.name}" for path in paths)]
    found = next((candidate for candidate in candidates if candidate in PROFILES), None)
    if found is None:
        log.warning("cannot tell which released LENS checkpoint %s is (not a hub download of, nor a folder named "
                    "after, one of %s); loading it with %s's settings: pass profile=... to choose", directory,
                    ", ".join(PROFILES), DEFAULT_PROFILE)
    return found or DEFAULT_PROFILE


def _hub_repo_id(path: Path) -> str | None:
    """``owner/name`` of the hub cache folder ``models--owner--name`` that ``path`` lies in, if any."""
    for folder in (path, *path.parents):
        if folder.name.startswith(HUB_CACHE_PREFIX):
            return folder.name[len(HUB_CACHE_PREFIX):].replace("--", "/", 1)
    return None
