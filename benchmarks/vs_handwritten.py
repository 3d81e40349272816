"""The project against the hand-written way, as whole processes, on real data.

Scenes are mirror-tiled from the Sen1Floods11 Sentinel-2 scene in
``../shared/realdata`` (bands B4, B3, B2, B8 as int16, tiled DEFLATE GeoTIFFs):
one 2048x2048 scene, and a set of 4096x4096 scenes of at least 60 megapixels
in all. A width-0.25 FCN-8s is first fine-tuned briefly on the real labels of
that scene (``fcnrs.training``, in-process), so label agreement is measured on a
trained network; a random one is reported too.

Each configuration runs ``benchmarks/handwritten_segment.py`` (one process,
sequential windowed reads, fp32, torch's default threads, one GeoTIFF at the end)
and ``jobs/segment_scenes.py`` (its defaults: precision auto, the local engine)
alternately, ``--repeats`` times each, start-up included, under
``/usr/bin/time`` for peak RSS; it prints output Mpx/s, peak RSS, the median
ratio, and label agreement with the script's fp32 labels. "model alone" is the
Predictor's model step (forward pass, crop, argmax) on the same windows, read
and prepared for it beforehand, every core, the same precision: the pipeline's
efficiency is its end-to-end rate over that.

    python benchmarks/vs_handwritten.py [--repeats 3] [--set-size 4096 --set-count 4]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import zarr

from fcnrs.fcn_model import read_meta
from fcnrs.pipeline.batch_reading import SceneReader
from fcnrs.pipeline.distributed.local import available_cpus
from fcnrs.pipeline.inference import Predictor, resolve_precision
from fcnrs.pipeline.planning import plan_batches
from fcnrs.pipeline.scenes import SegmentSettings, plan_scene
from fcnrs.synthetic.checkpoints import random_checkpoint
from fcnrs.training.data import LabeledScene
from fcnrs.training.runners import train_in_process
from fcnrs.training.settings import TrainSettings
from fcnrs.training.statistics import band_statistics

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "realdata"
S2 = REAL / "sen1floods11_spain_7370579_s2.tif"
LABELS = REAL / "sen1floods11_spain_7370579_label.tif"
BANDS = (4, 3, 2, 8)
SCRIPT = ROOT / "benchmarks" / "handwritten_segment.py"
JOB = ROOT / "jobs" / "segment_scenes.py"


def mirror_scene(path: Path, size: int, *, shift: int = 0) -> Path:
    """The real scene's bands mirror-tiled (flipped copies side by side) to size x size."""
    with rasterio.open(S2) as src:
        data = src.read(list(BANDS))
        profile = src.profile
    reps = -(-size // data.shape[1]) + 1
    rows = [data if i % 2 == 0 else data[:, ::-1] for i in range(reps)]
    column = np.concatenate(rows, axis=1)
    tiles = [column if j % 2 == 0 else column[:, :, ::-1] for j in range(reps)]
    big = np.concatenate(tiles, axis=2)[:, shift : shift + size, shift : shift + size]
    profile.update(
        count=len(BANDS),
        height=size,
        width=size,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ascontiguousarray(big))
    return path


def trained_checkpoint(work: Path, seconds: float) -> Path:
    """A width-0.25 FCN-8s fine-tuned on the real scene's flood labels (its four
    bands as the mirrored scenes hold them)."""
    image = str(mirror_scene(work / "train.tif", 512))  # the original scene, 4 bands
    scenes = (LabeledScene(image, str(LABELS), "train"), LabeledScene(image, str(LABELS), "val"))
    mean, std = band_statistics(scenes, (1, 2, 3, 4))
    settings = TrainSettings(
        scenes=scenes,
        classes=("land", "water"),
        colors=((120, 120, 120), (30, 90, 200)),
        bands=(1, 2, 3, 4),
        out=str(work / "train"),
        width=0.25,
        window=128,
        batch_size=8,
        epochs=10**6,
        steps_per_epoch=200,
        time_limit_minutes=seconds / 60,
        ignore_value=-1,
        mean=mean,
        std=std,
        trained_by="benchmarks/vs_handwritten.py",
    )
    train_in_process(settings)
    return work / "train" / "best"


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a whole process."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as rss:
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], capture_output=True, text=True
        )
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:3]} failed:\n{proc.stderr[-3000:]}")
        return seconds, int(rss.read().split()[-1]) / 1024


def run_script(
    scenes: list[Path], model: Path, out: Path, core: int, halo: int
) -> tuple[float, float]:
    """The hand-written script over the scenes, one process per scene (as a user loops)."""
    out.mkdir(parents=True, exist_ok=True)
    total, peak = 0.0, 0.0
    for scene in scenes:
        cmd = [sys.executable, str(SCRIPT), str(scene), str(model), str(out / f"{scene.stem}.tif")]
        s, m = timed([*cmd, "--core", str(core), "--halo", str(halo)])
        total, peak = total + s, max(peak, m)
    return total, peak


def run_job(scenes: list[Path], model: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    cmd = [sys.executable, str(JOB), "--model", str(model), "--scenes", *map(str, scenes)]
    return timed([*cmd, "--out", str(out), *extra])


def agreement(scenes: list[Path], script_out: Path, job_out: Path) -> float:
    same = total = 0
    for scene in scenes:
        with rasterio.open(script_out / f"{scene.stem}.tif") as src:
            ref = src.read(1)
        got = zarr.open_group(str(job_out / f"{scene.stem}.zarr"), mode="r")["labels"][:]
        valid = ref != 255
        same += int((got[valid] == ref[valid]).sum())
        total += int(valid.sum())
    return same / total


def model_alone(scene: Path, model: Path, settings: SegmentSettings) -> float:
    """Output Mpx/s of the Predictor alone over the scene's pre-read batches."""
    meta = read_meta(model)
    plan = plan_scene(scene, meta=meta, out_dir="/nonexistent", settings=settings)
    import torch

    torch.set_num_threads(available_cpus())
    predictor = Predictor(model, device="cpu", precision=settings.precision)
    size = settings.batch_size or predictor.batch_size(plan.grid.max_read_shape)
    with SceneReader(scene, plan.bands) as reader:
        batches = [predictor.prepare(reader.read_batch(b)) for b in plan_batches(plan.grid, size)]
    predictor.infer(batches[0])
    t0 = time.perf_counter()
    for batch in batches:
        predictor.infer(batch)
    return plan.info.height * plan.info.width / (time.perf_counter() - t0) / 1e6


def compare(name, scenes, model, work, repeats, core, halo, job_args) -> dict:
    mpx = sum(rasterio.open(s).width * rasterio.open(s).height for s in scenes) / 1e6
    rates: dict[str, list[float]] = {"script": [], "job": []}
    peaks: dict[str, list[float]] = {"script": [], "job": []}
    for k in range(repeats):  # alternate, so drifts in machine speed hit both
        for who in ("script", "job"):
            out = work / f"{name}-{who}-{k}"
            if who == "script":
                s, m = run_script(scenes, model, out, core, halo)
            else:
                s, m = run_job(scenes, model, out, job_args)
            rates[who].append(mpx / s)
            peaks[who].append(m)
            print(f"  {name} {who} run {k}: {mpx / s:.3f} Mpx/s, peak RSS {m:.0f} MiB", flush=True)
    agree = agreement(scenes, work / f"{name}-script-0", work / f"{name}-job-0")
    med = {w: statistics.median(v) for w, v in rates.items()}
    return dict(
        name=name,
        mpx=mpx,
        script=med["script"],
        job=med["job"],
        ratio=med["job"] / med["script"],
        script_rss=max(peaks["script"]),
        job_rss=max(peaks["job"]),
        agree=agree,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set-size", type=int, default=4096)
    p.add_argument("--set-count", type=int, default=4)
    p.add_argument("--train-seconds", type=float, default=60)
    p.add_argument("--core", type=int, default=384, help="the script's core (the same windows)")
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--work", default=None)
    p.add_argument(
        "--configs",
        nargs="+",
        choices=["small", "same", "defaults", "random"],
        default=["small", "same", "defaults", "random"],
    )
    args = p.parse_args(argv)
    if not S2.exists():
        sys.exit(f"{S2} not found: this benchmark mirror-tiles ../shared/realdata")
    work = Path(args.work or tempfile.mkdtemp(prefix="vs_handwritten_"))
    work.mkdir(parents=True, exist_ok=True)
    small = [mirror_scene(work / "s2048.tif", 2048)]
    big = [
        mirror_scene(work / f"set{i}.tif", args.set_size, shift=37 * i)
        for i in range(args.set_count)
    ]
    print(f"scenes in {work}; training a checkpoint for {args.train_seconds:.0f} s", flush=True)
    trained = trained_checkpoint(work, args.train_seconds)
    random = random_checkpoint(
        work / "random.safetensors", width=0.25, bands=tuple(range(1, len(BANDS) + 1))
    )
    same = ["--tile-size", str(args.core), "--overlap", str(args.halo)]
    configs = {
        "small": ("2048² same windows", small, trained, same),
        "same": (f"{len(big)}x{args.set_size}² same windows", big, trained, same),
        "defaults": (f"{len(big)}x{args.set_size}² job defaults", big, trained, []),
        "random": ("2048² random model", small, random, same),
    }
    by_key = {}
    for key in args.configs:
        name, scenes, model, job_args = configs[key]
        repeats = 1 if key == "random" else args.repeats
        by_key[key] = compare(name, scenes, model, work, repeats, args.core, args.halo, job_args)
    rows = list(by_key.values())
    precision = resolve_precision("auto", "cpu")
    alone = "same" in args.configs and model_alone(
        big[0],
        trained,
        SegmentSettings(tile_size=args.core, overlap=args.halo, precision=precision),
    )
    print(
        f"\n{'configuration':<26} {'Mpx':>6} {'script Mpx/s':>12} {'job Mpx/s':>10} {'ratio':>6} "
        f"{'script RSS':>10} {'job RSS':>8} {'agree':>8}"
    )
    for r in rows:
        print(
            f"{r['name']:<26} {r['mpx']:>6.1f} {r['script']:>12.3f} {r['job']:>10.3f} {r['ratio']:>5.2f}x "
            f"{r['script_rss']:>8.0f}Mi {r['job_rss']:>6.0f}Mi {r['agree']:>8.4%}"
        )
    if "same" not in by_key:
        return 0
    job_rate = by_key["same"]["job"]
    print(
        f"\nmodel alone ({precision}, {available_cpus()} threads, the same windows, one {args.set_size}² scene): "
        f"{alone:.3f} Mpx/s; pipeline efficiency {job_rate / alone:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
