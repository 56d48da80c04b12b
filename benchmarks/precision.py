"""Training-step time of medtrain's U-Net in float32 and under `trainer.precision=bf16`.

On CPUs with bfloat16 instructions (AVX512-BF16 or AMX) autocast to bf16 can make convolutions much
faster; elsewhere it can be slower. Measure before choosing it for a recipe:

    python benchmarks/precision.py [--widths 16 32] [--steps 6] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import machine

from medtrain.engine.loop import autocast
from medtrain.models.unet import UNet


def step_seconds(width: int, precision: str, device: torch.device, steps: int, batch: int) -> float:
    """Mean seconds of one forward + backward + AdamW step after two warm-up steps."""
    torch.manual_seed(0)
    model = UNet(in_channels=3, num_classes=2, depth=4, base_width=width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, 128, 128, device=device)
    masks = torch.randint(0, 2, (batch, 128, 128), device=device)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        with autocast(device, precision):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sum(times[2:]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"machine: {machine()}; U-Net depth 4, batch {args.batch} of 3x128x128, device {device}")
    print("| base width | float32 s/step | bf16 s/step | speed-up |")
    print("|---|---|---|---|")
    for width in args.widths:
        full = step_seconds(width, "32", device, args.steps, args.batch)
        half = step_seconds(width, "bf16", device, args.steps, args.batch)
        print(f"| {width} | {full:.3f} | {half:.3f} | {full / half:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
