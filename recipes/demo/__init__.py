"""The recipe of lens-synth-demo, the small LENS trained from nothing on synthetic scenes (README.md)."""
