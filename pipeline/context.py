"""How much context a network needs: the halo, measured and chosen.

A tile's labels can depend on pixels up to the receptive field's radius away
(about 200 px for FCN-8s), but how far a network actually looks depends on its
weights: a freshly initialised network spreads its attention wide, a trained one
looks much closer. So the halo belongs to the checkpoint:

- :func:`measure_halo` finds the smallest multiple of the stride (32) whose
  tiles agree with one whole-scene pass on at least :data:`THRESHOLD` of the
  valid pixels, with dense seams (:data:`MEASURE_TILE_SIZE`-px cores), on given
  scenes or a generated one (:func:`write_generated_scene`), and adds
  :data:`MARGIN` for scenes unlike those. Fine-tuning records it in the
  checkpoint it exports; ``fcnrs context MODEL [SCENE]`` does it for a
  checkpoint made elsewhere.
- :func:`default_halo` is what a run uses when ``--overlap`` is not given: the
  recorded halo, else :data:`UNTRAINED_HALO` for the network's architecture and
  width, a conservative value measured on untrained networks.

Imports no torch (the model runs only inside :func:`measure_halo`), so read and
write tasks that plan scenes stay light.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fcnrs.fcn_model.meta import STRIDE, HaloMeasurement, ModelMeta

from .batch_reading import SceneReader
from .labels import NODATA
from .planning import Tile, Window, plan_batches, plan_tiles
from .reading import inspect_scene, resolve_bands

if TYPE_CHECKING:
    from .inference import Predictor
    from .precision import Precision

log = logging.getLogger(__name__)

#: The share of valid pixels whose tiled label must equal a whole-scene pass's.
THRESHOLD = 0.999
#: Core edge while measuring: many seams (a 1024-px region has 16 tiles), so the
#: halo found also holds for the larger cores runs use.
MEASURE_TILE_SIZE = 256
#: Measure on a central region of at most this edge: the halo is a property of
#: the network, and a region this size holds many seams.
MEASURE_MAX_SIDE = 1024
#: The largest halo tried: beyond FCN's receptive field (about 404 px across),
#: so a tiled fp32 pass equals the whole-scene pass there.
MAX_HALO = 512
#: Added to the halo a network needs on the scenes it was measured on before it
#: is recorded: scenes unlike those can need more (a thin-structures model that
#: needed 32 px on its val scene and on another of its kind needed 96 px on the
#: real Landsat scene, where one stride of margin gave 99.82%; README, *The
#: halo comes from the checkpoint*). Two strides cover that; at the default
#: 1536-px cores each stride costs about 0.07 pixels computed per pixel written.
MARGIN = 2 * STRIDE

#: The halo of an *untrained* network of each variant and width: the largest,
#: plus one stride, of the smallest halos with 99.9% agreement over 2 seeds, two
#: initialisations (the network's own He-normal and torch's default) and two
#: scenes (the generated one and the real Landsat scene with its nodata collar),
#: in bf16 (this machine's default precision), 768-px regions, 256-px cores.
#: Measured on 2026-12-04/05 by ``python benchmarks/untrained_halo.py`` (see the
#: README, *The halo comes from the checkpoint*). A checkpoint without a recorded
#: halo gets this: whatever its training, it needs no more context than a
#: network that has not learnt to ignore the far field. Width 1.0 was not
#: measured (eight hours on this 2-core machine): it gets the variant's largest.
UNTRAINED_HALO: dict[str, dict[float, int]] = {
    "fcn32s": {0.125: 224, 0.25: 192, 0.5: 224},
    "fcn16s": {0.125: 224, 0.25: 224, 0.5: 224},
    "fcn8s": {0.125: 224, 0.25: 224, 0.5: 224},
    "fcn4s": {0.125: 224, 0.25: 224, 0.5: 224},  # 0.5: 128 px at most; README
    "fcn2s": {0.125: 224, 0.25: 224, 0.5: 224},  # 0.25: 64 px at most, one seed; README
}


def default_halo(meta: ModelMeta) -> tuple[int, str]:
    """The halo a run uses for ``meta``'s network when ``--overlap`` is not given,
    and why: the one recorded in the checkpoint, else :data:`UNTRAINED_HALO` for
    its variant and width (the largest of the variant's widths for a width not
    measured)."""
    if meta.halo is not None:
        return meta.halo.halo, f"recorded in the checkpoint, {meta.halo.describe()}"
    widths = UNTRAINED_HALO.get(meta.variant)
    if not widths:  # an unknown variant fails at loading; be safe anyway
        return MAX_HALO, f"no halo recorded and no measurement for {meta.variant}"
    halo = widths.get(meta.width, max(widths.values()))
    measured = "" if meta.width in widths else f" (largest measured width; {meta.width} was not)"
    return halo, (
        f"no halo recorded in the checkpoint: the conservative halo of an untrained "
        f"{meta.variant} of width {meta.width}{measured}; `fcnrs context MODEL` measures "
        "this checkpoint's own, usually far smaller"
    )


@dataclass(frozen=True)
class _Target:
    """A scene region to measure on: its reader, the region and the whole-region labels."""

    name: str
    reader: SceneReader
    region: Window
    whole: np.ndarray
    valid: np.ndarray


def central_region(height: int, width: int, max_side: int) -> Window:
    """The scene's central region of at most ``max_side`` per edge, its origin on
    the stride grid (so its tiles see pixels at the phase a run gives them)."""
    h, w = min(height, max_side), min(width, max_side)
    r0 = (height - h) // 2 // STRIDE * STRIDE
    c0 = (width - w) // 2 // STRIDE * STRIDE
    return Window(r0, c0, h, w)


def seam_tile_size(region: Window, tile_size: int) -> int:
    """The core edge to measure ``region`` at: ``tile_size`` rounded to the stride,
    or less, so that three cores span the region's shorter side (64 px at the
    least: smaller cores would cost a small scene's measurement dearly)."""
    fits = -(-min(region.shape) // 3 // STRIDE) * STRIDE
    return max(2 * STRIDE, min(STRIDE * max(1, round(tile_size / STRIDE)), fits))


def region_labels(
    predictor: Predictor,
    reader: SceneReader,
    region: Window,
    *,
    tile_size: int,
    overlap: int,
    batch_size: int = 4,
) -> np.ndarray:
    """Labels of ``region`` stitched from stride-aligned tiles, the nightly job's
    way (planned batches, :meth:`Predictor.__call__`), held in memory."""
    grid = plan_tiles(region.height, region.width, tile_size=tile_size, overlap=overlap)
    out = np.empty(region.shape, np.uint8)

    def shifted(w: Window) -> Window:
        return Window(w.row + region.row, w.col + region.col, w.height, w.width)

    tiles = [Tile(t.index, shifted(t.core), shifted(t.read)) for t in grid]
    for batch in plan_batches(tiles, batch_size):
        labels = predictor(reader.read_batch(batch)).labels
        for k, tile in enumerate(batch):
            out[tile.core.relative_to(region)] = labels[k]
    return out


def measure_halo(
    model: str | PathLike[str],
    scenes: Sequence[str | PathLike[str]] = (),
    *,
    bands: Sequence[int] | None = None,
    tile_size: int = MEASURE_TILE_SIZE,
    threshold: float = THRESHOLD,
    margin: int = MARGIN,
    precision: Precision = "fp32",
    max_side: int = MEASURE_MAX_SIDE,
    max_halo: int = MAX_HALO,
    device: str | None = None,
) -> HaloMeasurement:
    """The smallest stride-multiple halo whose tiles agree with a whole-scene pass,
    and the halo to record: that plus ``margin``.

    Each scene's central region (at most ``max_side`` per edge) is labelled once
    whole and then tiled with ``tile_size``-px cores at halos 0, 32, 64, ...,
    through the nightly job's own reader and :class:`~fcnrs.pipeline.inference.Predictor`;
    the first halo at which every scene agrees on at least ``threshold`` of its
    valid pixels is what the network *needs* on these scenes. The halo recorded
    for runs adds ``margin`` (see :data:`MARGIN`), and its agreement is measured too.

    Parameters
    ----------
    model
        A checkpoint.
    scenes
        GeoTIFFs to measure on; none: a scene generated with the checkpoint's band
        count and normalisation (:func:`write_generated_scene`).
    bands
        1-based bands to read (default: the checkpoint's).
    tile_size
        Core edge of the tiles; small cores make many seams. Smaller where a
        scene's region would not hold three cores along its shorter side
        (:func:`seam_tile_size`); the smallest used is recorded.
    threshold
        Share of valid pixels that must agree.
    margin
        Pixels (a multiple of 32) added to the halo needed here, for scenes unlike these.
    precision
        The model's precision while measuring (``fp32``: the network's own
        context, without bf16's rounding noise).
    max_side
        Edge of the central region measured.
    max_halo
        Give up beyond this halo.
    device
        Where the model runs (default: CUDA when available).

    Returns
    -------
    HaloMeasurement
        The halo to use, the halo needed, the (lowest) agreement at the halo to
        use, every halo tried, and how it was measured.

    Raises
    ------
    ValueError
        No scene has a valid pixel, or no halo up to ``max_halo`` reaches
        ``threshold`` (the message lists what each reached).
    """
    from fcnrs.fcn_model import read_meta

    from .inference import Predictor

    if margin < 0 or margin % STRIDE:
        raise ValueError(f"margin must be a multiple of {STRIDE} px, 0 or more; got {margin}")
    meta = read_meta(model)
    predictor = Predictor(model, device=device, precision=precision)
    targets: list[_Target] = []
    with tempfile.TemporaryDirectory(prefix="fcnrs-context-") as tmp:
        if scenes:
            paths = names = [str(s) for s in scenes]
        else:
            paths = [str(write_generated_scene(Path(tmp) / "generated.tif", meta))]
            names = [f"generated:{GENERATED_SHAPE[0]}x{GENERATED_SHAPE[1]}"]
        try:
            targets = _targets(predictor, paths, names, bands or meta.bands, meta, max_side)
            search = _Search(predictor, targets, tile_size)
            needed = search.smallest(threshold, max_halo)
            if needed is None:
                steps = ", ".join(f"{h} px {a:.3%}" for h, a in search.tried)
                raise ValueError(
                    f"{model}: no halo up to {max_halo} px gives {threshold:.1%} agreement with "
                    f"a whole-scene pass on {', '.join(names)} ({steps})"
                )
            if margin:
                search.agreement(needed + margin, stop_below=0.0)
        finally:
            for t in targets:
                t.reader.close()
    return HaloMeasurement(
        halo=needed + margin,
        needed=needed,
        agreement=search.tried[-1][1],
        threshold=threshold,
        tile_size=min(search.cores),
        precision=predictor.precision,
        scenes=tuple(names),
        measured=datetime.now(UTC).isoformat(timespec="seconds"),
        tried=tuple(search.tried),
    )


class _Search:
    """Agreement of tiled labels with the whole-region pass, halo by halo, over
    every target; each halo tried is kept with its lowest agreement."""

    def __init__(self, predictor: Predictor, targets: Sequence[_Target], tile_size: int) -> None:
        self.predictor, self.targets = predictor, targets
        # Small scenes get smaller cores: three along each region's shorter
        # side, so that some core has seams on all four sides.
        self.cores = [seam_tile_size(t.region, tile_size) for t in targets]
        self.tried: list[tuple[int, float]] = []

    def agreement(self, halo: int, *, stop_below: float) -> float:
        """The lowest share of agreeing valid pixels over the targets at ``halo``
        (the first one below ``stop_below`` ends the count: no later one can raise it)."""
        worst = 1.0
        for t, core in zip(self.targets, self.cores, strict=True):
            tiled = region_labels(self.predictor, t.reader, t.region, tile_size=core, overlap=halo)
            worst = min(worst, float((tiled[t.valid] == t.whole[t.valid]).mean()))
            if worst < stop_below:
                break
        log.info("halo %d px: %.4f%% of valid pixels agree", halo, 100 * worst)
        self.tried.append((halo, worst))
        return worst

    def smallest(self, threshold: float, max_halo: int) -> int | None:
        """The smallest multiple of the stride up to ``max_halo`` that reaches
        ``threshold`` (None: none does)."""
        for halo in range(0, max_halo + 1, STRIDE):
            if self.agreement(halo, stop_below=threshold) >= threshold:
                return halo
        return None


def _targets(
    predictor: Predictor,
    paths: Sequence[str],
    names: Sequence[str],
    bands: Sequence[int],
    meta: ModelMeta,
    max_side: int,
) -> list[_Target]:
    targets: list[_Target] = []
    for path, name in zip(paths, names, strict=True):
        info = inspect_scene(path)
        chosen = resolve_bands(info, bands, expected=meta.in_channels)
        reader = SceneReader(path, chosen)
        region = central_region(info.height, info.width, max_side)
        edge = STRIDE * -(-max(region.shape) // STRIDE)
        whole = region_labels(predictor, reader, region, tile_size=edge, overlap=0)
        valid = whole != NODATA
        if not valid.any():
            reader.close()
            log.warning("%s: no valid pixel in its central region; not measured on", path)
            continue
        targets.append(_Target(name, reader, region, whole, valid))
    if not targets:
        raise ValueError(f"no valid pixel to measure the halo on in {', '.join(paths)}")
    return targets


#: Height and width of :func:`write_generated_scene`'s scene: odd, and larger
#: than :data:`MEASURE_MAX_SIDE` in neither direction.
GENERATED_SHAPE = (777, 1001)


def write_generated_scene(
    path: str | PathLike[str],
    meta: ModelMeta,
    *,
    height: int = GENERATED_SHAPE[0],
    width: int = GENERATED_SHAPE[1],
    seed: int = 0,
) -> Path:
    """A scene for a checkpoint that comes without one: float32 bands at the
    checkpoint's mean and standard deviation, laid out as regions of a few
    "classes" with their own spectra (sharp edges), smooth texture and noise,
    and a nodata disc (NaN). Odd-sized, in UTM."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    bands = meta.in_channels
    regions = np.stack([_smooth(rng, height, width, 64) for _ in range(5)]).argmax(0)
    spectra = rng.normal(0.0, 1.0, (5, bands)).astype(np.float32)
    z = spectra[regions].transpose(2, 0, 1)
    z += 0.5 * np.stack([_smooth(rng, height, width, 12) - 0.5 for _ in range(bands)])
    z += rng.normal(0.0, 0.15, z.shape).astype(np.float32)
    mean = np.asarray(meta.mean, np.float32)[:, None, None]
    std = np.asarray(meta.std, np.float32)[:, None, None]
    data = (mean + std * z).astype(np.float32)
    yy, xx = np.mgrid[:height, :width]
    data[:, (yy - 0.6 * height) ** 2 + (xx - 0.3 * width) ** 2 < (min(height, width) / 5) ** 2] = (
        np.nan
    )
    profile = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=max(meta.bands),
        dtype="float32",
        crs="EPSG:32633",
        transform=from_origin(500000, 4200000, 10, 10),
        nodata=float("nan"),
        tiled=True,
        blockxsize=256,
        blockysize=256,
    )
    out = np.zeros((max(meta.bands), height, width), np.float32)
    for k, b in enumerate(meta.bands):  # the checkpoint's bands where it reads them
        out[b - 1] = data[k]
    path = Path(path)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(out)
    return path


def _smooth(rng: np.random.Generator, height: int, width: int, scale: int) -> np.ndarray:
    """A smooth random field in [0, 1]: coarse noise upsampled bilinearly."""
    from scipy.ndimage import zoom

    coarse = rng.random((height // scale + 2, width // scale + 2)).astype(np.float32)
    field: np.ndarray = zoom(coarse, (height / coarse.shape[0], width / coarse.shape[1]), order=1)
    return field[:height, :width]
