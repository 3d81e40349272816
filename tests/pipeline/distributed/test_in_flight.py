"""Work in flight is bounded on both engines, and a Ray replica that waits for its
reads gets more of it."""

from __future__ import annotations

import os
import signal
import time
from functools import partial

import pytest

from fcnrs.pipeline.distributed import run_scenes
from fcnrs.pipeline.distributed.local import LocalEngine, available_cpus, default_depth
from fcnrs.pipeline.distributed.ray_engine import DEPTH, MAX_DEPTH, RayEngine, _Replica
from fcnrs.pipeline.distributed.retries import Failure, WorkItem
from fcnrs.pipeline.planning import plan_batches
from fcnrs.pipeline.scenes import SegmentSettings
from tests import faults

from .test_stages import _request

SETTINGS = SegmentSettings(tile_size=64, overlap=32, batch_size=1)


def test_the_local_engine_never_holds_more_than_its_depth(
    make_scene, make_checkpoint, tmp_path, monkeypatch
):
    """Reads slower than the model (20 ms more each, in the engine's worker
    process): batches queue for the model, and still no more than the engine's
    depth are ever in flight, counted at the driver."""
    scene = make_scene(height=320, width=320)  # 25 batches of one tile
    peak, flight = [0], [0]
    submit, poll = LocalEngine.submit, LocalEngine.poll

    def counted_submit(self, item, request):
        flight[0] += 1
        peak[0] = max(peak[0], flight[0])
        return submit(self, item, request)

    def counted_poll(self, timeout):
        out = poll(self, timeout)
        flight[0] -= len(out)
        return out

    monkeypatch.setattr(LocalEngine, "submit", counted_submit)
    monkeypatch.setattr(LocalEngine, "poll", counted_poll)
    report = run_scenes(
        [scene],
        model=make_checkpoint(),
        out_dir=tmp_path / "out",
        settings=SETTINGS,
        progress=None,
        engine="local",
        worker_setup=partial(faults.install, "read", "slow"),
    )
    assert report.rows[0].status == "done" and report.rows[0].tiles == 25
    depth = default_depth(available_cpus())
    assert 2 <= peak[0] <= depth, (peak[0], depth)


def test_ray_keeps_each_replica_within_its_bound(
    ray_local, make_scene, make_checkpoint, tmp_path, monkeypatch
):
    """Counted at the driver: items submitted and not yet back never exceed
    :data:`MAX_DEPTH` per replica."""
    scenes = [make_scene(f"s{i}.tif", height=256, width=320, seed=i) for i in range(3)]
    peak, flight = [0], [0]
    submit, poll = RayEngine.submit, RayEngine.poll

    def counted_submit(self, item, request):
        flight[0] += 1
        peak[0] = max(peak[0], flight[0])
        bound = sum(r.depth for r in self._live())
        assert len(self.flight) < bound <= MAX_DEPTH * len(self._live())
        return submit(self, item, request)

    def counted_poll(self, timeout):
        out = poll(self, timeout)
        flight[0] -= len(out)
        return out

    monkeypatch.setattr(RayEngine, "submit", counted_submit)
    monkeypatch.setattr(RayEngine, "poll", counted_poll)
    report = run_scenes(
        scenes, model=make_checkpoint(), out_dir=tmp_path / "out", settings=SETTINGS, progress=None
    )
    assert {r.status for r in report.rows} == {"done"}
    assert DEPTH <= peak[0] <= MAX_DEPTH, peak[0]


@pytest.mark.parametrize(
    ("model_seconds", "every", "starved", "grows"),
    [
        (0.1, 0.5, False, True),  # idle 80% of the time with every slot full: more
        (0.5, 0.5, False, False),  # busy all the time: enough
        (0.1, 0.5, True, False),  # idle because the driver had nothing to send: enough
    ],
)
def test_a_replica_that_waits_for_work_gets_more(monkeypatch, model_seconds, every, starved, grows):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    replica = _Replica(actor=None)
    for _ in range(40):
        replica.starved = replica.starved or starved
        clock[0] += every
        replica.finished(model_seconds)
    assert (replica.depth > DEPTH) == grows
    assert replica.depth <= MAX_DEPTH
    if grows:
        assert replica.depth == min(DEPTH + 40 // replica.recent.maxlen, MAX_DEPTH)


def test_local_engine_threads_follow_the_cpus(make_checkpoint):
    args = dict(model=str(make_checkpoint()), device="cpu", precision="fp32", probabilities=False)
    engine = LocalEngine({**args, "threads": 1})
    try:
        assert engine.readers == available_cpus()
        assert engine.depth == default_depth(available_cpus()) == available_cpus() + 4
        size, deadline = None, time.monotonic() + 120
        while size is None and time.monotonic() < deadline:  # once its model is loaded
            size = engine.batch_size((256, 256))
        assert size == 4 and engine.replica.startswith("local:")
    finally:
        engine.close()
    assert not engine.process.is_alive()


def test_a_batch_sent_to_a_worker_that_just_died_fails_with_it(planned):
    """The driver may send a batch in the moment between the worker's death and
    noticing it: the send must not raise (a broken pipe once ended the run); the
    batch is charged with the death, and a fresh worker takes the next one."""
    scene, ckpt, _, plan, _ = planned
    args = dict(model=str(ckpt), device="cpu", precision="fp32", probabilities=False, threads=1)
    engine = LocalEngine(args)
    try:
        deadline = time.monotonic() + 120
        while engine.batch_size((128, 128)) is None and time.monotonic() < deadline:
            pass
        first = engine.process.pid
        os.kill(first, signal.SIGKILL)
        engine.process.join(10)
        batch = plan_batches(plan.grid, 4)[0]
        item = WorkItem(0, tuple(batch))
        engine.submit(item, _request(scene, plan, batch))  # into a closed pipe
        results = []
        while not results and time.monotonic() < deadline:
            results = engine.poll(1.0)
        [(back, failure)] = results
        assert back is item and isinstance(failure, Failure) and failure.charged
        assert "the local worker process died (signal SIGKILL)" in failure.reason
        while engine.batch_size((128, 128)) is None and time.monotonic() < deadline:
            pass
        assert engine.process.is_alive() and engine.process.pid != first
    finally:
        engine.close()


def test_a_ray_replica_that_dies_holding_several_items_charges_none_of_them(planned):
    """A replica works on two items at once, so which one killed it is unknown:
    none is charged, each becomes a suspect, and suspects run one at a time on
    the cluster; a replica that held one item charges it."""
    _, _, _, plan, _ = planned
    a, b = (WorkItem(0, tuple(batch)) for batch in plan_batches(plan.grid, 4)[:2])
    died = Failure("the replica running it died (its process died: ActorDiedError)", True)
    engine = RayEngine.__new__(RayEngine)  # its bookkeeping only: no cluster
    engine.flight, engine.suspects = {}, set()
    dead, live = _Replica(actor=None, dead=True), _Replica(actor=None)
    dead.lost = [(2, b, died), (1, a, died)]
    engine.replicas = [dead, live]
    judged = engine._judge(dead)
    assert [item for item, _ in judged] == [a, b]
    assert not any(f.charged for _, f in judged)
    assert engine.suspects == {(0, t.index) for t in (*a.tiles, *b.tiles)}
    assert engine.room() == 1  # one at a time
    engine.flight = {"ref": (3, a, live)}
    assert engine.room() == 0
    engine.forget(0)  # the scene closed: no suspects of it remain
    engine.flight = {}
    assert engine.room() == live.depth
    alone = _Replica(actor=None, dead=True)
    alone.lost = [(4, a, died)]
    engine.replicas.append(alone)
    [(item, failure)] = engine._judge(alone)
    assert item is a and failure.charged
