"""The fine-tuning job end to end on Ray Train: two DDP workers, reports, the best
export, continuing a run, and resuming after a killed worker."""

from __future__ import annotations

import json
import signal
import threading
import time

import psutil

from fcnrs.fcn_model import load_checkpoint
from fcnrs.jobs import finetune
from fcnrs.pipeline.segment import SegmentSettings, segment_scene
from fcnrs.pipeline.writing import is_complete
from fcnrs.synthetic.scenes import CLASSES


def small_run(table, out, *extra: str) -> list[str]:
    """``jobs/finetune.py`` arguments of a tiny two-worker run: width 0.125,
    64-px windows in pairs; ``extra`` adds the rest."""
    return [
        "--scenes",
        str(table),
        "--out",
        str(out),
        "--classes",
        ",".join(CLASSES),
        "--width",
        "0.125",
        "--num-workers",
        "2",
        "--batch-size",
        "2",
        "--window",
        "64",
        *extra,
    ]


def test_two_ddp_workers_train_report_checkpoint_export_and_continue(ray_local, labeled, tmp_path):
    table, scenes = labeled
    out = tmp_path / "run"
    args = small_run(table, out, "--steps-per-epoch", "100")
    assert finetune.main([*args, "--epochs", "2"]) == 0
    history = json.loads((out / "report.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert all(len(h["confusion"]) == 4 for h in history)
    # Two workers took every step, each on its own windows (their losses differ);
    # the gradients they shared taught the model the classes of an unseen scene
    # (a constant prediction scores about 0.1; these 200 steps reach 0.8).
    for h in history:
        assert h["world_size"] == 2 and [r["steps"] for r in h["ranks"]] == [100, 100]
        assert h["ranks"][0]["loss"] != h["ranks"][1]["loss"]
    best = json.loads((out / "best_report.json").read_text())
    assert best["mean_iou"] == max(h["val_mean_iou"] for h in history) > 0.6
    _, meta = load_checkpoint(out / "best")
    assert meta.classes == CLASSES and meta.bands == (1, 2, 3, 4) and len(meta.mean) == 4
    # The nightly job takes <out>/best as it is.
    segment_scene(
        scenes[1].image,
        model=out / "best",
        out_dir=tmp_path / "labels",
        settings=SegmentSettings(tile_size=64, overlap=32),
    )
    assert is_complete(tmp_path / "labels" / "b.zarr")
    # Same --out, more epochs: continues from the last checkpoint (epoch 2 only).
    assert finetune.main([*args, "--epochs", "3"]) == 0
    history = json.loads((out / "report.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert [h["resumed_from_epoch"] for h in history] == [-1, -1, 1]
    assert history[2]["world_size"] == 2 and history[2]["ranks"][1]["steps"] == 100


def _registered_epoch(experiment) -> int:
    """The epoch of the last checkpoint Ray Train's controller registered (its
    snapshot, written after registration; a folder on disk may not be registered
    yet). -1 while there is none or the file is being rewritten."""
    try:
        snap = json.loads((experiment / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return -1
    latest = snap.get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("epoch", -1))


def test_a_killed_worker_resumes_from_the_last_registered_checkpoint(
    ray_local, labeled, tmp_path, monkeypatch
):
    table, _ = labeled
    out = tmp_path / "run"
    # Ray Train polls its workers every 2 s by default; poll faster so a short
    # epoch's checkpoint is registered before the next one.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    killed: dict[str, int] = {}

    def kill_a_worker_once_epoch_1_is_registered() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            epoch = _registered_epoch(out / "ray_results" / "finetune")
            workers = []
            for p in psutil.Process().children(recursive=True):
                try:
                    if "RayTrainWorker" in " ".join(p.cmdline()):
                        workers.append(p)
                except psutil.Error:  # a short-lived process that is already gone
                    continue
            if epoch >= 1 and workers:
                workers[0].send_signal(signal.SIGKILL)
                killed.update(epoch=epoch, pid=workers[0].pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_once_epoch_1_is_registered)
    killer.start()
    code = finetune.main(
        small_run(
            table, out, "--cpus-per-worker", "0.5", "--steps-per-epoch", "3", "--epochs", "10"
        )
    )
    killer.join()
    assert code == 0 and killed, "the worker was never killed"
    history = json.loads((out / "report.json").read_text())
    # Every epoch once, in order: the restarted group carried on, it did not redo
    # the run or lose the history.
    assert [h["epoch"] for h in history] == list(range(10))
    resumed = [h["resumed_from_epoch"] for h in history if h["resumed_from_epoch"] >= 0]
    # One restart, from a checkpoint at or after the one registered before the kill.
    assert len(resumed) == 1 and resumed[0] >= killed["epoch"]
