"""The night's page as HTML: how it is drawn.

:func:`render_report` turns a :class:`~fcnrs.gis.report_values.NightReport` (gathered by
:func:`fcnrs.gis.report.gather_report`) into one HTML string from the
``report.html`` template beside this module: styles and script inline, the map
a PNG data URI, every number cell carrying its exact value in ``data-value``
beside the rounded text (for scripts and the tests that read the page back).
Every text from the folder (scene names, errors, paths) is escaped.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from string import Template
from typing import Any

import numpy as np

from .night import in_precedence
from .report_values import NightReport


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | int | None, fmt: str, *, cls: str = "num") -> str:
    """A numeric cell: the formatted value shown, the exact one in ``data-value``."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return f'<td class="{cls}" data-value="">&#8212;</td>'
    return f'<td class="{cls}" data-value="{value!r}">{format(value, fmt)}</td>'


def _table(headers: Sequence[str], rows: Iterable[str], *, id: str) -> str:
    """A table the page's script sorts by a click on a header."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "\n".join(rows)
    return f'<table id="{id}" class="sortable"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>'


def _links(links: Mapping[str, str]) -> str:
    return " ".join(f'<a href="{_e(href)}">{_e(label)}</a>' for label, href in links.items())


def render_scenes(report: NightReport) -> str:
    rows = []
    for s in report.scenes:
        rows.append(
            f'<tr data-scene="{_e(s.name)}" class="status-{_e(s.status)}">'
            f'<td class="scene" title="{_e(s.scene)}">{_e(s.name)}</td>'
            f'<td class="status"><span class="badge {_e(s.status)}">{_e(s.status)}</span></td>'
            f'<td class="reason">{_e(s.error)}</td>'
            + _num(s.tiles, "d", cls="num tiles")
            + _num(s.tiles_predicted, "d", cls="num predicted")
            + _num(s.valid_pixels / 1e6, ".3f", cls="num valid")
            + _num(s.megapixels, ".3f", cls="num mpx")
            + _num(s.seconds, ".2f", cls="num seconds")
            + _num(s.rate, ".3f", cls="num rate")
            + f'<td class="links">{_links(s.links)}</td></tr>'
        )
    headers = [
        "scene",
        "status",
        "reason",
        "tiles",
        "predicted",
        "valid Mpx",
        "Mpx",
        "seconds",
        "Mpx/s",
        "links",
    ]
    return _table(headers, rows, id="scenes")


def render_replicas(report: NightReport) -> str:
    record = report.record
    if record is None or not record.replicas:
        why = (
            "this run has no record (runs from before records were kept)"
            if record is None
            else "no batch ran in this run (every scene was skipped or failed before the model)"
        )
        return f'<p class="note" id="replicas-none">No replica work to show: {why}.</p>'
    total = sum(w.tiles for w in record.replicas.values()) or 1
    rows = []
    for name, w in sorted(record.replicas.items()):
        rate = w.pixels / 1e6 / w.seconds if w.seconds > 0 else None
        rows.append(
            f'<tr><td class="replica">{_e(name)}</td>'
            + _num(w.batches, "d", cls="num batches")
            + _num(w.tiles, "d", cls="num tiles")
            + _num(100.0 * w.tiles / total, ".1f", cls="num share")
            + _num(w.pixels / 1e6, ".3f", cls="num mpx")
            + _num(w.seconds, ".2f", cls="num seconds")
            + _num(rate, ".3f", cls="num rate")
            + "</tr>"
        )
    headers = ["replica", "batches", "tiles", "share %", "Mpx", "seconds in the model", "Mpx/s"]
    return _table(headers, rows, id="replicas")


def shown(value: Any) -> str:
    """A value as the page shows it: yes/no, lists comma-joined, a dash for none."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return "—" if value is None else str(value)


def _dl(items: Mapping[str, Any], id: str) -> str:
    body = "".join(
        f'<dt>{_e(k)}</dt><dd data-key="{_e(k)}">{_e(shown(v))}</dd>' for k, v in items.items()
    )
    return f'<dl id="{id}">{body}</dl>'


def render_model(report: NightReport) -> str:
    swatches = "".join(
        f'<li><span class="swatch" style="background:rgb({r},{g},{b})"></span>{_e(name)}</li>'
        for name, (r, g, b) in zip(report.classes, report.colors, strict=False)
    )
    legend = f'<ul class="legend" id="class-legend">{swatches}</ul>' if swatches else ""
    return (
        '<div class="cols"><div><h3>Model</h3>'
        + _dl(report.model, "model")
        + legend
        + "</div><div><h3>Settings</h3>"
        + _dl(report.settings, "settings")
        + "</div></div>"
    )


def render_areas(report: NightReport) -> str:
    areas = report.areas
    if areas is None:
        return f'<p class="note" id="areas-note">{_e(report.areas_note)}.</p>'
    classes = list(areas.night.class_name)
    km2 = areas.scenes.pivot(index="scene", columns="class_name", values="area_km2")
    shares = areas.shares.pivot(index="scene", columns="class_name", values="area_km2")
    rows = []
    for scene in in_precedence(list(km2.index), name=str):
        cells = "".join(_num(float(km2.loc[scene, c]), ".4f", cls="num area") for c in classes)
        given = float(shares.loc[scene].sum())
        rows.append(
            f'<tr data-scene="{_e(scene)}"><td class="scene">{_e(scene)}</td>{cells}'
            + _num(float(km2.loc[scene].sum()), ".4f", cls="num total")
            + _num(given, ".4f", cls="num share")
            + "</tr>"
        )
    summed = areas.scenes.groupby("class_name").area_km2.sum()
    night = dict(zip(areas.night.class_name, areas.night.area_km2, strict=True))
    foot = (
        '<tr class="sum"><td>sum of the scenes (overlaps counted twice)</td>'
        + "".join(_num(float(summed[c]), ".4f", cls="num area") for c in classes)
        + _num(float(summed.sum()), ".4f", cls="num total")
        + "<td></td></tr>"
        + '<tr class="night" id="night-row"><td>the night (each ground pixel once)</td>'
        + "".join(_num(float(night[c]), ".4f", cls="num area") for c in classes)
        + _num(float(sum(night.values())), ".4f", cls="num total")
        + _num(float(sum(night.values())), ".4f", cls="num share")
        + "</tr>"
    )
    headers = ["scene", *[f"{c} km²" for c in classes], "total km²", "given to the night km²"]
    table = _table(headers, rows, id="areas")
    return table.replace("</tbody></table>", f"</tbody><tfoot>{foot}</tfoot></table>")


def render_history(report: NightReport) -> str:
    rows = []
    for run in report.history:
        current = ' class="current"' if run.run_id == report.run_id else ""
        c = run.counts
        rows.append(
            f'<tr{current} data-run="{_e(run.run_id)}"><td class="run">{_e(run.run_id)}</td>'
            f"<td>{_e(run.started_at)}</td><td>{_e(run.finished_at)}</td>"
            + "".join(
                _num(c.get(k, 0), "d", cls=f"num {k}")
                for k in ("done", "skipped", "failed", "interrupted")
            )
            + _num(run.tiles_predicted, "d", cls="num predicted")
            + _num(run.valid_pixels / 1e6, ".3f", cls="num valid")
            + _num(run.seconds, ".1f", cls="num seconds")
            + f'<td class="digest" title="{_e(run.model_digest)}">{_e(run.model_digest[:12])}</td></tr>'
        )
    headers = [
        "run",
        "started",
        "finished",
        "done",
        "skipped",
        "failed",
        "interrupted",
        "tiles predicted",
        "valid Mpx done",
        "seconds",
        "model",
    ]
    return _table(headers, rows, id="history")


def render_map(report: NightReport) -> str:
    m = report.map
    note = f'<p class="note" id="map-note">{_e(m.note)}</p>' if m.note else ""
    missing = ""
    if m.missing:
        items = "".join(f"<li><b>{_e(n)}</b>: {_e(why)}</li>" for n, why in m.missing)
        missing = f'<ul class="missing" id="map-missing">{items}</ul>'
    if not m.width:
        return note + missing + '<p class="note">Nothing to draw.</p>'
    image = ""
    if m.png is not None:
        data = base64.b64encode(m.png).decode("ascii")
        image = (
            f'<image id="quicklook" href="data:image/png;base64,{data}" x="0" y="0" '
            f'width="{m.width}" height="{m.height}" preserveAspectRatio="none"/>'
        )
    shapes = []
    font = max(12.0, m.width / 50)  # the map is drawn smaller than its pixels
    for f in m.footprints:
        points = " ".join(f"{x},{y}" for x, y in f.points)
        cx = float(np.mean([p[0] for p in f.points]))
        cy = float(np.mean([p[1] for p in f.points]))
        shapes.append(
            f'<g class="footprint {f.status}" data-scene="{_e(f.name)}">'
            f"<title>{_e(f.title)}</title>"
            f'<polygon points="{points}"/>'
            f'<text x="{cx:.1f}" y="{cy:.1f}" font-size="{font:.0f}">{_e(f.name)}</text></g>'
        )
    present = sorted({f.status for f in m.footprints})
    key = "".join(
        f'<li><svg width="22" height="14"><rect class="footprint-key {s}" x="1" y="1" '
        f'width="20" height="12"/></svg>{_e(_STATUS_WORDS[s])}</li>'
        for s in present
    )
    svg = (
        f'<svg id="map" viewBox="0 0 {m.width} {m.height}" role="img" '
        f'aria-label="map of the night" data-crs="{_e(m.crs)}">'
        f'<rect class="frame" width="{m.width}" height="{m.height}"/>{image}{"".join(shapes)}</svg>'
    )
    return (
        f'<figure class="map">{svg}<figcaption>Footprints in {_e(m.crs)}; '
        f'where scenes overlap the later name is on top.<ul class="legend">{key}</ul>'
        f"</figcaption></figure>{note}{missing}"
    )


_STATUS_WORDS = {
    "done": "done tonight",
    "skipped": "skipped (already done)",
    "failed": "failed tonight (no output)",
    "interrupted": "interrupted tonight (no output)",
    "stale": "failed tonight: the earlier output is shown",
    "earlier": "not in tonight's run",
}


def render_layers(report: NightReport) -> str:
    items = "".join(
        f'<li><a href="{_e(href)}">{_e(label)}</a></li>' for label, href in report.layers.items()
    )
    return f'<ul id="layers">{items}</ul>'


def _summary(report: NightReport) -> str:
    c = report.counts
    parts = [f'<b id="count-{k}">{c.get(k, 0)}</b> {k}' for k in ("done", "skipped", "failed")]
    if c.get("interrupted"):
        parts.append(f'<b id="count-interrupted">{c["interrupted"]}</b> interrupted')
    when = ""
    if report.record is not None:
        r = report.record
        when = f" &middot; {_e(r.started_at)} to {_e(r.finished_at)} ({r.seconds:.1f} s)"
        if r.interrupted:
            when += f" &middot; stopped by {_e(r.interrupted)}"
    return ", ".join(parts) + when


def render_report(report: NightReport) -> str:
    """The page, as one HTML string (styles, script and map inline)."""
    template = Template(resources.files(__package__).joinpath("report.html").read_text("utf-8"))
    failed = [s for s in report.scenes if s.status in ("failed", "interrupted")]
    alert = ""
    if failed:
        items = "".join(f"<li><b>{_e(s.name)}</b>: {_e(s.error)}</li>" for s in failed)
        alert = (
            f'<div class="alert" id="failures"><h3>Not finished tonight</h3><ul>{items}</ul></div>'
        )
    return template.substitute(
        title=_e(f"Night report: {report.run_id}"),
        out=_e(report.out),
        run_id=_e(report.run_id),
        generated=_e(report.generated_at),
        summary=_summary(report),
        alert=alert,
        map=render_map(report),
        scenes=render_scenes(report),
        replicas=render_replicas(report),
        model=render_model(report),
        areas=render_areas(report),
        layers=render_layers(report),
        history=render_history(report),
    )
