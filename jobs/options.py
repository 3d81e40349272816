"""Option parsing every job shares: bands, logging and verbosity, quiet Ray.

Each job module (every one :mod:`fcnrs.jobs.cli` lists as a subcommand of
``fcnrs``: ``segment_scenes``, ``finetune``, ``context``, ``export_cog``,
``query_areas``, ``vectorize``, ``mosaic``, ``catalog``, ``report``, ``demo``)
defines ``add_arguments(parser)`` and ``run(args) -> int``; :func:`job_main`
runs one as a script.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import IO, Protocol

from fcnrs.fcn_model import CheckpointError, ModelMeta, read_meta
from fcnrs.pipeline.distributed.driver import request_stop
from fcnrs.pipeline.manifest import check_run_id
from fcnrs.pipeline.storage import expand_url_glob, is_url, local_copy

log = logging.getLogger("fcnrs")

#: Loggers of libraries whose INFO lines are their internals, not the run's progress.
_CHATTY = ("ray", "ray.train", "ray.tune", "rasterio", "filelock", "urllib3")
#: The logger of Ray's "token authentication is enabled" notice on a local start.
_TOKEN_NOTICE = "ray._private.authentication.authentication_token_setup"


def parse_bands(text: str) -> tuple[int, ...]:
    """``--bands 4,3,2``: 1-based band indexes (GDAL's convention)."""
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--bands takes 1-based band indexes like 4,3,2. Got {text!r}."
        ) from None
    if any(b < 1 for b in bands):
        raise argparse.ArgumentTypeError(
            f"--bands takes 1-based band indexes (1 is the first band). Got {text!r}."
        )
    return bands


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``minimum`` (argparse names
    the flag, and exits with status 2 before any work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be a whole number of at least {minimum}, not {text!r}"
            )
        return value

    return parse


def run_id(text: str) -> str:
    """An argparse type: a run id that can only name a file in ``manifest/``."""
    try:
        return check_run_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def output_folder(text: str) -> str:
    """An argparse type: a local folder or an ``s3://bucket/prefix`` URL."""
    if is_url(text) and not text.startswith("s3://"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a local folder or an s3://bucket/prefix URL (other "
            "schemes are not supported)"
        )
    return text


def expand_urls(paths: Sequence[str]) -> list[str]:
    """Positional paths as given (the shell expands local globs), with ``s3://``
    globs (``s3://bucket/out/*.zarr``) expanded by listing; a glob that matches
    nothing is kept, so the job reports it as missing."""
    found: list[str] = []
    for path in paths:
        matches = expand_url_glob(path) if is_url(path) and glob.has_magic(path) else []
        found.extend(matches or [path])
    return found


def model_meta(model: str) -> ModelMeta:
    """The metadata of a ``--model``/``--init`` checkpoint, a local path or an
    ``s3://`` URL (fetched once per version into the user's cache), checked
    before a job starts: a missing, forbidden or foreign file raises
    :class:`~fcnrs.fcn_model.CheckpointError` naming it and the reason."""
    try:
        local = str(local_copy(model))
        return read_meta(local)
    except CheckpointError as exc:  # named by its cached copy: name the URL instead
        raise CheckpointError(str(exc).replace(local, model, 1)) from None
    except (ValueError, OSError) as exc:
        text = str(exc)  # storage errors name the URL already
        raise CheckpointError(text if text.startswith(model) else f"{model}: {text}") from None


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (what ``ray job stop`` and most schedulers send) into a clean
    stop of the run in progress (:func:`~fcnrs.pipeline.distributed.request_stop`),
    which records what it leaves unfinished before it exits, as on Ctrl-C."""

    def interrupt(signum: int, frame: object) -> None:
        request_stop(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_bands(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    p.add_argument("--bands", type=parse_bands, default=None, help=help)


def add_verbosity(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show everything, Ray's own logs and warnings included",
    )


def setup_logging(verbose: bool) -> None:
    """The run's own progress at INFO; Ray's internals only with ``-v``.

    Ray's C++ core and its workers print to stderr on their own; the environment
    variables below (read when Ray starts) keep them to errors unless verbose.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    if verbose:
        return
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    # The native core's error-looking lines (e.g. "constructor arguments in the
    # object store") are about Ray's internals; its fatal errors still print.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    # A local Ray turns token authentication on by default and warns that it did
    # (a notice, not a problem: the README says how clients use the token).
    logging.getLogger(_TOKEN_NOTICE).setLevel(logging.ERROR)


def ray_starter(verbose: bool) -> Callable[[], None]:
    """A function that starts (or joins) Ray the first time a job needs it.

    Quiet unless ``verbose``: Python logs at WARNING, workers' output not copied
    to the driver, and the native core's start-up lines (printed straight to file
    descriptor 2, below Python) kept aside and shown only if the start fails.
    """

    def start() -> None:
        import ray

        if ray.is_initialized():
            return
        joining = bool(os.environ.get("RAY_ADDRESS"))
        # Without RAY_ADDRESS (plain python) a Ray of this job's own: never one that
        # another user's `ray start` left running on the machine.
        address = None if joining else "local"
        if verbose:
            ray.init(address=address)
        else:
            with tempfile.TemporaryFile(mode="w+b") as held, _native_stderr_to(held):
                try:
                    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
                except BaseException:
                    held.seek(0)
                    sys.stderr.write(held.read().decode(errors="replace"))
                    raise
        gcs = ray.get_runtime_context().gcs_address
        what = "joined the Ray cluster at" if joining else "started a local Ray at"
        log.info("%s %s (%s)", what, gcs, _resources(ray.cluster_resources()))

    return start


def _resources(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


@contextmanager
def _native_stderr_to(target: IO[bytes]) -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(target.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def build_parser(job: ModuleType, prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=job.__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    job.add_arguments(p)
    add_verbosity(p)
    return p


class JobMain(Protocol):
    """A job's ``main``: its command line (default: ``sys.argv[1:]``) to an exit status."""

    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


def job_main(job: ModuleType) -> JobMain:
    """``main(argv)`` of a job module: parse, set up logging, run."""

    def main(argv: Sequence[str] | None = None) -> int:
        args = build_parser(job).parse_args(argv)
        setup_logging(args.verbose)
        return int(job.run(args))

    return main
