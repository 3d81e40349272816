"""One raster layer for a whole output folder: a VRT and a GDAL tile index over its COGs.

``build_mosaic(out)`` exports the COGs that are missing or out of date
(:func:`~fcnrs.gis.cog.export_cog`, which keeps current ones), then writes,
under ``<out>/mosaic/``:

- ``labels.vrt``: a GDAL VRT that every GDAL reads (3.6 included, so QGIS on
  Debian too): one paletted band, the class colour table, category names and
  attribute table, nodata 255. Each scene is a ``ComplexSource`` with nodata
  255, so a scene's nodata never hides a neighbour's pixels where they overlap.
- ``labels.gti.gpkg``: a GDAL tile index (GTI driver, GDAL >= 3.9), which
  those GDALs open as the same raster layer: a GeoPackage layer ``tiles`` with
  one footprint polygon per scene (in the mosaic's CRS), its COG's
  ``location``, and in the layer's metadata (``xml:GTI`` domain) the GTI
  document with the VRT's grid, colour table and class names. One file, its
  locations relative to it; as a vector layer it is the scenes' footprints.

Scenes in different CRSs. A raster layer has one CRS: the mosaic's is the CRS
most scenes share (ties: the first scene's in name order), or ``crs`` when
given. Its grid has the finest pixel size among the scenes in that CRS, anchored
on one of them, so scenes on a common grid keep their pixels exactly. A scene
in another CRS is warped, by nearest neighbour (class ids must never be
averaged), onto that same grid: for the VRT through a per-scene warped VRT
(``mosaic/warped/<name>.vrt``, GDAL's ``VRTWarpedDataset``, also read by GDAL
3.6); the GTI index points at the scene's COG itself and GDAL reprojects it on
the fly (``Resampling`` nearest). Both paths give the same pixels up to GDAL's
approximate transformer (an eighth of a pixel).

Where scenes overlap, the later name wins in both (the VRT's source order, the
GTI's ``SortField``): the night's precedence rule, :func:`fcnrs.gis.night.in_precedence`,
which whole-night areas and polygons follow too. In a local folder every path
in these files is relative, so the output folder can be moved or copied whole.
In S3 (``s3://`` output folder) the files are written under ``<out>/mosaic/``
there and point at the COGs by their GDAL names (``/vsis3/bucket/key``): GDAL
does not resolve a relative ``../cogs/a.tif`` against a ``/vsis3/`` VRT. Each
file is published whole; COGs first, then the warped VRTs, then
``labels.vrt``, then the index.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from pyproj import CRS as ProjCRS
from rasterio.crs import CRS

from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.storage import Location

from .cog import export_cog
from .folders import COG_DIR, MOSAIC_DIR, MOSAIC_GTI, MOSAIC_VRT, WARPED_DIR
from .geopackage import write_polygons
from .mosaic_grid import MosaicGrid, SceneCog, choose_crs, plan_grid, read_scene_cog
from .mosaic_vrt import gti_xml, native_source, reference, vrt_xml, warped_path, warped_source
from .night import in_precedence
from .rasters import PublishedOutput, describe_output, footprint, list_outputs

log = logging.getLogger(__name__)

#: The index's layer: ``tiles`` is GDAL's name for the entries of a tile index
#: (here: one per scene's COG), the layer the GTI driver looks for.
INDEX_LAYER = "tiles"


@dataclass(frozen=True)
class Mosaic:
    """What :func:`build_mosaic` wrote (local paths, or Locations in S3)."""

    vrt: Path | Location
    #: The GTI tile index (GeoPackage), which GDAL >= 3.9 opens as the raster layer.
    gti: Path | Location
    warped: tuple[Path | Location, ...]
    crs: CRS
    #: The scenes' names, in drawing order (the last on top).
    scenes: tuple[str, ...]
    #: Scenes whose COG was (re)exported first.
    exported: tuple[str, ...] = ()


def _same_classes(
    outputs: Sequence[PublishedOutput],
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    first = outputs[0]
    for other in outputs[1:]:
        if other.classes != first.classes:
            raise OutputError(
                f"{other.name}: classes {list(other.classes)} differ from {first.name}'s "
                f"{list(first.classes)}; one raster layer needs one class list (put the "
                "scenes of each model in its own output folder)."
            )
    return first.classes, first.colors


def _export_cogs(
    outputs: Sequence[PublishedOutput], cog_dir: Location
) -> tuple[list[str], list[SceneCog]]:
    """Export the COGs that are missing or out of date; returns the scenes
    exported, and every scene's COG."""
    exported, scenes = [], []
    for output in outputs:
        done = export_cog(output.location, cog_dir)
        if not done.kept:
            exported.append(output.name)
        scenes.append(read_scene_cog(output.name, done.labels))
    return exported, scenes


def build_mosaic(
    out_dir: str | PathLike[str] | Location,
    *,
    cogs: str | PathLike[str] | Location | None = None,
    crs: str | None = None,
) -> Mosaic:
    """Export what is missing, then write ``<out>/mosaic/labels.vrt`` and ``labels.gti.gpkg``.

    Parameters
    ----------
    out_dir
        An output folder of the segmentation run (its published ``*.zarr``),
        local or ``s3://``.
    cogs
        Where the COGs are, or go (default ``<out>/cogs``), local or ``s3://``.
        Missing or outdated ones are exported first; current ones are kept.
    crs
        The mosaic's CRS (anything pyproj reads, e.g. ``EPSG:32633``); default:
        the CRS most scenes share.

    Raises
    ------
    OutputError
        When the folder has no published label raster, their class lists
        differ, or a COG has no CRS.
    """
    out = Location(out_dir)
    # Source order is the night's precedence: the last scene is drawn on top.
    outputs = [describe_output(o) for o in in_precedence(list_outputs(out))]
    if not outputs:
        raise OutputError(f"{out}: no published label rasters (*.zarr) to mosaic.")
    exported, scenes = _export_cogs(outputs, Location(cogs) if cogs else out / COG_DIR)
    classes, colors = _same_classes(outputs)
    target = CRS.from_wkt(ProjCRS.from_user_input(crs).to_wkt()) if crs else choose_crs(scenes)
    grid = plan_grid(scenes, target)
    folder = out / MOSAIC_DIR
    sources = [
        native_source(s, grid, folder) if s.crs == grid.crs else warped_source(s, grid, folder)
        for s in scenes
    ]
    warped = tuple(warped_path(folder, s.name) for s in scenes if s.crs != grid.crs)
    _clear_stale(folder / WARPED_DIR, keep={w.name for w in warped})
    vrt_path = folder / MOSAIC_VRT
    vrt_path.write_bytes(vrt_xml(grid, sources, classes=classes, colors=colors).encode("utf-8"))
    index = _write_index(
        folder / MOSAIC_GTI, scenes, grid, gti_xml(grid, classes=classes, colors=colors)
    )
    log.info("mosaic of %d scenes in %s: %s", len(scenes), grid.crs, vrt_path)
    return Mosaic(
        vrt_path.native,
        index,
        tuple(w.native for w in warped),
        grid.crs,
        tuple(s.name for s in scenes),
        tuple(exported),
    )


def _write_index(
    path: Location, scenes: Sequence[SceneCog], grid: MosaicGrid, gti: str
) -> Path | Location:
    """The GTI tile index: footprints in the mosaic CRS, COG paths as
    :func:`reference` names them (relative to the index on disk), and the GTI
    document in its layer metadata."""
    rings = [footprint(s.transform, s.width, s.height, s.crs, to_crs=grid.crs) for s in scenes]
    rows = [
        {
            "location": reference(s.cog, path.parent)[0],
            "scene": s.name,
            "crs": s.crs.to_string(),
            "sort_key": f"{i:08d}",
        }
        for i, s in enumerate(scenes)
    ]
    return write_polygons(
        path,
        layer=INDEX_LAYER,
        crs=ProjCRS.from_wkt(grid.crs.to_wkt()),
        rings=rings,
        fields=["location", "scene", "crs", "sort_key"],
        rows=rows,
        xml_metadata={"xml:GTI": gti},
    )


def _clear_stale(folder: Location, keep: set[str]) -> None:
    """Remove warped VRTs of scenes that left the mosaic (or its CRS)."""
    for name in folder.children():
        if name.endswith(".vrt") and not name.startswith(".") and name not in keep:
            (folder / name).delete()
