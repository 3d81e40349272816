"""The hand-written way: what a user writes instead of running the project.

One process, sequential windowed reads, the same stride-aligned core-plus-halo
windows as the pipeline, an fp32 forward pass with torch's default threads, a
whole-scene label array in memory, one GeoTIFF written at the end. The baseline
of ``benchmarks/vs_handwritten.py``; it uses only the checkpoint loader.

    python benchmarks/handwritten_segment.py SCENE.tif MODEL.safetensors OUT.tif \\
        [--core 384] [--halo 64]
"""

import argparse

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from fcnrs.fcn_model import load_checkpoint

p = argparse.ArgumentParser()
p.add_argument("scene")
p.add_argument("model")
p.add_argument("out")
p.add_argument("--core", type=int, default=384)
p.add_argument("--halo", type=int, default=64)
args = p.parse_args()

net, meta = load_checkpoint(args.model)
net.eval()
mean = np.array(meta.mean, np.float32)[:, None, None]
std = np.array(meta.std, np.float32)[:, None, None]
with rasterio.open(args.scene) as src:
    labels = np.full((src.height, src.width), 255, np.uint8)
    for r in range(0, src.height, args.core):
        for c in range(0, src.width, args.core):
            r0, c0 = max(r - args.halo, 0), max(c - args.halo, 0)
            r1 = min(r + args.core + args.halo, src.height)
            c1 = min(c + args.core + args.halo, src.width)
            win = Window(c0, r0, c1 - c0, r1 - r0)
            x = (src.read(list(meta.bands), window=win).astype(np.float32) - mean) / std
            valid = src.dataset_mask(window=win) > 0
            x[:, ~valid] = 0
            with torch.inference_mode():
                pred = net(torch.from_numpy(x)[None])[0].argmax(0).numpy().astype(np.uint8)
            pred[~valid] = 255
            h, w = min(args.core, src.height - r), min(args.core, src.width - c)
            labels[r : r + h, c : c + w] = pred[r - r0 : r - r0 + h, c - c0 : c - c0 + w]
    profile = dict(driver="GTiff", height=src.height, width=src.width, count=1, dtype="uint8")
    profile |= dict(
        crs=src.crs, transform=src.transform, nodata=255, tiled=True, compress="deflate"
    )
with rasterio.open(args.out, "w", **profile) as dst:
    dst.write(labels, 1)
