"""A STAC catalogue of an output folder: one Item per label raster, one Collection.

``write_catalog(out)`` writes a self-contained catalogue (relative hrefs only)
under ``<out>/stac/``: ``collection.json`` and ``<name>/<name>.json`` per
published label raster. It is a function of what the folder holds and what
the run manifest says, rebuilt whole each time (a few small reads per scene),
so it can never drift from the folder:

- a published ``<name>.zarr`` has an Item; an output that was removed loses
  its Item (its ``stac/<name>/`` folder is deleted);
- a scene done tonight gets its Item written anew; a skipped scene's Item is
  rewritten with the same bytes (nothing it says has changed);
- a scene that failed, or was interrupted, has no Item unless an earlier
  output of it is still published: that output is still what the folder (and
  the mosaic) shows, so its Item stays, marked ``fcnrs:stale: true`` with the
  failed run's id, time and error in ``fcnrs:stale_reason``.

Each Item: WGS 84 geometry and bbox from the raster's outline (16 points per
edge, reprojected), the projection extension (``proj:code``, or ``proj:wkt2``
for a CRS without one, ``proj:shape``, ``proj:transform``, ``proj:bbox``), the
classification extension's ``classification:classes`` (value, name, title,
colour hint; 255 as nodata) on the label assets, assets for the Zarr, the COG,
the polygons (``<out>/vectors/<name>.parquet``) and the quicklook where they
exist, the model digest and tile settings as ``fcnrs:`` properties, and a
``derived_from`` link to the source scene.

Datetime: the label raster carries no time (a resumed run publishes the same
bytes), so ``datetime`` is when it was computed: ``end_datetime`` of the run
manifest's ``done`` row that made it (same model and settings digests), with
``start_datetime`` its start; the manifest is the one record of when. A raster
that no manifest row explains falls back to the time its metadata was written.
The source scene's acquisition time is not known to the pipeline.

Local folders and ``s3://`` outputs (through :class:`~fcnrs.pipeline.storage.Location`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension

from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.manifest import read_manifest
from fcnrs.pipeline.scenes import scene_stem
from fcnrs.pipeline.storage import Location, is_url

from .folders import COG_DIR, STAC_DIR, VECTOR_DIR
from .rasters import PublishedOutput, as_crs, describe_output, footprint, list_outputs

log = logging.getLogger(__name__)

PREFIX = "fcnrs:"
ZARR_TYPE = "application/vnd+zarr"
PARQUET_TYPE = "application/vnd.apache.parquet"
#: Decimals of WGS 84 coordinates: 1e-9 degree is about 0.1 mm.
_DIGITS = 9
#: The assets that hold class ids (they carry ``classification:classes``).
LABEL_ASSETS = ("labels", "cog")
#: Statuses after which a still-published older output is stale.
_UNFINISHED = ("failed", "interrupted")


class LocationStacIO(pystac.StacIO):
    """pystac's reads and writes through :class:`Location`: local files or S3."""

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        return Location(str(source)).read_bytes().decode("utf-8")

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        Location(str(dest)).write_bytes(txt.encode("utf-8"))


@dataclass(frozen=True)
class History:
    """The manifest rows that matter to one output."""

    #: The ``done`` row of the run that computed the published raster.
    made: Mapping[str, Any] | None
    #: The scene's latest row, whatever its status.
    last: Mapping[str, Any] | None

    @property
    def stale(self) -> Mapping[str, Any] | None:
        """The failed or interrupted run after the one that made the output."""
        last, made = self.last, self.made
        if last is None or last["status"] not in _UNFINISHED:
            return None
        if made is not None and _order(last) < _order(made):
            return None
        return last


def _order(row: Mapping[str, Any]) -> tuple[str, bool]:
    """Rows by finish time (to the second); of two in the same second, the
    unfinished one counts as the later (an Item is rather marked stale wrongly
    than not at all)."""
    return row["finished_at"], row["status"] in _UNFINISHED


def _output_name(row: Mapping[str, Any]) -> str:
    """The output a manifest row is about (a scene that failed before it was
    planned has no output path: its name follows from the scene's)."""
    return Location(row["output"]).name if row["output"] else f"{scene_stem(row['scene'])}.zarr"


def scene_history(rows: Iterable[Mapping[str, Any]], output: PublishedOutput) -> History:
    """The rows about ``output``: which run made it, and what happened last."""
    mine = sorted((r for r in rows if _output_name(r) == output.location.name), key=_order)
    made = [
        r
        for r in mine
        if r["status"] == "done"
        and r["model_digest"] == output.attrs.get("model_digest")
        and r["settings_digest"] == output.attrs.get("settings_digest")
    ]
    return History(made[-1] if made else None, mine[-1] if mine else None)


def class_objects(classes: Sequence[str], colors: Sequence[Sequence[int]]) -> list[Classification]:
    """``classification:classes``: the class ids with a machine name (letters,
    digits, ``-``, ``_``), the class name as title and an RGB hint; 255 is nodata."""
    found = [
        Classification.create(
            value=i,
            name=re.sub(r"[^0-9A-Za-z_-]", "_", name) or f"class_{i}",
            title=name,
            color_hint="{:02X}{:02X}{:02X}".format(*colors[i]),
        )
        for i, name in enumerate(classes)
    ]
    found.append(Classification.create(value=NODATA, name="nodata", title="no data", nodata=True))
    return found


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _times(output: PublishedOutput, made: Mapping[str, Any] | None) -> tuple[datetime, ...]:
    """(datetime, start, end) of the computation that made the output."""
    if made is not None:
        end = _when(made["finished_at"])
        return end, _when(made["started_at"]), end
    written = output.location / ".zattrs"
    when = datetime.fromtimestamp(written.head()["mtime_ns"] / 1e9, UTC).replace(microsecond=0)
    return when, when, when


def _absolute(path: str) -> str:
    """A source path as an absolute href (relative ones are taken from the
    current directory: the run's own, when ``fcnrs segment --catalog`` writes it)."""
    return path if is_url(path) else str(Path(path).resolve())


def build_item(
    output: PublishedOutput, history: History, assets: Mapping[str, pystac.Asset]
) -> pystac.Item:
    """The Item of one label raster (hrefs as given: made relative on saving)."""
    crs = as_crs(output.crs_wkt) if output.crs_wkt else None
    ring = footprint(output.transform, output.width, output.height, crs, to_crs="EPSG:4326")
    ring = [(round(x, _DIGITS), round(y, _DIGITS)) for x, y in ring]
    xs, ys = [x for x, _ in ring], [y for _, y in ring]
    when, start, end = _times(output, history.made)
    attrs = output.attrs
    properties: dict[str, Any] = {
        "title": output.name,
        f"{PREFIX}model_digest": attrs.get("model_digest"),
        f"{PREFIX}model_variant": attrs.get("model_variant"),
        f"{PREFIX}bands": attrs.get("bands"),
        f"{PREFIX}settings": attrs.get("settings"),
        f"{PREFIX}settings_digest": attrs.get("settings_digest"),
        f"{PREFIX}tile_grid": attrs.get("tile_grid"),
        f"{PREFIX}valid_pixels": attrs.get("valid_pixels"),
    }
    if history.made is not None:
        properties[f"{PREFIX}run_id"] = history.made["run_id"]
    stale = history.stale
    if stale is not None:
        properties[f"{PREFIX}stale"] = True
        properties[f"{PREFIX}stale_reason"] = (
            f"run {stale['run_id']} {stale['status']} at {stale['finished_at']}: {stale['error']}"
        )
    item = pystac.Item(
        id=output.name,
        geometry={"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
        bbox=[min(xs), min(ys), max(xs), max(ys)],
        datetime=when,
        start_datetime=start,
        end_datetime=end,
        properties={k: v for k, v in properties.items() if v is not None},
    )
    _project(item, output, crs)
    for key, asset in assets.items():
        item.add_asset(key, asset)
        if key in LABEL_ASSETS:
            classes = class_objects(output.classes, output.colors)
            ClassificationExtension.ext(asset, add_if_missing=True).classes = classes
    if "source" in attrs:
        item.add_link(pystac.Link("derived_from", _absolute(str(attrs["source"]))))
    return item


def _project(item: pystac.Item, output: PublishedOutput, crs: Any) -> None:
    t = output.transform
    code = crs.to_epsg() if crs is not None else None
    west, north = t.c, t.f
    east, south = t.c + t.a * output.width, t.f + t.e * output.height
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        code=f"EPSG:{code}" if code else None,
        wkt2=None if code or crs is None else crs.to_wkt(),
        shape=[output.height, output.width],
        transform=[t.a, t.b, t.c, t.d, t.e, t.f],
        bbox=[min(west, east), min(south, north), max(west, east), max(south, north)],
    )


def find_assets(
    output: PublishedOutput, *, cogs: Location, vectors: Location
) -> dict[str, pystac.Asset]:
    """The files that exist for a label raster, as assets (absolute hrefs)."""

    name = output.name
    assets = {
        "labels": pystac.Asset(
            str(output.location),
            media_type=ZARR_TYPE,
            roles=["data"],
            title="Class labels (Zarr v2, array 'labels')",
        )
    }
    cog, png = cogs / f"{name}.tif", cogs / f"{name}.png"
    polygons = vectors / f"{name}.parquet"
    if cog.is_file():
        assets["cog"] = pystac.Asset(
            str(cog), media_type=pystac.MediaType.COG, roles=["data"], title="Class labels (COG)"
        )
    if polygons.is_file():
        assets["polygons"] = pystac.Asset(
            str(polygons), media_type=PARQUET_TYPE, roles=["data"], title="Class polygons"
        )
    if png.is_file():
        assets["quicklook"] = pystac.Asset(
            str(png), media_type=pystac.MediaType.PNG, roles=["overview"], title="Quicklook"
        )
    return assets


@dataclass(frozen=True)
class CatalogReport:
    collection: Location
    items: tuple[str, ...]
    stale: tuple[str, ...]
    removed: tuple[str, ...]


def build_collection(out: Location, items: Sequence[pystac.Item]) -> pystac.Collection:
    """The folder's Collection: extent = union of the Items' boxes and times."""
    # Every Item of build_item has a bbox and a start and an end.
    boxes = [b for b in (i.bbox for i in items) if b is not None]
    starts = [t for t in (i.common_metadata.start_datetime for i in items) if t is not None]
    ends = [t for t in (i.common_metadata.end_datetime for i in items) if t is not None]
    start: datetime | None = None
    end: datetime | None = None
    bbox = [-180.0, -90.0, 180.0, 90.0]
    if boxes and starts and ends:
        bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes)]
        bbox += [max(b[2] for b in boxes), max(b[3] for b in boxes)]
        start, end = min(starts), max(ends)
    collection = pystac.Collection(
        id=out.name or "labels",
        title=f"Label rasters in {out.name}",
        description=(
            "Semantic-segmentation label rasters written by fcn-remote-sensing's nightly "
            "job: one Item per scene, with its Zarr, COG, polygons and quicklook."
        ),
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[start, end]])),
        license="other",
    )
    collection.add_items(items)
    return collection


def write_catalog(
    out_dir: str | PathLike[str] | Location,
    *,
    cogs: str | PathLike[str] | Location | None = None,
    vectors: str | PathLike[str] | Location | None = None,
) -> CatalogReport:
    """(Re)write ``<out>/stac/`` for what the folder holds now.

    Parameters
    ----------
    out_dir
        An output folder of a segmentation run, local or ``s3://``.
    cogs, vectors
        Where the COGs and quicklooks (default ``<out>/cogs``) and the polygons
        (default ``<out>/vectors``) are looked for.
    """
    out = Location(out_dir)
    if not out.remote:
        out = Location(out.path.resolve())
    cog_dir = Location(cogs) if cogs else out / COG_DIR
    vector_dir = Location(vectors) if vectors else out / VECTOR_DIR
    rows = read_manifest(out).to_pylist()
    items = []
    for where in list_outputs(out):
        output = describe_output(where)
        assets = find_assets(output, cogs=cog_dir, vectors=vector_dir)
        items.append(build_item(output, scene_history(rows, output), assets))
    stac = out / STAC_DIR
    collection = build_collection(out, items)
    collection.normalize_hrefs(str(stac))
    collection.make_all_asset_hrefs_relative()
    collection.save(pystac.CatalogType.SELF_CONTAINED, stac_io=LocationStacIO())
    removed = _remove_items(stac, keep={i.id for i in items})
    stale = tuple(i.id for i in items if i.properties.get(f"{PREFIX}stale"))
    log.info("STAC catalogue: %d items (%d stale) in %s", len(items), len(stale), stac)
    return CatalogReport(stac / "collection.json", tuple(i.id for i in items), stale, removed)


def _remove_items(stac: Location, keep: set[str]) -> tuple[str, ...]:
    """Delete ``stac/<id>/`` of Items whose output is gone."""
    gone = sorted(
        {k.split("/")[0] for k in stac.list() if _is_item_key(k)} - keep,
    )
    for item_id in gone:
        (stac / item_id).delete_tree()
    return tuple(gone)


def _is_item_key(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 2 and parts[1] == f"{parts[0]}.json"
