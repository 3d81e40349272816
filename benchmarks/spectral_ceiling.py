"""How far can one pixel's spectrum go? Per-pixel MLPs on the Sen1Floods11 halves.

Fits the issue's per-pixel MLP baseline (13 bands -> 64 -> 64 -> 2, Adam) on the
valid pixels of one half of Spain_7370579 and prints the water IoU on a half:

- top -> bottom is the issue's MLP baseline (0.66);
- bottom -> bottom sees the answers: no rule that looks at one pixel's bands at a
  time labels the bottom half better than that, however it is trained;
- top -> top and bottom -> top for comparison.

It also sweeps the decision threshold of the top -> bottom MLP (a label-prior
shift between the halves would show up there). With ``--model CKPT`` (for
example ``RUN/sen1floods_10_finetune.py/job/best`` of
``benchmarks/finetune_vs_loop.py --dataset sen1floods --minutes 10 --work RUN``) it
scores that checkpoint on the bottom half the same way (threshold sweep, flips
and 90-degree turns averaged) and says how much of its false water the MLP
also marks.

    python benchmarks/spectral_ceiling.py [--model RUN/best]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from torch import nn

from fcnrs.fcn_model import load_checkpoint
from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.reading import TileReader
from fcnrs.training.metrics import confusion_matrix, scores

ROOT = Path(__file__).resolve().parents[1]

REAL = ROOT.parent / "shared" / "realdata"
IMAGE = REAL / "sen1floods11_spain_7370579_s2.tif"
LABEL = REAL / "sen1floods11_spain_7370579_label.tif"
HALVES = {"top": Window(0, 0, 256, 512), "bottom": Window(256, 0, 256, 512)}
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def read_half(
    window: Window, mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bands (13, h, w), raw or normalised by ``mean``/``std``, and labels (h, w)."""
    raw = mean is None
    with TileReader(
        IMAGE,
        range(1, 14),
        mean=np.zeros(13) if raw else mean,
        std=np.ones(13) if raw else std,
    ) as r:
        image, _ = r.read(window)
    with rasterio.open(LABEL) as src:
        labels = src.read(
            1, window=rasterio.windows.Window(window.col, window.row, window.width, window.height)
        )
    return image, labels


def water_iou(water_prob: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """Water IoU by the job's own scorer (the label's -1 is left out)."""
    return scores(confusion_matrix(labels, water_prob > threshold, 2)).iou[1]


def fit_mlp(image: np.ndarray, labels: np.ndarray, *, epochs: int = 30, seed: int = 0):
    """Per-pixel MLP on the valid pixels; returns ``predict(image) -> water probability``."""
    torch.manual_seed(seed)
    mean = image.reshape(13, -1).mean(1)[:, None, None]
    std = image.reshape(13, -1).std(1)[:, None, None]

    def pixels(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((x - mean) / std).reshape(13, -1).T.astype(np.float32).copy())

    keep = labels.reshape(-1) >= 0
    x, y = pixels(image)[keep], torch.from_numpy(labels.reshape(-1)[keep].astype(np.int64))
    net = nn.Sequential(
        nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(1024):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def predict(target: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            prob = F.softmax(net(pixels(target)), 1)[:, 1]
        return prob.numpy().reshape(target.shape[1:])

    return predict


def checkpoint_water(path: str, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Water probability of a checkpoint on ``window``: plain, and averaged over the
    eight flips and 90-degree turns."""
    model, meta = load_checkpoint(path)
    water = meta.classes.index("water")
    image, _ = read_half(window, np.asarray(meta.mean), np.asarray(meta.std))
    x = torch.from_numpy(image)[None]
    probs = []
    with torch.no_grad():
        for turns in range(4):
            for flip in (False, True):
                xi = torch.rot90(x, turns, (2, 3))
                xi = xi.flip(3) if flip else xi
                p = F.softmax(model(xi), 1)
                p = p.flip(3) if flip else p
                probs.append(torch.rot90(p, -turns, (2, 3))[0, water].numpy())
    return probs[0], np.mean(probs, axis=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a checkpoint to score on the bottom half")
    args = p.parse_args(argv)
    data = {name: read_half(win) for name, win in HALVES.items()}
    labels = data["bottom"][1]
    mlps = {name: fit_mlp(*data[name]) for name in ("top", "bottom")}
    print("per-pixel MLP water IoU (train -> score)")
    for train, score in (
        ("top", "bottom"),
        ("bottom", "bottom"),
        ("top", "top"),
        ("bottom", "top"),
    ):
        iou = water_iou(mlps[train](data[score][0]), data[score][1])
        note = "  (sees the answers)" if train == score else ""
        print(f"  {train:>6} -> {score:<6} {iou:.4f}{note}", flush=True)
    mlp = mlps["top"](data["bottom"][0])
    sweep = "  ".join(f"{t:.1f}: {water_iou(mlp, labels, t):.4f}" for t in THRESHOLDS)
    print(f"top -> bottom MLP by threshold  {sweep}")
    if args.model:
        plain, tta = checkpoint_water(args.model, HALVES["bottom"])
        print(
            f"{args.model} on the bottom half: water IoU {water_iou(plain, labels):.4f}, "
            f"with flips/turns averaged {water_iou(tta, labels):.4f}"
        )
        sweep = "  ".join(f"{t:.1f}: {water_iou(plain, labels, t):.4f}" for t in THRESHOLDS)
        print(f"  by threshold  {sweep}")
        ok, truth = labels >= 0, labels == 1
        false_water = (plain > 0.5) & ~truth & ok
        shared = false_water & (mlp > 0.5)
        missed = (plain <= 0.5) & truth & ok
        print(
            f"  false water {int(false_water.sum())} px, {shared.sum() / false_water.sum():.0%} "
            f"of it also false water for the MLP; missed water {int(missed.sum())} px "
            f"(MLP {int(((mlp <= 0.5) & truth & ok).sum())})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
