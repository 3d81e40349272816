"""Which scenes a run segments, and each scene's plan: everything before pixels.

Both the one-process path (:mod:`fcnrs.pipeline.segment`) and the Ray path
(:mod:`fcnrs.pipeline.distributed`) start here, and neither imports the other.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from os import PathLike
from pathlib import Path, PurePosixPath

from fcnrs.fcn_model import ModelMeta

from .context import default_halo
from .planning import DEFAULT_TILE_SIZE, TileGrid, plan_tiles
from .precision import Precision, resolve_precision
from .reading import SceneInfo, inspect_scene, resolve_bands
from .storage import Location, expand_url_glob, is_url
from .tta import TTA, check_mode

log = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".lst", ".list")


def expand_scenes(args: Iterable[str]) -> list[str]:
    """Expand files, globs and list files (``.txt``/``.lst``/``.list``, one scene per
    line, ``#`` comments; relative lines are relative to the list file) into paths.

    Order is kept and duplicates dropped. A path that does not exist is kept, so
    the run records it as failed rather than silently doing less than asked.
    """
    out: list[str] = []
    for arg in args:
        where = Location(arg)
        if PurePosixPath(where.name).suffix.lower() in LIST_SUFFIXES and where.is_file():
            for line in where.read_bytes().decode().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    relative = not is_url(line) and not Path(line).is_absolute()
                    out.extend(expand_scenes([str(where.parent / line) if relative else line]))
        elif glob.has_magic(arg):
            matches = (
                expand_url_glob(arg) if is_url(arg) else sorted(glob.glob(arg, recursive=True))
            )
            out.extend(matches if matches else [arg])
        else:
            out.append(arg)
    return list(dict.fromkeys(out))


def scene_stem(path: str | PathLike[str]) -> str:
    """The output name of a scene: its file name without the extension. It is one
    path component whatever the path holds (``..``, a URL), so every output stays
    inside ``--out``; a name of dots only becomes ``scene``."""
    stem = Path(str(path).rstrip("/")).name.rsplit(".", 1)[0]
    return stem if stem.strip(".") else "scene"


@dataclass(frozen=True)
class SegmentSettings:
    """Everything besides the model that decides a scene's output."""

    tile_size: int = DEFAULT_TILE_SIZE
    #: The halo; None: the one the checkpoint records, else a conservative one
    #: for its architecture (:func:`~fcnrs.pipeline.context.default_halo`), as
    #: :meth:`with_halo` resolves it before a run.
    overlap: int | None = None
    #: Tiles per model call; None: what the replicas' device holds
    #: (:meth:`~fcnrs.pipeline.inference.Predictor.batch_size`). Not part of the
    #: output's identity: it never changes a label.
    batch_size: int | None = None
    bands: tuple[int, ...] | None = None  # None: the checkpoint's bands
    probabilities: bool = False
    precision: Precision = "auto"
    #: Test-time augmentation: ``none``, ``flips`` (4 passes) or ``d4`` (8 passes).
    tta: TTA = "none"

    def __post_init__(self) -> None:
        check_mode(self.tta)
        for name, minimum in (("tile_size", 1), ("overlap", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if name in ("batch_size", "overlap") and value is None:
                continue
            if not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"{name} must be a whole number of at least {minimum}, not {value!r}"
                )

    def resolved(self, device: str) -> SegmentSettings:
        """These settings with ``precision="auto"`` replaced by what it stands for
        on ``device``: outputs record (and skip checks compare) the real one."""
        return replace(self, precision=resolve_precision(self.precision, device))

    def with_halo(self, meta: ModelMeta) -> SegmentSettings:
        """These settings with ``overlap=None`` replaced by the halo ``meta``'s
        network needs (:func:`~fcnrs.pipeline.context.default_halo`); the choice
        and its reason are logged. The halo is part of :meth:`digest`, so a run
        with another halo recomputes its scenes."""
        halo, reason = default_halo(meta)
        if self.overlap is None:
            log.info("halo %d px: %s", halo, reason)
            return replace(self, overlap=halo)
        log.info(
            "halo %d px: --overlap (the default would be %d px: %s)", self.overlap, halo, reason
        )
        return self

    def output_settings(self) -> dict[str, object]:
        """The settings that decide the output's bytes (the batch size does not)."""
        keyed = asdict(self)
        keyed.pop("batch_size")
        return keyed

    def digest(self) -> str:
        """16 hex digits that change with any output setting (not the batch size)."""
        text = json.dumps(self.output_settings(), sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ScenePlan:
    """A scene checked against the model, and its tiles."""

    info: SceneInfo
    bands: tuple[int, ...]
    grid: TileGrid
    output: Location


def plan_scene(
    scene: str | PathLike[str],
    *,
    meta: ModelMeta,
    out_dir: str | PathLike[str],
    settings: SegmentSettings,
) -> ScenePlan:
    """Open a scene's header, check it fits the model, and cut it into tiles.

    ``settings`` must carry the halo (:meth:`SegmentSettings.with_halo`): the plan
    and the settings an output records must not disagree about it.

    Raises :class:`~fcnrs.pipeline.errors.SceneError` (naming the file) before any
    output is created when the scene is unreadable or its bands do not fit the model.
    """
    if settings.overlap is None:
        raise ValueError("plan_scene needs settings with the halo resolved (with_halo)")
    info = inspect_scene(scene)
    bands = resolve_bands(info, settings.bands or meta.bands, expected=meta.in_channels)
    grid = plan_tiles(
        info.height, info.width, tile_size=settings.tile_size, overlap=settings.overlap
    )
    return ScenePlan(info, bands, grid, Location(out_dir) / f"{scene_stem(scene)}.zarr")
