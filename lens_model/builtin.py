"""Models that ship inside the package (``lens_model/assets``) and load by name, offline.

Kept free of heavy imports so the CLI's argument parser and the ROS parameters can name the default.
"""
from __future__ import annotations

from pathlib import Path

BUILTIN_DIR = Path(__file__).parent / "assets"
TINY_RANDOM = "tiny-random"  # built from a config in memory: random weights, for tests and plumbing
DEMO_MODEL = "lens-synth-demo"  # trained by recipes/demo/pipeline.sh; the offline default
BUILTIN_NAMES = (TINY_RANDOM, DEMO_MODEL)
