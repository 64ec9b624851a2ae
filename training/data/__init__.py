"""Datasets for referring segmentation: one ``Sample`` type, one loader per format, skip counting."""

from lens_model.result import Box
from training.data.dataset import TargetDataset
from training.data.registry import DATASET_NAMES, load_dataset
from training.data.sample import Sample
from training.data.skips import BrokenEntry, SkipCounter

__all__ = ["DATASET_NAMES", "Box", "BrokenEntry", "Sample", "SkipCounter", "TargetDataset", "load_dataset"]
