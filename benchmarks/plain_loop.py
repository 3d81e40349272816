"""The baseline an ML engineer writes by hand: a plain PyTorch training loop.

Width-0.25 FCN-8s from scratch with PyTorch's default initialisation, the whole
training scene held in memory, global per-band mean/std over its valid pixels,
Adam at 1e-3, random 256-px windows in batches of 4 with horizontal flips, fp32
on every core (torch's default threads). It trains until ``--minutes`` after
its own process started (imports included, as the job's budget does) and saves
a checkpoint that ``benchmarks/finetune_vs_loop.py`` scores through the same
whole-scene path as the job's.

    python benchmarks/plain_loop.py --image a.tif --label a_label.tif \\
        --classes land,water --minutes 5 --out loop.safetensors [--ignore-value -1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import psutil
import rasterio
import torch
import torch.nn.functional as F

from fcnrs.fcn_model import build_model, save_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--image", "--label", "--classes", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--ignore-value", type=int, default=None)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    deadline = psutil.Process().create_time() + 60 * args.minutes
    classes = args.classes.split(",")
    with rasterio.open(args.image) as src:
        image = src.read().astype(np.float32)
        valid = src.dataset_mask() > 0
    with rasterio.open(args.label) as src:
        label = src.read(1).astype(np.int64)
        labelled = src.read_masks(1) > 0
    mean = np.array([band[valid].mean() for band in image], np.float32)
    std = np.array([band[valid].std() + 1e-6 for band in image], np.float32)
    x = torch.from_numpy(np.where(valid, (image - mean[:, None, None]) / std[:, None, None], 0))
    ignore = ~valid | ~labelled | (label < 0) | (label >= len(classes))
    if args.ignore_value is not None:
        ignore |= label == args.ignore_value
    y = torch.from_numpy(np.where(ignore, -100, label))

    torch.manual_seed(args.seed)
    model = build_model("fcn8s", num_classes=len(classes), in_channels=len(image), width=args.width)
    for module in model.modules():  # PyTorch's default initialisation, as a hand-made net has
        if hasattr(module, "reset_parameters") and module.weight.requires_grad:
            module.reset_parameters()
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-3)
    rng = np.random.default_rng(args.seed)
    h, w = label.shape
    size, batch = min(256, h, w), 4
    steps, started = 0, time.time()
    while time.time() < deadline:
        xs, ys = [], []
        for _ in range(batch):
            r, c = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            xi, yi = x[:, r : r + size, c : c + size], y[r : r + size, c : c + size]
            if rng.random() < 0.5:
                xi, yi = xi.flip(-1), yi.flip(-1)
            xs.append(xi)
            ys.append(yi)
        loss = F.cross_entropy(model(torch.stack(xs)), torch.stack(ys), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    seconds = time.time() - started
    save_checkpoint(
        args.out,
        model,
        classes=classes,
        bands=list(range(1, len(image) + 1)),
        mean=mean.tolist(),
        std=std.tolist(),
        provenance={"trained_by": "benchmarks/plain_loop.py"},
    )
    print(json.dumps({"steps": steps, "windows_per_s": steps * batch / seconds}))


if __name__ == "__main__":
    main()
