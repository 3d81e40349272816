"""The GPU path end to end, on a machine with a CUDA GPU: does the pipeline keep it busy?

1. **The model alone**: a width-1.0 FCN-8s (the paper's VGG16 trunk, random
   weights), the job's precision on this device (bf16 where it has it),
   channels-last, the default windows (1536-px cores with their 96-px halo),
   the batch size the job itself picks from the device's free memory
   (``Predictor.batch_size``), inputs already on the device: output Mpx/s of
   forward pass, crop and argmax. Measured with cuDNN's autotuner on and off
   (``cudnn.benchmark``) and with deterministic kernels, with whether labels
   differ between them.
2. **End to end**: ``jobs/segment_scenes.py`` on at least 1 Gpx of 3-band uint8
   aerial scenes on this machine's disk, each engine in turn, as whole
   processes: output Mpx/s over the run's pipeline (first batch to last scene
   published) and over the process's wall time.
3. One table: efficiency (end to end ÷ model alone), the GPU's busy share and
   peak memory (``nvidia-smi`` sampled every 0.2 s), the CPU's busy share and
   the job's peak host memory (its process tree, sampled).

    python benchmarks/gpu_node.py [--scenes 4 --size 16384] [--engines local ray]

It refuses to run without CUDA. ``../shared/gpu/README.md`` says how to bring the
project's dependencies to an offline GPU node.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from feed_ceiling import aerial_scene, read_stats, run_job

from fcnrs.fcn_model import FCN8s, save_checkpoint
from fcnrs.pipeline.batches import PixelBatch
from fcnrs.pipeline.inference import Predictor
from fcnrs.pipeline.planning import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "segment_scenes.py"


class GpuSampler(threading.Thread):
    """``nvidia-smi`` every 0.2 s: utilisation (%) and memory used (MiB)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        query = [
            "nvidia-smi",
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
        ]
        while not self.stop.wait(0.2):
            out = subprocess.run(query, capture_output=True, text=True).stdout.split("\n")[0]
            try:
                util, used = (float(v) for v in out.split(","))
            except ValueError:
                continue
            self.samples.append((time.time(), util, used))

    def busy(self, start: float, end: float) -> float:
        inside = [u for t, u, _ in self.samples if start <= t <= end]
        return float(np.mean(inside)) / 100 if inside else float("nan")

    def peak_mib(self) -> float:
        return max((m for _, _, m in self.samples), default=float("nan"))


def checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = FCN8s(4, in_channels=3, width=1.0)
    return save_checkpoint(
        path,
        model,
        classes=["a", "b", "c", "d"],
        bands=[1, 2, 3],
        mean=[100.0] * 3,
        std=[50.0] * 3,
    )


def model_alone(ckpt: Path, repeats: int) -> dict:
    """Output Mpx/s of the Predictor's model step on prepared on-device batches,
    for each cuDNN setting; and whether their labels differ."""
    window = (DEFAULT_TILE_SIZE + 2 * DEFAULT_OVERLAP,) * 2
    core = (DEFAULT_OVERLAP, DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, DEFAULT_TILE_SIZE)
    rows, labels = {}, {}
    for name, bench, det in (("deterministic", False, True), ("autotuned", True, False)):
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = bench, det
        predictor = Predictor(ckpt, device="cuda", precision="auto")
        n = predictor.batch_size(window)
        rng = np.random.default_rng(0)
        image = rng.integers(1, 255, (n, *window, 3), dtype=np.uint8)
        prepared = predictor.prepare(PixelBatch(image, None, (0.0, 0.0, 0.0), core))
        predictor.infer(prepared)  # warm-up (autotuning, allocations)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = predictor.infer(prepared)
        seconds = (time.perf_counter() - t0) / repeats
        rows[name] = dict(
            batch=n, mpx_s=n * DEFAULT_TILE_SIZE**2 / seconds / 1e6, precision=predictor.precision
        )
        labels[name] = out.labels
        del predictor, prepared
        torch.cuda.empty_cache()
    rows["labels_agree"] = float((labels["deterministic"] == labels["autotuned"]).mean())
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    return rows


def end_to_end(scenes: list[Path], ckpt: Path, out: Path, engine: str, stats: Path) -> dict:
    """The job with the real model, as its own process, sampled from outside."""
    gpu = GpuSampler()
    gpu.start()
    wall, host, _ = run_job(scenes, ckpt, out, engine, stats, zero_cost=False)
    gpu.stop.set()
    gpu.join()
    marks, _, _ = read_stats(stats)
    start, end = marks["first_submit"], marks["end"]
    return dict(
        pipeline=end - start,
        wall=wall,
        gpu_busy=gpu.busy(start, end),
        gpu_peak=gpu.peak_mib(),
        cpu_busy=host.busy(start, end),
        rss=host.peak_rss(),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--size", type=int, default=16384)
    p.add_argument("--engines", nargs="+", choices=["local", "ray"], default=["local", "ray"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--work", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_node.py needs a CUDA GPU: torch.cuda.is_available() is false")
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_node_"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint(work / "fcn8s-w1.safetensors")
    name = torch.cuda.get_device_name()
    print(f"{name}, torch {torch.__version__}", flush=True)
    alone = model_alone(ckpt, args.repeats)
    for k in ("deterministic", "autotuned"):
        r = alone[k]
        print(f"model alone, {k}: {r['mpx_s']:.1f} Mpx/s ({r['precision']}, batch {r['batch']})")
    print(f"labels equal between them: {alone['labels_agree']:.4%}", flush=True)
    base = aerial_scene(work / f"aerial{args.size}.tif", args.size)
    scenes = [base] + [work / f"aerial{args.size}-{i}.tif" for i in range(1, args.scenes)]
    for s in scenes[1:]:
        if not s.exists():
            s.hardlink_to(base)  # the same bytes under another name: another scene
    gpx = args.scenes * args.size**2 / 1e9
    rate_alone = alone["deterministic"]["mpx_s"]
    rows = []
    for engine in args.engines:
        out = work / f"out-{engine}"
        shutil.rmtree(out, ignore_errors=True)
        stats = Path(tempfile.mkdtemp(prefix="stats_", dir=work))
        r = end_to_end(scenes, ckpt, out, engine, stats)
        r |= dict(engine=engine, mpx_s=gpx * 1e3 / r["pipeline"])
        r["efficiency"] = r["mpx_s"] / rate_alone
        rows.append(r)
        print(
            f"{engine}: {r['mpx_s']:.1f} Mpx/s over {gpx:.2f} Gpx, efficiency {r['efficiency']:.2f}",
            flush=True,
        )
    print(
        f"\n{name}, {time.strftime('%Y-%m-%d')}, model alone {rate_alone:.1f} Mpx/s "
        f"(deterministic cuDNN; autotuned {alone['autotuned']['mpx_s']:.1f})"
    )
    print(
        "| engine | Gpx | end to end Mpx/s | efficiency | GPU busy | GPU peak MiB | CPU busy | host peak RSS | pipeline s | wall s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['engine']} | {gpx:.2f} | {r['mpx_s']:.1f} | {r['efficiency']:.2f} | "
            f"{r['gpu_busy']:.0%} | {r['gpu_peak']:.0f} | {r['cpu_busy']:.0%} | "
            f"{r['rss']:.0f} MiB | {r['pipeline']:.1f} | {r['wall']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
