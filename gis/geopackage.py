"""A minimal GeoPackage writer: one layer of polygons with text attributes.

Enough for a GDAL tile index (the mosaic's ``.gpkg``, which GDAL's GTI driver
and any GIS read as a vector layer of scene footprints) with Python's own
``sqlite3``, so no second GDAL (pyogrio, fiona) is needed beside rasterio's. It
writes what the GeoPackage 1.4 standard requires of a features table: the
``application_id`` and ``user_version`` pragmas, ``gpkg_spatial_ref_sys`` with
its three mandatory rows plus the layer's CRS, ``gpkg_contents``,
``gpkg_geometry_columns``, and geometries as GeoPackage binary blobs (header
with envelope, then little-endian WKB). No spatial index: a night's few hundred
footprints are read in one scan.

Layer metadata goes where GDAL's GPKG driver keeps it (the standard's metadata
extension: ``gpkg_metadata`` rows of ``md_standard_uri`` ``http://gdal.org``,
a ``GDALMultiDomainMetadata`` document, referenced from
``gpkg_metadata_reference`` for the table); the GTI driver reads its
``xml:GTI`` domain there.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from xml.sax.saxutils import escape

from pyproj import CRS

from fcnrs.pipeline.storage import Location

#: ``PRAGMA application_id``: the ASCII bytes "GPKG".
_APPLICATION_ID = 0x47504B47
#: ``PRAGMA user_version`` of GeoPackage 1.4.0.
_USER_VERSION = 10400
#: The srs_id of a CRS that has no EPSG code (ids below 100000 mirror EPSG's).
_CUSTOM_SRS_ID = 100000

Ring = Sequence[tuple[float, float]]

_SCHEMA = """
CREATE TABLE gpkg_spatial_ref_sys (
  srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY,
  organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL,
  definition TEXT NOT NULL, description TEXT);
CREATE TABLE gpkg_contents (
  table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL,
  identifier TEXT UNIQUE, description TEXT DEFAULT '',
  last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
  CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE gpkg_geometry_columns (
  table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL,
  srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
  CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
  CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
  CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
"""
_METADATA_SCHEMA = """
CREATE TABLE gpkg_extensions (
  table_name TEXT, column_name TEXT, extension_name TEXT NOT NULL,
  definition TEXT NOT NULL, scope TEXT NOT NULL,
  CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name));
CREATE TABLE gpkg_metadata (
  id INTEGER CONSTRAINT m_pk PRIMARY KEY ASC NOT NULL,
  md_scope TEXT NOT NULL DEFAULT 'dataset', md_standard_uri TEXT NOT NULL,
  mime_type TEXT NOT NULL DEFAULT 'text/xml', metadata TEXT NOT NULL DEFAULT '');
CREATE TABLE gpkg_metadata_reference (
  reference_scope TEXT NOT NULL, table_name TEXT, column_name TEXT, row_id_value INTEGER,
  timestamp DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  md_file_id INTEGER NOT NULL, md_parent_id INTEGER,
  CONSTRAINT crmr_mfi_fk FOREIGN KEY (md_file_id) REFERENCES gpkg_metadata(id),
  CONSTRAINT crmr_mpi_fk FOREIGN KEY (md_parent_id) REFERENCES gpkg_metadata(id));
INSERT INTO gpkg_extensions VALUES
  ('gpkg_metadata', NULL, 'gpkg_metadata',
   'http://www.geopackage.org/spec120/#extension_metadata', 'read-write'),
  ('gpkg_metadata_reference', NULL, 'gpkg_metadata',
   'http://www.geopackage.org/spec120/#extension_metadata', 'read-write');
"""

_WGS84_WKT = CRS.from_epsg(4326).to_wkt("WKT1_GDAL")
_MANDATORY_SRS = [
    ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian SRS"),
    ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic SRS"),
    ("WGS 84 geodetic", 4326, "EPSG", 4326, _WGS84_WKT, "longitude/latitude on WGS 84"),
]


def geometry_blob(ring: Ring, srs_id: int) -> bytes:
    """A polygon of one closed ring as a GeoPackage geometry: ``GP``, version 0,
    flags (little-endian, XY envelope), srs_id, envelope, then WKB."""
    xs = [x for x, _ in ring]
    ys = [y for _, y in ring]
    header = b"GP" + struct.pack("<BBi4d", 0, 0b011, srs_id, min(xs), max(xs), min(ys), max(ys))
    wkb = struct.pack("<BIII", 1, 3, 1, len(ring))
    wkb += b"".join(struct.pack("<2d", x, y) for x, y in ring)
    return header + wkb


def _srs_row(crs: CRS) -> tuple[int, tuple]:
    code = crs.to_epsg()
    srs_id = code if code is not None else _CUSTOM_SRS_ID
    org = "EPSG" if code is not None else "NONE"
    row = (crs.name, srs_id, org, srs_id, crs.to_wkt("WKT1_GDAL"), crs.name)
    return srs_id, row


def write_polygons(
    path: str | PathLike[str] | Location,
    *,
    layer: str,
    crs: CRS,
    rings: Sequence[Ring],
    fields: Sequence[str],
    rows: Sequence[Mapping[str, str]],
    xml_metadata: Mapping[str, str] | None = None,
) -> Path | Location:
    """Write (or replace) a GeoPackage holding one polygon layer.

    Parameters
    ----------
    path
        The ``.gpkg`` to write, local or ``s3://``; built as a local file and
        published whole (renamed into place, or uploaded), so a reader sees the
        old file or the new one.
    layer
        Table name (letters, digits and ``_``).
    crs
        The CRS of every ring.
    rings
        One closed exterior ring per feature, in ``crs`` coordinates.
    fields, rows
        Text attributes: the column names, and one mapping per feature.
    xml_metadata
        GDAL layer metadata in XML domains, e.g. ``{"xml:GTI": "<GDALTileIndexDataset>..."}``.
    """
    if not layer.replace("_", "").isalnum() or not all(
        f.replace("_", "").isalnum() for f in fields
    ):
        raise ValueError(
            f"layer and field names must be letters, digits and '_': {layer}, {fields}"
        )
    where = Location(path)
    with where.staged() as tmp:
        _write(tmp, layer, crs, rings, fields, rows)
        if xml_metadata:
            _write_metadata(tmp, layer, xml_metadata)
    return where.native


def _write(
    path: Path,
    layer: str,
    crs: CRS,
    rings: Sequence[Ring],
    fields: Sequence[str],
    rows: Sequence[Mapping[str, str]],
) -> None:
    srs_id, srs = _srs_row(crs)
    xs = [x for ring in rings for x, _ in ring] or [0.0]
    ys = [y for ring in rings for _, y in ring] or [0.0]
    columns = "".join(f", {f} TEXT" for f in fields)
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            con.execute(f"PRAGMA user_version = {_USER_VERSION}")
            con.executescript(_SCHEMA)
            con.executemany(
                "INSERT OR REPLACE INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)",
                [*_MANDATORY_SRS, srs],
            )
            con.execute(
                "INSERT INTO gpkg_contents (table_name, data_type, identifier, min_x, min_y, "
                "max_x, max_y, srs_id) VALUES (?, 'features', ?, ?, ?, ?, ?, ?)",
                (layer, layer, min(xs), min(ys), max(xs), max(ys), srs_id),
            )
            con.execute(
                "INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', 'POLYGON', ?, 0, 0)",
                (layer, srs_id),
            )
            con.execute(
                f"CREATE TABLE {layer} (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
                f"geom POLYGON{columns})"
            )
            marks = ", ".join("?" * (len(fields) + 1))
            names = ", ".join(["geom", *fields])
            con.executemany(
                f"INSERT INTO {layer} ({names}) VALUES ({marks})",
                [
                    (geometry_blob(ring, srs_id), *(row[f] for f in fields))
                    for ring, row in zip(rings, rows, strict=True)
                ],
            )
    finally:
        con.close()


def _write_metadata(path: Path, layer: str, domains: Mapping[str, str]) -> None:
    document = "".join(
        f'<Metadata domain="{escape(d)}" format="xml">{xml}</Metadata>'
        for d, xml in domains.items()
    )
    con = sqlite3.connect(path)
    try:
        with con:
            con.executescript(_METADATA_SCHEMA)
            cur = con.execute(
                "INSERT INTO gpkg_metadata (md_scope, md_standard_uri, mime_type, metadata) "
                "VALUES ('dataset', 'http://gdal.org', 'text/xml', ?)",
                (f"<GDALMultiDomainMetadata>{document}</GDALMultiDomainMetadata>",),
            )
            con.execute(
                "INSERT INTO gpkg_metadata_reference (reference_scope, table_name, md_file_id) "
                "VALUES ('table', ?, ?)",
                (layer, cur.lastrowid),
            )
    finally:
        con.close()
