"""The halo fine-tuning records, whether it holds on other scenes, and what it costs.

For each dataset, fine-tunes a network at ``jobs/finetune.py``'s defaults
(FCN-4s, width 0.25) in process for ``--steps``, with a val scene, so the run
measures and records its halo (:mod:`fcnrs.training.context`). Then, on scenes
it did not measure on (the same kind of data, and the real Landsat scene for the
RGB models), prints the halo each would need and the agreement of 256-px tiles
at the recorded halo with a whole-scene pass; and the halo's overhead, pixels
computed per pixel written, at the default 1536-px cores.

    python benchmarks/trained_halo.py [--datasets sen1floods thin demo] [--steps 600] [--keep DIR]

- ``sen1floods``: Sen1Floods11 Spain_7370579, 13 bands: train on rows 0-255,
  val rows 256-511; other scene: the whole 512 x 512 scene with a rotated nodata
  collar (0, the file's nodata) cut into it.
- ``thin``: thin-structures scenes: train seed 1 (1024 px), val seed 3 (512 px);
  others: seed 2 stored as uint16 (1024 px) and the Landsat scene (real,
  300 m, a nodata collar: not what the model was trained for).
- ``demo``: the demo's sample scenes: train seed 1 (1000 x 1200), val seed 3
  (512 px); other: its test scene, seed 2 (900 x 1333, a nodata border).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_vs_loop import REAL, write_rows

from fcnrs.fcn_model import read_meta
from fcnrs.pipeline.context import measure_halo
from fcnrs.pipeline.planning import DEFAULT_TILE_SIZE, plan_tiles
from fcnrs.pipeline.reading import inspect_scene
from fcnrs.pipeline.scenes import SegmentSettings
from fcnrs.pipeline.segment import segment_scene
from fcnrs.synthetic.scenes import CLASSES, COLORS, make_sample_scene
from fcnrs.synthetic.thin import THIN_CLASSES, THIN_COLORS, make_thin_structures_scene
from fcnrs.training.context import record_best_halo
from fcnrs.training.data import LabeledScene
from fcnrs.training.runners import train_in_process
from fcnrs.training.settings import TrainSettings
from fcnrs.training.trainer import with_statistics

LANDSAT = REAL / "landsat7_rgb_utm18n.tif"


def with_collar(src_path: Path, dst_path: Path) -> Path:
    """A copy of a scene whose pixels outside a rotated square are nodata (0)."""
    with rasterio.open(src_path) as src:
        data, profile = src.read(), src.profile | {"nodata": 0}
    h, w = data.shape[1:]
    yy, xx = np.mgrid[:h, :w]
    u = (yy - h / 2) * np.cos(0.4) + (xx - w / 2) * np.sin(0.4)
    v = -(yy - h / 2) * np.sin(0.4) + (xx - w / 2) * np.cos(0.4)
    data[:, (np.abs(u) > 0.42 * h) | (np.abs(v) > 0.42 * w)] = 0
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
    return dst_path


def sen1floods(work: Path) -> tuple[TrainSettings, list[Path]]:
    image, label = (
        REAL / "sen1floods11_spain_7370579_s2.tif",
        REAL / "sen1floods11_spain_7370579_label.tif",
    )
    scenes = []
    for name, split, rows in (("top", "train", (0, 256)), ("bottom", "val", (256, 512))):
        scenes.append(
            LabeledScene(
                str(write_rows(image, work / f"{name}.tif", rows)),
                str(write_rows(label, work / f"{name}_label.tif", rows)),
                split,
            )
        )
    settings = TrainSettings(
        scenes=tuple(scenes),
        classes=("land", "water"),
        colors=((120, 160, 90), (30, 90, 200)),
        bands=tuple(range(1, 14)),
        out=str(work / "run"),
        ignore_value=-1,
    )
    return settings, [with_collar(image, work / "s2_collar.tif")]


def thin(work: Path) -> tuple[TrainSettings, list[Path]]:
    train = make_thin_structures_scene(work / "t1.tif", work / "t1_l.tif", seed=1)
    val = make_thin_structures_scene(work / "t3.tif", work / "t3_l.tif", seed=3, size=512)
    other, _ = make_thin_structures_scene(
        work / "t2.tif", work / "t2_l.tif", seed=2, dtype="uint16"
    )
    settings = TrainSettings(
        scenes=(LabeledScene(*map(str, train), "train"), LabeledScene(*map(str, val), "val")),
        classes=THIN_CLASSES,
        colors=THIN_COLORS,
        bands=(1, 2, 3),
        out=str(work / "run"),
    )
    return settings, [other, *([LANDSAT] if LANDSAT.is_file() else [])]


def demo(work: Path) -> tuple[TrainSettings, list[Path]]:
    train = make_sample_scene(work / "d1.tif", work / "d1_l.tif", seed=1, height=1000, width=1200)
    val = make_sample_scene(work / "d3.tif", work / "d3_l.tif", seed=3, height=512, width=512)
    other, _ = make_sample_scene(work / "d2.tif", None, seed=2, height=900, width=1333)
    settings = TrainSettings(
        scenes=(LabeledScene(*map(str, train), "train"), LabeledScene(*map(str, val), "val")),
        classes=CLASSES,
        colors=COLORS,
        bands=(1, 2, 3, 4),
        out=str(work / "run"),
    )
    return settings, [other]


DATASETS = {"sen1floods": sen1floods, "thin": thin, "demo": demo}


def agreement_at(scene: Path, model: Path, halo: int, work: Path, tile_size: int) -> float:
    """Share of valid pixels whose label in ``tile_size`` tiles at ``halo`` equals
    a whole-scene pass's (both at the run's default precision)."""
    info = inspect_scene(scene)
    edge = 32 * -(-max(info.height, info.width) // 32)
    labels = []
    for name, settings in (
        ("whole", SegmentSettings(tile_size=edge, overlap=0)),
        ("tiled", SegmentSettings(tile_size=tile_size, overlap=halo)),
    ):
        out = work / f"{scene.stem}_{name}"
        segment_scene(scene, model=model, out_dir=out, settings=settings)
        labels.append(zarr.open_group(str(out / f"{scene.stem}.zarr"), mode="r")["labels"][:])
        shutil.rmtree(out)
    whole, tiled = labels
    valid = whole != 255
    return float((tiled[valid] == whole[valid]).mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--steps", type=int, default=600, help="fine-tuning steps each")
    p.add_argument("--tile-size", type=int, default=256, help="cores of the agreement check")
    p.add_argument("--keep", default=None, help="copy each checkpoint to DIR/<dataset>.safetensors")
    p.add_argument(
        "--models",
        default=None,
        help="take DIR/<dataset>.safetensors instead of training, and measure its halo on "
        "the val scene as fine-tuning does at its end",
    )
    args = p.parse_args(argv)
    rows = []
    for name in args.datasets:
        with tempfile.TemporaryDirectory(prefix=f"trained_halo_{name}_") as tmp:
            work = Path(tmp)
            settings, others = DATASETS[name](work)
            # Steps, not seconds: the machine may be shared, and a model trained
            # for fewer steps than meant would look far (or not at all).
            epochs = -(-args.steps // 100)
            settings = with_statistics(replace(settings, epochs=epochs, steps_per_epoch=100))
            model = Path(settings.out) / "best"
            given = Path(args.models or "") / f"{name}.safetensors"
            if args.models and given.is_file():
                model.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(given, model)
                report = {"mean_iou": float("nan"), "epoch": "(given)"}
                record_best_halo(settings)  # what fine-tuning does at its end
            else:
                train_in_process(settings)
                report = json.loads((Path(settings.out) / "best_report.json").read_text())
            meta = read_meta(model)
            assert meta.halo is not None, f"{name}: no halo recorded"
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(model, Path(args.keep) / f"{name}.safetensors")
            print(
                f"{name}: val mean IoU {report['mean_iou']:.3f} at epoch {report['epoch']}; "
                f"recorded {meta.halo.describe()}",
                flush=True,
            )
            checks = []
            for scene in others:
                needed = measure_halo(model, [scene], tile_size=args.tile_size, margin=0).halo
                got = agreement_at(scene, model, meta.halo.halo, work, args.tile_size)
                checks.append((scene.name, needed, got))
                print(
                    f"  {scene.name}: needs {needed} px; at {meta.halo.halo} px {got:.4%} agree",
                    flush=True,
                )
            overhead = {
                size: plan_tiles(
                    size, size, tile_size=DEFAULT_TILE_SIZE, overlap=meta.halo.halo
                ).computed_per_written()
                for size in (4096, 16384)
            }
            rows.append((name, meta.halo, checks, overhead))
    print()
    print(
        "| dataset | val scene: needs, recorded (agreement, cores) | other scenes: needs, "
        "agreement at the recorded halo | computed per written px, 4096² | 16384² |"
    )
    print("| --- | --- | --- | ---: | ---: |")
    for name, halo, checks, overhead in rows:
        other = "; ".join(f"{s}: {n} px, {a:.3%}" for s, n, a in checks)
        print(
            f"| {name} | {halo.needed} px, **{halo.halo} px** ({halo.agreement:.3%}, "
            f"{halo.tile_size} px) | {other} | {overhead[4096]:.3f} | {overhead[16384]:.3f} |"
        )
    worst = max(o for *_, overhead in rows for o in overhead.values())
    print(f"\nlargest halo overhead at the defaults: {worst:.3f} pixels computed per pixel written")


if __name__ == "__main__":
    main()
