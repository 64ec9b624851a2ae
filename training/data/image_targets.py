"""A view of a target dataset whose items are images: all the targets of one image together."""
from __future__ import annotations

from torch.utils.data import Dataset

from training.data.dataset import TargetDataset
from training.data.sample import Sample


class ImageTargets(Dataset):
    """Items are images: the list of samples of every target in the image (None if all are broken)."""

    def __init__(self, dataset: TargetDataset) -> None:
        groups: dict[str, list[int]] = {}
        for index, target in enumerate(dataset.targets):
            groups.setdefault(target.image_id, []).append(index)
        self.dataset = dataset
        self.groups = list(groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> list[Sample] | None:
        samples = [s for s in (self.dataset[i] for i in self.groups[index]) if s is not None]
        return samples or None
