"""Fine-tuning on labeled scenes with Ray Train: sampling, normalisation, the loop.

``train_loop_per_worker(config)`` is the module-level per-worker loop a
``TorchTrainer`` runs. Each worker reads its own random windows of the training
scenes with rasterio (never whole scenes; seeds differ per rank and per epoch),
the model is wrapped for DDP by ``prepare_model`` (gloo on CPU, NCCL on GPUs),
every rank calls ``ray.train.report`` each epoch and rank 0 attaches the
checkpoint. Rank 0 also validates on whole val scenes through the same tiled
path the nightly job uses, and exports the best model by mean IoU with
:func:`fcn_model.save_checkpoint` to ``<out>/best``.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.windows import Window as RioWindow

from fcn_model import build_model, load_checkpoint, load_vgg16_weights, save_checkpoint

from .labeled import LabeledScene
from .metrics import confusion_matrix, scores
from .planning import Window, plan_batches, plan_tiles
from .reading import TileReader
from .segment import core_box, read_batch

IGNORE = -100


@dataclass(frozen=True)
class TrainSettings:
    """Everything the per-worker loop needs, as plain values (shipped to workers)."""

    scenes: tuple[LabeledScene, ...]
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    bands: tuple[int, ...]
    out: str
    variant: str = "fcn8s"
    width: float = 0.25
    window: int = 128
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int = 100
    time_limit_minutes: float | None = None
    optimizer: str = "adam"
    lr: float | None = None
    ignore_value: int | None = None
    rare_class_oversampling: float = 0.0
    brightness: float = 0.0
    init_vgg16: str | None = None
    init: str | None = None
    seed: int = 0
    val_tile_size: int = 512
    val_overlap: int = 192
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


# -- sampling --------------------------------------------------------------------


def read_targets(
    scene: LabeledScene, window: Window, *, num_classes: int, ignore_value: int | None
) -> np.ndarray:
    """int64 targets of a label window, IGNORE where the label is nodata, the ignore
    value or outside the classes."""
    win = RioWindow(window.col, window.row, window.width, window.height)
    with rasterio.open(scene.label) as lab:
        target = lab.read(1, window=win).astype(np.int64)
        bad = lab.read_masks(1, window=win) == 0
    bad |= (target < 0) | (target >= num_classes)
    if ignore_value is not None:
        bad |= target == ignore_value
    target[bad] = IGNORE
    return target


def read_labeled_window(
    scene: LabeledScene,
    window: Window,
    *,
    bands: Sequence[int],
    num_classes: int,
    ignore_value: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw image window (float32, bands x h x w, NaN where invalid) and its targets
    (:func:`read_targets`, also IGNORE where the image is invalid)."""
    win = RioWindow(window.col, window.row, window.width, window.height)
    with rasterio.open(scene.image) as src:
        image = src.read(list(bands), window=win, out_dtype="float32")
        valid = (src.read_masks(list(bands), window=win) > 0).any(axis=0)
    target = read_targets(scene, window, num_classes=num_classes, ignore_value=ignore_value)
    target[~valid] = IGNORE
    image[:, ~valid] = np.nan
    return image, target


def band_statistics(
    scenes: Sequence[LabeledScene],
    bands: Sequence[int],
    *,
    samples: int = 64,
    size: int = 128,
    seed: int = 0,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and std over the valid pixels of random windows of the
    training scenes (a sample, so huge scenes cost the same as small ones)."""
    rng = np.random.default_rng(seed)
    sums = np.zeros(len(bands))
    sq = np.zeros(len(bands))
    count = 0
    train = [s for s in scenes if s.split == "train"]
    for k in range(samples):
        scene = train[k % len(train)]
        with rasterio.open(scene.image) as src:
            h, w = min(size, src.height), min(size, src.width)
            r = int(rng.integers(0, src.height - h + 1))
            c = int(rng.integers(0, src.width - w + 1))
            win = RioWindow(c, r, w, h)
            data = src.read(list(bands), window=win, out_dtype="float64")
            valid = (src.read_masks(list(bands), window=win) > 0) & np.isfinite(data)
        data = np.where(valid, data, 0.0)
        sums += data.sum(axis=(1, 2))
        sq += (data**2).sum(axis=(1, 2))
        count += int(valid.all(axis=0).sum())
    if count == 0:
        raise ValueError("No valid pixel found in the training scenes to compute band statistics.")
    mean = sums / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(max(v, 1e-6)) for v in std)


class WindowSampler:
    """Random training windows for one worker, with flips and 90-degree rotations,
    and with ``brightness = b > 0`` a random gain on the raw bands (see ``window``).

    With ``rare_class_oversampling = p > 0``, a window whose pixels hold none of
    the classes rarer than average is redrawn with probability ``p``, so rare
    classes are seen more often.
    """

    def __init__(self, settings: TrainSettings, *, rank: int, epoch: int) -> None:
        self.s = settings
        self.train = [sc for sc in settings.scenes if sc.split == "train"]
        self.rng = np.random.default_rng([settings.seed, rank, epoch])
        # Gains draw from their own stream: windows and flips do not depend on them.
        self.gain_rng = np.random.default_rng([settings.seed, rank, epoch, 1])
        self.shapes = []
        for sc in self.train:
            with rasterio.open(sc.image) as src:
                self.shapes.append((src.height, src.width))
        # Windows stack into batches: never larger than the smallest training scene.
        self.size = min([settings.window] + [min(shape) for shape in self.shapes])
        self.mean = np.asarray(settings.mean, np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(settings.std, np.float32).reshape(-1, 1, 1)
        self.counts = np.ones(len(settings.classes))

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        size = self.size
        for _attempt in range(20):
            k = int(self.rng.integers(len(self.train)))
            h, w = self.shapes[k]
            r = int(self.rng.integers(0, max(h - size, 0) + 1))
            c = int(self.rng.integers(0, max(w - size, 0) + 1))
            image, target = read_labeled_window(
                self.train[k],
                Window(r, c, size, size),
                bands=self.s.bands,
                num_classes=len(self.s.classes),
                ignore_value=self.s.ignore_value,
            )
            labels = target[target != IGNORE]
            if labels.size == 0:
                continue
            present = np.bincount(labels, minlength=len(self.s.classes))
            rare = self.counts < self.counts.mean()
            if self.s.rare_class_oversampling and rare.any() and not present[rare].any():
                if self.rng.random() < self.s.rare_class_oversampling:
                    continue
            self.counts += present
            break
        if self.s.brightness:
            # Illumination, haze and turbidity scale reflectance: one gain per window
            # in [1 - b, 1 + b], and a smaller one per band.
            b = self.s.brightness
            gain = 1 + b * self.gain_rng.uniform(-1, 1)
            gain = gain * (1 + b / 6 * self.gain_rng.standard_normal(image.shape[0]))
            image = image * gain.astype(np.float32)[:, None, None]
        image = np.nan_to_num((image - self.mean) / self.std, nan=0.0)
        flips = self.rng.integers(0, 2, 2)
        turns = int(self.rng.integers(0, 4))
        if flips[0]:
            image, target = image[:, ::-1], target[::-1]
        if flips[1]:
            image, target = image[:, :, ::-1], target[:, ::-1]
        image, target = np.rot90(image, turns, axes=(1, 2)), np.rot90(target, turns)
        return np.ascontiguousarray(image), np.ascontiguousarray(target)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.window() for _ in range(self.s.batch_size)]
        return (
            torch.from_numpy(np.stack([i for i, _ in items])),
            torch.from_numpy(np.stack([t for _, t in items])),
        )


# -- validation on whole scenes ------------------------------------------------------


def validate(model: torch.nn.Module, settings: TrainSettings, device: torch.device) -> dict:
    """Segment every val scene through the tiled path and score it against its labels."""
    n = len(settings.classes)
    cm = np.zeros((n, n), dtype=np.int64)
    model.eval()
    for scene in (s for s in settings.scenes if s.split == "val"):
        with rasterio.open(scene.image) as src:
            height, width = src.height, src.width
        grid = plan_tiles(
            height, width, tile_size=settings.val_tile_size, overlap=settings.val_overlap
        )
        with TileReader(scene.image, settings.bands, settings.mean, settings.std) as reader:
            for planned in plan_batches(grid, 4):
                _, tiles, batch = read_batch(reader, planned)
                if batch is None:
                    continue
                with torch.inference_mode():
                    out = model(torch.from_numpy(batch["image"]).to(device)).argmax(1).cpu().numpy()
                for k, tile in enumerate(tiles):
                    r, c, h, w = core_box(tile)
                    pred = out[k, r : r + h, c : c + w]
                    valid = batch["valid"][k, r : r + h, c : c + w]
                    # The image is already read: only the labels are needed here.
                    target = read_targets(
                        scene, tile.core, num_classes=n, ignore_value=settings.ignore_value
                    )
                    cm += confusion_matrix(target, np.where(valid, pred, -1), n)
    model.train()
    s = scores(cm)
    return {
        "mean_iou": s.mean_iou,
        "pixel_accuracy": s.pixel_accuracy,
        "iou": {c: v for c, v in zip(settings.classes, s.iou, strict=True)},
        "confusion": [list(r) for r in s.confusion],
    }


# -- the per-worker loop ---------------------------------------------------------------


def _initial_model(s: TrainSettings) -> torch.nn.Module:
    model = build_model(
        s.variant,
        num_classes=len(s.classes),
        in_channels=len(s.bands),
        width=s.width,  # type: ignore[arg-type]
        skip_scaling=s.optimizer == "sgd",
    )
    if s.init_vgg16:
        load_vgg16_weights(model, s.init_vgg16)
    if s.init:
        parent, meta = load_checkpoint(s.init)
        state = parent.state_dict()
        own = model.state_dict()
        same_classes = tuple(meta.classes) == tuple(s.classes)
        keep = {
            k: v
            for k, v in state.items()
            if k in own
            and own[k].shape == v.shape
            and (same_classes or not k.startswith(("score", "upscore")))
        }
        own.update(keep)
        model.load_state_dict(own)
    return model


def _optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "sgd":  # the paper: momentum 0.99, a fixed small learning rate
        return torch.optim.SGD(params, lr=s.lr or 1e-4, momentum=0.99, weight_decay=5e-4)
    return torch.optim.Adam(params, lr=s.lr or 1e-3)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop (see the module docstring)."""
    import ray.train
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    s: TrainSettings = config["settings"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = get_device()
    torch.manual_seed(s.seed)
    model = _initial_model(s)
    optimizer = _optimizer(model, s)
    start_epoch, best, history = 0, -math.inf, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], json.loads(state["history"])
    resumed_from = start_epoch - 1 if checkpoint else -1
    ddp = prepare_model(model)
    net = ddp.module if hasattr(ddp, "module") else ddp
    deadline = config["deadline"]
    for epoch in range(start_epoch, s.epochs):
        sampler = WindowSampler(s, rank=rank, epoch=epoch)
        ddp.train()
        losses = []
        stopped = False
        for _step in range(s.steps_per_epoch):
            if deadline and time.time() > deadline:
                stopped = True
                break
            x, y = sampler.batch()
            loss = F.cross_entropy(ddp(x.to(device)), y.to(device), ignore_index=IGNORE)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "steps": len(losses),
            "time_limit_reached": stopped,
            # The checkpoint's epoch on the first epoch after a restart, else -1.
            "resumed_from_epoch": resumed_from if epoch == start_epoch else -1,
        }
        if rank == 0:
            val = validate(net, s, device)
            metrics.update(
                val_mean_iou=val["mean_iou"],
                val_pixel_accuracy=val["pixel_accuracy"],
                **{
                    f"val_iou_{c}": (v if v is not None else float("nan"))
                    for c, v in val["iou"].items()
                },
            )
            history.append({**metrics, "confusion": val["confusion"]})
            if val["mean_iou"] > best:
                best = val["mean_iou"]
                export_best(net, s, epoch, val)
            with tempfile.TemporaryDirectory() as d:
                torch.save(
                    {
                        "model": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                        "best": best,
                        "history": json.dumps(history),
                    },
                    Path(d) / "state.pt",
                )
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        if stopped:
            break


def export_best(model: torch.nn.Module, s: TrainSettings, epoch: int, val: dict) -> None:
    """Write ``<out>/best`` (a checkpoint the nightly job takes as it is) and its report."""
    out = Path(s.out)
    save_checkpoint(
        out / "best",
        model,
        classes=s.classes,
        bands=s.bands,
        mean=s.mean,
        std=s.std,
        colors=s.colors,
        provenance={
            "trained_by": "jobs/finetune.py",
            "epoch": epoch,
            "val_mean_iou": val["mean_iou"],
            "init": s.init or s.init_vgg16 or "scratch",
            "scenes": [asdict(sc) for sc in s.scenes],
        },
    )
    (out / "best_report.json").write_text(json.dumps({"epoch": epoch, **val}, indent=2))


def job_deadline(minutes: float | None) -> float | None:
    return time.time() + minutes * 60 if minutes else None
