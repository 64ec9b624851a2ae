"""The ``lens-synth-demo`` model: a small LENS trained from scratch on synthetic scenes (docs/demo_model.md)."""
