"""Fine-tune an FCN on labeled scenes with Ray Train.

    python jobs/finetune.py --scenes scenes.csv --out runs/water --classes land,water \\
        [--variant fcn8s] [--width 0.25] [--num-workers 2] [--use-gpu] \\
        [--init-vgg16 vgg16.pth | --init model.safetensors] [--epochs 10] \\
        [--steps-per-epoch 100] [--time-limit 10] [--ignore-value -1]

``--scenes`` is a CSV with columns image,label,split. The best model by mean IoU
on the val scenes is written to ``OUT/best`` (a checkpoint ``jobs/segment_scenes.py
--model OUT/best`` takes as it is), with ``OUT/best_report.json`` and every
epoch's metrics in ``OUT/report.json``. Re-running with the same ``--out``
continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from fcn_model import VARIANTS
from pipeline.labeled import parse_classes, read_scene_table
from pipeline.training import TrainSettings, band_statistics, job_deadline, train_loop_per_worker

log = logging.getLogger("finetune")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenes", required=True, help="CSV with columns image,label,split")
    p.add_argument(
        "--out", required=True, help="output folder (best checkpoint, reports, Ray state)"
    )
    p.add_argument("--classes", required=True, help="names (land,water) or a JSON/YAML file")
    p.add_argument("--bands", default=None, help="1-based bands, e.g. 4,3,2 (default: all)")
    p.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="fcn8s",
        help="fcn8s is the paper's; fcn4s/fcn2s add finer skips for classes a few pixels wide",
    )
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="torch threads follow it")
    p.add_argument("--init-vgg16", default=None, help="ImageNet VGG16 weights (torchvision layout)")
    p.add_argument("--init", default=None, help="start from this checkpoint")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8, help="windows per step per worker")
    p.add_argument("--window", type=int, default=128, help="training window edge in pixels")
    p.add_argument("--time-limit", type=float, default=None, help="minutes; stops cleanly")
    p.add_argument("--ignore-value", type=int, default=None, help="label value the loss ignores")
    p.add_argument(
        "--oversample-rare",
        type=float,
        default=0.0,
        help="0-1, redraw windows without rare classes",
    )
    p.add_argument(
        "--brightness",
        type=float,
        default=0.0,
        help="augment: scale each window's bands by a gain in [1-b, 1+b] (0 = off)",
    )
    p.add_argument("--max-failures", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scenes = tuple(read_scene_table(args.scenes))
    classes = parse_classes(args.classes)
    if args.bands:
        bands = tuple(int(b) for b in args.bands.split(","))
    else:
        import rasterio

        with rasterio.open(scenes[0].image) as src:
            bands = tuple(range(1, src.count + 1))
    settings = TrainSettings(
        scenes=scenes,
        classes=classes.names,
        colors=classes.colors,
        bands=bands,
        out=str(out),
        variant=args.variant,
        width=args.width,
        window=args.window,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        time_limit_minutes=args.time_limit,
        optimizer=args.optimizer,
        lr=args.lr,
        ignore_value=args.ignore_value,
        rare_class_oversampling=args.oversample_rare,
        brightness=args.brightness,
        init_vgg16=args.init_vgg16,
        init=args.init,
        seed=args.seed,
    )
    mean, std = band_statistics(scenes, bands, seed=args.seed)
    settings = replace(settings, mean=mean, std=std)
    log.info("band mean %s, std %s", [round(v, 1) for v in mean], [round(v, 1) for v in std])
    if not ray.is_initialized():
        ray.init()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"settings": settings, "deadline": job_deadline(args.time_limit)},
        scaling_config=ScalingConfig(
            num_workers=args.num_workers,
            use_gpu=args.use_gpu,
            resources_per_worker={
                "CPU": args.cpus_per_worker,
                **({"GPU": 1} if args.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name="finetune",
            storage_path=str(out / "ray_results"),
            failure_config=FailureConfig(max_failures=args.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    history = []
    if result.checkpoint:
        import torch

        with result.checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        history = json.loads(state["history"])
    (out / "report.json").write_text(json.dumps(history, indent=2))
    best = (
        json.loads((out / "best_report.json").read_text())
        if (out / "best_report.json").exists()
        else {}
    )
    print(
        f"epochs run: {len(history)}; best mean IoU {best.get('mean_iou', float('nan')):.4f} "
        f"at epoch {best.get('epoch')}; per class {best.get('iou')}"
    )
    print(f"best checkpoint: {out / 'best'}")
    return 0 if (out / "best").exists() else 1


if __name__ == "__main__":
    sys.exit(main())
