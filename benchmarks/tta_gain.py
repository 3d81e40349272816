"""What test-time augmentation gains and costs: ``--tta none|flips|d4`` on held-out scenes.

Fine-tunes a network per dataset at ``jobs/finetune.py``'s defaults (FCN-4s,
width 0.25) for ``--steps`` in process (the README's defaults table used the
same 600-step runs), or takes ``--models DIR/<dataset>.safetensors`` when there.
Then segments the held-out scene with the nightly path (``segment_scene``, the
default tiles, halo and precision) once per mode, the modes alternated
``--repeats`` times, and prints per-class IoU, mean IoU and pixel accuracy
against the scene's labels, each mode's agreement with ``none``, and the wall
time per scene as a ratio to ``none`` measured in the same run.

    python benchmarks/tta_gain.py [--datasets sen1floods thin] [--steps 600] [--repeats 3]

Datasets as in ``benchmarks/finetune_vs_loop.py``: Sen1Floods11 (train rows
0-255, score rows 256-511, -1 ignored) and the thin-structures pair (train seed
1, score seed 2 stored as uint16).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_vs_loop import DATASETS, Split

from fcnrs.pipeline.inference import Predictor
from fcnrs.pipeline.reading import open_raster
from fcnrs.pipeline.scenes import SegmentSettings
from fcnrs.pipeline.segment import segment_scene
from fcnrs.synthetic.thin import THIN_COLORS
from fcnrs.training.data import LabeledScene
from fcnrs.training.metrics import confusion_matrix, scores
from fcnrs.training.runners import train_in_process
from fcnrs.training.settings import TrainSettings
from fcnrs.training.trainer import with_statistics

MODES = ("none", "flips", "d4")


def train(split: Split, steps: int, work: Path) -> Path:
    """``split``'s training scene only, at the fine-tuning defaults, for ``steps``."""
    bands = (1, 2, 3) if split.name == "thin" else tuple(range(1, 14))
    colors = THIN_COLORS if split.name == "thin" else ((120, 160, 90), (30, 90, 200))
    settings = TrainSettings(
        scenes=(LabeledScene(str(split.train[0]), str(split.train[1]), "train"),),
        classes=split.classes,
        colors=colors,
        bands=bands,
        out=str(work / "run"),
        epochs=-(-steps // 100),
        steps_per_epoch=100,
        ignore_value=split.ignore_value,
        trained_by="benchmarks/tta_gain.py",
    )
    train_in_process(with_statistics(settings))
    return work / "run" / "best"


def labels_with(
    model: Path, predictor: Predictor, image: Path, out: Path
) -> tuple[np.ndarray, float]:
    """Labels and the scene's seconds (read, predict, write; the model already loaded)."""
    settings = SegmentSettings(tta=predictor.tta)
    result = segment_scene(image, model=model, out_dir=out, settings=settings, predictor=predictor)
    labels = zarr.open_group(str(out / f"{image.stem}.zarr"), mode="r")["labels"][:]
    shutil.rmtree(out)
    return labels, result.seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["sen1floods", "thin"], choices=list(DATASETS))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", default=None, help="folder of <dataset>.safetensors to reuse")
    args = p.parse_args(argv)
    print(
        "| dataset | tta | IoU per class | mean IoU | pixel accuracy | agrees with none | time vs none |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for name in args.datasets:
        with tempfile.TemporaryDirectory(prefix=f"tta_{name}_") as tmp:
            work = Path(tmp)
            split = DATASETS[name](work)
            kept = Path(args.models) / f"{name}.safetensors" if args.models else None
            if kept is not None and kept.is_file():
                model = kept
            else:
                model = train(split, args.steps, work)
                if kept is not None:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(model, kept)
            image, label = split.test
            with open_raster(label) as src:
                truth = src.read(1).astype(np.int64)
                truth[src.read_masks(1) == 0] = -1
            if split.ignore_value is not None:
                truth[truth == split.ignore_value] = -1
            predictors = {m: Predictor(model, tta=m) for m in MODES}  # type: ignore[arg-type]
            seconds: dict[str, list[float]] = {m: [] for m in MODES}
            labels: dict[str, np.ndarray] = {}
            for r in range(args.repeats):  # alternated: load on a shared machine hits all alike
                for mode in MODES:
                    out = work / f"{mode}{r}"
                    labels[mode], s = labels_with(model, predictors[mode], image, out)
                    seconds[mode].append(s)
            base = statistics.median(seconds["none"])
            for mode in MODES:
                s = scores(confusion_matrix(truth, labels[mode], len(split.classes)))
                valid = labels["none"] != 255
                agree = float((labels[mode][valid] == labels["none"][valid]).mean())
                per_class = ", ".join(
                    f"{c} {v:.3f}"
                    for c, v in zip(split.classes, s.iou, strict=True)
                    if v is not None
                )
                ratio = statistics.median(seconds[mode]) / base
                print(
                    f"| {name} | {mode} | {per_class} | {s.mean_iou:.4f} | {s.pixel_accuracy:.4f} "
                    f"| {agree:.3%} | {ratio:.2f}x ({statistics.median(seconds[mode]):.2f} s) |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
