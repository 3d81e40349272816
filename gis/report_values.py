"""What the night's page shows, as frozen values: gathered from an output folder
by :func:`fcnrs.gis.report.gather_report`, drawn by
:func:`fcnrs.gis.report_page.render_report`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from fcnrs.pipeline.manifest import RunRecord

from .night_areas import NightAreas

#: What happened to a scene tonight, as the map draws it: tonight's statuses,
#: ``stale`` (it failed tonight, an earlier output is still published) and
#: ``earlier`` (not in tonight's run; its output is from an earlier night).
MapStatus = Literal["done", "skipped", "failed", "interrupted", "stale", "earlier"]


@dataclass(frozen=True)
class SceneLine:
    """One scene of the run."""

    scene: str
    name: str
    status: str
    error: str
    tiles: int
    tiles_predicted: int
    valid_pixels: int
    seconds: float
    #: Scene size in megapixels (from its published output), when known.
    megapixels: float | None
    #: Megapixels per second of a scene done in this run.
    rate: float | None
    #: Label -> href (relative to the page) of what exists: STAC Item, COG, ...
    links: dict[str, str]


@dataclass(frozen=True)
class RunLine:
    """One run of the folder's history."""

    run_id: str
    started_at: str
    finished_at: str
    counts: dict[str, int]
    tiles_predicted: int
    valid_pixels: int
    seconds: float
    model_digest: str


@dataclass(frozen=True)
class Footprint:
    """One scene's outline on the map."""

    name: str
    status: MapStatus
    #: The outline in the map's pixel coordinates (x right, y down).
    points: tuple[tuple[float, float], ...]
    title: str


@dataclass(frozen=True)
class NightMap:
    """The map: a picture (the mosaic's quicklook, PNG bytes) or none, its size
    in pixels, the footprints over it, and what could not be drawn."""

    width: int
    height: int
    png: bytes | None
    crs: str
    footprints: tuple[Footprint, ...]
    #: (scene, why it is not on the map)
    missing: tuple[tuple[str, str], ...]
    note: str = ""


@dataclass(frozen=True)
class NightReport:
    """Everything on the page."""

    out: str
    run_id: str
    generated_at: str
    scenes: tuple[SceneLine, ...]
    record: RunRecord | None
    #: Model and settings: from the run's record, or an output it made.
    model: dict[str, Any]
    settings: dict[str, Any]
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    areas: NightAreas | None
    history: tuple[RunLine, ...]
    map: NightMap
    #: Label -> href of the night's layers (mosaic, polygons, catalogue).
    layers: dict[str, str] = field(default_factory=dict)
    #: Why there are no areas, when there are none.
    areas_note: str = ""

    @property
    def counts(self) -> Counter[str]:
        return Counter(s.status for s in self.scenes)
