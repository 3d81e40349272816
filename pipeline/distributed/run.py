"""One run's shared state and its ending: stop requests, the report, the record.

A *run* (an operator's *night*) is one call of
:func:`~fcnrs.pipeline.distributed.driver.run_scenes` over a list of scenes.
"""

from __future__ import annotations

import logging
import signal
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from os import PathLike

from fcnrs.fcn_model import ModelMeta, checkpoint_digest, read_meta

from ..errors import Interrupted, OutputError
from ..manifest import (
    ManifestRow,
    ManifestWriter,
    ReplicaWork,
    RunIdentity,
    RunRecord,
    check_run_id,
    now,
    write_run_record,
)
from ..scenes import SegmentSettings
from ..storage import Location, local_copy
from .crashes import CrashRecord

log = logging.getLogger(__name__)

#: Stop requests (signal names) for the run in progress: see :func:`request_stop`.
STOPS: list[str] = []


def request_stop(signal_name: str = "SIGTERM") -> None:
    """Ask the run in progress to stop within a second: it records its unfinished
    scenes as ``interrupted`` and returns. Safe to call from a signal handler,
    which is how the job turns SIGTERM (``ray job stop``) into a clean stop;
    raising from the handler instead can be lost inside Ray's blocking calls."""
    STOPS.append(signal_name)


def check_stop() -> None:
    """Raise :class:`Interrupted` once SIGTERM or SIGINT asked the run to stop."""
    if STOPS:
        raise Interrupted(STOPS[-1])


@dataclass(frozen=True)
class RunReport:
    """What a run did: its manifest rows, its replicas' work, and whether a signal stopped it."""

    run_id: str
    rows: tuple[ManifestRow, ...]
    #: What each model replica did (also kept in the run's record).
    replicas: dict[str, ReplicaWork] = field(default_factory=dict)
    interrupted: str | None = None  # the signal that stopped the run

    @property
    def replica_batches(self) -> dict[str, int]:
        """Batches each replica predicted."""
        return {name: work.batches for name, work in self.replicas.items()}

    @property
    def failed(self) -> list[ManifestRow]:
        """The rows of the scenes that failed."""
        return [r for r in self.rows if r.status == "failed"]

    def exit_code(self) -> int:
        """0: every scene done or skipped; 1: a scene failed; 130 or 143: stopped
        by SIGINT or SIGTERM (128 + the signal, as a shell reports it)."""
        if self.interrupted:
            return 128 + int(getattr(signal, self.interrupted, signal.SIGINT))
        return 1 if self.failed else 0


@dataclass
class RunState:
    """What the phases of one run share."""

    identity: RunIdentity
    model: str
    meta: ModelMeta
    settings: SegmentSettings
    out_dir: Location
    manifest: ManifestWriter
    crashes: CrashRecord
    recorded: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=now)
    engine: str = ""
    device: str = ""
    threads: int = 0

    def record(self, row: ManifestRow) -> None:
        self.recorded.add(row.scene)
        self.manifest.add(row)


def record_run(run: RunState, report: RunReport) -> RunReport:
    """Keep the run's own record beside its manifest rows (a failure to write it
    is logged: the labels and rows are what matter)."""
    record = RunRecord(
        run_id=report.run_id,
        started_at=run.started_at,
        finished_at=now(),
        seconds=time.perf_counter() - run.started,
        engine=run.engine,
        device=run.device,
        model=run.model,
        model_digest=run.identity.model_digest,
        model_variant=run.meta.variant,
        classes=tuple(run.meta.classes),
        bands=tuple(run.settings.bands or run.meta.bands),
        settings=asdict(run.settings),
        settings_digest=run.identity.settings_digest,
        threads_per_replica=run.threads,
        replicas=dict(report.replicas),
        interrupted=report.interrupted,
    )
    try:
        write_run_record(run.out_dir, record)
    except OSError as exc:
        log.warning("%s: the run's record was not written: %s", run.out_dir, exc)
    return report


def start_run(
    model: str | PathLike[str],
    out_dir: str | PathLike[str],
    settings: SegmentSettings,
    run_id: str | None,
) -> RunState:
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    check_run_id(run_id)
    try:
        out_dir = Location(out_dir)
        if out_dir.is_file():
            raise OutputError(f"{out_dir}: --out must be a folder, and this is a file.")
        if out_dir.remote:  # a wrong secret or bucket fails here, before anything is written
            next(out_dir.list(), None)
        model = str(model)
        local = local_copy(model)  # an s3:// checkpoint is fetched once, by ETag
    except (ValueError, OSError) as exc:
        raise OutputError(str(exc)) from None
    meta = read_meta(local)  # a bad checkpoint raises CheckpointError naming it
    settings = settings.with_halo(meta)  # the checkpoint's halo unless --overlap
    identity = RunIdentity(run_id, checkpoint_digest(local), settings.digest())
    try:
        crashes = CrashRecord(out_dir, run_id)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot keep the run's crash record ({exc})") from None
    return RunState(
        identity, model, meta, settings, out_dir, ManifestWriter(out_dir, run_id), crashes
    )
