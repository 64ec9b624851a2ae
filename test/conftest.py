"""Shared test settings: never reach the network, keep threads and randomness under control."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# One intra-op thread (set before torch is imported, inherited by every subprocess): the tiny models
# gain nothing from a second one, and on a shared machine two threads per process made the suite
# 8-26x slower, so the suite's time no longer depends on the neighbours.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(__file__), "..", ".torch_extensions"))
