"""One scene, end to end, in one process: plan, read, predict, write.

The stages are the ones the distributed job runs, in the same order; this module
wires them together without Ray so a scene can be segmented from a notebook or a
test, and so the distributed output can be checked against it label for label.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from fcn_model import ModelMeta, checkpoint_digest, read_meta

from .inference import Precision, Predictor
from .planning import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE_SIZE,
    Tile,
    TileGrid,
    plan_batches,
    plan_tiles,
)
from .reading import SceneInfo, TileReader, inspect_scene, resolve_bands, scene_stem
from .writing import LabelWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentSettings:
    """Everything besides the model that decides a scene's output."""

    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP
    batch_size: int = 4
    bands: tuple[int, ...] | None = None  # None: the checkpoint's bands
    probabilities: bool = False
    precision: Precision = "fp32"

    def output_settings(self) -> dict[str, object]:
        """The settings that decide the output's bytes (the batch size does not)."""
        keyed = asdict(self)
        keyed.pop("batch_size")
        return keyed

    def digest(self) -> str:
        text = json.dumps(self.output_settings(), sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ScenePlan:
    """A scene checked against the model, and its tiles: everything before pixels."""

    info: SceneInfo
    bands: tuple[int, ...]
    grid: TileGrid
    output: Path


@dataclass(frozen=True)
class SceneResult:
    scene: str
    output: str
    tiles: int
    tiles_predicted: int
    valid_pixels: int
    seconds: float


def plan_scene(
    scene: str | PathLike[str],
    *,
    meta: ModelMeta,
    out_dir: str | PathLike[str],
    settings: SegmentSettings,
) -> ScenePlan:
    """Open a scene's header, check it fits the model, and cut it into tiles.

    Raises :class:`~pipeline.errors.SceneError` (naming the file) before any output
    is created when the scene is unreadable or its bands do not fit the model.
    """
    info = inspect_scene(scene)
    bands = resolve_bands(info, settings.bands or meta.bands, expected=meta.in_channels)
    grid = plan_tiles(
        info.height, info.width, tile_size=settings.tile_size, overlap=settings.overlap
    )
    return ScenePlan(info, bands, grid, Path(out_dir) / f"{scene_stem(scene)}.zarr")


def label_writer(
    plan: ScenePlan, *, meta: ModelMeta, model_digest: str, settings: SegmentSettings
) -> LabelWriter:
    """The writer of a planned scene, carrying what its bytes depend on (model,
    output settings, bands), so a later run can tell whether to skip or resume it."""
    return LabelWriter(
        plan.output,
        info=plan.info,
        grid=plan.grid,
        classes=meta.classes,
        colors=meta.colors,
        probabilities=settings.probabilities,
        attrs={
            "model_digest": model_digest,
            "model_variant": meta.variant,
            "bands": list(plan.bands),
            "settings": settings.output_settings(),
            "settings_digest": settings.digest(),
        },
    )


def core_box(tile: Tile) -> np.ndarray:
    core, read = tile.core, tile.read
    return np.array([core.row - read.row, core.col - read.col, core.height, core.width])


def read_batch(
    reader: TileReader, batch: Sequence[Tile]
) -> tuple[list[Tile], list[Tile], dict[str, np.ndarray] | None]:
    """Read a planned batch. Returns ``(nodata_tiles, tiles, arrays)``: tiles whose
    core has no valid pixel never reach the model; the others are stacked (arrays
    is None when none is left)."""
    nodata, keep, images, valids = [], [], [], []
    for tile in batch:
        image, valid = reader.read(tile.read)
        if not valid[tile.core.relative_to(tile.read)].any():
            nodata.append(tile)
            continue
        keep.append(tile)
        images.append(image)
        valids.append(valid)
    if not keep:
        return nodata, keep, None
    arrays = {
        "image": np.stack(images),
        "valid": np.stack(valids),
        "core": np.stack([core_box(t) for t in keep]),
    }
    return nodata, keep, arrays


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
        A checkpoint written by :func:`fcn_model.save_checkpoint`.
    out_dir
        Output folder.
    settings
        Tiling, batching, band selection, probabilities, precision.
    predictor
        A loaded :class:`Predictor` to reuse across scenes (loaded from ``model``
        when omitted).
    """
    settings = settings or SegmentSettings()
    start = time.perf_counter()
    meta = predictor.meta if predictor else read_meta(model)
    plan = plan_scene(scene, meta=meta, out_dir=out_dir, settings=settings)
    if predictor is None:
        predictor = Predictor(
            model, precision=settings.precision, probabilities=settings.probabilities
        )
    writer = label_writer(plan, meta=meta, model_digest=checkpoint_digest(model), settings=settings)
    writer.create()
    predicted = valid_pixels = 0
    with TileReader(scene, plan.bands, meta.mean, meta.std) as reader:
        for planned in plan_batches(plan.grid, settings.batch_size):
            nodata, tiles, batch = read_batch(reader, planned)
            for tile in nodata:
                writer.write_nodata_tile(tile.core)
            if batch is None:
                continue
            out = predictor(batch)
            probs = out.get("probabilities")
            for k, tile in enumerate(tiles):
                writer.write_tile(tile.core, out["labels"][k], None if probs is None else probs[k])
                valid_pixels += int((out["labels"][k] != 255).sum())
            predicted += len(tiles)
    seconds = time.perf_counter() - start
    writer.publish()
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
        scene=str(scene),
        output=str(plan.output),
        tiles=len(plan.grid),
        tiles_predicted=predicted,
        valid_pixels=valid_pixels,
        seconds=seconds,
    )
