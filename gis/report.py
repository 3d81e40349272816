"""The morning after: one self-contained HTML page for a night's run.

``write_report(out)`` reads what an output folder holds (local or ``s3://``)
and writes ``<out>/report.html``: one file, no network access when opened
(styles and scripts inline, the map embedded as a data URI), its links
relative so that it moves with the folder. It shows

- the run (the latest in the manifest): every scene's status and reason, time,
  size and megapixels per second, with links to its STAC Item, COG, polygons
  and labels where they exist;
- the model replicas and their share of the work (the run's record,
  :class:`~fcnrs.pipeline.manifest.RunRecord`);
- the model (digest, variant, classes, bands) and every setting;
- class areas per scene and for the night, where each ground pixel counts once
  (:func:`~fcnrs.gis.night_areas.night_areas`, the mosaic's precedence rule);
- a map: the mosaic's quicklook with every scene's footprint, coloured by what
  happened to it tonight (:func:`~fcnrs.gis.report_map.build_map`);
- every earlier run, from the manifest (it keeps them all).

Everything is read from the folder (manifest, run records, the outputs'
metadata, the mosaic): the page can be rebuilt any time with ``fcnrs report``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from os import PathLike
from typing import Any
from urllib.parse import quote

import pyarrow as pa

from fcnrs.pipeline.errors import OutputError, PipelineError
from fcnrs.pipeline.manifest import (
    MANIFEST_DIR,
    RunRecord,
    manifest_dir,
    read_manifest,
    read_run_records,
)
from fcnrs.pipeline.scenes import scene_stem
from fcnrs.pipeline.storage import Location

from .folders import (
    COG_DIR,
    MOSAIC_DIR,
    MOSAIC_GTI,
    MOSAIC_VRT,
    NIGHT_POLYGONS,
    REPORT_NAME,
    STAC_DIR,
)
from .mosaic import build_mosaic
from .night_areas import NightAreas, night_areas
from .rasters import PublishedOutput, describe_output, list_outputs
from .report_map import build_map
from .report_page import render_report, shown
from .report_values import NightReport, RunLine, SceneLine
from .vector_files import FORMATS
from .vectors import vector_dir

log = logging.getLogger(__name__)

# -- reading the folder ------------------------------------------------------------------


def check_output_folder(out: Location) -> pa.Table:
    """The folder's manifest, or :class:`OutputError` naming the path and why
    there is no report to make."""
    if not out.remote and out.path.is_file():
        raise OutputError(f"{out}: is a file, not an output folder of fcnrs segment.")
    if not out.exists():
        raise OutputError(f"{out}: no such output folder.")
    where = manifest_dir(out)
    try:
        keys = [k for k in where.list() if k.startswith("run-") and k.endswith(".parquet")]
    except OSError as exc:
        raise OutputError(f"{where}: cannot be listed ({exc}).") from None
    if not keys:
        if not where.exists():
            raise OutputError(
                f"{out}: not an output folder of fcnrs segment: it has no run manifest "
                f"({MANIFEST_DIR}/run-*.parquet)."
            )
        raise OutputError(
            f"{where}: the run manifest holds no runs yet; run fcnrs segment ... --out {out} first."
        )
    try:
        return read_manifest(out)
    except (OSError, pa.ArrowException) as exc:
        raise OutputError(f"{where}: the run manifest cannot be read ({exc}).") from None


def run_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Run ids, oldest first: by their first start, then last finish (run ids
    are names, not times)."""
    spans: dict[str, tuple[str, str]] = {}
    for r in rows:
        first, last = spans.get(r["run_id"], (r["started_at"], r["finished_at"]))
        spans[r["run_id"]] = (min(first, r["started_at"]), max(last, r["finished_at"]))
    return sorted(spans, key=lambda run: (*spans[run], run))


def history(rows: Sequence[Mapping[str, Any]], records: Mapping[str, RunRecord]) -> list[RunLine]:
    """Every run, newest first."""
    lines = []
    for run in reversed(run_order(rows)):
        mine = [r for r in rows if r["run_id"] == run]
        record = records.get(run)
        lines.append(
            RunLine(
                run_id=run,
                started_at=record.started_at if record else min(r["started_at"] for r in mine),
                finished_at=record.finished_at if record else max(r["finished_at"] for r in mine),
                counts=dict(Counter(r["status"] for r in mine)),
                tiles_predicted=sum(int(r["tiles_predicted"]) for r in mine),
                valid_pixels=sum(int(r["valid_pixels"]) for r in mine if r["status"] == "done"),
                seconds=record.seconds if record else sum(float(r["seconds"]) for r in mine),
                model_digest=mine[0]["model_digest"],
            )
        )
    return lines


def _first_existing(out: Location, candidates: Iterable[str]) -> str | None:
    for rel in candidates:
        if (out / rel).exists():
            return rel
    return None


def _href(rel: str) -> str:
    return quote(rel, safe="/")


def scene_links(out: Location, name: str, *, published: bool) -> dict[str, str]:
    """Links (relative to the page) to what exists of one scene."""
    links: dict[str, str] = {}
    found = {
        "STAC item": _first_existing(out, [f"{STAC_DIR}/{name}/{name}.json"]),
        "COG": _first_existing(out, [f"{COG_DIR}/{name}.tif"]),
        "polygons": _first_existing(
            out, [f"{vector_dir(fmt)}/{name}{suffix}" for fmt, (suffix, _) in FORMATS.items()]
        ),
        "labels": f"{name}.zarr" if published else None,
    }
    for label, rel in found.items():
        if rel is not None:
            links[label] = _href(rel)
    return links


def night_layers(out: Location) -> dict[str, str]:
    """Links to the night's layers that exist."""
    candidates = {
        "mosaic (VRT, any GDAL)": [f"{MOSAIC_DIR}/{MOSAIC_VRT}"],
        "mosaic (GTI, GDAL >= 3.9)": [f"{MOSAIC_DIR}/{MOSAIC_GTI}"],
        "night's polygons": [f"{MOSAIC_DIR}/{NIGHT_POLYGONS}{s}" for s, _ in FORMATS.values()],
        "STAC collection": [f"{STAC_DIR}/collection.json"],
    }
    layers = {}
    for label, rels in candidates.items():
        rel = _first_existing(out, rels)
        if rel is not None:
            layers[label] = _href(rel)
    layers["run manifest"] = _href(f"{MANIFEST_DIR}/")
    return layers


def _model_and_settings(
    record: RunRecord | None, rows: Sequence[Mapping[str, Any]], outputs: Sequence[PublishedOutput]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model and the settings of the run: from its record, or (a run from
    before run records were kept) from what an output it made says."""
    if record is not None:
        model: dict[str, Any] = {
            "digest": record.model_digest,
            "checkpoint": record.model,
            "variant": record.model_variant,
            "bands": ", ".join(map(str, record.bands)),
        }
        settings: dict[str, Any] = {
            **record.settings,
            "bands": shown(record.settings.get("bands") or "the checkpoint's"),
            "settings digest": record.settings_digest,
            "engine": record.engine,
            "device": record.device,
            "threads per replica": record.threads_per_replica,
        }
        return model, settings
    digest = rows[0]["model_digest"] if rows else ""
    settings_digest = rows[0]["settings_digest"] if rows else ""
    made = next(
        (
            o
            for o in outputs
            if o.attrs.get("model_digest") == digest
            and o.attrs.get("settings_digest") == settings_digest
        ),
        None,
    )
    model = {"digest": digest}
    settings = {"settings digest": settings_digest}
    if made is not None:
        model["variant"] = made.attrs.get("model_variant", "")
        model["bands"] = ", ".join(map(str, made.attrs.get("bands", [])))
        settings = {**made.attrs.get("settings", {}), **settings}
    return model, settings


def refresh_mosaic(out_dir: str | PathLike[str] | Location) -> str:
    """Bring the mosaic (and the COGs it needs) up to date, local or in S3.

    Returns
    -------
    str
        A note for the page when that was not possible (logged too), else "".
    """
    out = Location(out_dir)
    try:
        build_mosaic(out)
    except (PipelineError, OSError) as exc:
        log.warning("%s: mosaic not brought up to date: %s", out, exc)
        return f"the mosaic could not be brought up to date ({exc})"
    return ""


# -- gathering --------------------------------------------------------------------------------


def _scene_lines(
    out: Location, tonight: Sequence[Mapping[str, Any]], outputs: Sequence[PublishedOutput]
) -> list[SceneLine]:
    """Tonight's manifest rows as the page lists them, by scene."""
    by_name = {o.name: o for o in outputs}
    lines = []
    for r in sorted(tonight, key=lambda r: r["scene"]):
        name = Location(r["output"]).name.removesuffix(".zarr") if r["output"] else ""
        name = name or scene_stem(r["scene"])
        made = by_name.get(name)
        megapixels = made.height * made.width / 1e6 if made is not None else None
        rate = (
            megapixels / r["seconds"]
            if megapixels is not None and r["status"] == "done" and r["seconds"] > 0
            else None
        )
        lines.append(
            SceneLine(
                scene=r["scene"],
                name=name,
                status=r["status"],
                error=r["error"] or "",
                tiles=int(r["tiles"]),
                tiles_predicted=int(r["tiles_predicted"]),
                valid_pixels=int(r["valid_pixels"]),
                seconds=float(r["seconds"]),
                megapixels=megapixels,
                rate=rate,
                links=scene_links(out, name, published=made is not None),
            )
        )
    return lines


def _areas(locations: Sequence[Location], num_workers: int | None) -> tuple[NightAreas | None, str]:
    """The night's areas, or why there are none."""
    if not locations:
        return None, "no published label rasters, so no areas"
    try:
        return night_areas(locations, num_workers=num_workers), ""
    except (PipelineError, ValueError) as exc:  # no CRS, or two class lists
        return None, f"no areas: {exc}"


def gather_report(
    out_dir: str | PathLike[str] | Location,
    *,
    map_size: int = 1024,
    num_workers: int | None = None,
    map_note: str = "",
) -> NightReport:
    """Read everything the page shows from an output folder (local or S3).

    Parameters
    ----------
    out_dir
        The output folder.
    map_size
        The longer side of the map's picture, in pixels.
    num_workers
        Threads for the areas (default: one per CPU).
    map_note
        What to say under the map.

    Raises
    ------
    OutputError
        Naming the folder when it is missing, not an output folder, or its
        manifest holds no run.
    """
    out = Location(out_dir)
    rows = check_output_folder(out).to_pylist()
    run_id = run_order(rows)[-1]
    tonight = [r for r in rows if r["run_id"] == run_id]
    records = read_run_records(out)
    record = records.get(run_id)
    locations = list_outputs(out)
    outputs = [describe_output(loc) for loc in locations]
    lines = _scene_lines(out, tonight, outputs)
    model, settings = _model_and_settings(record, tonight, outputs)
    areas, areas_note = _areas(locations, num_workers)
    classes = outputs[0].classes if outputs else (record.classes if record else ())
    colors = outputs[0].colors if outputs else ()
    if record is not None:
        model["classes"] = ", ".join(record.classes)
    elif classes:
        model["classes"] = ", ".join(classes)
    return NightReport(
        out=str(out),
        run_id=run_id,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        scenes=tuple(lines),
        record=record,
        model=model,
        settings=settings,
        classes=tuple(classes),
        colors=tuple(colors),
        areas=areas,
        history=tuple(history(rows, records)),
        map=build_map(out, outputs, lines, size=map_size, note=map_note),
        layers=night_layers(out),
        areas_note=areas_note,
    )


def write_report(
    out_dir: str | PathLike[str] | Location,
    *,
    refresh: bool = True,
    map_size: int = 1024,
    num_workers: int | None = None,
    map_note: str = "",
) -> Location:
    """Write ``<out>/report.html`` for the folder's latest run; returns where.

    ``refresh`` first brings the mosaic up to date (:func:`refresh_mosaic`: COGs
    exported where missing or out of date), so that the map shows tonight's
    labels; ``map_note`` is said under the map. Raises
    :class:`~fcnrs.pipeline.errors.OutputError` naming the folder when there is
    nothing to report.
    """
    out = Location(out_dir)
    check_output_folder(out)  # before any mosaic work: a bad folder fails fast
    note = refresh_mosaic(out) if refresh else map_note
    report = gather_report(out, map_size=map_size, num_workers=num_workers, map_note=note)
    page = render_report(report)
    where = out / REPORT_NAME
    where.write_bytes(page.encode("utf-8"))
    log.info("%s: %d scene(s) of run %s", where, len(report.scenes), report.run_id)
    return where
