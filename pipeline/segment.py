"""One scene, end to end, in one process: plan, read, predict, write, publish.

The stages are the ones the distributed job runs, in the same order; this module
wires them together without Ray so a scene can be segmented from a notebook or a
test, and so the distributed output can be checked against it label for label.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from os import PathLike

from fcnrs.fcn_model import checkpoint_digest, read_meta

from .batch_reading import SceneReader
from .inference import Predictor, default_device
from .planning import plan_batches
from .scenes import ScenePlan, SegmentSettings, plan_scene
from .storage import local_copy
from .writing import StagingGroup, staging_group

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneResult:
    """What :func:`segment_scene` did with one scene."""

    scene: str
    output: str
    tiles: int
    tiles_predicted: int
    valid_pixels: int
    seconds: float


def segment_scene(
    scene: str | PathLike[str],
    *,
    model: str | PathLike[str],
    out_dir: str | PathLike[str],
    settings: SegmentSettings | None = None,
    predictor: Predictor | None = None,
) -> SceneResult:
    """Segment one scene into ``<out_dir>/<scene stem>.zarr``.

    Parameters
    ----------
    scene
        A GeoTIFF.
    model
        A checkpoint written by :func:`fcnrs.fcn_model.save_checkpoint`.
    out_dir
        Output folder.
    settings
        Tiling (the halo by default from the checkpoint), batching, band
        selection, probabilities, precision, test-time augmentation.
    predictor
        A loaded :class:`Predictor` to reuse across scenes (loaded from ``model``
        when omitted).
    """
    start = time.perf_counter()
    device = predictor.device.type if predictor else default_device()
    settings = (settings or SegmentSettings()).resolved(device)
    model = local_copy(model)  # an s3:// checkpoint is fetched once, by ETag
    meta = predictor.meta if predictor else read_meta(model)
    settings = settings.with_halo(meta)
    plan = plan_scene(scene, meta=meta, out_dir=out_dir, settings=settings)
    if predictor is None:
        predictor = Predictor(
            model,
            precision=settings.precision,
            probabilities=settings.probabilities,
            tta=settings.tta,
        )
    group = staging_group(plan, meta=meta, model_digest=checkpoint_digest(model), settings=settings)
    group.create()
    predicted, valid_pixels = _write_batches(scene, plan, group, predictor, settings)
    seconds = time.perf_counter() - start
    group.publish(valid_pixels)
    log.info(
        "%s: %d tiles (%d predicted), %d valid pixels, %.1f s -> %s",
        scene,
        len(plan.grid),
        predicted,
        valid_pixels,
        seconds,
        plan.output,
    )
    return SceneResult(
        str(scene), str(plan.output), len(plan.grid), predicted, valid_pixels, seconds
    )


def _write_batches(
    scene: str | PathLike[str],
    plan: ScenePlan,
    group: StagingGroup,
    predictor: Predictor,
    settings: SegmentSettings,
) -> tuple[int, int]:
    """Read, predict and write every batch of a planned scene; returns the tiles
    predicted and the valid pixels written."""
    chunks = group.chunks()
    predicted = valid_pixels = 0
    with SceneReader(scene, plan.bands) as reader:
        size = settings.batch_size or predictor.batch_size(plan.grid.max_read_shape)
        for planned in plan_batches(plan.grid, size):
            out = predictor(reader.read_batch(planned))
            probs = out.probabilities
            for k, tile in enumerate(planned):
                valid_pixels += chunks.write(
                    tile.core, out.labels[k], None if probs is None else probs[k]
                )
            predicted += out.predicted
    return predicted, valid_pixels
