"""A bare PyTorch training script doing the work of a medtrain recipe, for benchmarks/overhead.py:
the same images, the same model class, the same albumentations transforms and normalization, the
same optimizer, schedule, batch size and epochs, validation AUC every epoch, the best weights kept
and tested. No config, no checks, no files: what a user would write by hand.

Usage: python benchmarks/bare_loop.py {default|pneumoniamnist|dsb2018} --epochs N [--data PATH]
Prints one JSON line: the seconds of each epoch (train + validation), the best validation metric
and the test metric (AUC; for dsb2018 the mean per-image Dice). From medtrain it takes only the
model classes, the schedule function and (dsb2018) the seeded split of the image names, so that
both sides train the same network on the same images.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset

from medtrain.engine.schedulers import cosine_with_warmup
from medtrain.models.cnn import SimpleCNN

ROOT = Path(__file__).resolve().parents[1]


class Images(Dataset):
    """(image tensor, label) from arrays: scaled to [0, 1], augmented, normalized."""

    def __init__(self, images, labels, augment, zscore: bool, mean=0.0, std=1.0):
        self.images, self.labels, self.augment = images, labels, augment
        self.zscore, self.mean, self.std = zscore, mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        image = (image.astype(np.float32) / 255.0) if image.dtype == np.uint8 else image
        image = image.astype(np.float32)[..., None] if image.ndim == 2 else image
        if self.augment is not None:
            image = self.augment(image=image)["image"]
        if self.zscore:
            image = (image - image.mean()) / max(float(image.std()), 1e-6)
        else:
            image = (image - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), int(
            self.labels[index]
        )


def default_workload():
    from medtrain.data.synthetic import SyntheticLesions

    splits = {}
    for split in ("train", "val", "test"):
        data = SyntheticLesions(split=split, seed=42)
        splits[split] = (data.images, np.asarray(data.labels).reshape(-1))
    augment = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-10, 10), border_mode=1, p=0.5)])
    model = SimpleCNN(1, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return splits, augment, dict(zscore=False, mean=0.4, std=0.15), model, optimizer, None, False


def xray_pipeline() -> A.Compose:
    """conf/augmentation/xray.yaml, written by hand."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                rotate=(-10, 10),
                scale=(0.9, 1.2),
                translate_percent=(-0.06, 0.06),
                border_mode=1,
                p=0.8,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.3, p=0.8),
            A.RandomGamma(gamma_limit=(70, 140), p=0.5),
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.1, 0.8), p=0.2),
        ]
    )


def pneumoniamnist_workload(path: Path):
    arrays = np.load(path)
    splits = {
        s: (arrays[f"{s}_images"], arrays[f"{s}_labels"].reshape(-1))
        for s in ("train", "val", "test")
    }
    augment = xray_pipeline()
    model = SimpleCNN(1, 2, widths=(32, 64, 128, 256), hidden=128, dropout=0.3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    # The recipe's trainer.ema_horizon: 0.225 of the run's steps (decay 0.998 over 30 epochs).
    return splits, augment, dict(zscore=True), model, optimizer, 0.225, True


@torch.no_grad()
def auc(model, loader, flip: bool) -> float:
    model.eval()
    scores, targets = [], []
    for images, labels in loader:
        logits = model(images)
        if flip:  # the recipe's flip test-time augmentation: the mean of the image and its mirror
            logits = (logits + model(images.flip(-1))) / 2
        scores.append(logits.softmax(1)[:, 1])
        targets.append(labels)
    return float(roc_auc_score(torch.cat(targets).numpy(), torch.cat(scores).numpy()))


class Patches(Dataset):
    """Random 128-px patches of whole images (`per_image` per image and epoch, a share centred on
    a nucleus), augmented with the mask, normalized per image before cropping (as the recipe)."""

    def __init__(self, images, masks, augment, size=128, per_image=4, foreground=0.5):
        self.images, self.masks, self.augment = images, masks, augment
        self.size, self.per_image, self.foreground = size, per_image, foreground

    def __len__(self) -> int:
        return len(self.images) * self.per_image

    def __getitem__(self, index: int):
        image, mask = self.images[index % len(self.images)], self.masks[index % len(self.images)]
        out = self.augment(image=image, mask=mask)
        image, mask = zscore_inverted(out["image"]), out["mask"]
        pad_h, pad_w = max(self.size - mask.shape[0], 0), max(self.size - mask.shape[1], 0)
        if pad_h or pad_w:
            pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
            image, mask = (
                np.pad(image, (*pads, (0, 0)), mode="reflect"),
                np.pad(mask, pads, "reflect"),
            )
        rng = np.random.default_rng()
        top = int(rng.integers(0, mask.shape[0] - self.size + 1))
        left = int(rng.integers(0, mask.shape[1] - self.size + 1))
        if rng.random() < self.foreground:
            rows, cols = np.nonzero(mask)
            if rows.size:
                k = int(rng.integers(rows.size))
                top = int(np.clip(rows[k] - self.size // 2, 0, mask.shape[0] - self.size))
                left = int(np.clip(cols[k] - self.size // 2, 0, mask.shape[1] - self.size))
        image = image[top : top + self.size, left : left + self.size]
        mask = mask[top : top + self.size, left : left + self.size]
        return (
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            torch.from_numpy(mask.astype(np.int64)),
        )


def zscore_inverted(image: np.ndarray) -> np.ndarray:
    """Bright-field images (median above mid-grey) inverted, then z-scored per image."""
    image = 1.0 - image if float(np.median(image)) > 0.5 else image
    return (image - image.mean()) / max(float(image.std()), 1e-6)


class Dsb2018Run:
    """The DSB2018 nuclei recipe (conf/experiment/dsb2018_nuclei.yaml) written by hand."""

    def __init__(self, path: Path, epochs: int):
        from monai.inferers import sliding_window_inference
        from monai.losses import DiceCELoss
        from PIL import Image
        from skimage.morphology import remove_small_objects

        from medtrain.data.seg_folder import seeded_split
        from medtrain.models.unet import UNet

        self.infer, self.remove_small = sliding_window_inference, remove_small_objects
        names = sorted(p.stem for p in (path / "images").glob("*.png"))
        split = seeded_split(names, 10, 10, seed=42)

        def load(name):
            image = np.asarray(Image.open(path / "images" / f"{name}.png").convert("RGB"))
            mask = np.asarray(Image.open(path / "masks" / f"{name}.png").convert("L")) > 127
            return image.astype(np.float32) / 255.0, mask.astype(np.uint8)

        self.data = {s: [load(n) for n in names] for s, names in split.items()}
        augment = A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
                A.RandomRotate90(p=0.5),
                A.Affine(rotate=(-30, 30), scale=(0.8, 1.2), border_mode=4, p=0.5),
                A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            ]
        )
        train_images, train_masks = zip(*self.data["train"], strict=True)
        self.train = DataLoader(
            Patches(train_images, train_masks, augment), batch_size=8, shuffle=True
        )
        self.model = UNet(3, 2, depth=4, base_width=16, deep_supervision=True)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-3, weight_decay=1e-4)
        self.scheduler = cosine_with_warmup(
            self.optimizer, epochs, len(self.train), warmup_epochs=1, min_lr_ratio=0.01
        )
        self.loss_fn = DiceCELoss(
            to_onehot_y=True,
            softmax=True,
            include_background=False,
            batch=True,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
        )
        self.best, self.best_state = -1.0, None

    @torch.no_grad()
    def mean_dice(self, cases) -> float:
        self.model.eval()
        scores = []
        for image, mask in cases:
            x = torch.from_numpy(np.ascontiguousarray(zscore_inverted(image).transpose(2, 0, 1)))
            logits = self.infer(x[None], 128, 8, self.model, overlap=0.5, mode="gaussian")
            pred = self.remove_small(logits.argmax(1)[0].numpy() == 1, max_size=20)
            true = mask.astype(bool)
            total = pred.sum() + true.sum()
            scores.append(2.0 * (pred & true).sum() / total if total else 1.0)
        return float(np.mean(scores))

    def epoch(self) -> float:
        """One epoch (train + validation); returns its seconds."""
        start = time.perf_counter()
        self.model.train()
        for images, masks in self.train:
            outputs = self.model(images)
            weights = [0.5**k for k in range(len(outputs))]
            target = masks[:, None]
            loss = sum(w * self.loss_fn(o, target) for w, o in zip(weights, outputs, strict=True))
            loss = loss / sum(weights)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
        value = self.mean_dice(self.data["val"])
        if value > self.best:
            self.best, self.best_state = value, copy.deepcopy(self.model.state_dict())
        return round(time.perf_counter() - start, 3)

    def result(self) -> dict:
        self.model.load_state_dict(self.best_state)
        return {"val_metric": self.best, "test_metric": self.mean_dice(self.data["test"])}


class ClassificationRun:
    """The default experiment or the PneumoniaMNIST recipe written by hand."""

    def __init__(self, workload: str, epochs: int, data: Path | None = None):
        if workload == "default":
            splits, augment, norm, model, optimizer, ema_horizon, flip = default_workload()
        else:
            splits, augment, norm, model, optimizer, ema_horizon, flip = pneumoniamnist_workload(
                data or ROOT.parent / "shared/data/medmnist/pneumoniamnist.npz"
            )
        self.model, self.optimizer, self.flip = model, optimizer, flip
        self.train = DataLoader(
            Images(*splits["train"], augment, **norm), batch_size=64, shuffle=True
        )
        self.val = DataLoader(Images(*splits["val"], None, **norm), batch_size=256)
        self.test = DataLoader(Images(*splits["test"], None, **norm), batch_size=256)
        self.scheduler = cosine_with_warmup(
            optimizer, epochs, len(self.train), warmup_epochs=1, min_lr_ratio=0.01
        )
        self.ema = None
        if ema_horizon:
            decay = 1.0 - 1.0 / (ema_horizon * epochs * len(self.train))
            self.ema = AveragedModel(
                model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
            )
        self.evaluated = model if self.ema is None else self.ema.module
        self.loss_fn = nn.CrossEntropyLoss()
        self.best, self.best_state = -1.0, None

    def epoch(self) -> float:
        """One epoch (train + validation); returns its seconds."""
        start = time.perf_counter()
        self.model.train()
        total = 0.0
        for images, labels in self.train:
            loss = self.loss_fn(self.model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            total += loss.item()
        value = auc(self.evaluated, self.val, self.flip)
        if value > self.best:
            self.best, self.best_state = value, copy.deepcopy(self.evaluated.state_dict())
        return round(time.perf_counter() - start, 3)

    def result(self) -> dict:
        self.evaluated.load_state_dict(self.best_state)
        return {"val_metric": self.best, "test_metric": auc(self.evaluated, self.test, self.flip)}


def bare_run(workload: str, epochs: int, data: Path | None = None):
    """The bare loop of `workload`: `.epoch()` trains and validates one epoch and returns its
    seconds, `.result()` tests the best weights."""
    if workload == "dsb2018":
        return Dsb2018Run(data or ROOT.parent / "shared/data/dsb2018_nuclei", epochs)
    return ClassificationRun(workload, epochs, data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["default", "pneumoniamnist", "dsb2018"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--data", type=Path, default=None, help="default: ../shared/data/...")
    args = parser.parse_args()
    torch.manual_seed(42)
    run = bare_run(args.workload, args.epochs, args.data)
    epoch_s = [run.epoch() for _ in range(args.epochs)]
    print(json.dumps({"epoch_s": epoch_s, **run.result()}))


if __name__ == "__main__":
    main()
