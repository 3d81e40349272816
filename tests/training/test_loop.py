"""The loop's parts: initialisation, the training state, one epoch, the end of an
epoch, and the in-process runner that strings them together."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fcnrs.fcn_model import FCN8s, load_checkpoint, save_checkpoint
from fcnrs.synthetic.scenes import CLASSES
from fcnrs.training.data import LabeledScene
from fcnrs.training.epoch_end import due_for_validation, end_epoch
from fcnrs.training.prefetch import Prefetcher
from fcnrs.training.runners import train_in_process
from fcnrs.training.settings import TrainSettings
from fcnrs.training.state import (
    TrainingState,
    Worker,
    initial_network,
    initial_state,
    load_state,
    make_optimizer,
    save_state,
)
from fcnrs.training.steps import Budget, Pace, lr_factor, run_epoch
from fcnrs.training.windows import WindowSampler

from .conftest import THRESHOLD, THRESHOLD_SIDE


def sample_settings(scenes, out, **overrides) -> TrainSettings:
    """A width-0.125 FCN-8s on the sample scenes' 4 bands, 64-px windows in pairs."""
    return TrainSettings(
        **{
            "scenes": tuple(scenes),
            "classes": CLASSES,
            "colors": ((0, 0, 0),) * 4,
            "bands": (1, 2, 3, 4),
            "out": str(out),
            "width": 0.125,
            "window": 64,
            "batch_size": 2,
            "mean": (1000.0,) * 4,
            "std": (800.0,) * 4,
            "val_tile_size": 64,
            "val_overlap": 32,
            **overrides,
        }
    )


def test_init_with_other_classes_keeps_the_trunk_and_resets_the_scores(tmp_path, labeled):
    _, scenes = labeled
    torch.manual_seed(9)
    parent = FCN8s(3, in_channels=4, width=0.125)
    path = save_checkpoint(
        tmp_path / "parent.safetensors",
        parent,
        classes=["a", "b", "c"],
        bands=[1, 2, 3, 4],
        mean=[0] * 4,
        std=[1] * 4,
    )
    s = TrainSettings(
        scenes=tuple(scenes),
        classes=("x", "y"),
        colors=((0, 0, 0),) * 2,
        bands=(1, 2, 3, 4),
        out="",
        width=0.125,
        init=str(path),
    )
    child = initial_network(s)
    assert torch.equal(child.conv1_1.weight, parent.conv1_1.weight)
    assert torch.equal(child.fc7.weight, parent.fc7.weight)
    assert child.score_fr.weight.shape == (2, 512, 1, 1)
    same = TrainSettings(**{**s.__dict__, "classes": ("a", "b", "c"), "colors": ((0, 0, 0),) * 3})
    assert torch.equal(initial_network(same).score_fr.weight, parent.score_fr.weight)


def test_training_state_round_trip(tmp_path, labeled):
    _, scenes = labeled
    s = sample_settings(scenes, tmp_path)
    model, optimizer, progress = initial_state(s)
    assert progress == TrainingState(-1, -math.inf, [])
    epoch(model, optimizer, s, steps=1)
    saved = TrainingState(
        3, 0.75, [{"epoch": 3, "loss": 0.5, "confusion": [[1, 2], [3, 4]]}], 17, 2.5
    )
    save_state(tmp_path, network=model, optimizer=optimizer, state=saved)
    assert load_state(tmp_path).training == saved
    # A fresh start from the folder has the same weights and optimizer moments.
    model2, optimizer2, progress2 = initial_state(s, tmp_path)
    assert progress2 == saved
    for (k, v), (k2, v2) in zip(
        model.state_dict().items(), model2.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    moments = optimizer.state_dict()["state"]
    moments2 = optimizer2.state_dict()["state"]
    assert moments.keys() == moments2.keys() and len(moments) > 0
    for key, value in moments.items():
        assert all(torch.equal(value[n], moments2[key][n]) for n in ("exp_avg", "exp_avg_sq"))


def epoch(model, optimizer, s, *, steps, budget=None):
    """:func:`run_epoch` over ``steps`` prefetched batches of ``s``'s sampler."""
    pace = Pace(budget or Budget.minutes(None), total_steps=steps)
    with WindowSampler(s, rank=0) as sampler, Prefetcher(sampler, steps) as batches:
        return run_epoch(
            model, optimizer, batches, settings=s, pace=pace, device=torch.device("cpu")
        )


def threshold_settings(scene, **overrides) -> TrainSettings:
    n = THRESHOLD_SIDE
    return TrainSettings(
        **{
            "scenes": (scene,),
            "classes": ("low", "high"),
            "colors": ((0, 0, 0),) * 2,
            "bands": (1,),
            "out": "",
            "window": 32,
            "batch_size": 4,
            "mean": (THRESHOLD,),
            "std": (n * n / 4,),
            "lr": 0.05,
            "warmup_steps": 1,
            **overrides,
        }
    )


def test_run_epoch_takes_its_steps_and_learns_a_learnable_scene(threshold_scene):
    # A per-pixel threshold: a 1x1 convolution can learn it exactly.
    s = threshold_settings(threshold_scene)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 1)
    optimizer = make_optimizer(model, s)
    result = epoch(model, optimizer, s, steps=60)
    assert len(result.losses) == 60 and not result.stopped and result.windows == 240
    assert result.loss == pytest.approx(np.mean(result.losses))
    assert np.mean(result.losses[-10:]) < 0.5 * np.mean(result.losses[:10])
    # The wsd schedule ended at zero: the last step's rate was warm-up x decay.
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * (1 / 60) / 0.3)
    spent = Budget(start=time.time() - 60, deadline=time.time())
    late = epoch(model, optimizer, s, steps=5, budget=spent)
    assert late.losses == () and late.stopped and math.isnan(late.loss)


def run_end_of_epoch(s, model, progress, epoch) -> tuple[dict, list]:
    reports = []

    def report(metrics, directory: Path | None) -> None:
        reports.append((metrics, sorted(p.name for p in directory.iterdir())))
        reports.append(load_state(directory).training.epoch)

    worker = Worker(
        settings=s,
        network=model,
        wrapped=model,
        optimizer=make_optimizer(model, s),
        device=torch.device("cpu"),
    )
    metrics = end_epoch(
        worker,
        progress,
        metrics={"epoch": epoch, "loss": 1.0, "steps": 10},
        report=report,
        validate_now=True,
        last=False,
        record={"ranks": []},
    )
    return metrics, reports


def test_end_epoch_exports_the_best_only_when_it_improves(tmp_path, labeled):
    _, scenes = labeled
    s = sample_settings(scenes, tmp_path)
    model, _, _ = initial_state(s)
    best = tmp_path / "best"
    # Not better than the best so far: recorded and checkpointed, not exported.
    progress = TrainingState(epoch=4, best=2.0)
    metrics, reports = run_end_of_epoch(s, model, progress, epoch=5)
    assert not best.exists() and progress.best == 2.0 and progress.epoch == 5
    assert progress.steps == 10 and progress.overhead_s >= metrics["val_seconds"] > 0
    assert reports == [(metrics, ["state.pt"]), 5]
    assert 0 <= metrics["val_mean_iou"] <= 1 and metrics["loss"] == 1.0
    assert progress.history == [
        {**metrics, "ranks": [], "confusion": progress.history[0]["confusion"]}
    ]
    # Better: exported, with its report.
    progress.best = -math.inf
    metrics, _ = run_end_of_epoch(s, model, progress, epoch=6)
    assert best.exists() and progress.best == metrics["val_mean_iou"]
    exported = json.loads((tmp_path / "best_report.json").read_text())
    assert exported["epoch"] == 6 and exported["mean_iou"] == metrics["val_mean_iou"]
    _, meta = load_checkpoint(best)
    assert meta.provenance["epoch"] == 6 and meta.classes == CLASSES
    # The same score again is no improvement: the export stays epoch 6's.
    run_end_of_epoch(s, model, progress, epoch=7)
    assert json.loads((tmp_path / "best_report.json").read_text())["epoch"] == 6
    assert [h["epoch"] for h in progress.history] == [5, 6, 7]


def test_train_in_process_runs_the_epochs_and_exports_the_best(tmp_path, labeled):
    _, scenes = labeled
    s = sample_settings(scenes, tmp_path, epochs=2, steps_per_epoch=3, trained_by="a test")
    seen = []
    progress = train_in_process(s, report=lambda metrics, d: seen.append(metrics))
    assert [m["epoch"] for m in seen] == [0, 1] and progress.epoch == 1
    assert [h["steps"] for h in progress.history] == [3, 3]
    assert all(h["world_size"] == 1 and len(h["ranks"]) == 1 for h in progress.history)
    assert progress.best == max(h["val_mean_iou"] for h in progress.history)
    _, meta = load_checkpoint(tmp_path / "best")
    assert meta.provenance["trained_by"] == "a test" and meta.mean == s.mean


def test_train_in_process_stops_at_the_time_limit_and_still_exports(tmp_path, labeled):
    _, scenes = labeled
    s = sample_settings(scenes, tmp_path, epochs=50, time_limit_minutes=1e-9)
    progress = train_in_process(s)
    (only,) = progress.history
    assert only["steps"] == 0 and only["time_limit_reached"]
    assert (tmp_path / "best").exists()


def test_the_schedule_warms_up_holds_and_decays_to_zero_by_steps_or_time(tmp_path, labeled):
    _, scenes = labeled
    s = sample_settings(scenes, tmp_path, warmup_steps=50)
    assert lr_factor(s, 0, 0.0) == pytest.approx(1 / 50)  # warm-up
    assert lr_factor(s, 49, 0.1) == lr_factor(s, 500, 0.7) == 1.0  # held for 70%
    assert lr_factor(s, 500, 0.85) == pytest.approx(0.5)  # then linear to zero
    assert lr_factor(s, 500, 1.0) == 0.0 == lr_factor(s, 500, 1.5)
    cosine = sample_settings(scenes, tmp_path, schedule="cosine", warmup_steps=1)
    assert lr_factor(cosine, 10, 0.5) == pytest.approx(0.5)
    # The position is the larger of the step and time fractions: a job 50 s into a
    # 100 s budget (no reserve) is halfway, whatever its step count.
    now = time.time()
    pace = Pace(Budget(now - 50, now + 50), total_steps=10**6, step=100, reserve=0.0)
    stop, factor = pace.agree(s, torch.device("cpu"))
    assert not stop and factor == 1.0
    pace = Pace(Budget(now - 85, now + 15), total_steps=10**6, step=100, reserve=0.0)
    assert pace.agree(s, torch.device("cpu"))[1] == pytest.approx(0.5, abs=0.01)
    # Past the deadline less the reserve: stop.
    pace = Pace(Budget(now - 95, now + 5), total_steps=10**6, reserve=10.0)
    assert pace.agree(s, torch.device("cpu"))[0]


def test_bf16_autocast_keeps_fp32_master_weights_and_the_loss(tmp_path, labeled):
    _, scenes = labeled
    losses = {}
    for precision in ("fp32", "bf16"):
        s = sample_settings(scenes, tmp_path, precision=precision, lr=1e-9, warmup_steps=1)
        model, optimizer, _ = initial_state(s)
        result = epoch(model, optimizer, s, steps=3)
        losses[precision] = result.losses
        assert all(p.dtype == torch.float32 for p in model.parameters())
        moments = [v["exp_avg"] for v in optimizer.state_dict()["state"].values()]
        assert moments and all(m.dtype == torch.float32 for m in moments)
    # Same seed, same windows, (almost) no update: bf16 matmuls, same loss to ~1%.
    assert np.allclose(losses["bf16"], losses["fp32"], rtol=0.02)


def test_validation_takes_a_bounded_share_of_the_time(tmp_path, labeled):
    _, scenes = labeled
    s = sample_settings(scenes, tmp_path, val_share=0.1)
    budget = Budget(time.time() - 40)
    progress = TrainingState()
    assert due_for_validation(s, progress, budget, last=False)  # first: to measure it
    progress.history.append({"validated": True, "val_seconds": 4.0, "checkpoint_seconds": 1.0})
    progress.overhead_s = 5.0
    # 5 s spent + 5 s more > 10% of 40 s: skip; of 100 s: validate; the last: always.
    assert not due_for_validation(s, progress, budget, last=False)
    assert due_for_validation(s, progress, Budget(time.time() - 100), last=False)
    assert due_for_validation(s, progress, budget, last=True)
    train_only = sample_settings([sc for sc in scenes if sc.split == "train"], tmp_path)
    assert not due_for_validation(train_only, TrainingState(), budget, last=True)


def test_without_val_scenes_the_last_model_is_exported(tmp_path, labeled):
    _, scenes = labeled
    train = [LabeledScene(sc.image, sc.label, "train") for sc in scenes[:1]]
    s = sample_settings(train, tmp_path, epochs=2, steps_per_epoch=2)
    progress = train_in_process(s)
    assert [h["validated"] for h in progress.history] == [False, False]
    report = json.loads((tmp_path / "best_report.json").read_text())
    assert report.pop("halo")["scenes"] == ["generated:777x1001"]  # no val scene to measure on
    assert report == {"epoch": 1, "validated": False}
    _, meta = load_checkpoint(tmp_path / "best")
    assert meta.provenance["epoch"] == 1 and meta.provenance["val_mean_iou"] is None
    assert meta.halo is not None and meta.halo.scenes == ("generated:777x1001",)
    # Every epoch reports its pace.
    assert all(h["steps_per_s"] > 0 and h["windows"] == 4 for h in progress.history)


def test_default_cpus_per_worker_always_fit_the_cluster():
    from fcnrs.training.trainer import pack_cpus

    assert pack_cpus([(2, 0)], 1, use_gpu=False) == 2  # this machine: both cores
    assert pack_cpus([(2, 0)], 2, use_gpu=False) == 1
    # Two 16-CPU nodes, three workers: 8 each (two on one node), not 32 // 3 = 10.
    assert pack_cpus([(16, 0), (16, 0)], 3, use_gpu=False) == 8
    # GPU workers land on GPU nodes only: a CPU-only head does not count.
    assert pack_cpus([(8, 0), (16, 2), (16, 2)], 4, use_gpu=True) == 8
    assert pack_cpus([(8, 0), (16, 4)], 4, use_gpu=True) == 4
