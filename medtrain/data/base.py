"""The base of every image-level dataset (classification or regression): raw images, and optional
tabular columns, in; preprocessed dict samples out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medtrain.data.file_cache import DEFAULT_CACHE_MB, decoded_cache, read_through
from medtrain.data.tabular import FLOAT32_MAX
from medtrain.data.transforms import (
    RESIZE_MODES,
    Normalize,
    crop_or_pad,
    match_channels,
    parse_windows,
    resize,
    to_float01,
    window_ct,
)
from medtrain.data.volume_transforms import (
    channels_first,
    resize_volume,
    volume_size,
    with_channels,
)
from medtrain.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


def add_data_warning(dataset: Any, kind: str, message: str) -> None:
    """Record on `dataset` a warning about the data as a whole, by `kind` (said once however many
    splits or rebuilds record it): the data check reports `data_warnings` with its own
    (`data_report.json`, `medtrain check-data`), and training logs them (`built_warnings`)."""
    dataset.data_warnings = {**getattr(dataset, "data_warnings", {}), kind: message}


def check_fractions(val_fraction: Any, test_fraction: Any, unit: str = "rows") -> None:
    """The shares of a seeded split: each a number in [0, 1), together below 1 (else no
    training `unit` are left; scikit-learn's message said only "Got 1.0 instead")."""
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"dataset.{key}={value!r} must be a number in [0, 1)")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"dataset.val_fraction + dataset.test_fraction = {val_fraction + test_fraction:g} "
            f"leaves no training {unit}; their sum must be below 1"
        )


def checked_image_size(value: Any, dims: int | None) -> Any:
    """`dataset.image_size` as given (an int, or one int per axis), checked: a positive whole
    number, or a list of 2 (or, for volumes, 3) of them. A wrong one failed inside OpenCV's
    resize (`inv_scale_x > 0`) or in unpacking, after the data check had passed it."""

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if value is None or whole(value):
        return value
    lengths = (dims,) if dims else (2, 3)
    listed = isinstance(value, Sequence) and not isinstance(value, str)
    if listed and len(value) in lengths and all(whole(v) for v in value):
        return value
    axes = "one per axis of the volumes, as they are read" if dims == 3 else "[height, width]"
    raise ConfigError(f"dataset.image_size={value!r}: give a positive whole number or {axes}")


class ImageDataset(Dataset):
    """A split of images with labels; subclasses load them and implement `read_image`.

    Each sample is a dict: `image` (float32 C x H x W after scaling to [0, 1], augmentation and
    normalization; C x D x H x W for volumes, `spatial_dims = 3`), `label` (int64 class index, float32 vector of 0/1 for multi-label, or float64
    vector of target values for regression), `id`, and `tabular` (float32 vector) when the dataset
    has tabular columns.

    Args:
        split: `train`, `val` or `test`.
        transform: a `SeededAugment` (or any callable `(index, image=...) -> {"image": ...}`), or None.
        normalize: keyword arguments of `Normalize` (mode, mean, std).
        in_channels: channels the model expects; images are converted (grey <-> RGB). None: as stored.
        num_classes: number of classes; None: inferred from the labels.
        multilabel: whether labels are 0/1 vectors; None: inferred from the label shape.
        class_names: display names; None: the class indices as strings.
        image_size: resize every image to this size (int for square, or [height, width]); None: as stored.
        regression: labels are values to predict (passed by `build_datasets` for `task=regression`):
            `num_classes` is then the number of values per image and `class_names` their names.
        window: CT windowing of images in modality units (DICOM in Hounsfield units): a preset
            (`lung`, `mediastinum`, `abdomen`, `bone`, `brain`), [centre, width], or a list of them
            stacked as channels; None: images are scaled by their storage type.
        resize_mode: how `image_size` is reached: `resize` (interpolation) or `crop_or_pad`
            (centre crop or zero padding, keeping the pixel spacing).
        cache_mb: megabytes of decoded files each loader process keeps for the next epochs
            (datasets that read files; 0: decode every time).
        spatial_dims: 2 (images) or 3 (volumes); None: as the data are. The data decide: a
            value that differs from them is refused (`check_dims`).
    """

    # What the samples can hold for a task (`Task.targets`): a class per image, or numbers per
    # image with `regression=True` (datasets of class labels only say just "classes").
    provides: tuple[str, ...] = ("classes", "values")
    # Evaluation preprocessing for prediction: images of another size than the training images are
    # resized to the training input size (an image-level head sees one size); resize, then normalize.
    resize_to_input_size = True
    normalizes_before_resize = False
    reads_files = False  # subclasses that decode files: keep them decoded (`cache_mb`)
    # The attributes with one entry per case, aligned with `ids` (lists or arrays; None when
    # unused): cross-validation regroups them into folds (`medtrain.data.folds`). A subclass adds
    # its own, e.g. its file paths; None refuses folds.
    sample_fields: tuple[str, ...] | None = ("ids", "labels", "tabular", "groups")
    # 2: images (stored H x W [x C]); 3: volumes (D x H x W [x C]); a subclass whose files hold
    # volumes sets it, and `build_datasets` writes it into `dataset.spatial_dims` for the model.
    spatial_dims = 2
    reads_volumes = False  # whether the class can hold volumes (`spatial_dims=3`)

    def __init__(
        self,
        split: str,
        transform: Callable[..., Mapping[str, np.ndarray]] | None = None,
        normalize: Mapping[str, Any] | None = None,
        in_channels: int | None = None,
        num_classes: int | None = None,
        multilabel: bool | None = None,
        class_names: Sequence[str] | None = None,
        image_size: int | Sequence[int] | None = None,
        regression: bool = False,
        window: Any = None,
        resize_mode: str = "resize",
        cache_mb: float = DEFAULT_CACHE_MB,
        spatial_dims: int | None = None,
    ):
        if spatial_dims not in (None, 2, 3):
            raise ConfigError(
                f"dataset.spatial_dims={spatial_dims!r}: use 2 (images) or 3 (volumes)"
            )
        if spatial_dims == 3 and not self.reads_volumes:
            raise ConfigError(
                f"dataset.spatial_dims=3: {type(self).__name__} reads 2D images; volumes are read "
                "by dataset=medmnist (MedMNIST3D files), nifti_volumes, synthetic_segmentation3d "
                "or synthetic"
            )
        self.declared_dims = spatial_dims
        if spatial_dims is not None:
            self.spatial_dims = spatial_dims
        if num_classes is not None and num_classes < (1 if regression else 2):
            need = (
                "regression needs at least 1 value"
                if regression
                else "classification needs at least 2"
            )
            raise ConfigError(f"dataset.num_classes={num_classes}: {need}")
        if split not in SPLITS:
            raise ConfigError(f"split {split!r} is not one of {SPLITS}")
        if resize_mode not in RESIZE_MODES:
            raise ConfigError(f"dataset.resize_mode={resize_mode!r}: choose one of {RESIZE_MODES}")
        # Datasets that decode files keep them decoded for the next epochs (`reads_files`).
        self.decoded = decoded_cache(self.reads_files, cache_mb)
        self.split = split
        self.transform = transform
        self.normalize = Normalize(**(normalize or {}))
        self.windows = parse_windows(window)
        # Windowed data are read in modality units; one channel per window.
        self.reads_modality = self.windows is not None
        self.resize_mode = resize_mode
        if self.windows is not None and in_channels is None:
            in_channels = len(self.windows)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.class_names = list(class_names) if class_names is not None else None
        self.image_size = checked_image_size(image_size, spatial_dims)
        self.regression = bool(regression)
        self.ids: list[str] = []
        self.labels: np.ndarray = np.zeros(0, dtype=np.int64)
        # Subclasses with clinical columns fill these: one float32 row per image, and the names of
        # the columns (after one-hot encoding of categories).
        self.tabular: np.ndarray | None = None
        self.tabular_names: list[str] = []
        # How the clinical columns were encoded (`TabularEncoder.state`), saved with the run.
        self.tabular_state: list[dict] | None = None
        # The case's group (e.g. its patient) when the data say: cross-validation keeps a group in
        # one fold. None: every case is its own group.
        self.groups: list[str] | None = None

    def fresh_state(self) -> None:
        """Forget what was kept per case index (decoded files): called on a copy whose cases were
        regrouped (`medtrain.data.folds.regrouped`)."""
        self.decoded = self.decoded and self.decoded.emptied()

    def check_dims(self, found: int, source: str) -> None:
        """The data hold images (`found` 2) or volumes (3): a different `dataset.spatial_dims`
        is refused, naming `source`."""
        if self.declared_dims is not None and self.declared_dims != found:
            kind = "volumes (3D)" if found == 3 else "2D images"
            raise ConfigError(
                f"dataset.spatial_dims={self.declared_dims}, but {source} holds {kind}: set "
                f"dataset.spatial_dims={found} (or null: it follows the data)"
            )
        self.spatial_dims = found

    @property
    def num_features(self) -> int:
        """Width of the `tabular` vector (0 without tabular columns)."""
        return 0 if self.tabular is None else int(self.tabular.shape[1])

    # Subclasses implement this and fill self.ids / self.labels in their constructor.
    def read_image(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def set_labels(
        self, labels: np.ndarray, source: str, all_labels: np.ndarray | None = None
    ) -> None:
        """Store labels, inferring or checking `multilabel`, `num_classes` and `class_names`.

        Args:
            labels: this split's labels, (N,) or (N, 1) class indices or (N, K) 0/1 vectors.
            source: file or folder named in error messages.
            all_labels: labels of every split, so that inference sees every class.
        """
        if self.regression:
            self._set_targets(labels, source)
            return
        labels = np.asarray(labels)
        everything = np.asarray(all_labels) if all_labels is not None else labels
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels, everything = labels[:, 0], everything.reshape(len(everything), -1)[:, 0]
        is_multilabel = labels.ndim == 2
        if self.multilabel is None:
            self.multilabel = is_multilabel
        elif self.multilabel != is_multilabel:
            shape = "(N, K) 0/1 vectors" if is_multilabel else "one class index per image"
            raise DataError(
                f"{source}: labels are {shape}, but dataset.multilabel={self.multilabel}"
            )
        if labels.size and labels.min() < 0:
            raise DataError(f"{source}: negative label {labels.min()} in split {self.split!r}")
        if self.num_classes is None:  # at least 2, even if one split (or the file) lacks a class
            if is_multilabel:
                seen = everything.shape[1]
            else:
                seen = int(everything.max()) + 1 if everything.size else 0
            self.num_classes = max(seen, 2)
        elif not is_multilabel and labels.size and labels.max() >= self.num_classes:
            raise DataError(
                f"{source}: label {int(labels.max())} in split {self.split!r} is outside the "
                f"{self.num_classes} classes of dataset.num_classes={self.num_classes}"
            )
        elif is_multilabel and labels.shape[1] != self.num_classes:
            raise DataError(
                f"{source}: {labels.shape[1]} label columns, dataset.num_classes={self.num_classes}"
            )
        if self.class_names is None:
            self.class_names = [str(k) for k in range(self.num_classes)]
        elif len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"dataset.class_names has {len(self.class_names)} names for {self.num_classes} classes"
            )
        self.labels = labels.astype(np.float32 if is_multilabel else np.int64)

    def _set_targets(self, values: np.ndarray, source: str) -> None:
        """Store regression targets as float64 (N x K; the values as written, without float32
        rounding in predictions.csv), checking that they are finite numbers."""
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise DataError(f"{source}: regression targets must be numbers ({err})") from err
        if values.size:
            values = values.reshape(len(values), -1)
        else:  # an empty split (none for test: a CV's data): as many columns as it would have
            width = values.shape[1] if values.ndim == 2 else (self.num_classes or 1)
            values = values.reshape(0, width)
        bad = np.argwhere(~np.isfinite(values) | (np.abs(values) > FLOAT32_MAX))
        if len(bad):
            value = values[tuple(bad[0])]
            why = (
                "regression needs finite values"
                if not np.isfinite(value)
                else "beyond the float32 range (+-3.4e38) the network computes in: a typo? (the "
                "loss became NaN, or the metrics overflowed)"
            )
            raise DataError(
                f"{source}: target of {self.ids[bad[0][0]] if self.ids else f'row {bad[0][0]}'} "
                f"in split {self.split!r} is {value}; {why}"
            )
        if self.num_classes is None:
            self.num_classes = values.shape[1]
        elif values.shape[1] != self.num_classes:
            raise DataError(
                f"{source}: {values.shape[1]} target value(s) per image, "
                f"dataset.num_classes={self.num_classes}"
            )
        self.multilabel = False
        given = self.class_names
        if given is None or len(given) != self.num_classes:
            # Class names of the classification view (e.g. 5 grade names) do not name one value.
            self.class_names = (
                ["target"]
                if self.num_classes == 1
                else [f"target_{k}" for k in range(self.num_classes)]
            )
            if given is not None:
                add_data_warning(
                    self,
                    "regression_names",
                    f"dataset.class_names={list(given)} names {len(given)} value(s), but the "
                    f"regression has {self.num_classes} target value(s) per image: they are "
                    f"named {self.class_names} (give one name per target value, or null)",
                )
        self.labels = values

    def __len__(self) -> int:
        return len(self.ids)

    def preprocessing(self) -> dict[str, Any]:
        """The evaluation preprocessing as constructor arguments of this class (saved in each
        checkpoint, so that prediction, serving and export rebuild exactly this)."""
        size = self.image_size
        return {
            "in_channels": self.in_channels,
            "image_size": list(size) if isinstance(size, (list, tuple)) else size,
            "normalize": dict(self.normalize.params),
            "regression": self.regression,
            "window": None if self.windows is None else [list(w) for w in self.windows],
            "resize_mode": self.resize_mode,
            **({"spatial_dims": 3} if self.spatial_dims == 3 else {}),
        }

    def scaled(self, image: np.ndarray) -> np.ndarray:
        """A stored image as float H x W x C (D x H x W x C for volumes) before augmentation and
        normalization: windowed (or scaled to [0, 1] by its storage type), channels matched,
        resized or cropped/padded."""
        if self.spatial_dims == 3:
            if self.windows:
                raise ConfigError("dataset.window: CT windows apply to 2D images; set it to null")
            image = match_channels(to_float01(with_channels(image, 3)), self.in_channels)
            if self.image_size is not None:
                if self.resize_mode == "crop_or_pad":
                    raise ConfigError("dataset.resize_mode=crop_or_pad: volumes are resized only")
                image = resize_volume(image, volume_size(self.image_size, "dataset.image_size"))
            return image
        image = (
            window_ct(image, self.windows) if self.windows else to_float01(with_channels(image, 2))
        )
        image = match_channels(image, self.in_channels)
        if self.image_size is not None:
            fit = crop_or_pad if self.resize_mode == "crop_or_pad" else resize
            image = fit(image, self.image_size)
        return image

    def prepare(
        self, image: np.ndarray, index: int = 0, spacing: Sequence[float] | None = None
    ) -> torch.Tensor:
        """A stored image (H x W [x C], any bit depth) -> the model's input (float32 C x H x W):
        `scaled`, then this split's augmentation (seeded by `index`) and normalization (volumes:
        D x H x W [x C] -> C x D x H x W). Evaluation,
        `medtrain predict` and `medtrain serve` all go through here. `spacing` (the file's pixel
        size) is not used: image-level preprocessing does not resample."""
        return channels_first(self.prepared(image, index))

    def prepared(self, image: np.ndarray, index: int = 0) -> np.ndarray:
        """What `prepare` makes, before it becomes a tensor: H x W x C (D x H x W x C), normalized."""
        image = self.scaled(image)
        if self.transform is not None:
            image = with_channels(self.transform(index, image=image)["image"], self.spatial_dims)
        return self.normalize(image)

    def stored(self, index: int) -> np.ndarray:
        """`read_image(index)`, from the cache of decoded files when this dataset keeps one."""
        return read_through(self.decoded, index, lambda: self.read_image(index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = {
            "image": self.prepare(self.stored(index), index),
            "label": torch.as_tensor(self.labels[index]),
            "id": self.ids[index],
        }
        if self.tabular is not None:
            sample["tabular"] = torch.from_numpy(self.tabular[index])
        return sample

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any] | list[dict[str, Any]]:
        """The samples of `indices` as one batch, equal to `collate([self[i] for i in indices])`
        but with one tensor per key instead of one per sample (a DataLoader fetches its batches
        through here: on PneumoniaMNIST a label tensor per sample and its stacking cost about
        18 µs a sample, a tenth of the training loader's time). Subclasses that make their samples
        otherwise get the list of their samples."""
        if type(self).__getitem__ is not ImageDataset.__getitem__ or (
            type(self).prepare is not ImageDataset.prepare
        ):
            return [self[i] for i in indices]
        arrays = [self.prepared(self.stored(i), i) for i in indices]
        if len({a.shape for a in arrays}) > 1:  # images of several sizes stay a list
            images: Any = [channels_first(a) for a in arrays]
        else:
            # Allocated by torch, as `torch.stack` allocates: CPU kernels may round differently
            # for memory of another alignment (numpy's), and reruns must be bit-identical.
            *sides, channels = arrays[0].shape
            images = torch.empty((len(arrays), channels, *sides), dtype=torch.float32)
            for row, array in zip(images.numpy(), arrays, strict=True):
                row[...] = np.moveaxis(array, -1, 0)
        rows = np.asarray(indices, dtype=np.int64)
        batch = {
            "image": images,
            "label": torch.tensor(self.labels[rows]),
            "id": [self.ids[i] for i in indices],
        }
        if self.tabular is not None:
            batch["tabular"] = torch.tensor(self.tabular[rows])
        return batch

    def set_epoch(self, epoch: int) -> None:
        """Move the augmentation stream to `epoch` (called by the loader before each epoch)."""
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)


class VolumeImages(ImageDataset):
    """The evaluation preprocessing of an image-level run (classification, regression) whose network
    reads whole volumes (`dataset.spatial_dims=3`, e.g. `experiment=adrenalmnist3d`): what
    `medtrain predict`, `serve` and `export` rebuild. It reads no files: `prepare` takes a volume
    (D x H x W [x C]) as `ImageDataset`'s does."""

    reads_volumes = True
