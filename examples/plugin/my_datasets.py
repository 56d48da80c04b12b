"""An example dataset class of your own (docs/configuration.md): one .npz file per split."""

import numpy as np

from medtrain.data.base import ImageDataset


class NpzSplits(ImageDataset):
    """<path>/train.npz, val.npz and test.npz, each with `images` (N x H x W) and `labels`."""

    # The attributes with one entry per image: `medtrain cv` regroups them into folds.
    sample_fields = (*ImageDataset.sample_fields, "images")

    def __init__(self, split, path, **kwargs):
        super().__init__(split, **kwargs)  # channels, classes, size, normalization, window, ...
        data = np.load(f"{path}/{split}.npz")
        self.images = data["images"]
        self.ids = [f"{split}_{i:05d}" for i in range(len(self.images))]
        self.set_labels(data["labels"], source=f"{path}/{split}.npz")

    def read_image(self, index):
        return self.images[index]
