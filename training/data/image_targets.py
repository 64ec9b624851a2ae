"""A view of a target dataset whose items are images: all the single-object targets of one image together."""
from __future__ import annotations

from torch.utils.data import Dataset

from training.data.dataset import TargetDataset
from training.data.sample import Sample


class ImageTargets(Dataset):
    """Items are images: the list of samples of every single-object target in the image (None if all
    are broken). Targets of several objects or none are left out: their objects are the image's
    single targets already, or have no expression of their own, and a group has no one box."""

    def __init__(self, dataset: TargetDataset) -> None:
        groups: dict[str, list[int]] = {}
        for index, target in enumerate(dataset.targets):
            if target.referents == 1:
                groups.setdefault(target.image_id, []).append(index)
        self.dataset = dataset
        self.groups = list(groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> list[Sample] | None:
        samples = [s for s in (self.dataset[i] for i in self.groups[index]) if s is not None]
        return samples or None
