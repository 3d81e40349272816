"""Fine-tuning against a plain training loop, at the same wall-clock budget.

For each dataset and budget, ``benchmarks/plain_loop.py`` and ``jobs/finetune.py``
(at its defaults, with ``--width 0.25 --num-workers 1 --time-limit MINUTES``)
each run as their own process, one after the other; both budgets count the
whole process, start-up included. Both get the training scene only. Each
checkpoint is then scored on the held-out scene through the same whole-scene
tiled path (:func:`fcnrs.training.validation.score_checkpoint`, what the
nightly job would label), and a table prints per-class IoU, mean IoU, steps and
windows per second.

Datasets:

- ``sen1floods``: Sen1Floods11 Spain_7370579 from ``../shared/realdata/``
  (13 bands, int16, hand labels with -1 ignored): train on rows 0-255, score rows
  256-511.
- ``thin``: :func:`fcnrs.synthetic.thin.make_thin_structures_scene`, 1024² at 1 m,
  four classes with 2-4 px roads and rare buildings; train on seed 1 (uint8),
  score seed 2 (uint16, another nodata value).

    python benchmarks/finetune_vs_loop.py --dataset sen1floods thin --minutes 5 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from fcnrs.synthetic.thin import THIN_CLASSES, make_thin_structures_scene
from fcnrs.training.validation import score_checkpoint

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "realdata"


@dataclass(frozen=True)
class Split:
    """A training scene and a held-out scene with its labels."""

    name: str
    train: tuple[Path, Path]
    test: tuple[Path, Path]
    classes: tuple[str, ...]
    ignore_value: int | None = None


def write_rows(src_path: Path, dst_path: Path, rows: tuple[int, int]) -> Path:
    """Rows ``rows[0]:rows[1]`` of a raster as a GeoTIFF of their own."""
    with rasterio.open(src_path) as src:
        win = Window(0, rows[0], src.width, rows[1] - rows[0])
        profile = src.profile | {
            "height": win.height,
            "transform": window_transform(win, src.transform),
        }
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(src.read(window=win))
    return dst_path


def sen1floods(work: Path) -> Split:
    image = REAL / "sen1floods11_spain_7370579_s2.tif"
    label = REAL / "sen1floods11_spain_7370579_label.tif"
    halves = {}
    for name, rows in (("top", (0, 256)), ("bottom", (256, 512))):
        halves[name] = (
            write_rows(image, work / f"{name}_s2.tif", rows),
            write_rows(label, work / f"{name}_label.tif", rows),
        )
    return Split("sen1floods", halves["top"], halves["bottom"], ("land", "water"), -1)


def thin(work: Path) -> Split:
    train = make_thin_structures_scene(work / "thin_1.tif", work / "thin_1_label.tif", seed=1)
    test = make_thin_structures_scene(
        work / "thin_2.tif", work / "thin_2_label.tif", seed=2, dtype="uint16"
    )
    return Split("thin", train, test, THIN_CLASSES)


DATASETS = {"sen1floods": sen1floods, "thin": thin}


def run_loop(split: Split, minutes: float, work: Path) -> tuple[Path, dict]:
    model = work / "loop.safetensors"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "plain_loop.py"),
        *("--image", str(split.train[0]), "--label", str(split.train[1])),
        *("--classes", ",".join(split.classes), "--minutes", str(minutes), "--out", str(model)),
        *(("--ignore-value", str(split.ignore_value)) if split.ignore_value is not None else ()),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return model, json.loads(out.strip().splitlines()[-1])


def run_job(split: Split, minutes: float, work: Path, extra: list[str]) -> tuple[Path, dict]:
    table = work / "train.csv"
    table.write_text(f"image,label,split\n{split.train[0]},{split.train[1]},train\n")
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "finetune.py"),
        *("--scenes", str(table), "--out", str(work / "job"), "--classes", ",".join(split.classes)),
        *("--width", "0.25", "--num-workers", "1", "--time-limit", str(minutes)),
        *(("--ignore-value", str(split.ignore_value)) if split.ignore_value is not None else ()),
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"jobs/finetune.py failed:\n{proc.stderr[-4000:]}")
    history = json.loads((work / "job" / "report.json").read_text())
    steps = sum(h["steps"] for h in history)
    seconds = sum(h.get("train_seconds", 0.0) for h in history)
    windows = sum(h.get("windows", 0) for h in history)
    return work / "job" / "best", {
        "steps": steps,
        "windows_per_s": windows / seconds if seconds else float("nan"),
    }


RUNNERS = {"loop": ("plain loop", run_loop), "job": ("jobs/finetune.py", run_job)}


def measure(
    split: Split, minutes: float, work: Path, extra: list[str], contenders: list[str]
) -> list[dict]:
    rows = []
    for name, runner in (RUNNERS[c] for c in contenders):
        folder = work / f"{split.name}_{minutes:g}_{name.split('/')[-1].replace(' ', '_')}"
        folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        args = (split, minutes, folder, extra) if runner is run_job else (split, minutes, folder)
        model, stats = runner(*args)  # type: ignore[operator]
        wall = time.time() - started
        image, label = map(str, split.test)
        val = score_checkpoint(
            str(model), image=image, label=label, ignore_value=split.ignore_value
        )
        rows.append(
            {
                "dataset": split.name,
                "minutes": minutes,
                "contender": name,
                "wall_s": wall,
                **stats,
                "mean_iou": val["mean_iou"],
                "iou": val["iou"],
            }
        )
        print_row(rows[-1])
    return rows


def print_row(r: dict) -> None:
    ious = " ".join(f"{c} {v:.3f}" if v is not None else f"{c} -" for c, v in r["iou"].items())
    print(
        f"| {r['dataset']} | {r['minutes']:g} | {r['contender']} | {r['wall_s']:.0f} s | "
        f"{r['steps']} | {r['windows_per_s']:.1f} | {ious} | **{r['mean_iou']:.3f}** |",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    p.add_argument("--minutes", nargs="+", type=float, default=[5.0, 10.0])
    p.add_argument("--contenders", nargs="+", choices=list(RUNNERS), default=list(RUNNERS))
    p.add_argument("--work", default=None, help="folder for scenes, checkpoints and results")
    p.add_argument("extra", nargs="*", help="more jobs/finetune.py arguments (after --)")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="finetune_vs_loop_"))
    work.mkdir(parents=True, exist_ok=True)
    print("| dataset | minutes | contender | wall | steps | windows/s | IoU per class | mean IoU |")
    print("| --- | ---: | --- | ---: | ---: | ---: | --- | ---: |", flush=True)
    results = []
    for name in args.dataset:
        split = DATASETS[name](work)
        for minutes in args.minutes:
            results += measure(split, minutes, work, args.extra, args.contenders)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
