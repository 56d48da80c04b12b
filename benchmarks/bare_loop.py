"""A bare PyTorch training script doing the work of a medtrain recipe, for benchmarks/overhead.py:
the same images, the same model class, the same albumentations transforms and normalization, the
same optimizer, schedule, batch size and epochs, validation AUC every epoch, the best weights kept
and tested. No config, no checks, no files: what a user would write by hand.

Usage: python benchmarks/bare_loop.py {default|pneumoniamnist} --epochs N [--data NPZ]
Prints one JSON line: the seconds of each epoch (train + validation), the best validation AUC and
the test AUC.
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


def pneumoniamnist_workload(path: Path):
    arrays = np.load(path)
    splits = {
        s: (arrays[f"{s}_images"], arrays[f"{s}_labels"].reshape(-1))
        for s in ("train", "val", "test")
    }
    augment = A.Compose(
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
    model = SimpleCNN(1, 2, widths=(32, 64, 128, 256), hidden=128, dropout=0.3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    return splits, augment, dict(zscore=True), model, optimizer, 0.998, True


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["default", "pneumoniamnist"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/data/medmnist/pneumoniamnist.npz"
    )
    args = parser.parse_args()
    torch.manual_seed(42)
    if args.workload == "default":
        splits, augment, norm, model, optimizer, ema_decay, flip = default_workload()
    else:
        splits, augment, norm, model, optimizer, ema_decay, flip = pneumoniamnist_workload(
            args.data
        )
    train = DataLoader(Images(*splits["train"], augment, **norm), batch_size=64, shuffle=True)
    val = DataLoader(Images(*splits["val"], None, **norm), batch_size=256)
    test = DataLoader(Images(*splits["test"], None, **norm), batch_size=256)
    scheduler = cosine_with_warmup(
        optimizer, args.epochs, len(train), warmup_epochs=1, min_lr_ratio=0.01
    )
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        if ema_decay
        else None
    )
    evaluated = model if ema is None else ema.module
    loss_fn = nn.CrossEntropyLoss()
    epochs, best, best_state = [], -1.0, None
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train()
        total = 0.0
        for images, labels in train:
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            total += loss.item()
        value = auc(evaluated, val, flip)
        if value > best:
            best, best_state = value, copy.deepcopy(evaluated.state_dict())
        epochs.append(round(time.perf_counter() - start, 3))
    evaluated.load_state_dict(best_state)
    print(json.dumps({"epoch_s": epochs, "val_auc": best, "test_auc": auc(evaluated, test, flip)}))


if __name__ == "__main__":
    main()
