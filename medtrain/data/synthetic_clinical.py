"""A built-in synthetic dataset of images with clinical columns, where each source holds information
the other lacks: the image shows a lesion whose area (in mm^2) is measurable, the tabular columns hold
a lab marker that cannot be seen. The label (high risk) depends on both; regression can target the
area. Generated from a seed, so it needs no files and is identical on every machine."""

from __future__ import annotations

from typing import Any

import numpy as np

from medtrain.data.base import SPLITS, ImageDataset
from medtrain.data.synthetic import check_counts, make_scans
from medtrain.data.tabular import fit_tabular
from medtrain.errors import ConfigError

TARGETS = ("auto", "label", "area_mm2", "risk")
RADIUS_RANGE = (0.08, 0.28)  # lesion radius as a fraction of the image side


def clinical_cases(num: int, rng: np.random.Generator, noise: float) -> dict[str, np.ndarray]:
    """The hidden variables of `num` cases: lesion size (uniform), marker, age, sex, and the risk
    score `z(size) + z(marker) + noise`, whose sign is the label."""
    size = rng.uniform(0.0, 1.0, num)
    marker = rng.normal(0.0, 1.0, num)
    risk = (size - 0.5) / np.sqrt(1 / 12) + marker + noise * rng.normal(0.0, 1.0, num)
    return {
        "size": size,
        "marker": marker,
        "age": rng.uniform(30.0, 85.0, num).round(),  # uninformative, as many clinical columns are
        "sex": rng.choice(np.array(["F", "M"]), num),
        "risk": risk,
    }


def draw_lesions(
    sizes: np.ndarray, image_size: int, rng: np.random.Generator, contrast: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scans with one bright disc each (radius from `sizes` in [0, 1]); returns the images and each
    disc's area in pixels (counted on the drawn mask, so it is exact)."""
    images = make_scans(len(sizes), image_size, rng)
    yy, xx = np.mgrid[:image_size, :image_size].astype(np.float32)
    areas = np.zeros(len(sizes))
    low, high = RADIUS_RANGE
    for k, (image, size) in enumerate(zip(images, sizes, strict=True)):
        radius = (low + (high - low) * size) * image_size
        margin = radius + 1
        cy, cx = rng.uniform(margin, image_size - 1 - margin, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image[disc] += contrast
        areas[k] = disc.sum()
    np.clip(images, 0.0, 1.0, out=images)
    return images, areas


class SyntheticClinical(ImageDataset):
    """Images with a lesion plus tabular columns (`age`, `sex`, `marker`).

    The label is 1 (`high_risk`) when z(lesion size) + z(marker) + noise > 0: the image alone or the
    columns alone each explain part of it, both together nearly all, so fusing an image model with a
    tabular model beats either (see `experiment=synthetic_fusion`).

    Args:
        split: `train`, `val` or `test`; each split is drawn from its own seeded stream.
        seed: generation seed (the run's `seed` by default).
        image_size: side length in pixels.
        spacing: pixel size in mm (the lesion area target is in mm^2).
        num_train, num_val, num_test: number of cases per split.
        contrast: brightness the lesion adds to the background.
        noise: weight of the risk score's unexplained part (lower: the label is more predictable).
        target: what `label` holds: `label` (0/1, classification), `area_mm2` (lesion area, seen in
            the image only), `risk` (the continuous score, needing both sources), or `auto`
            (`area_mm2` for `task=regression`, else `label`).
        path: unused (the data are built in); kept so that every dataset config has `path`.
        num_features: unused (the width of the encoded columns is computed).
        **kwargs: passed to `ImageDataset`.
    """

    sample_fields = (*ImageDataset.sample_fields, "images", "area_mm2", "tabular_cells")
    tabular_columns = ["age", "sex", "marker"]

    def __init__(
        self,
        split: str,
        seed: int = 0,
        image_size: int = 32,
        spacing: float = 0.5,
        num_train: int = 600,
        num_val: int = 200,
        num_test: int = 200,
        contrast: float = 0.3,
        noise: float = 0.3,
        target: str = "auto",
        path: str | None = None,
        num_features: int | None = None,
        **kwargs: Any,
    ):
        if path is not None:
            raise ConfigError(
                f"dataset.path={path!r}: dataset=synthetic_clinical generates its data and reads no "
                "files; use dataset=manifest to read images with clinical columns"
            )
        if target not in TARGETS:
            raise ConfigError(f"dataset.target={target!r}: choose one of {TARGETS}")
        if spacing <= 0:
            raise ConfigError(f"dataset.spacing={spacing} must be > 0 (mm per pixel)")
        check_counts(num_train=num_train, num_val=num_val, num_test=num_test)
        regression = kwargs.get("regression", False)
        target = ("area_mm2" if regression else "label") if target == "auto" else target
        if regression and target == "label":
            raise ConfigError(
                "dataset.target=label is a class for task=classification; task=regression predicts "
                "dataset.target=area_mm2 or risk"
            )
        defaults: dict[str, Any] = {"in_channels": 1}
        if target == "label":
            defaults |= {"num_classes": 2, "class_names": ["low_risk", "high_risk"]}
        elif regression:
            defaults["class_names"] = [target]
        else:
            raise ConfigError(
                f"dataset.target={target} is a value for task=regression; classification uses "
                "dataset.target=label"
            )
        for key, value in defaults.items():
            if kwargs.get(key) is None:
                kwargs[key] = value
        super().__init__(split, **kwargs)
        counts = {"train": num_train, "val": num_val, "test": num_test}
        # Every split instance draws every split's cases, so that the tabular columns are
        # standardised with the training split's statistics whichever split is being built.
        cases = {
            s: clinical_cases(counts[s], np.random.default_rng([seed, k, 0]), noise)
            for k, s in enumerate(SPLITS)
        }
        rng = np.random.default_rng([seed, SPLITS.index(split), 1])
        self.images, areas = draw_lesions(cases[split]["size"], image_size, rng, contrast)
        self.area_mm2 = areas * spacing**2
        everything = {k: np.concatenate([cases[s][k] for s in SPLITS]) for k in cases[split]}
        columns = {name: [str(v) for v in everything[name]] for name in self.tabular_columns}
        encoder = fit_tabular(columns, list(range(num_train)), "synthetic_clinical")
        self.tabular_names, self.tabular_state = encoder.names, encoder.state()
        matrix = encoder.transform(columns)
        start = sum(counts[s] for s in SPLITS[: SPLITS.index(split)])
        self.tabular = matrix[start : start + counts[split]]
        # Each case's values as a CSV would hold them (what `medtrain predict` is given).
        self.tabular_cells = [
            tuple(columns[name][i] for name in self.tabular_columns)
            for i in range(start, start + counts[split])
        ]
        self.ids = [f"{split}_{i:05d}" for i in range(counts[split])]
        own = cases[split]
        labels = {
            "label": (own["risk"] > 0).astype(np.int64),
            "area_mm2": self.area_mm2,
            "risk": own["risk"],
        }[target]
        self.set_labels(labels, source="synthetic_clinical dataset")

    def read_image(self, index: int) -> np.ndarray:
        return self.images[index]
