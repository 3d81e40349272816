"""The polygon files: GeoParquet 1.1 (by pyarrow), FlatGeobuf and GeoPackage
(through pyogrio's GDAL), each published whole, local or ``s3://``.

GeoParquet files carry a ``bbox`` covering column and small, spatially ordered
row groups (a Hilbert curve of the polygons' box centres), so that a reader
with a bounding box skips most of a file. Every file carries the label
raster's fingerprint and the polygon settings in its metadata
(:data:`SOURCE_KEY`, :data:`SETTINGS_KEY`): a re-run keeps a current file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from os import PathLike
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyproj import CRS

from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.storage import Location, clear_gdal_cache, sync_gdal_env

from .polygons import SCHEMA

#: A polygon file format: GeoParquet, FlatGeobuf or GeoPackage.
Format = Literal["parquet", "fgb", "gpkg"]
#: File suffix and GDAL driver of each output format (GeoParquet is written by pyarrow).
FORMATS: dict[Format, tuple[str, str | None]] = {
    "parquet": (".parquet", None),
    "fgb": (".fgb", "FlatGeobuf"),
    "gpkg": (".gpkg", "GPKG"),
}
#: Rows per Parquet row group: small enough that a bounding-box filter skips most
#: of a file, large enough to compress well.
ROW_GROUP_ROWS = 4096
#: Rows sorted together (Hilbert order of their box centres) before they are cut
#: into row groups, in row groups.
SORT_WINDOW = 16
#: The key-value metadata (Parquet) or layer metadata (GDAL formats) holding the
#: label raster's fingerprint, and the one holding the polygon settings. (No
#: colon in the names: GDAL reads ``a:b=c`` as the key ``a``.)
SOURCE_KEY = "fcnrs_source_fingerprint"
SETTINGS_KEY = "fcnrs_vector_settings"


def hilbert_key(
    x: np.ndarray, y: np.ndarray, extent: Sequence[float], *, order: int = 16
) -> np.ndarray:
    """Position of points along a Hilbert curve over ``extent`` (xmin, ymin, xmax,
    ymax) on a ``2**order`` grid: nearby keys, nearby points."""
    side = 1 << order
    xmin, ymin, xmax, ymax = extent
    scale = (side - 1) / max(xmax - xmin, ymax - ymin, 1e-300)
    xi = np.clip(((x - xmin) * scale).astype(np.int64), 0, side - 1)
    yi = np.clip(((y - ymin) * scale).astype(np.int64), 0, side - 1)
    key = np.zeros_like(xi)
    s = side >> 1
    while s:
        rx = (xi & s) > 0
        ry = (yi & s) > 0
        key += s * s * ((3 * rx) ^ ry)
        flip = ~ry & rx
        xi = np.where(flip, side - 1 - xi, xi)
        yi = np.where(flip, side - 1 - yi, yi)
        xi, yi = np.where(ry, xi, yi), np.where(ry, yi, xi)
        s >>= 1
    return key


def geo_metadata(crs: CRS | None, bounds: Sequence[float] | np.ndarray | None) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata: WKB polygons, PROJJSON CRS, the ``bbox``
    column as the covering, and the file's bounds where it has features."""
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": crs.to_json_dict() if crs is not None else None,
        "orientation": "counterclockwise",
        "edges": "planar",
        "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if bounds is not None:
        column["bbox"] = [float(v) for v in bounds]
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def _boxes(table: pa.Table) -> np.ndarray:
    """(n, 4): xmin, ymin, xmax, ymax of every row."""
    box = table.column("bbox").combine_chunks()
    return np.column_stack([box.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")])


def write_geoparquet(
    tables: Iterable[pa.Table],
    dst: str | PathLike[str] | Location,
    *,
    crs: CRS | None,
    extent: Sequence[float],
    metadata: dict[str, str],
    row_group_rows: int = ROW_GROUP_ROWS,
) -> int:
    """Write GeoParquet 1.1 to ``dst`` (local or ``s3://``), published whole
    (:meth:`~fcnrs.pipeline.storage.Location.staged`).

    Rows come in strip order (top to bottom); each window of :data:`SORT_WINDOW`
    row groups is sorted along a Hilbert curve of its box centres, so every row
    group covers a compact patch and its ``bbox`` statistics let a reader skip
    it. Returns the number of rows.
    """
    bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
    pending: list[pa.Table] = []
    rows = 0
    with Location(dst).staged() as partial:
        with pq.ParquetWriter(
            partial, SCHEMA, compression="zstd", store_schema=False, write_statistics=True
        ) as out:

            def flush() -> None:
                table = pa.concat_tables(pending)
                pending.clear()
                box = _boxes(table)
                centre_x, centre_y = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
                order = np.argsort(hilbert_key(centre_x, centre_y, extent), kind="stable")
                out.write_table(table.take(order), row_group_size=row_group_rows)

            for table in tables:
                if not table.num_rows:
                    continue
                box = _boxes(table)
                bounds = np.concatenate(
                    [
                        np.minimum(bounds[:2], box[:, :2].min(0)),
                        np.maximum(bounds[2:], box[:, 2:].max(0)),
                    ]
                )
                pending.append(table)
                rows += table.num_rows
                if sum(t.num_rows for t in pending) >= row_group_rows * SORT_WINDOW:
                    flush()
            if pending:
                flush()
            geo = geo_metadata(crs, bounds if rows else None)
            out.add_key_value_metadata({"geo": json.dumps(geo), **metadata})
    return rows


def write_ogr(
    tables: Iterable[pa.Table],
    dst: str | PathLike[str] | Location,
    *,
    driver: str,
    crs: CRS | None,
    layer: str,
    metadata: dict[str, str],
) -> int:
    """Write FlatGeobuf or GeoPackage through pyogrio (its own GDAL), streaming,
    to a local staging file published whole onto ``dst`` (local or ``s3://``). The
    ``bbox`` column is dropped:
    both formats keep their own spatial index. Returns the number of rows."""
    import pyogrio

    schema = SCHEMA.remove(SCHEMA.get_field_index("bbox"))
    rows = 0

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal rows
        for table in tables:
            rows += table.num_rows
            yield from table.drop_columns(["bbox"]).to_batches()

    with Location(dst).staged() as partial:
        pyogrio.write_arrow(
            pa.RecordBatchReader.from_batches(schema, batches()),
            partial,
            driver=driver,
            layer=layer,
            geometry_name="geometry",
            geometry_type="Polygon",
            crs=crs.to_wkt() if crs is not None else None,
            layer_metadata=metadata,
            # GeoPackage 1.2: what GDAL 3.6 and QGIS of that age read without a warning.
            dataset_options={"VERSION": "1.2"} if driver == "GPKG" else None,
        )
    return rows


def file_metadata(path: str | PathLike[str] | Location) -> dict[str, str]:
    """The key-value metadata of a GeoParquet file, or the layer metadata of a
    GDAL vector file, local or in S3; empty when it cannot be read."""
    where = Location(path)
    try:
        if where.name.endswith(".parquet"):
            with where.open() as fh:  # in S3: range reads of the footer only
                meta = pq.read_metadata(fh).metadata or {}
            return {k.decode(): v.decode() for k, v in meta.items()}
        import pyogrio

        if where.remote:
            sync_gdal_env()
            clear_gdal_cache()  # the file may have been republished since it was read
        return dict(pyogrio.read_info(where.gdal_path).get("layer_metadata") or {})
    except Exception:  # missing, not a file of ours, or damaged: written anew
        return {}


def check_format(fmt: str) -> Format:
    """``fmt`` as a :data:`Format`, or :class:`ValueError` naming the choices."""
    for known in FORMATS:
        if fmt == known:
            return known
    raise ValueError(f"fmt must be one of {sorted(FORMATS)}. Got {fmt!r}.")


def is_current(dst: Location, stamp: Mapping[str, str]) -> bool:
    """Whether ``dst`` exists and its metadata holds every key of ``stamp``
    with the same value (the same source, the same settings)."""
    found = file_metadata(dst)
    return all(found.get(k) == v for k, v in stamp.items())


def check_replaceable(dst: Location) -> None:
    """Raise :class:`OutputError` when ``dst`` is a link or a local folder: a
    polygon file never replaces either."""
    if dst.is_link() or (not dst.remote and dst.path.is_dir()):
        raise OutputError(f"{dst}: is a link or a folder; it was left untouched.")


def write_vector_file(
    tables: Iterable[pa.Table],
    dst: Location,
    *,
    fmt: Format,
    crs: CRS | None,
    extent: Sequence[float],
    layer: str,
    metadata: dict[str, str],
    row_group_rows: int = ROW_GROUP_ROWS,
) -> int:
    """Write polygon tables (:data:`~fcnrs.gis.polygons.SCHEMA`) to ``dst`` in
    ``fmt``, published whole.

    Parameters
    ----------
    tables
        The polygons, strip by strip.
    dst
        The file, local or ``s3://``.
    fmt
        GeoParquet (:func:`write_geoparquet`, which orders rows within
        ``extent`` and cuts row groups of ``row_group_rows``), or a GDAL format
        (:func:`write_ogr`, one layer named ``layer``).
    crs
        The polygons' CRS, recorded in the file (None: none).
    metadata
        Key-value metadata to record (:data:`SOURCE_KEY`, :data:`SETTINGS_KEY`).

    Returns
    -------
    int
        The number of features written.
    """
    driver = FORMATS[fmt][1]
    if driver is None:
        return write_geoparquet(
            tables,
            dst,
            crs=crs,
            extent=extent,
            metadata=metadata,
            row_group_rows=row_group_rows,
        )
    return write_ogr(tables, dst, driver=driver, crs=crs, layer=layer, metadata=metadata)
