"""What the operator sees: a live progress line, and the summary at the end."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .driver import RunReport


class Progress:
    """A live line: tiles done of total, megapixels per second, time left."""

    def __init__(self, total_tiles: int, stream: TextIO = sys.stderr) -> None:
        self.total = total_tiles
        self.done = self.done_pixels = 0
        self.start = self.last = time.perf_counter()
        self.stream = stream
        self.live = stream.isatty()

    def update(self, tiles: int, pixels: int) -> None:
        self.done += tiles
        self.done_pixels += pixels
        now = time.perf_counter()
        if now - self.last >= (0.5 if self.live else 10) or self.done == self.total:
            self.last = now
            self.stream.write(
                self.line() + ("\r" if self.live and self.done < self.total else "\n")
            )
            self.stream.flush()

    def drop(self, tiles: int) -> None:
        """Tiles that will not be done after all (their scene failed)."""
        self.total -= tiles

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done_pixels / elapsed / 1e6
        left = (self.total - self.done) * elapsed / self.done if self.done else math.inf
        eta = f"{left:.0f} s" if math.isfinite(left) else "?"
        share = self.done / self.total if self.total else 1.0
        return f"tiles {self.done}/{self.total} ({share:.0%})  {rate:.2f} MP/s  {eta} left"


def print_summary(report: RunReport, out: str, stream: TextIO | None = None) -> None:
    """The table an operator reads at the end of a run (the manifest has it all),
    on standard output unless ``stream`` is given."""
    w = (stream or sys.stdout).write
    w(f"\nrun {report.run_id}: outputs and manifest in {out}\n")
    w(f"{'status':<8} {'tiles':>6} {'predicted':>9} {'valid MP':>9} {'seconds':>8}  scene\n")
    for r in report.rows:
        w(
            f"{r.status:<8} {r.tiles:>6} {r.tiles_predicted:>9} {r.valid_pixels / 1e6:>9.2f} "
            f"{r.seconds:>8.1f}  {r.scene}\n"
        )
    for replica, work in sorted(report.replicas.items()):
        w(
            f"replica {replica}: {work.batches} batches, {work.tiles} tiles, "
            f"{work.seconds:.1f} s in the model\n"
        )
    counts = Counter(r.status for r in report.rows)
    w(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    w(f", {counts['interrupted']} interrupted\n" if counts["interrupted"] else "\n")
    for r in report.failed:
        w(f"  failed: {r.error}\n")
    if report.interrupted:
        w(f"stopped by {report.interrupted}: a re-run resumes the interrupted scenes\n")
