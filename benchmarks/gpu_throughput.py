"""Training throughput on a CUDA GPU: ResNet-18 on PneumoniaMNIST (28 px), medtrain with each speed
option of docs/performance.md against a bare GPU-resident PyTorch loop on the same device.

Usage: python benchmarks/gpu_throughput.py [--epochs 4] [--out /tmp/medtrain-bench/gpu]
       [--only all|bare|options]
Without CUDA it says so and exits 0 (CI and CPU machines).

Both sides do the same work per epoch: the 4,708 training images in batches of 256 with flips
and the recipe's affine and intensity changes, AdamW, then the 524 validation images. The bare
loop holds the images on the GPU, augments them there with medtrain's batched operations
(medtrain.data.device_batches.BatchAugment, so the work is identical) and uses the fastest
settings (bf16 autocast, channels-last, torch.compile). Images/s = training images x epochs after
the first / their seconds (train + validation). medtrain's rows: the recipe with one option added
at a time, then all of them together.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import ROOT

DATA = ROOT.parent / "shared/data/medmnist/pneumoniamnist.npz"
BASE = [
    "experiment=pneumoniamnist",
    f"dataset.path={DATA}",
    "model=resnet18",
    "trainer.device=cuda",
    "trainer.batch_size=256",
    "trainer.ema_decay=null",
    "trainer.report=false",
    "trainer.check_data=false",
    "trainer.progress=false",
    "trainer.precision=32",
    "trainer.num_workers=auto",
    "task.tta=null",
]
OPTIONS = {
    "float32, loader workers (auto)": [],
    "+ bf16": ["trainer.precision=bf16"],
    "+ channels_last": ["trainer.channels_last=true"],
    "+ compile": ["trainer.compile=true"],
    "+ augment_on_device": ["trainer.augment_on_device=true"],
    "all (bf16, channels_last, compile, augment_on_device)": [
        "trainer.precision=bf16",
        "trainer.channels_last=true",
        "trainer.compile=true",
        "trainer.augment_on_device=true",
    ],
}


def medtrain_rate(name: str, overrides: list[str], epochs: int, out: Path) -> dict:
    run_dir = out / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    command = [sys.executable, "-m", "medtrain", *BASE, *overrides]
    command += [f"trainer.max_epochs={epochs}", f"hydra.run.dir={run_dir}"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    with open(run_dir / "history.csv", newline="") as f:
        seconds = [float(row["time_s"]) for row in csv.DictReader(f)][1:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"images_per_s": 4708 * len(seconds) / sum(seconds), "test_auc": metrics["test/auc"]}


def bare_rate(epochs: int) -> dict:
    """The hand-written GPU-resident loop (same data, network, batch, augmentation, optimizer)."""
    import numpy as np
    from bare_loop import xray_pipeline

    from medtrain.data.device_batches import BatchAugment
    from medtrain.models.torchvision_nets import torchvision_classifier

    device = torch.device("cuda")
    arrays = np.load(DATA)
    images = torch.from_numpy(arrays["train_images"][:, None].astype(np.float32) / 255).to(device)
    labels = torch.from_numpy(arrays["train_labels"].reshape(-1).astype(np.int64)).to(device)
    val = torch.from_numpy(arrays["val_images"][:, None].astype(np.float32) / 255).to(device)
    augment = BatchAugment(xray_pipeline())
    model = torchvision_classifier("resnet18", 1, 2, small_input=True).to(
        device, memory_format=torch.channels_last
    )
    step_model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()

    def zscore(x):
        flat = x.flatten(1)
        mean, std = flat.mean(1), flat.std(1, correction=0).clamp(min=1e-6)
        return ((x - mean[:, None, None, None]) / std[:, None, None, None]).contiguous(
            memory_format=torch.channels_last
        )

    seconds = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(images), device=device)
        for k in range(0, len(order) - len(order) % 256, 256):
            rows = order[k : k + 256]
            x = augment(images[rows], torch.rand(len(rows), augment.draws, device=device))
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(step_model(zscore(x)), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for k in range(0, len(val), 1024):
                model(zscore(val[k : k + 1024])).float().softmax(1)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    later = seconds[1:]
    return {"images_per_s": 4708 * len(later) / sum(later)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("/tmp/medtrain-bench/gpu"))
    parser.add_argument("--only", choices=["all", "bare", "options"], default="all")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return
    if not DATA.exists():
        print(f"{DATA} is absent: nothing measured")
        return
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    results = {}
    if args.only in ("all", "bare"):
        results["bare GPU-resident loop (bf16, channels_last, compile)"] = bare_rate(args.epochs)
    if args.only in ("all", "options"):
        for name, overrides in OPTIONS.items():
            results[name] = medtrain_rate(name, overrides, args.epochs, args.out)
            print(name, json.dumps(results[name]), flush=True)
    base = results.get("float32, loader workers (auto)", {}).get("images_per_s")
    bare = next((r["images_per_s"] for n, r in results.items() if n.startswith("bare")), None)
    for name, r in results.items():
        line = f"{name}: {r['images_per_s']:.0f} images/s"
        if base and not name.startswith("bare"):
            line += f", {r['images_per_s'] / base:.2f}x the float32 loader run"
        if bare and not name.startswith("bare"):
            line += f", {r['images_per_s'] / bare:.0%} of the bare loop"
        print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
