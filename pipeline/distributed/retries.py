"""Bounded retries: what a failed batch becomes, and when its scene gives up.

Every failure of a batch, in any stage and of any kind (an exception, or the
death of the process that ran it), becomes a :class:`Failure`. The batch is then
retried, at most ``retries`` times; where the failure looks like memory (the
kernel's OOM killer, ``MemoryError``, CUDA out-of-memory, Ray's memory monitor)
the retry splits the batch in two first, so a batch too big for the replica
becomes batches that fit, and a tile that kills its process every time is
isolated and named. When a batch is out of retries its scene fails, naming the
scene and the tile windows, and the scene's remaining batches are cancelled.

Nothing here knows about Ray or threads: both engines report failures the same
way, and the driver decides with :func:`after_failure`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..planning import Tile

#: Retries of a failed batch before its scene fails (so at most 3 attempts).
DEFAULT_RETRIES = 2

F = TypeVar("F", bound=Callable[..., Any])


class StageError(Exception):
    """An exception raised in a stage, as it crosses to the driver: which stage,
    what happened, and whether it looks like memory. Plain arguments, so it
    pickles between Ray processes whatever the original exception held."""

    def __init__(self, stage: str, reason: str, memory: bool = False) -> None:
        super().__init__(stage, reason, memory)
        self.stage, self.reason, self.memory = stage, reason, memory

    def __str__(self) -> str:
        return f"{self.stage} stage: {self.reason}"


def looks_like_memory(exc: BaseException) -> bool:
    """``MemoryError``, torch's (CUDA or other) ``OutOfMemoryError``, or an
    allocator's "out of memory" message."""
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or "out of memory" in str(exc).lower()
    )


def guarded(stage: str) -> Callable[[F], F]:
    """Turn any exception of a stage function into a :class:`StageError`."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except StageError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                raise StageError(stage, reason, looks_like_memory(exc)) from None

        return call  # type: ignore[return-value]

    return wrap


@dataclass(frozen=True)
class Failure:
    """One failed attempt of a batch.

    ``charged`` is false for a batch that only shared a replica with the batch
    that killed it (it never ran, or ran to no fault of its own): it is retried
    without spending one of its retries.
    """

    reason: str
    memory: bool = False
    charged: bool = True

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        if isinstance(exc, StageError):
            return cls(str(exc), exc.memory)
        return cls(f"{type(exc).__name__}: {exc}", looks_like_memory(exc))


@dataclass(frozen=True)
class WorkItem:
    """Tiles of one scene that go through the stages together, and how many
    attempts of theirs have failed so far."""

    scene_id: int
    tiles: tuple[Tile, ...]
    failures: int = 0

    def windows(self) -> str:
        """The tiles' windows, as an operator looks them up in the scene."""
        return "; ".join(str(t.core) for t in self.tiles)


def after_failure(item: WorkItem, failure: Failure, retries: int) -> list[WorkItem]:
    """What to run next after ``item`` failed: the same tiles again, the tiles in
    two halves when the failure looks like memory, or nothing (``[]``) when the
    batch has used its retries and its scene must fail."""
    if not failure.charged:
        return [item]
    failures = item.failures + 1
    if failures > retries:
        return []
    if failure.memory and len(item.tiles) > 1:
        half = (len(item.tiles) + 1) // 2
        return [
            WorkItem(item.scene_id, item.tiles[:half], failures),
            WorkItem(item.scene_id, item.tiles[half:], failures),
        ]
    return [replace(item, failures=failures)]


def give_up(scene: str, item: WorkItem, failure: Failure) -> str:
    """The scene's failure reason: the scene, the tile windows and the last error."""
    attempts = item.failures + 1
    return (
        f"{scene}: tile(s) {item.windows()} failed {attempts} time(s), last with "
        f"{failure.reason}; the scene's remaining batches were cancelled"
    )
