"""Cloud Optimized GeoTIFFs of the Zarr label rasters, with their PNG quicklooks.

``export_cog`` copies a published label raster, window by window, into a tiled
GeoTIFF staging file (labels, nodata 255, the class colours as a colour table),
then has GDAL's own COG driver rewrite it with overviews built by *mode*
resampling: an overview pixel is the most frequent class below it, never an
average of class ids. The class names go where GDAL and QGIS look for them:
category names and a thematic raster attribute table in ``<name>.tif.aux.xml``
(GDAL keeps both in this PAM sidecar for GeoTIFFs), and ``CLASS_<id>`` tags in
the TIFF itself so they survive without the sidecar. Each file is published
whole (:meth:`~fcnrs.pipeline.storage.Location.staged`: renamed into place on
disk, one upload to ``s3://``), so a failed export never replaces a good one
and a reader never sees a part of one. In S3 the ``.tif`` is written first,
then its ``.aux.xml``, then the quicklook (:mod:`fcnrs.gis.quicklook`).

Each GeoTIFF carries the label raster's fingerprint (``SOURCE_FINGERPRINT``, a
digest of its model, settings, source file and grid). A re-run keeps a GeoTIFF
whose fingerprint matches, so a nightly export redoes only re-segmented scenes.

Memory is bounded by one Zarr chunk plus GDAL's block cache, whatever the
raster's size.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

import rasterio
import zarr
from rasterio.enums import ColorInterp
from rasterio.shutil import copy as gdal_copy

from fcnrs.pipeline.errors import OutputError, PipelineError
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.storage import Location

from .quicklook import write_quicklook
from .rasters import LabelRaster, chunk_windows, open_label_raster, reopen

#: COG internal tile edge; also the staging file's and the mosaic's block size.
COG_BLOCK = 512
#: The TIFF tag holding the fingerprint of the label raster a GeoTIFF was made from.
SOURCE_TAG = "SOURCE_FINGERPRINT"
_COG_OPTIONS = {
    "BLOCKSIZE": str(COG_BLOCK),
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "NO",
    "LEVEL": "6",
    "BIGTIFF": "IF_SAFER",
    "OVERVIEWS": "AUTO",
}


def colormap(colors: tuple[tuple[int, int, int], ...]) -> dict[int, tuple[int, int, int, int]]:
    """A GDAL colour table: the class colours, transparent nodata, grey elsewhere."""
    table = {i: (128, 128, 128, 255) for i in range(256)}
    table.update({i: (*c, 255) for i, c in enumerate(colors)})
    table[NODATA] = (0, 0, 0, 0)
    return table


def _stage_tiff(
    src: zarr.Array,
    dst: Path,
    raster: LabelRaster,
    *,
    nodata: int | None,
    tags: dict[str, str],
) -> None:
    """Copy a 2-D or (band, y, x) Zarr array into a tiled GeoTIFF, chunk by chunk."""
    bands = 1 if src.ndim == 2 else src.shape[0]
    profile = {
        "driver": "GTiff",
        "height": src.shape[-2],
        "width": src.shape[-1],
        "count": bands,
        "dtype": "uint8",
        "crs": raster.crs_wkt,
        "transform": raster.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": COG_BLOCK,
        "blockysize": COG_BLOCK,
        "compress": "ZSTD",
        "BIGTIFF": "IF_SAFER",
    }
    with rasterio.open(dst, "w", **profile) as out:
        # Colour interpretation first: GeoTIFF cannot change it once data is written.
        if src.ndim == 2:
            out.write_colormap(1, colormap(raster.colors))
        else:
            out.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (bands - 1)
            for b, name in enumerate(raster.classes, start=1):
                out.set_band_description(b, f"probability of {name} x 255")
        out.update_tags(**tags)
        for window in chunk_windows(src.shape, src.chunks):
            rows, cols = window.slices()
            block = src[rows, cols] if src.ndim == 2 else src[:, rows, cols]
            out.write(block, indexes=1 if src.ndim == 2 else None, window=window.to_rasterio())


@contextmanager
def scratch_folder(out: Location) -> Iterator[Path]:
    """A local folder for intermediate files: inside ``out`` on disk (the same
    file system, a hidden name), a temporary folder for an ``s3://`` output."""
    if not out.remote:
        out.path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=".fcnrs-", dir=None if out.remote else out.path
    ) as folder:
        yield Path(folder)


def _publish(
    raster: LabelRaster,
    array: Literal["labels", "probabilities"],
    tiff: Location,
    *,
    staging: Path,
    force: bool,
) -> bool:
    """Export one array of ``raster`` to ``tiff`` through the ``staging`` file,
    unless ``tiff`` is already an export of this very raster; returns whether
    it was kept."""
    if not force and exported_from(tiff, raster.fingerprint):
        return True
    tags = {f"CLASS_{i}": name for i, name in enumerate(raster.classes)}
    tags[SOURCE_TAG] = raster.fingerprint
    if array == "labels":
        _stage_tiff(raster.labels, staging, raster, nodata=NODATA, tags=tags)
        # An overview pixel is the most frequent class below it, never an average.
        _cog(staging, tiff, "MODE")
    elif raster.probabilities is not None:
        _stage_tiff(raster.probabilities, staging, raster, nodata=None, tags=tags)
        # Probabilities are continuous: averaging is the right overview.
        _cog(staging, tiff, "AVERAGE")
    return False


def _cog(staging_tiff: Path, dst: Location, resampling: Literal["MODE", "AVERAGE"]) -> None:
    """GDAL's COG driver: overviews by ``resampling``, IFDs first, tiles in order."""
    with dst.staged() as partial:
        gdal_copy(staging_tiff, partial, driver="COG", RESAMPLING=resampling, **_COG_OPTIONS)


def exported_from(tiff: str | PathLike[str] | Location, fingerprint: str) -> bool:
    """Whether ``tiff`` is an export of the label raster with this fingerprint."""
    tiff = Location(tiff)
    if not tiff.is_file():
        return False
    try:
        with reopen(tiff) as src:
            return src.tags().get(SOURCE_TAG) == fingerprint
    except PipelineError:  # not a GeoTIFF we can read: export again
        return False


def category_names_xml(classes: tuple[str, ...]) -> str:
    """GDAL's ``<CategoryNames>`` element (PAM sidecars, VRT and GTI bands)."""
    names = "".join(f"<Category>{escape(c)}</Category>" for c in classes)
    return f"<CategoryNames>{names}</CategoryNames>"


def attribute_table_xml(classes: tuple[str, ...], colors: tuple[tuple[int, int, int], ...]) -> str:
    """GDAL's thematic ``<GDALRasterAttributeTable>``: value, class, red, green, blue."""
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]
    defs = "".join(
        f'<FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
        for i, (n, t, u) in enumerate(fields)
    )
    rows = "".join(
        f'<Row index="{i}"><F>{i}</F><F>{escape(c)}</F>'
        + "".join(f"<F>{v}</F>" for v in colors[i])
        + "</Row>"
        for i, c in enumerate(classes)
    )
    return f'<GDALRasterAttributeTable tableType="thematic">{defs}{rows}</GDALRasterAttributeTable>'


def pam_categories(classes: tuple[str, ...], colors: tuple[tuple[int, int, int], ...]) -> str:
    """A PAM sidecar with category names and a thematic raster attribute table."""
    return (
        '<PAMDataset>\n  <PAMRasterBand band="1">\n'
        f"    {category_names_xml(classes)}\n"
        f"    {attribute_table_xml(classes, colors)}\n"
        "  </PAMRasterBand>\n</PAMDataset>\n"
    )


@dataclass(frozen=True)
class Exported:
    """What :func:`export_cog` wrote: local paths, or Locations in S3."""

    labels: Path | Location
    probabilities: Path | Location | None
    quicklook: Path | Location | None
    #: GeoTIFFs left as they were: already exported from this very label raster.
    kept: tuple[Path | Location, ...] = ()


def export_cog(
    zarr_path: str | PathLike[str] | Location,
    out_dir: str | PathLike[str] | Location,
    *,
    probabilities: bool = False,
    quicklook: int | None = None,
    force: bool = False,
) -> Exported:
    """Export one label raster to ``out_dir/<name>.tif`` (+ ``.aux.xml``).

    A GeoTIFF already exported from this very raster (same fingerprint) is kept
    unless ``force``; the sidecar and the quicklook (both small) are rewritten.

    Parameters
    ----------
    zarr_path, out_dir
        A published label raster, and the folder of the GeoTIFFs (each local
        or ``s3://``).
    probabilities
        Also export ``<name>_probabilities.tif`` (overviews by average).
    quicklook
        Also write ``<name>.png`` (:func:`~fcnrs.gis.quicklook.write_quicklook`),
        this many pixels on its longer side.
    force
        Rewrite current GeoTIFFs.

    Returns
    -------
    Exported

    Raises
    ------
    OutputError
        When ``zarr_path`` is not a complete label raster, or has no
        probabilities to export.
    """
    raster = open_label_raster(zarr_path)
    if probabilities and raster.probabilities is None:
        raise OutputError(f"{raster.path}: has no probabilities to export.")
    out = Location(out_dir)
    dst = out / f"{raster.name}.tif"
    prob_dst = out / f"{raster.name}_probabilities.tif" if probabilities else None
    kept: list[Path | Location] = []
    with scratch_folder(out) as scratch:
        staging = scratch / f"{raster.name}.staging.tif"
        if _publish(raster, "labels", dst, staging=staging, force=force):
            kept.append(dst.native)
        # GDAL keeps category names and attribute tables of GeoTIFFs in this sidecar.
        aux = dst.with_name(f"{dst.name}.aux.xml")
        aux.write_bytes(pam_categories(raster.classes, raster.colors).encode("utf-8"))
        if prob_dst and _publish(raster, "probabilities", prob_dst, staging=staging, force=force):
            kept.append(prob_dst.native)
    png = write_quicklook(dst, out / f"{raster.name}.png", size=quicklook) if quicklook else None
    return Exported(dst.native, prob_dst.native if prob_dst else None, png, tuple(kept))
