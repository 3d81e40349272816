"""The mosaic's GDAL documents: the VRT, the warped VRTs of scenes in another
CRS, and the GTI document of the tile index.

In a local folder every path in them is relative, so the output folder can be
moved or copied whole; in S3 they name the COGs by their GDAL names
(``/vsis3/bucket/key``): GDAL does not resolve a relative ``../cogs/a.tif``
against a ``/vsis3/`` VRT (:func:`reference`).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from xml.sax.saxutils import escape

from rasterio.enums import Resampling
from rasterio.shutil import copy as gdal_copy
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT

from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.storage import Location

from .cog import COG_BLOCK, attribute_table_xml, category_names_xml, colormap
from .folders import WARPED_DIR
from .mosaic_grid import MosaicGrid, SceneCog, bounds_in
from .rasters import reopen


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


def native_source(scene: SceneCog, grid: MosaicGrid, folder: Location) -> Source:
    """A scene in the mosaic's CRS: its COG, placed as it is."""
    path, relative = reference(scene.cog, folder)
    return Source(path, scene.width, scene.height, scene.block, grid.window(scene.bounds), relative)


def warped_path(folder: Location, name: str) -> Location:
    """Where the warped VRT of scene ``name`` goes in the mosaic's ``folder``."""
    return folder / WARPED_DIR / f"{name}.vrt"


def warped_source(scene: SceneCog, grid: MosaicGrid, folder: Location) -> Source:
    """A scene in another CRS: ``folder/warped/<name>.vrt``, a ``VRTWarpedDataset``
    of its COG on a whole-pixel window of ``grid`` (nearest neighbour, nodata
    kept), written by GDAL itself, its source named as :func:`reference` says."""
    dst = warped_path(folder, scene.name)
    col, row, width, height = grid.snapped(bounds_in(scene, grid.crs))
    with dst.staged() as tmp:
        with (
            reopen(scene.cog) as src,
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
        if source is None:
            raise OutputError(f"{dst}: GDAL wrote a warped VRT without a source dataset.")
        source.text, relative = reference(scene.cog, dst.parent)
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
    grid: MosaicGrid,
    sources: Sequence[Source],
    *,
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


def gti_xml(
    grid: MosaicGrid, *, classes: tuple[str, ...], colors: tuple[tuple[int, int, int], ...]
) -> str:
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
        f"  <BlockXSize>{COG_BLOCK}</BlockXSize>\n"
        f"  <BlockYSize>{COG_BLOCK}</BlockYSize>\n"
        "  <Resampling>nearest</Resampling>\n"
        '  <Band band="1" dataType="Byte">\n'
        f"{_band_xml(classes, colors)}"
        "  </Band>\n"
        "</GDALTileIndexDataset>\n"
    )
