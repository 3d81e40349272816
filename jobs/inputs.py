"""The per-input loop of the jobs that take many label rasters (``export``,
``vectorize``): expand ``s3://`` globs once, then work on each input, where a
bad one fails alone, named in the log, and the others go on."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from fcnrs.jobs.options import expand_urls

T = TypeVar("T")


def expand_inputs(patterns: Sequence[str], log: logging.Logger) -> list[str] | None:
    """Positional inputs with their ``s3://`` globs expanded
    (:func:`~fcnrs.jobs.options.expand_urls`), or None, logged, when a glob's
    listing fails (no such bucket, access denied): the job then exits with 2."""
    try:
        return expand_urls(patterns)
    except OSError as exc:
        log.error("%s", exc)
        return None


def for_each_input(
    paths: Sequence[str],
    work: Callable[[str], T],
    *,
    done: Callable[[T], None],
    failure: str,
    log: logging.Logger,
) -> int:
    """Run ``work`` on every path; one that raises fails alone.

    Parameters
    ----------
    paths
        The inputs, in order.
    work
        What to do with one input.
    done
        Reports one result (prints and logs what was written).
    failure
        What a failure is called in the log: ``<path>: <failure>: <error>``.
    log
        The job's logger.

    Returns
    -------
    int
        How many inputs failed.
    """
    failed = 0
    for path in paths:
        try:
            result = work(path)
        except Exception as exc:  # one bad input fails alone
            failed += 1
            log.error("%s: %s: %s", path, failure, exc)
            continue
        done(result)
    return failed
