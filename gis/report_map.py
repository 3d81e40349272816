"""The night's map for its page: the mosaic's quicklook under every scene's
footprint, each coloured by what happened to the scene tonight.

The map is drawn in the mosaic's CRS and on its grid, shrunk so that its
longer side is the size asked for (:func:`~fcnrs.gis.quicklook.quicklook_shape`).
Without a mosaic (or one that cannot be read) the footprints are drawn alone,
in the night's CRS, in a frame around them 800 pixels wide. Scenes that failed
tonight and have no published output are placed by their source scene's own
outline; what cannot be placed is listed with the reason.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from pyproj import CRS
from rasterio.transform import Affine

from fcnrs.pipeline.errors import PipelineError
from fcnrs.pipeline.reading import open_raster
from fcnrs.pipeline.storage import Location

from .folders import MOSAIC_DIR, MOSAIC_VRT
from .night import in_precedence, night_crs
from .quicklook import quicklook_shape, read_quicklook, write_png
from .rasters import PublishedOutput, footprint, reopen
from .report_values import Footprint, MapStatus, NightMap, SceneLine

#: Width in pixels of a map of footprints alone.
_FRAME_WIDTH = 800
#: What a scene's status tonight, or its absence from tonight's run, shows as.
_SHOWN_AS: dict[str | None, MapStatus] = {
    None: "earlier",
    "done": "done",
    "skipped": "skipped",
    "failed": "stale",
    "interrupted": "stale",
}
#: Statuses of scenes that left no output tonight.
_UNFINISHED: dict[str, MapStatus] = {"failed": "failed", "interrupted": "interrupted"}


@dataclass(frozen=True)
class _Frame:
    """The map's pixel grid (north up, like a raster), and its CRS where known."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int


@dataclass(frozen=True)
class _Ring:
    name: str
    status: MapStatus
    #: (n, 2): the outline in the map's CRS.
    xy: np.ndarray
    title: str


def _and(note: str, more: str) -> str:
    return f"{note}; {more}" if note else more


def _mosaic_picture(out: Location, size: int) -> tuple[bytes | None, _Frame | None, str]:
    """The mosaic's quicklook (PNG bytes) and its frame, where
    ``<out>/mosaic/labels.vrt`` can be read, and what went wrong otherwise."""
    vrt = out / MOSAIC_DIR / MOSAIC_VRT
    if not vrt.is_file():
        why = f"no mosaic yet ({MOSAIC_DIR}/{MOSAIC_VRT}), so no picture under the footprints"
        return None, None, why
    frame = None
    try:
        with reopen(vrt) as src:  # in S3: tonight's run may have republished it
            height, width = quicklook_shape(src.height, src.width, size=size)
            transform = src.transform @ Affine.scale(src.width / width, src.height / height)
            frame = _Frame(CRS.from_wkt(src.crs.to_wkt()), transform, width, height)
            small, cmap = read_quicklook(src, size)
        with tempfile.TemporaryDirectory() as tmp:
            png = write_png(small, cmap, Path(tmp) / "night.png").read_bytes()
    except (rasterio.errors.RasterioError, OSError) as exc:
        return None, frame, f"the mosaic could not be drawn ({exc})"
    return png, frame, ""


def _published_rings(
    outputs: Sequence[PublishedOutput], tonight: Mapping[str, str], crs: CRS | None
) -> tuple[list[_Ring], list[tuple[str, str]]]:
    """Footprints of the published outputs in ``crs``, and those that have none."""
    rings, missing = [], []
    for o in outputs:
        if crs is None or not o.crs_wkt:
            missing.append((o.name, "its output has no CRS"))
            continue
        ring = footprint(o.transform, o.width, o.height, CRS.from_wkt(o.crs_wkt), to_crs=crs)
        status = _SHOWN_AS.get(tonight.get(o.name), "earlier")
        rings.append(_Ring(o.name, status, np.array(ring), f"{o.name}: {status}"))
    return rings, missing


def _unpublished_rings(
    scenes: Sequence[SceneLine], published: set[str], crs: CRS | None
) -> tuple[list[_Ring], list[tuple[str, str]]]:
    """Footprints of tonight's failed scenes that have no output, from their
    source scenes, and those that cannot be placed."""
    rings, missing = [], []
    for s in scenes:
        status = _UNFINISHED.get(s.status)
        if s.name in published or status is None:
            continue
        try:
            if crs is None:
                raise ValueError("no map CRS")
            with open_raster(s.scene) as src:
                if src.crs is None:
                    raise ValueError("the scene has no CRS")
                ring = footprint(src.transform, src.width, src.height, src.crs, to_crs=crs)
        except (PipelineError, ValueError, OSError, rasterio.errors.RasterioError):
            missing.append((s.name, f"{s.status}, and its source cannot be placed: {s.error}"))
            continue
        rings.append(_Ring(s.name, status, np.array(ring), f"{s.name}: {s.status}: {s.error}"))
    return rings, missing


def _frame_around(rings: Sequence[_Ring], crs: CRS | None) -> _Frame:
    """A frame :data:`_FRAME_WIDTH` pixels wide around every footprint, north up."""
    allxy = np.concatenate([r.xy for r in rings])
    (x0, y0), (x1, y1) = allxy.min(0), allxy.max(0)
    pad = 0.03 * max(x1 - x0, y1 - y0, 1e-9)
    x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad
    width = _FRAME_WIDTH
    height = max(1, round(width * (y1 - y0) / max(x1 - x0, 1e-12)))
    transform = Affine((x1 - x0) / width, 0, x0, 0, -(y1 - y0) / height, y1)
    return _Frame(crs, transform, width, height)


def _drawn(
    rings: Sequence[_Ring], frame: _Frame, missing: list[tuple[str, str]]
) -> list[Footprint]:
    """The footprints in the frame's pixels (x right, y down); those wholly
    outside it are also added to ``missing``."""
    inverse = ~frame.transform
    footprints = []
    for ring in rings:
        cols, rows = inverse @ (ring.xy[:, 0], ring.xy[:, 1])
        points = tuple(
            (round(float(c), 2), round(float(r), 2)) for c, r in zip(cols, rows, strict=True)
        )
        if not any(0 <= c <= frame.width and 0 <= r <= frame.height for c, r in points):
            missing.append((ring.name, f"{ring.status}: outside the mosaic's extent"))
        footprints.append(Footprint(ring.name, ring.status, points, ring.title))
    return footprints


def build_map(
    out: Location,
    outputs: Sequence[PublishedOutput],
    scenes: Sequence[SceneLine],
    *,
    size: int = 1024,
    note: str = "",
) -> NightMap:
    """The night's map.

    Parameters
    ----------
    out
        The output folder, local or ``s3://``.
    outputs
        Its published label rasters.
    scenes
        Tonight's scenes (their statuses colour the footprints).
    size
        The longer side of the mosaic's quicklook, in pixels, where
        ``<out>/mosaic/labels.vrt`` exists (footprints only otherwise).
    note
        What to say under the map; what went wrong drawing it is added.

    Returns
    -------
    NightMap
    """
    png, frame, problem = _mosaic_picture(out, size)
    if problem:
        note = _and(note, problem)
    crs = frame.crs if frame is not None else None
    ordered = in_precedence(outputs, name=lambda o: o.name)
    crss = [CRS.from_wkt(o.crs_wkt) for o in ordered if o.crs_wkt]
    if crs is None and crss:
        crs = night_crs(crss)
    rings, missing = _published_rings(outputs, {s.name: s.status for s in scenes}, crs)
    more_rings, more_missing = _unpublished_rings(scenes, {o.name for o in outputs}, crs)
    rings, missing = rings + more_rings, missing + more_missing
    if frame is None:
        if not rings:
            return NightMap(0, 0, None, "", (), tuple(missing), note)
        frame = _frame_around(rings, crs)
    footprints = _drawn(rings, frame, missing)
    crs_name = crs.to_string() if crs is not None else ""
    return NightMap(
        frame.width, frame.height, png, crs_name, tuple(footprints), tuple(missing), note
    )
