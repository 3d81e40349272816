"""Runs that die: which tiles were in flight, so that a crash loop cannot happen.

Inside a run every failure of a batch is seen and bounded (:mod:`.retries`). When
the whole run dies instead (the kernel's OOM killer takes the driver, a power
loss, ``kill -9``), only the next run can tell, and only if the dead one wrote
down what it was doing. Each run keeps one small JSON object,
``OUT/manifest/_inflight/run-<run id>.json``, rewritten whole before each batch
goes to the engine (a rename on disk, one PUT on S3: a reader sees the old
object or the new one, never a part), holding:

- ``in_flight``: the tiles of every batch sent and not yet back;
- ``deaths``: per tile, how many runs died while it was in flight (carried over
  from earlier runs' records);
- who wrote it (host, process id and start time), so a live run's record is
  never taken for a dead one's.

A run starts by folding every record it finds whose run is over into its own,
writing its own, and only then deleting theirs, so a crash at any point loses
no count: a dead run's in-flight tiles get one more death each, an ended run's
counts carry over as they are. Then:

- a batch with a tile at ``retries + 1`` deaths is not tried again: its scene
  fails with the reason, and the rest of the night goes on;
- a batch with any death runs alone (nothing else in flight), so if the run
  dies again the record names that one batch; one that comes back is cleared.

An innocent batch in flight beside a killer gets at most one death, then runs
alone and clears itself; the killer gains one death per night until it is
out of retries. A run that ends (done, failed or stopped) keeps its record only
while some tile still has deaths (a tile convicted tonight stays convicted
while its source is unchanged: the key holds the source's version).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping

import psutil

from ..planning import Tile
from ..storage import Location

log = logging.getLogger(__name__)

#: Inside the manifest folder (``_``: not a Parquet part).
INFLIGHT_DIR = "_inflight"
#: A record from another host is taken for a dead run's after this long unwritten.
STALE_S = 600.0

TileKey = str


def tile_key(output: str, version: str, tile: Tile) -> TileKey:
    """A tile of a scene's output, for this version of its source."""
    return f"{output}|{version}|{tile.index[0]},{tile.index[1]}"


def _me() -> dict[str, object]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": psutil.Process().create_time(),
    }


def _over(record: Mapping[str, object]) -> bool:
    """Whether a record's run has ended or died (its own process is gone)."""
    if record.get("ended"):
        return True
    if record.get("host") != socket.gethostname():
        return time.time() - float(record.get("written", 0)) > STALE_S  # type: ignore[arg-type]
    try:
        proc = psutil.Process(int(record.get("pid", -1)))  # type: ignore[call-overload]
        started = float(record.get("started", 0))  # type: ignore[arg-type]
        return bool(abs(proc.create_time() - started) > 1)
    except (psutil.Error, ValueError):
        return True


class CrashRecord:
    """This run's record of its batches in flight (see the module docstring)."""

    def __init__(self, out_dir: Location, run_id: str) -> None:
        self.folder = out_dir / "manifest" / INFLIGHT_DIR
        self.path = self.folder / f"run-{run_id}.json"
        self.run_id = run_id
        self.deaths: dict[TileKey, int] = {}
        self.in_flight: dict[int, tuple[TileKey, ...]] = {}
        self._fold_earlier()

    def _fold_earlier(self) -> None:
        earlier = []
        for name in sorted(self.folder.list()):
            if (
                name.startswith(".")
                or not name.endswith(".json")
                or self.folder / name == self.path
            ):
                continue
            try:
                record = json.loads((self.folder / name).read_bytes())
            except (OSError, ValueError):
                continue
            if not isinstance(record, dict) or not _over(record):
                continue
            earlier.append(name)
            for key, n in dict(record.get("deaths", {})).items():
                self.deaths[key] = max(self.deaths.get(key, 0), int(n))
            if not record.get("ended"):
                died = sorted({k for keys in record.get("in_flight", []) for k in keys})
                for key in died:
                    self.deaths[key] = self.deaths.get(key, 0) + 1
                if died:
                    log.warning(
                        "run %s died with %d tile(s) in flight; they run alone this time",
                        record.get("run_id", name),
                        len(died),
                    )
        if earlier:
            self._write()  # ours first: a crash between the two loses nothing
            for name in earlier:
                (self.folder / name).delete_tree()

    def deaths_of(self, keys: Iterable[TileKey]) -> int:
        """The most runs any of these tiles was in flight in when they died."""
        return max((self.deaths.get(k, 0) for k in keys), default=0)

    def sent(self, seq: int, keys: Iterable[TileKey]) -> None:
        """A batch goes to the engine: written down before it runs."""
        self.in_flight[seq] = tuple(keys)
        self._write()

    def back(self, seq: int, *, cleared: bool) -> None:
        """A batch came back (written, or failed in the open); ``cleared`` when
        it was written, so its tiles' deaths no longer count."""
        keys = self.in_flight.pop(seq, ())
        if cleared:
            for key in keys:
                self.deaths.pop(key, None)

    def forget(self, output: str) -> None:
        """A scene's output is published: none of its tiles is a suspect."""
        prefix = f"{output}|"
        self.deaths = {k: n for k, n in self.deaths.items() if not k.startswith(prefix)}

    def close(self) -> None:
        """The run ended (done, failed or stopped): keep the counts that matter."""
        self.in_flight.clear()
        if self.deaths:
            self._write(ended=True)
        else:
            self.path.delete_tree()

    def _write(self, *, ended: bool = False) -> None:
        record = {
            "run_id": self.run_id,
            **_me(),
            "written": time.time(),
            "ended": ended,
            "in_flight": [list(keys) for keys in self.in_flight.values()],
            "deaths": self.deaths,
        }
        self.path.write_bytes(json.dumps(record, sort_keys=True).encode())
