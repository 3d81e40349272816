"""How fast the pipeline around the model can feed it: the feed ceiling.

The job's own command line (``jobs/segment_scenes.py`` at its defaults, with the
96-px halo fine-tuned checkpoints record) on a
3-band uint8 aerial scene (tiled DEFLATE, mirror-tiled from the synthetic
thin-structures scene, nodata collars included), with every FCN forward pass
replaced by one that returns zero scores at once (``benchmarks/zero_cost/``,
loaded through ``PYTHONPATH`` into the job and every Ray worker it starts; the
product has no such switch). What is left is the work around the model: reads,
validity, normalisation, transfers between stages, argmax, writes.

Per engine and scene size it prints:

- output Mpx/s over the run's pipeline (from the first batch sent to the
  engine to the last scene published; start-up of Python, Ray and the replicas
  is reported apart, as ``wall``);
- CPU busy: the machine's busy share over that window (nothing else running);
- peak RSS: the largest sum of resident memory over the job's process tree
  (sampled every 0.1 s; for the local engine also the exact ``ru_maxrss``);
- bytes per output pixel handed from read to predict and from predict to write;
- with ``--profile``, a second run under ``py-spy record --subprocesses``
  (every thread of every process) and the share of CPU samples per stage and,
  within each, the functions that hold them.

    python benchmarks/feed_ceiling.py [--sizes 8192] [--engines local ray] [--profile]
    python benchmarks/feed_ceiling.py --sizes 4096 16384      # peak RSS against size
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import rasterio

from fcnrs.synthetic.checkpoints import random_checkpoint
from fcnrs.synthetic.thin import make_thin_structures_scene

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "segment_scenes.py"
SHIM = ROOT / "benchmarks" / "zero_cost"


def aerial_scene(path: Path, size: int, *, seed: int = 7, strip: int = 1024) -> Path:
    """A ``size``² 3-band uint8 tiled-DEFLATE scene (nodata 0), mirror-tiled
    strip by strip from a 1024² thin-structures scene, in bounded memory."""
    if path.exists():
        return path
    tile_path = path.with_name(f"{path.stem}-tile.tif")
    make_thin_structures_scene(tile_path, path.with_name(f"{path.stem}-labels.tif"), seed=seed)
    with rasterio.open(tile_path) as src:
        tile = src.read()
        profile = src.profile
    n = tile.shape[1]
    # Flipped copies side by side: seamless, and every block holds real texture.
    flips = {
        (i % 2, j % 2): tile[:, :: (-1 if i % 2 else 1), :: (-1 if j % 2 else 1)]
        for i in range(2)
        for j in range(2)
    }
    profile.update(height=size, width=size, blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER")
    tmp = path.with_name(f".{path.name}.tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        for row0 in range(0, size, strip):
            rows = min(strip, size - row0)
            out = np.empty((3, rows, size), np.uint8)
            for r in range(rows):
                i = (row0 + r) // n
                for j in range(-(-size // n)):
                    src_tile = flips[(i % 2, j % 2)]
                    width = min(n, size - j * n)
                    out[:, r, j * n : j * n + width] = src_tile[:, (row0 + r) % n, :width]
            dst.write(out, window=((row0, row0 + rows), (0, size)))
    tmp.rename(path)
    return path


class Sampler(threading.Thread):
    """Samples the machine's CPU busy share, the job tree's summed RSS and each of
    its processes' CPU time."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.every = psutil.Process(pid), every
        self.cpu: list[tuple[float, float]] = []  # (time, busy share since the last)
        self.rss: list[tuple[float, int]] = []
        self.procs: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        psutil.cpu_percent()
        while not self.stop.wait(self.every):
            now = time.time()
            self.cpu.append((now, psutil.cpu_percent() / 100))
            total, times = 0, {}
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                    t = proc.cpu_times()
                    times[proc.pid] = (proc.name(), t.user + t.system)
                except psutil.Error:
                    pass
            self.rss.append((now, total))
            self.procs.append((now, times))

    def cpu_by_process(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds each kind of process (its title: ``ray::PredictStage``,
        ``raylet``, ...) spent between two times."""
        before = next((p for t, p in self.procs if t >= start), {})
        after = next((p for t, p in reversed(self.procs) if t <= end + self.every), {})
        spent: dict[str, float] = collections.Counter()
        for pid, (name, cpu) in after.items():
            spent[f"{name} ({'new' if pid not in before else 'running'})"] += (
                cpu - before.get(pid, (name, 0.0))[1]
            )
        return dict(spent)

    def busy(self, start: float, end: float) -> float:
        inside = [c for t, c in self.cpu if start < t <= end + self.every]
        return float(np.mean(inside)) if inside else float("nan")

    def peak_rss(self) -> float:
        return max((r for _, r in self.rss), default=0) / 2**20


def checkout_path(checkout: Path, work: Path) -> Path:
    """A folder that makes ``import fcnrs.<room>`` load another checkout's code
    (its rooms as the ``fcnrs`` namespace's packages), to measure it beside this one."""
    root = work / f"pkg-{checkout.name}" / "fcnrs"
    root.mkdir(parents=True, exist_ok=True)
    for room in ("fcn_model", "pipeline", "training", "gis", "demo", "jobs"):
        link = root / room
        if not link.exists():
            link.symlink_to(checkout / room)
    return root.parent


def run_job(
    scenes: list[Path],
    model: Path,
    out: Path,
    engine: str,
    stats: Path,
    profile: Path | None = None,
    *,
    zero_cost: bool = True,
    checkout: tuple[Path, Path] | None = None,
    in_process: bool = False,
) -> tuple[float, Sampler, str]:
    """Run the job as its own process (the shim on its path); returns its wall
    seconds, the CPU and memory samples, and its output. ``checkout``: another
    checkout's job script and the path that imports its code."""
    env = dict(os.environ)
    paths = [str(SHIM), str(checkout[1]) if checkout else "", env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["FCNRS_FEED_STATS"] = str(stats)
    env["FCNRS_ZERO_COST"] = "1" if zero_cost else "0"
    env["FCNRS_IN_PROCESS"] = "1" if in_process else "0"
    job = checkout[0] if checkout else JOB
    cmd = [sys.executable, str(job), "--model", str(model), "--scenes", *map(str, scenes)]
    cmd += ["--out", str(out), "--engine", engine]
    # The halo a fine-tuned checkpoint records (README, *The halo comes from the
    # checkpoint*); this untrained stand-in would otherwise get its architecture's
    # conservative one. Earlier checkouts had it as their fixed default.
    cmd += ["--overlap", "96"]
    if profile is not None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        spy_cmd = [spy, "record", "--subprocesses", "--rate", "100", "--format", "raw"]
        cmd = [*spy_cmd, "--nonblocking", "--output", str(profile), "--", *cmd]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = Sampler(proc.pid)
    sampler.start()
    output, _ = proc.communicate()
    sampler.stop.set()
    sampler.join()
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} job failed ({proc.returncode}):\n{output.decode()[-4000:]}")
    return wall, sampler, output.decode()


def read_stats(stats: Path) -> tuple[dict[str, float], dict[str, int], dict[str, float]]:
    """The run's timestamps, the bytes each stage handed on, and the CPU seconds
    of the stage calls' own threads."""
    marks: dict[str, float] = {}
    for f in stats.glob("run-*.json"):
        marks = json.loads(f.read_text())
    moved: dict[str, int] = collections.Counter()
    cpu: dict[str, float] = collections.Counter()
    for f in stats.glob("bytes-*.txt"):
        for line in f.read_text().split("\n"):
            if line:
                stage, n, seconds = line.split()[:3]
                moved[stage] += int(n)
                cpu[stage] += float(seconds)
    return marks, moved, cpu


def classify(stack: str) -> str:
    """The stage a sampled stack works for. zarr writes chunks on its own event
    loop thread: its frames count as the write stage's."""
    if "read_stage" in stack:
        return "read"
    if "write_stage" in stack or "/zarr/" in stack or "numcodecs" in stack:
        return "write"
    if "predict" in stack.lower() or "inference.py" in stack:
        return "predict"
    if "_drive" in stack or "run_scenes" in stack or "publish" in stack:
        return "driver"
    if "_find_and_load" in stack:
        return "start-up (imports)"
    return "other (Ray, threads idle in Python)"


def profile_table(raw: Path, top: int = 5) -> str:
    """CPU samples per stage, and within each stage the leaf functions holding them."""
    by_stage: collections.Counter[str] = collections.Counter()
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stage = classify(stack)
        by_stage[stage] += int(count)
        frames = [f for f in stack.split(";") if f]
        leaf = frames[-1].split(" (")[0] if frames else "?"
        where = frames[-1].split("(")[-1].split(":")[0].rsplit("/", 1)[-1] if frames else ""
        leaves[stage][f"{leaf} ({where})"] += int(count)
    total = sum(by_stage.values()) or 1
    lines = [f"  {'stage':<38} {'CPU samples':>11} {'share':>6}"]
    for stage, n in by_stage.most_common():
        lines.append(f"  {stage:<38} {n:>11} {n / total:>6.1%}")
        for leaf, k in leaves[stage].most_common(top):
            lines.append(f"      {leaf[:60]:<60} {k / total:>6.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8192])
    p.add_argument("--engines", nargs="+", choices=["local", "ray"], default=["local", "ray"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="also a py-spy run per engine")
    p.add_argument("--work", default=None, help="keeps the scenes between runs")
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. a git worktree of an earlier commit) measured "
        "the same way, alternately with this one",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="also run the local engine's pipeline in the job's own process (as "
        "before its worker process), to measure what the worker costs",
    )
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="feed_ceiling_"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "zero.safetensors"
    if not model.exists():
        random_checkpoint(model, width=0.125, bands=(1, 2, 3))
    rows = []
    for size in args.sizes:
        scene = aerial_scene(work / f"aerial{size}.tif", size)
        mpx = size * size / 1e6
        versions: list[tuple[str, tuple[Path, Path] | None]] = [("this", None)]
        if args.in_process:
            versions.append(("in-process", None))
        if args.baseline:
            base = args.baseline.resolve()
            versions.insert(
                0, ("baseline", (base / "jobs" / "segment_scenes.py", checkout_path(base, work)))
            )
        for engine, k, (version, checkout) in (
            (e, k, v)
            for e in args.engines
            for k in range(args.repeats)
            for v in versions
            if not (v[0] == "in-process" and e != "local")
        ):
            stats = Path(tempfile.mkdtemp(prefix="stats_", dir=work))
            out = work / f"out-{engine}-{size}-{k}"
            shutil.rmtree(out, ignore_errors=True)
            wall, sampler, _ = run_job(
                [scene],
                model,
                out,
                engine,
                stats,
                checkout=checkout,
                in_process=version == "in-process",
            )
            marks, moved, stage_cpu = read_stats(stats)
            seconds = marks["end"] - marks["first_submit"]
            row = dict(
                version=version,
                engine=engine,
                size=size,
                mpx_s=mpx / seconds,
                seconds=seconds,
                wall=wall,
                busy=sampler.busy(marks["first_submit"], marks["end"]),
                rss=sampler.peak_rss(),
                read_bpp=moved["read"] / (mpx * 1e6),
                predict_bpp=moved["predict"] / (mpx * 1e6),
            )
            rows.append(row)
            by_process = sampler.cpu_by_process(marks["first_submit"], marks["end"])
            calls = ", ".join(f"{k} {v:.2f}" for k, v in sorted(stage_cpu.items()))
            print(f"  CPU seconds of the stage calls (their own threads): {calls}")
            print(
                "  CPU seconds in the pipeline by process: "
                + ", ".join(
                    f"{k} {v:.2f}"
                    for k, v in sorted(by_process.items(), key=lambda kv: -kv[1])
                    if v >= 0.05
                )
            )
            print(
                f"{version} {engine:>5} {size}²: {row['mpx_s']:.1f} Mpx/s over {seconds:.2f} s "
                f"(wall {wall:.1f} s), CPU busy {row['busy']:.0%}, peak RSS "
                f"{row['rss']:.0f} MiB, read->predict {row['read_bpp']:.2f} B/px, "
                f"predict->write {row['predict_bpp']:.2f} B/px",
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)
        for engine in args.engines:
            if args.profile:
                stats = Path(tempfile.mkdtemp(prefix="stats_", dir=work))
                raw = work / f"profile-{engine}-{size}.txt"
                out = work / f"out-{engine}-{size}-profile"
                run_job([scene], model, out, engine, stats, raw)
                shutil.rmtree(out, ignore_errors=True)
                print(f"\nprofile, {engine} engine, {size}² (py-spy, all processes):")
                print(profile_table(raw), flush=True)
    print(
        "\n| version | engine | scene | output Mpx/s | pipeline s | wall s | CPU busy | peak RSS | "
        "read→predict B/px | predict→write B/px |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['version']} | {r['engine']} | {r['size']}² | {r['mpx_s']:.1f} | {r['seconds']:.2f} | "
            f"{r['wall']:.1f} | {r['busy']:.0%} | {r['rss']:.0f} MiB | {r['read_bpp']:.2f} | "
            f"{r['predict_bpp']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
