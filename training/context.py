"""The last step of fine-tuning: measure the context the exported model needs.

The halo is measured on the run's val scenes (a generated scene where it has
none) with :func:`~fcnrs.pipeline.context.measure_halo` and recorded in
``<out>/best`` and ``<out>/best_report.json``; ``jobs/segment_scenes.py`` then
tiles with it by default.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from fcnrs.fcn_model import HaloMeasurement, record_halo
from fcnrs.pipeline.context import measure_halo
from fcnrs.pipeline.storage import Location, local_copy

from .settings import TrainSettings

log = logging.getLogger(__name__)

#: Time the measurement takes, in validations of the same scenes (an estimate: one
#: whole pass and, on the trained networks measured here, three tiled ones):
#: a time-limited run keeps this much of its budget for it.
MEASURE_VALIDATIONS = 3.0
#: Seconds kept for it where a run has no val scenes and measures on the
#: generated scene (`fcnrs context` took 6.5 s in all, start-up included, for a
#: width-0.25 FCN-4s of 13 bands on this 2-core machine, loaded by other work).
MEASURE_GENERATED_S = 10.0


def measure_reserve(settings: TrainSettings, validation_seconds: float) -> float:
    """Seconds a time-limited run keeps for :func:`record_best_halo`, given how
    long its latest validation took."""
    if settings.val_scenes:
        return MEASURE_VALIDATIONS * validation_seconds
    return MEASURE_GENERATED_S


def record_best_halo(settings: TrainSettings) -> HaloMeasurement | None:
    """Measure ``<out>/best``'s halo and record it in the checkpoint and its report
    (``<out>`` local or ``s3://``: a remote checkpoint is measured and rewritten in
    a local copy, then uploaded whole).

    Returns the measurement, or None when there is no exported model or the
    measurement failed (logged: the checkpoint is then left without a halo and
    runs fall back to the conservative one for its architecture).
    """
    out = Location(settings.out)
    best = out / "best"
    if not best.is_file():
        return None
    started = time.perf_counter()
    scenes = [scene.image for scene in settings.val_scenes]
    with tempfile.TemporaryDirectory(prefix="fcnrs-halo-") as tmp:
        local = Path(tmp) / "best"
        shutil.copyfile(local_copy(str(best)), local)
        try:
            measured = measure_halo(local, scenes, bands=settings.bands)
        except (ValueError, OSError) as exc:
            log.warning("%s: the halo was not measured (%s); runs will use the default", best, exc)
            return None
        record_halo(local, measured)
        best.upload(local)  # whole: a rename into place, or one object
    report_path = out / "best_report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_bytes())
        report["halo"] = asdict(measured)
        report_path.write_bytes(json.dumps(report, indent=2).encode("utf-8"))
    log.info(
        "halo %s, in %.1f s; recorded in %s",
        measured.describe(),
        time.perf_counter() - started,
        best,
    )
    return measured
