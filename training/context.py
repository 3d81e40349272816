"""The last step of fine-tuning: measure the context the exported model needs.

The halo is measured on the run's val scenes (a generated scene where it has
none) with :func:`~fcnrs.pipeline.context.measure_halo` and recorded in
``<out>/best`` and ``<out>/best_report.json``; ``jobs/segment_scenes.py`` then
tiles with it by default.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from fcnrs.fcn_model import HaloMeasurement, record_halo
from fcnrs.pipeline.context import measure_halo

from .settings import TrainSettings

log = logging.getLogger(__name__)

#: Time the measurement takes, in validations of the same scenes (measured: X):
#: a time-limited run keeps this much of its budget for it.
MEASURE_VALIDATIONS = 3.0
#: Seconds kept for it where a run has no val scenes and measures on the
#: generated scene (measured: X s for a width-0.25 FCN-4s of 13 bands here).
MEASURE_GENERATED_S = 10.0


def measure_reserve(settings: TrainSettings, validation_seconds: float) -> float:
    """Seconds a time-limited run keeps for :func:`record_best_halo`, given how
    long its latest validation took."""
    if settings.val_scenes:
        return MEASURE_VALIDATIONS * validation_seconds
    return MEASURE_GENERATED_S


def record_best_halo(settings: TrainSettings) -> HaloMeasurement | None:
    """Measure ``<out>/best``'s halo and record it in the checkpoint and its report.

    Returns the measurement, or None when there is no exported model or the
    measurement failed (logged: the checkpoint is then left without a halo and
    runs fall back to the conservative one for its architecture).
    """
    best = Path(settings.out) / "best"
    if not best.is_file():
        return None
    started = time.perf_counter()
    scenes = [scene.image for scene in settings.val_scenes]
    try:
        measured = measure_halo(best, scenes, bands=settings.bands)
    except (ValueError, OSError) as exc:
        log.warning("%s: the halo was not measured (%s); runs will use the default", best, exc)
        return None
    record_halo(best, measured)
    report_path = Path(settings.out) / "best_report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        report["halo"] = asdict(measured)
        report_path.write_text(json.dumps(report, indent=2))
    log.info(
        "halo %s, in %.1f s; recorded in %s",
        measured.describe(),
        time.perf_counter() - started,
        best,
    )
    return measured
