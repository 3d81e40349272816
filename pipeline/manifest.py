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
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from os import PathLike
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from .scenes import ScenePlan
from .storage import Location

MANIFEST_DIR = "manifest"
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
