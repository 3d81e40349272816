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
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.shutil import copy as gdal_copy
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform

from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.storage import Location, clear_gdal_cache

from .cog import attribute_table_xml, category_names_xml, colormap, export_cog, reopen, write_png
from .geopackage import write_polygons
from .night import in_precedence, night_crs
from .rasters import find_outputs, footprint, open_label_raster

log = logging.getLogger(__name__)

MOSAIC_DIR = "mosaic"
INDEX_LAYER = "tiles"
#: Block edge of the virtual mosaic: the COGs' tile size.
BLOCK = 512
#: Snapping tolerance, in pixels, for scene edges that sit on the mosaic grid.
_EPS = 1e-6


@dataclass(frozen=True)
class Tile:
    """One scene's COG as a piece of the mosaic."""

    name: str
    cog: Path | Location
    crs: CRS
    transform: Affine
    width: int
    height: int
    block: tuple[int, int]  # (rows, cols)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform  # north-up: the pipeline refuses rotated scenes
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f


@dataclass(frozen=True)
class Grid:
    """The mosaic's pixel grid: CRS, north-up transform, size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    def window(self, bounds: Sequence[float]) -> tuple[float, float, float, float]:
        """(col, row, width, height) of a box in this grid's pixels (not rounded)."""
        west, south, east, north = bounds
        col, row = ~self.transform @ (west, north)
        return col, row, (east - west) / self.transform.a, (north - south) / -self.transform.e

    def snapped(self, bounds: Sequence[float]) -> tuple[int, int, int, int]:
        """The smallest whole-pixel window of this grid that covers a box."""
        col, row, width, height = self.window(bounds)
        c0, r0 = math.floor(col + _EPS), math.floor(row + _EPS)
        c1, r1 = math.ceil(col + width - _EPS), math.ceil(row + height - _EPS)
        return c0, r0, c1 - c0, r1 - r0


@dataclass(frozen=True)
class Mosaic:
    """What :func:`build_mosaic` wrote (local paths, or Locations in S3)."""

    vrt: Path | Location
    #: The GTI tile index (GeoPackage), which GDAL >= 3.9 opens as the raster layer.
    gti: Path | Location
    warped: tuple[Path | Location, ...]
    crs: CRS
    tiles: tuple[str, ...]
    #: Scenes whose COG was (re)exported first.
    exported: tuple[str, ...] = ()


def read_tile(name: str, cog: str | PathLike[str] | Location) -> Tile:
    """A COG's grid, read where it is (in S3 after clearing GDAL's cache: a
    re-segmented scene's COG was just republished)."""
    with reopen(cog) as src:
        if src.crs is None:
            raise OutputError(f"{cog}: has no CRS, so it cannot take part in a mosaic.")
        return Tile(name, cog, src.crs, src.transform, src.width, src.height, src.block_shapes[0])


def choose_crs(tiles: Sequence[Tile]) -> CRS:
    """The CRS most tiles share; ties go to the first tile's (the night's rule,
    :func:`~fcnrs.gis.night.night_crs`)."""
    return night_crs([t.crs for t in tiles])


def bounds_in(tile: Tile, crs: CRS) -> tuple[float, float, float, float]:
    """A tile's bounding box in ``crs`` (its densified outline reprojected)."""
    if tile.crs == crs:
        return tile.bounds
    ring = np.array(footprint(tile.transform, tile.width, tile.height, tile.crs, crs))
    return ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()


def plan_grid(tiles: Sequence[Tile], crs: CRS) -> Grid:
    """The mosaic grid in ``crs``: the finest pixel size of the tiles already in
    ``crs`` (or of the others once reprojected, when none is), anchored on such a
    tile's origin, covering every tile."""
    native = [t for t in tiles if t.crs == crs]
    if native:
        anchor = min(native, key=lambda t: (abs(t.transform.a), abs(t.transform.e)))
        xres, yres = abs(anchor.transform.a), abs(anchor.transform.e)
        origin = anchor.transform.c, anchor.transform.f
    else:
        sizes = []
        for t in tiles:
            warped, _, _ = calculate_default_transform(t.crs, crs, t.width, t.height, *t.bounds)
            sizes.append((abs(warped.a), abs(warped.e)))
        xres, yres = min(sizes)
        origin = 0.0, 0.0
    boxes = np.array([bounds_in(t, crs) for t in tiles])
    anchor_grid = Grid(crs, Affine(xres, 0, origin[0], 0, -yres, origin[1]), 0, 0)
    union = boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()
    col, row, width, height = anchor_grid.snapped(union)
    return Grid(crs, anchor_grid.transform @ Affine.translation(col, row), width, height)


def reference(target: str | PathLike[str] | Location, folder: Location) -> tuple[str, bool]:
    """How a file in ``folder`` names ``target``: relative to it on disk (the
    folder can move), the GDAL name ``/vsis3/bucket/key`` in S3. Returns the
    name and whether it is relative."""
    target = Location(target)
    if folder.remote or target.remote:
        return target.gdal_path, False
    return os.path.relpath(target.path, folder.path), True


@dataclass(frozen=True)
class Source:
    """A raster placed in the VRT: how the VRT names it (relative to the VRT
    when ``relative``), its size and block, and its window (col, row, width,
    height) in the mosaic grid."""

    path: str
    width: int
    height: int
    block: tuple[int, int]
    window: tuple[float, float, float, float]
    relative: bool = True


def native_source(tile: Tile, grid: Grid, folder: Location) -> Source:
    """A tile in the mosaic's CRS: its COG, placed as it is."""
    path, relative = reference(tile.cog, folder)
    return Source(path, tile.width, tile.height, tile.block, grid.window(tile.bounds), relative)


def warped_path(folder: Location, name: str) -> Location:
    return folder / "warped" / f"{name}.vrt"


def warped_source(tile: Tile, grid: Grid, folder: Location) -> Source:
    """A tile in another CRS: ``folder/warped/<name>.vrt``, a ``VRTWarpedDataset``
    of its COG on a whole-pixel window of ``grid`` (nearest neighbour, nodata
    kept), written by GDAL itself, its source named as :func:`reference` says."""
    dst = warped_path(folder, tile.name)
    col, row, width, height = grid.snapped(bounds_in(tile, grid.crs))
    with dst.staged() as tmp:
        with (
            reopen(tile.cog) as src,
            WarpedVRT(
                src,
                crs=grid.crs,
                transform=grid.transform @ Affine.translation(col, row),
                width=width,
                height=height,
                resampling=Resampling.nearest,
            ) as vrt,
        ):
            gdal_copy(vrt, tmp, driver="VRT")
            block = vrt.block_shapes[0]
        tree = ET.parse(tmp)
        source = tree.find("GDALWarpOptions/SourceDataset")
        source.text, relative = reference(tile.cog, dst.parent)
        source.set("relativeToVRT", "1" if relative else "0")
        tree.write(tmp, encoding="unicode")
    path, relative = reference(dst, folder)
    return Source(path, width, height, block, (col, row, width, height), relative)


def color_table_xml(colors: Sequence[tuple[int, int, int]]) -> str:
    """GDAL's ``<ColorTable>``: 256 entries, nodata transparent."""
    table = colormap(tuple(colors))
    entries = "".join(
        f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>'
        for r, g, b, a in (table[i] for i in range(256))
    )
    return f"<ColorTable>{entries}</ColorTable>"


def _band_xml(classes: tuple[str, ...], colors: tuple[tuple[int, int, int], ...]) -> str:
    return (
        f"    <NoDataValue>{NODATA}</NoDataValue>\n"
        "    <ColorInterp>Palette</ColorInterp>\n"
        f"    {color_table_xml(colors)}\n"
        f"    {category_names_xml(classes)}\n"
        f"    {attribute_table_xml(classes, colors)}\n"
    )


def _geotransform(transform: Affine) -> str:
    return ", ".join(repr(float(v)) for v in transform.to_gdal())


def vrt_xml(
    grid: Grid,
    sources: Sequence[Source],
    classes: tuple[str, ...],
    colors: tuple[tuple[int, int, int], ...],
) -> str:
    """The mosaic VRT: one paletted band, later sources drawn over earlier ones
    except where they hold nodata."""
    parts = [
        f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">\n',
        f"  <SRS>{escape(grid.crs.to_wkt())}</SRS>\n",
        f"  <GeoTransform>{_geotransform(grid.transform)}</GeoTransform>\n",
        '  <VRTRasterBand dataType="Byte" band="1">\n',
        _band_xml(classes, colors),
    ]
    for s in sources:
        col, row, width, height = s.window
        parts.append(
            "    <ComplexSource>\n"
            f'      <SourceFilename relativeToVRT="{int(s.relative)}">{escape(s.path)}'
            "</SourceFilename>\n"
            "      <SourceBand>1</SourceBand>\n"
            f'      <SourceProperties RasterXSize="{s.width}" RasterYSize="{s.height}" '
            f'DataType="Byte" BlockXSize="{s.block[1]}" BlockYSize="{s.block[0]}"/>\n'
            f'      <SrcRect xOff="0" yOff="0" xSize="{s.width}" ySize="{s.height}"/>\n'
            f'      <DstRect xOff="{col!r}" yOff="{row!r}" xSize="{width!r}" ySize="{height!r}"/>\n'
            f"      <NODATA>{NODATA}</NODATA>\n"
            "    </ComplexSource>\n"
        )
    parts.append("  </VRTRasterBand>\n</VRTDataset>\n")
    return "".join(parts)


def gti_xml(grid: Grid, classes: tuple[str, ...], colors: tuple[tuple[int, int, int], ...]) -> str:
    """The GTI document kept in the index's ``xml:GTI`` layer metadata: the VRT's
    grid, nearest-neighbour reprojection, the later name on top."""
    return (
        "<GDALTileIndexDataset>\n"
        "  <LocationField>location</LocationField>\n"
        "  <SortField>sort_key</SortField>\n"
        f"  <SRS>{escape(grid.crs.to_wkt())}</SRS>\n"
        f"  <GeoTransform>{_geotransform(grid.transform)}</GeoTransform>\n"
        f"  <XSize>{grid.width}</XSize>\n"
        f"  <YSize>{grid.height}</YSize>\n"
        f"  <BlockXSize>{BLOCK}</BlockXSize>\n"
        f"  <BlockYSize>{BLOCK}</BlockYSize>\n"
        "  <Resampling>nearest</Resampling>\n"
        '  <Band band="1" dataType="Byte">\n'
        f"{_band_xml(classes, colors)}"
        "  </Band>\n"
        "</GDALTileIndexDataset>\n"
    )


def _same_classes(
    rasters: Sequence[tuple[str, tuple[str, ...], tuple]],
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    name0, classes, colors = rasters[0]
    for name, other, _ in rasters[1:]:
        if other != classes:
            raise OutputError(
                f"{name}: classes {list(other)} differ from {name0}'s {list(classes)}; one "
                "raster layer needs one class list (put the scenes of each model in its own "
                "output folder)."
            )
    return classes, colors


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
        An output folder of the nightly job (its published ``*.zarr``), local
        or ``s3://``.
    cogs
        Where the COGs are, or go (default ``<out>/cogs``), local or ``s3://``.
        Missing or outdated ones are exported first; current ones are kept.
    crs
        The mosaic's CRS (anything pyproj reads, e.g. ``EPSG:32633``); default:
        the CRS most scenes share.
    """
    out = Location(out_dir)
    # Source order is the night's precedence: the last scene is drawn on top.
    outputs = in_precedence(find_outputs(out))
    if not outputs:
        raise OutputError(f"{out}: no published label rasters (*.zarr) to mosaic.")
    cog_dir = Location(cogs) if cogs else out / "cogs"
    exported, tiles, rasters = [], [], []
    for path in outputs:
        done = export_cog(path, cog_dir)
        raster = open_label_raster(path)
        if not done.kept:
            exported.append(raster.name)
        rasters.append((raster.name, raster.classes, raster.colors))
        tiles.append(read_tile(raster.name, done.labels))
    classes, colors = _same_classes(rasters)
    target = CRS.from_wkt(ProjCRS.from_user_input(crs).to_wkt()) if crs else choose_crs(tiles)
    grid = plan_grid(tiles, target)
    folder = out / MOSAIC_DIR
    sources = [
        native_source(t, grid, folder) if t.crs == grid.crs else warped_source(t, grid, folder)
        for t in tiles
    ]
    warped = tuple(warped_path(folder, t.name) for t in tiles if t.crs != grid.crs)
    _clear_stale(folder / "warped", keep={w.name for w in warped})
    vrt_path = folder / "labels.vrt"
    vrt_path.write_bytes(vrt_xml(grid, sources, classes, colors).encode("utf-8"))
    index = _write_index(folder / "labels.gti.gpkg", tiles, grid, gti_xml(grid, classes, colors))
    log.info("mosaic of %d scenes in %s: %s", len(tiles), grid.crs, vrt_path)
    return Mosaic(
        vrt_path.native,
        index,
        tuple(w.native for w in warped),
        grid.crs,
        tuple(t.name for t in tiles),
        tuple(exported),
    )


def _write_index(path: Location, tiles: Sequence[Tile], grid: Grid, gti: str) -> Path | Location:
    """The GTI tile index: footprints in the mosaic CRS, COG paths as
    :func:`reference` names them (relative to the index on disk), and the GTI
    document in its layer metadata."""
    rings = [footprint(t.transform, t.width, t.height, t.crs, grid.crs) for t in tiles]
    rows = [
        {
            "location": reference(t.cog, path.parent)[0],
            "scene": t.name,
            "crs": t.crs.to_string(),
            "sort_key": f"{i:08d}",
        }
        for i, t in enumerate(tiles)
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


def render_quicklook(
    vrt: str | PathLike[str] | Location, dst: str | PathLike[str] | Location, size: int
) -> Path | Location:
    """A paletted PNG of the mosaic, longer side ``size`` pixels, by mode
    (either may be local or ``s3://``)."""
    where = Location(vrt)
    if where.remote:
        clear_gdal_cache()  # the mosaic and its COGs may have been republished
    with rasterio.open(where.gdal_path, driver="VRT") as src:
        scale = min(1.0, size / max(src.height, src.width))
        shape = (max(1, round(src.height * scale)), max(1, round(src.width * scale)))
        small = src.read(1, out_shape=shape, resampling=Resampling.mode)
        cmap = src.colormap(1)
    return write_png(small, cmap, dst)
