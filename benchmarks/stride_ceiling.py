"""How fine must the output be? The best water IoU any stride-s score map can reach.

For each output stride s, fits a free score map on the (H/s x W/s) grid, upsampled
bilinearly to the pixels as FCN's last upsampler does, directly to the labels (an
oracle: it sees the answers), and prints the water IoU it reaches. A network
whose last bilinear step is x s cannot do better, whatever it learns. On
Sen1Floods11 Spain_7370579 the flood water is a lace of narrow channels and
single pixels, so FCN-8s (stride 8) is capped below the issue's 0.66 bar on the
bottom half; FCN-4s and FCN-2s lift the cap.

    python benchmarks/stride_ceiling.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F

from fcnrs.training.metrics import confusion_matrix, scores

LABEL = (
    Path(__file__).resolve().parents[1].parent
    / "shared/realdata/sen1floods11_spain_7370579_label.tif"
)


def ceiling(labels: np.ndarray, stride: int, steps: int = 400) -> float:
    water = torch.from_numpy((labels == 1).astype(np.float32))[None, None]
    valid = torch.from_numpy((labels >= 0).astype(np.float32))[None, None]
    h, w = labels.shape
    score = torch.zeros(1, 1, -(-h // stride), -(-w // stride), requires_grad=True)
    opt = torch.optim.Adam([score], lr=0.5)
    for _ in range(steps):
        up = F.interpolate(score, scale_factor=stride, mode="bilinear", align_corners=False)
        up = up[..., :h, :w]
        loss = (F.binary_cross_entropy_with_logits(4 * up, water, reduction="none") * valid).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Scored as the job scores (the label's -1 is left out).
    return scores(confusion_matrix(labels, (up > 0).numpy()[0, 0], 2)).iou[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", default=str(LABEL))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with rasterio.open(args.label) as src:
        labels = src.read(1)
    halves = {"top (rows 0-255)": labels[:256], "bottom (rows 256-511)": labels[256:]}
    print("stride  " + "  ".join(f"{k:>22}" for k in halves))
    for stride, name in (
        (1, ""),
        (2, "FCN-2s"),
        (4, "FCN-4s"),
        (8, "FCN-8s"),
        (16, "FCN-16s"),
        (32, "FCN-32s"),
    ):
        row = "  ".join(f"{ceiling(h, stride):22.4f}" for h in halves.values())
        print(f"{stride:>6}  {row}  {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
