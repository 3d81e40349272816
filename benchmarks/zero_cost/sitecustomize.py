"""Benchmark-only: FCN forward passes that cost nothing, and stage accounting.

``benchmarks/feed_ceiling.py`` (and ``gpu_node.py``) put this folder first on
``PYTHONPATH`` of the job they measure, with ``FCNRS_FEED_STATS`` set to a
folder, so every Python process of the run (the job, and the Ray workers it
starts, which inherit its environment) loads it at start-up. It changes nothing
until the project's own modules are imported:

- ``fcnrs.fcn_model.network``, only with ``FCNRS_ZERO_COST=1``: ``FCN.forward``
  returns zero class scores of the right shape, dtype, device and memory layout
  at once, so what is left of the run is the work around the model (reads,
  validity, normalisation, transfers between stages, argmax, writes);
- ``fcnrs.pipeline.distributed.stages``: the bytes each stage hands to the next
  are appended to ``$FCNRS_FEED_STATS/bytes-<pid>.txt``;
- ``fcnrs.pipeline.distributed.feed`` (``driver`` in older commits): the time the first batch went to the
  engine and the time the run's batches were all done go to
  ``$FCNRS_FEED_STATS/run-<pid>.json``.

The product has no such switch: only this file, on this path, does it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys
import time

_STATS = os.environ.get("FCNRS_FEED_STATS", "")


def _nbytes(value):
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(_nbytes(getattr(value, f)) for f in value.__dataclass_fields__)
    return 0


def _count(stage, value, cpu=0.0, start=0.0):
    with open(os.path.join(_STATS, f"bytes-{os.getpid()}.txt"), "a") as fh:
        fh.write(f"{stage} {_nbytes(value)} {cpu} {start} {time.time()}\n")


def _patch_network(module):
    import torch

    zeros = {}  # one buffer of zeros, grown when needed: a model that costs nothing

    def forward(self, x):
        n, _, h, w = x.shape
        size = n * h * w * self.num_classes
        key = (x.dtype, x.device)
        if key not in zeros or zeros[key].numel() < size:
            zeros[key] = torch.zeros(size, dtype=x.dtype, device=x.device)
        # Channels-last scores, as the real network's last layer returns them.
        return zeros[key][:size].view(n, h, w, self.num_classes).permute(0, 3, 1, 2)

    module.FCN.forward = forward


def _patch_stages(module):
    import functools

    read = module.read_stage

    @functools.wraps(read)
    def read_stage(*args, **kwargs):
        start, wall = time.thread_time(), time.time()
        out = read(*args, **kwargs)
        _count("read", out, time.thread_time() - start, wall)
        return out

    module.read_stage = read_stage
    write = module.write_stage

    @functools.wraps(write)
    def write_stage(*args, **kwargs):
        start, wall = time.thread_time(), time.time()
        out = write(*args, **kwargs)
        _count("write", out, time.thread_time() - start, wall)
        return out

    module.write_stage = write_stage
    # What every replica's call ends with (``__call__`` in versions before the
    # call was split into prepare and infer, so older commits measure alike).
    name = "infer" if hasattr(module.PredictStage, "infer") else "__call__"
    infer = getattr(module.PredictStage, name)

    @functools.wraps(infer)
    def counted(self, *args, **kwargs):
        start, wall = time.thread_time(), time.time()
        out = infer(self, *args, **kwargs)
        _count("predict", out, time.thread_time() - start, wall)
        return out

    setattr(module.PredictStage, name, counted)
    if name == "__call__":
        module.PredictStage.predict = counted


def _patch_driver(module):
    """The driver loop: ``feed.drive``, or ``driver._drive`` in older commits."""
    name = "drive" if hasattr(module, "drive") else "_drive"
    if not hasattr(module, name):
        return
    drive = getattr(module, name)
    marks = {}

    def submit_wrapper(submit):
        def wrapped(*args, **kwargs):
            marks.setdefault("first_submit", time.time())
            return submit(*args, **kwargs)

        return wrapped

    def _drive(run, jobs, engine, *args, **kwargs):
        engine.submit = submit_wrapper(engine.submit)
        try:
            return drive(run, jobs, engine, *args, **kwargs)
        finally:
            marks["end"] = time.time()
            with open(os.path.join(_STATS, f"run-{os.getpid()}.json"), "w") as fh:
                json.dump(marks, fh)

    setattr(module, name, _drive)


def _patch_local(module):
    """With ``FCNRS_IN_PROCESS=1``: the local engine's thread pipeline in the job's
    own process, as before it moved into a worker process, to measure what the
    worker costs (the same stages, threads and depth)."""
    import queue as queue_module

    class InProcess:
        name = "local"
        broken = None
        ready = True

        def __init__(self, predict_args, *, readers=None, writers=None, depth=None, setup=None):
            from fcnrs.pipeline.distributed import stages

            cpus = module.available_cpus()
            self.readers = readers or cpus
            self.depth = depth or module.default_depth(self.readers)
            self.predict = stages.PredictStage(**predict_args)
            self.replica = self.predict.replica
            writers = writers or min(module.WRITE_THREADS, cpus)
            self.pipeline = module.ThreadPipeline(
                self.predict, readers=self.readers, writers=writers
            )
            self.flight, self.seq = {}, 0

        def room(self):
            return self.depth - len(self.flight)

        def submit(self, item, request):
            self.seq += 1
            self.flight[self.seq] = item
            self.pipeline.submit(self.seq, request)

        def forget(self, scene_id):
            pass

        def batch_size(self, window):
            return self.predict.batch_size(window)

        def poll(self, timeout):
            out = []
            try:
                key, result = self.pipeline.done.get(timeout=timeout)
            except queue_module.Empty:
                return out
            out.append((self.flight.pop(key), result))
            while True:
                try:
                    key, result = self.pipeline.done.get_nowait()
                except queue_module.Empty:
                    return out
                out.append((self.flight.pop(key), result))

        def close(self):
            self.pipeline.close()

    module.LocalEngine = InProcess


_PATCHES = {
    "fcnrs.pipeline.distributed.stages": _patch_stages,
    "fcnrs.pipeline.distributed.driver": _patch_driver,
    "fcnrs.pipeline.distributed.feed": _patch_driver,
}
if os.environ.get("FCNRS_ZERO_COST") == "1":
    _PATCHES["fcnrs.fcn_model.network"] = _patch_network
if os.environ.get("FCNRS_IN_PROCESS") == "1":
    _PATCHES["fcnrs.pipeline.distributed.local"] = _patch_local


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a patch right after a module's own code, before anyone imports from it."""

    def find_spec(self, name, path=None, target=None):
        patch = _PATCHES.get(name)
        if patch is None:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        loader.exec_module = exec_and_patch
        return spec


if _STATS:
    sys.meta_path.insert(0, _AfterImport())
