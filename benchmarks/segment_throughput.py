"""Pipeline overhead: the model alone against the whole pipeline, on the same tiles.

In one process, on one generated scene and one checkpoint:

- ``model alone``: the planned batches are read into memory first, then only the
  model runs over them (the ceiling);
- ``one process``: ``fcnrs.pipeline.segment.segment_scene`` (read, predict, write in turn);
- ``ray``: ``fcnrs.pipeline.distributed.run_scenes`` on a local Ray (streaming stages).

Prints valid megapixels per second for each, the ratio to the model alone, and
the peak memory of the whole process tree (driver and Ray workers).

    python benchmarks/segment_throughput.py --size 3072 --width 0.125
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import torch

from fcnrs.demo.scenes import random_checkpoint, write_large_scene
from fcnrs.pipeline.distributed import plan_replicas, run_scenes
from fcnrs.pipeline.inference import Predictor
from fcnrs.pipeline.planning import plan_batches
from fcnrs.pipeline.reading import TileReader, read_batch
from fcnrs.pipeline.scenes import SegmentSettings, plan_scene
from fcnrs.pipeline.segment import segment_scene


class TreeRSS:
    """Samples the summed RSS of this process and all its descendants."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _tree_rss() -> int:
        children: dict[int, list[int]] = {}
        rss: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(stat[1]), []).append(int(entry.name))
                rss[int(entry.name)] = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                continue
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            total += rss.get(pid, 0)
            todo.extend(children.get(pid, []))
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            time.sleep(0.1)

    def __enter__(self) -> TreeRSS:
        self.peak = self._tree_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop.clear()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=3072)
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--tile-size", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=2)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="segment_throughput_"))
    scene = write_large_scene(work / "scene.tif", args.size)
    model = random_checkpoint(work / "model.safetensors", width=args.width)
    settings = SegmentSettings(
        tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size
    )
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    replica = plan_replicas(ray.cluster_resources())
    # The model alone runs with the same thread count as one Ray replica.
    torch.set_num_threads(replica.threads)
    results = []

    predictor = Predictor(model)
    plan = plan_scene(scene, meta=predictor.meta, out_dir=work / "unused", settings=settings)
    with TileReader(scene, plan.bands, predictor.meta.mean, predictor.meta.std) as reader:
        batches = [read_batch(reader, b)[2] for b in plan_batches(plan.grid, args.batch_size)]
    batches = [b for b in batches if b is not None]
    with TreeRSS() as mem:
        t = time.perf_counter()
        valid = sum(int((predictor(b)["labels"] != 255).sum()) for b in batches)
        results.append(("model alone", valid, time.perf_counter() - t, mem))
    del batches

    with TreeRSS() as mem:
        t = time.perf_counter()
        r = segment_scene(scene, model=model, out_dir=work / "one", settings=settings)
        results.append(("one process", r.valid_pixels, time.perf_counter() - t, mem))
    with TreeRSS() as mem:
        t = time.perf_counter()
        rep = run_scenes(
            [scene], model=model, out_dir=work / "ray", settings=settings, progress=None
        )
        results.append(("ray", rep.rows[0].valid_pixels, time.perf_counter() - t, mem))
    ray.shutdown()

    print(
        f"scene {args.size}x{args.size}, FCN-8s width {args.width}, tiles {args.tile_size}+"
        f"{args.overlap} halo, batch {args.batch_size}, {os.cpu_count()} CPUs, "
        f"replica threads {replica.threads}"
    )
    base = results[0][1] / results[0][2]
    print(
        f"{'path':<12} {'valid MP':>9} {'seconds':>8} {'valid MP/s':>11} {'vs model':>9} {'peak RSS MiB':>13}"
    )
    for name, px, secs, mem in results:
        rate = px / secs
        print(
            f"{name:<12} {px / 1e6:>9.2f} {secs:>8.1f} {rate / 1e6:>11.3f} {rate / base:>8.2f}x "
            f"{mem.peak / 2**20:>13.0f}"
        )


if __name__ == "__main__":
    main()
