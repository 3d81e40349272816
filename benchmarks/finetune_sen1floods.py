"""Learning on real data: Sen1Floods11 Spain_7370579, train on the top half, score the bottom.

Writes the top half (rows 0-255) and the bottom half (rows 256-511) of the
Sentinel-2 scene and its hand labels as separate GeoTIFFs, fine-tunes a
width-0.25 FCN from scratch with ``jobs/finetune.py`` within a CPU time limit
(the label's -1 is ignored), and prints the water IoU on the bottom half.
Default: FCN-2s with brightness augmentation 0.3 (``--variant fcn8s
--brightness 0`` for the paper's network without it).

    python benchmarks/finetune_sen1floods.py --time-limit 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "realdata"


def write_half(src_path: Path, dst_path: Path, rows: tuple[int, int]) -> None:
    with rasterio.open(src_path) as src:
        win = Window(0, rows[0], src.width, rows[1] - rows[0])
        profile = src.profile | {
            "height": win.height,
            "transform": window_transform(win, src.transform),
        }
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(src.read(window=win))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--time-limit", type=float, default=10.0, help="minutes of training")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--variant", default="fcn2s", help="fcn8s is capped near 0.69 here")
    p.add_argument("--brightness", type=float, default=0.3)
    p.add_argument("--out", default=None)
    p.add_argument("extra", nargs="*", help="more jobs/finetune.py arguments (after --)")
    args = p.parse_args(argv)
    work = Path(args.out or tempfile.mkdtemp(prefix="sen1floods_"))
    work.mkdir(parents=True, exist_ok=True)
    image = REAL / "sen1floods11_spain_7370579_s2.tif"
    label = REAL / "sen1floods11_spain_7370579_label.tif"
    for name, rows in (("top", (0, 256)), ("bottom", (256, 512))):
        write_half(image, work / f"{name}_s2.tif", rows)
        write_half(label, work / f"{name}_label.tif", rows)
    (work / "scenes.csv").write_text(
        "image,label,split\ntop_s2.tif,top_label.tif,train\nbottom_s2.tif,bottom_label.tif,val\n"
    )
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "finetune.py"),
        "--scenes",
        str(work / "scenes.csv"),
        "--out",
        str(work / "run"),
        "--classes",
        "land,water",
        "--ignore-value",
        "-1",
        "--width",
        str(args.width),
        "--variant",
        args.variant,
        "--brightness",
        str(args.brightness),
        "--time-limit",
        str(args.time_limit),
        "--epochs",
        "1000",
        "--steps-per-epoch",
        "50",
        "--cpus-per-worker",
        "2",
        *args.extra,
    ]
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-4000:])
        return proc.returncode
    best = json.loads((work / "run" / "best_report.json").read_text())
    history = json.loads((work / "run" / "report.json").read_text())
    print(f"epochs {len(history)}, steps {sum(h['steps'] for h in history)}")
    print(
        f"best epoch {best['epoch']}: water IoU {best['iou']['water']:.4f}, land IoU "
        f"{best['iou']['land']:.4f}, mean IoU {best['mean_iou']:.4f}, pixel accuracy "
        f"{best['pixel_accuracy']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
