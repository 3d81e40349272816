"""The run manifest: one Parquet table per output folder, one row per scene per run.

``<out>/manifest/`` is a Parquet dataset (one file per run,
``run-<run id>.parquet``) that says, for every run, what happened to each scene
(``done``, ``skipped``, ``failed``, or ``interrupted`` when the run itself was
stopped) and why, with timings, tile and pixel
counts, the model's and the settings' digests, and the source file's size and
modification time. pyarrow, pandas and DuckDB read the folder as one table::

    pandas.read_parquet("out/manifest")
    duckdb -c "SELECT scene, status, error FROM read_parquet('out/manifest/*.parquet')"

A run's file is rewritten (temporary name, then rename) each time one of its
scenes finishes, so a crash keeps the rows of finished scenes and never leaves a
half-written file; one file per run keeps each rewrite small however long the
folder's history grows.

Beside the rows, each run that ends (done, or stopped) leaves one small JSON
record of what is the run's rather than a scene's (:class:`RunRecord`): the
engine, the model and every setting, and the work of each model replica
(batches, tiles, pixels, seconds in the model). It lives in
``<out>/manifest/_runs/run-<run id>.json``: pyarrow, pandas and DuckDB skip
names that start with ``_``, so the folder still reads as one Parquet table.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from os import PathLike
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from .scenes import ScenePlan
from .storage import Location

MANIFEST_DIR = "manifest"
#: The runs' own records, inside the manifest folder (``_``: not a Parquet part).
RUNS_DIR = "_runs"
Status = Literal["done", "skipped", "failed", "interrupted"]

#: What a run id may hold: it names a file in ``<out>/manifest/``, never a path.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is safe as part of a file name, else ValueError saying why."""
    if not RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return run_id


@dataclass(frozen=True)
class ManifestRow:
    """One scene's record of one run (one row of ``OUT/manifest/``; the README's
    *Manifest* lists the columns)."""

    run_id: str
    scene: str
    output: str
    status: Status
    error: str | None
    tiles: int
    tiles_predicted: int
    valid_pixels: int
    seconds: float
    model_digest: str
    settings_digest: str
    source_size: int
    source_mtime_ns: int
    started_at: str
    finished_at: str


SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("scene", pa.string()),
        ("output", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("tiles", pa.int64()),
        ("tiles_predicted", pa.int64()),
        ("valid_pixels", pa.int64()),
        ("seconds", pa.float64()),
        ("model_digest", pa.string()),
        ("settings_digest", pa.string()),
        ("source_size", pa.int64()),
        ("source_mtime_ns", pa.int64()),
        ("started_at", pa.string()),
        ("finished_at", pa.string()),
    ]
)
assert [f.name for f in fields(ManifestRow)] == SCHEMA.names


def now() -> str:
    """A manifest timestamp: UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunIdentity:
    """What every row of one run shares."""

    run_id: str
    model_digest: str
    settings_digest: str


def failed_row(
    run: RunIdentity,
    scene: str,
    error: str,
    *,
    plan: ScenePlan | None,
    started_at: str,
    seconds: float,
    tiles_predicted: int = 0,
    status: Status = "failed",
) -> ManifestRow:
    """A scene the run did not finish: ``failed``, or ``interrupted`` when the run
    was stopped (``plan`` is None when it ended before it was planned)."""
    return _row(run, scene, status, error, plan, started_at, seconds, tiles_predicted, 0)


def skipped_row(
    run: RunIdentity,
    scene: str,
    *,
    plan: ScenePlan,
    valid_pixels: int,
    started_at: str,
    seconds: float,
) -> ManifestRow:
    """A scene whose output is already complete with the same model and settings."""
    reason = "already done with the same model, settings and source"
    return _row(run, scene, "skipped", reason, plan, started_at, seconds, 0, valid_pixels)


def done_row(
    run: RunIdentity,
    scene: str,
    *,
    plan: ScenePlan,
    tiles_predicted: int,
    valid_pixels: int,
    started_at: str,
    seconds: float,
) -> ManifestRow:
    """A scene segmented and published in this run."""
    return _row(run, scene, "done", None, plan, started_at, seconds, tiles_predicted, valid_pixels)


def _row(
    run: RunIdentity,
    scene: str,
    status: Status,
    error: str | None,
    plan: ScenePlan | None,
    started_at: str,
    seconds: float,
    tiles_predicted: int,
    valid_pixels: int,
) -> ManifestRow:
    return ManifestRow(
        run_id=run.run_id,
        scene=str(scene),
        output=str(plan.output) if plan else "",
        status=status,
        error=error,
        tiles=len(plan.grid) if plan else 0,
        tiles_predicted=tiles_predicted,
        valid_pixels=valid_pixels,
        seconds=seconds,
        model_digest=run.model_digest,
        settings_digest=run.settings_digest,
        source_size=plan.info.size_bytes if plan else -1,
        source_mtime_ns=plan.info.mtime_ns if plan else -1,
        started_at=started_at,
        finished_at=now(),
    )


def manifest_dir(out_dir: str | PathLike[str] | Location) -> Location:
    return Location(out_dir) / MANIFEST_DIR


def read_manifest(out_dir: str | PathLike[str] | Location) -> pa.Table:
    """Every run's rows, on disk or in S3 (an empty table with the schema when
    there are none)."""
    where = manifest_dir(out_dir)
    names = sorted(k for k in where.list() if k.startswith("run-") and k.endswith(".parquet"))
    if not names:
        return SCHEMA.empty_table()
    tables = [
        pq.read_table(pa.BufferReader((where / k).read_bytes()), schema=SCHEMA) for k in names
    ]
    return pa.concat_tables(tables)


class ManifestWriter:
    """Collects one run's rows and keeps ``<out>/manifest/run-<id>.parquet`` current."""

    def __init__(self, out_dir: str | PathLike[str] | Location, run_id: str) -> None:
        self.path = manifest_dir(out_dir) / f"run-{check_run_id(run_id)}.parquet"
        self.rows: list[ManifestRow] = []

    def add(self, row: ManifestRow) -> None:
        self.rows.append(row)
        table = pa.Table.from_pylist([asdict(r) for r in self.rows], schema=SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        # Whole or not at all: a temporary file renamed (umask applies), or one PUT.
        self.path.write_bytes(sink.getvalue().to_pybytes())


@dataclass(frozen=True)
class ReplicaWork:
    """What one model replica did in a run."""

    batches: int = 0
    tiles: int = 0
    #: Pixels of the tiles' cores (what was written, valid or not).
    pixels: int = 0
    #: Seconds spent in the model (the predict stage), not waiting.
    seconds: float = 0.0

    def plus(self, *, tiles: int, pixels: int, seconds: float) -> ReplicaWork:
        """This work and one more batch."""
        return ReplicaWork(
            self.batches + 1, self.tiles + tiles, self.pixels + pixels, self.seconds + seconds
        )


@dataclass(frozen=True)
class RunRecord:
    """What belongs to a run rather than to one scene: the engine, the model,
    every setting, and each replica's work."""

    run_id: str
    started_at: str
    finished_at: str
    #: Wall seconds from the run's start to its end.
    seconds: float
    engine: str
    device: str
    #: The checkpoint as given (a path or URL) and its metadata.
    model: str
    model_digest: str
    model_variant: str
    classes: tuple[str, ...]
    bands: tuple[int, ...]
    #: Every setting (the output settings and the batch size), resolved.
    settings: dict[str, Any]
    settings_digest: str
    threads_per_replica: int = 0
    replicas: dict[str, ReplicaWork] = field(default_factory=dict)
    #: The signal that stopped the run, if one did.
    interrupted: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> RunRecord:
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["classes"] = tuple(data.get("classes", ()))
        data["bands"] = tuple(data.get("bands", ()))
        data["replicas"] = {k: ReplicaWork(**v) for k, v in data.get("replicas", {}).items()}
        return cls(**data)


def run_record_path(out_dir: str | PathLike[str] | Location, run_id: str) -> Location:
    return manifest_dir(out_dir) / RUNS_DIR / f"run-{check_run_id(run_id)}.json"


def write_run_record(out_dir: str | PathLike[str] | Location, record: RunRecord) -> Location:
    """Write ``<out>/manifest/_runs/run-<id>.json`` whole (rename, or one PUT)."""
    where = run_record_path(out_dir, record.run_id)
    where.write_bytes(record.to_json().encode("utf-8"))
    return where


def read_run_records(out_dir: str | PathLike[str] | Location) -> dict[str, RunRecord]:
    """Every run record of an output folder, by run id (runs from before records
    were kept have none; an unreadable record is left out)."""
    where = manifest_dir(out_dir) / RUNS_DIR
    records = {}
    for key in sorted(where.list()):
        if not (key.startswith("run-") and key.endswith(".json")):
            continue
        try:
            record = RunRecord.from_json((where / key).read_bytes())
        except (OSError, ValueError, TypeError):
            continue
        records[record.run_id] = record
    return records
