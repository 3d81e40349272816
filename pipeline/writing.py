"""Writing label rasters: a staging group, one writer per chunk, publication last.

Chunks are the tile cores, so every chunk has exactly one writer and no locks
are needed; each chunk is written whole (zarr's local store writes a chunk file
in one call). A scene is written into a staging group ``.<name>.zarr.partial``
beside its destination; its metadata, with ``complete = true``, is written last,
after every chunk, and only then is the folder renamed into place. A reader
therefore never sees a half-written scene at ``<name>.zarr``, and a failed run
leaves an earlier complete output untouched. The attributes themselves are pure
functions in :mod:`fcnrs.pipeline.layout`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import numcodecs
import numpy as np
import zarr
from zarr.core.array_spec import ArrayConfigParams
from zarr.core.common import JSON

from fcnrs.fcn_model import ModelMeta

from . import layout
from .errors import OutputError
from .labels import NODATA
from .planning import TileGrid, Window
from .reading import SceneInfo
from .scenes import ScenePlan, SegmentSettings
from .storage import Location

P = TypeVar("P", Path, Location)

# zstd: both GDAL 3.6 and 3.10 decode it, and it beats zlib on label rasters.
_COMPRESSOR = numcodecs.Zstd(level=3)
# Every chunk is written, even all-nodata ones: a chunk file on disk is the record
# that its tile is done. (The setting is not stored with the array.)
_WRITE_EMPTY: ArrayConfigParams = {"write_empty_chunks": True}


def staging_path(final: P) -> P:
    """Where ``final`` (a path or a :class:`~.storage.Location`) is written before
    it is published."""
    return final.with_name(f".{final.name}.partial")


def read_attrs(path: str | PathLike[str] | Location) -> dict[str, Any] | None:
    """A Zarr v2 group's attributes, or None where there is no readable group."""
    try:
        attrs = json.loads((Location(path) / ".zattrs").read_bytes())
    except (OSError, ValueError):
        return None
    return attrs if isinstance(attrs, dict) else None


def is_complete(path: str | PathLike[str] | Location) -> bool:
    """Whether ``path`` is a published label raster of this project."""
    return layout.is_complete_attrs(read_attrs(path))


def check_ours(path: Location) -> None:
    """Raise :class:`OutputError` if ``path`` exists and is not a folder this
    project wrote (it carries the output-format marker): the project never
    replaces or deletes anything else, and never follows a link."""
    if path.is_link() or (
        path.exists() and (path.is_file() or not layout.is_ours_attrs(read_attrs(path)))
    ):
        raise OutputError(
            f"{path} exists and is not a label raster of this project (no "
            f"{layout.OUTPUT_FORMAT!r} format marker); it was left untouched: move it "
            "away or write to another --out"
        )


def _remove_ours(path: Location) -> None:
    """Delete a folder this project wrote; refuse anything else."""
    check_ours(path)
    path.delete_tree()


def _array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """The array ``name`` of a staging group (a group there is not ours: refused)."""
    found = group[name]
    if not isinstance(found, zarr.Array):
        raise ValueError(f"{group.store}: {name} is not an array")
    return found


class ChunkWriter:
    """Writes tile cores into an existing staging group: what a worker needs, and
    all it needs (the path), so it can run in any process of a cluster."""

    def __init__(
        self, staging: str | PathLike[str] | Location, *, with_probabilities: bool
    ) -> None:
        root = zarr.open_group(Location(staging).zarr_store(), mode="r+", zarr_format=2)
        self.labels = _array(root, "labels").with_config(_WRITE_EMPTY)
        self.probabilities = (
            _array(root, "probabilities").with_config(_WRITE_EMPTY) if with_probabilities else None
        )

    def write(
        self, core: Window, labels: np.ndarray, probabilities: np.ndarray | None = None
    ) -> int:
        """Write one core, exactly one chunk of each array, each chunk file whole.
        Returns its valid (labelled) pixels: the only place they are counted."""
        rows, cols = core.slices()
        self.labels[rows, cols] = labels
        if self.probabilities is not None:
            if probabilities is None:
                probabilities = np.zeros((self.probabilities.shape[0], *core.shape), np.uint8)
            self.probabilities[:, rows, cols] = probabilities
        return int(np.count_nonzero(labels != NODATA))

    def write_nodata(self, core: Window) -> int:
        """Write a core with no valid input pixel (the model never saw it)."""
        return self.write(core, np.full(core.shape, NODATA, dtype=np.uint8))

    def count_valid(self, cores: Iterable[Window]) -> int:
        """Valid pixels of chunks already on disk (a resumed run's earlier tiles)."""
        return sum(int(np.count_nonzero(self.labels[c.slices()] != NODATA)) for c in cores)


class StagingGroup:
    """A scene's staging group: create or resume it, tell which tiles it holds,
    and publish it.

    Parameters
    ----------
    final
        Destination, ``<out>/<scene stem>.zarr``.
    info
        The scene's header.
    grid
        The tile grid: its core size is the chunk size.
    classes, colors
        Class names and RGB colours, in class-id order.
    probabilities
        Also write the ``probabilities`` array.
    attrs
        Further attributes that decide the bytes (model digest, settings, bands).
    """

    def __init__(
        self,
        final: str | PathLike[str] | Location,
        *,
        info: SceneInfo,
        grid: TileGrid,
        classes: Sequence[str],
        colors: Sequence[Sequence[int]],
        probabilities: bool = False,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.final = Location(final)
        if not self.final.name.endswith(".zarr"):
            raise OutputError(f"{self.final}: a label raster path must end in .zarr.")
        self.staging = staging_path(self.final)
        self.info = info
        self.grid = grid
        self.classes = list(classes)
        self.colors = [list(map(int, c)) for c in colors]
        self.with_probabilities = probabilities
        self.identity = layout.identity(info, grid, attrs or {})

    def published(self) -> dict[str, Any] | None:
        """The destination's attributes when it already holds this very output (same
        model, settings, source and grid), complete: a re-run can skip the scene.
        None otherwise."""
        attrs = read_attrs(self.final)
        if layout.is_complete_attrs(attrs) and layout.has_identity(attrs, self.identity):
            return attrs
        return None

    def check_ours(self) -> None:
        """Raise :class:`OutputError` if the destination, the staging group or the
        previous-output folder exists and is not this project's."""
        for path in (self.final, self.staging, self._old()):
            check_ours(path)

    def _old(self) -> Location:
        return self.final.with_name(f".{self.final.name}.old")

    def create(self) -> None:
        """Start a fresh staging group (discarding any earlier partial one)."""
        _remove_ours(self.staging)
        # The format marker goes first, with the group itself: whatever stops this
        # run, the folder it leaves is recognisably this project's to replace.
        marker: dict[str, JSON] = {"format": layout.OUTPUT_FORMAT, "complete": False}
        store = self.staging.zarr_store()
        root = zarr.open_group(store, mode="w", zarr_format=2, attributes=marker)
        info = self.info
        chunks = (min(self.grid.tile_size, info.height), min(self.grid.tile_size, info.width))
        labels = root.create_array(
            "labels",
            shape=(info.height, info.width),
            chunks=chunks,
            dtype="uint8",
            fill_value=NODATA,
            compressors=_COMPRESSOR,
        )
        labels.attrs.update(layout.labels_attrs(info, self.classes, self.colors))
        if self.with_probabilities:
            n = len(self.classes)
            probs = root.create_array(
                "probabilities",
                shape=(n, info.height, info.width),
                chunks=(n, *chunks),
                dtype="uint8",
                # No fill value: both GDALs would show a probability of 0 as nodata.
                fill_value=None,
                compressors=_COMPRESSOR,
            )
            probs.attrs.update(layout.probabilities_attrs(info, self.classes))
        _write_georeferencing(root, info)
        # What the chunks are a function of, so a later run can tell whether this
        # staging group can be resumed; "complete" stays false until publish().
        root.attrs.update(self.identity)

    def resume_or_create(self) -> set[tuple[int, int]]:
        """Reuse a staging group left by an interrupted run of the same model,
        settings and source, returning the tiles it already holds; otherwise
        start afresh and return an empty set."""
        if layout.has_identity(read_attrs(self.staging), self.identity):
            return self.done_tiles()
        self.create()
        return set()

    def done_tiles(self) -> set[tuple[int, int]]:
        """Tiles whose chunks are all on disk (zarr writes each chunk file whole,
        to a temporary name then renamed)."""
        keys = list(self.staging.list())
        done = _chunk_indexes(keys, "labels/")
        if self.with_probabilities:
            done &= _chunk_indexes(keys, "probabilities/0.")
        return done

    def chunks(self) -> ChunkWriter:
        """A writer of this group's chunks."""
        return ChunkWriter(self.staging, with_probabilities=self.with_probabilities)

    def publish(self, valid_pixels: int) -> Location:
        """Write the scene metadata and the completion marker last, then put the
        staging group in place (replacing an older output of the same scene)."""
        root = zarr.open_group(self.staging.zarr_store(), mode="r+", zarr_format=2)
        root.attrs.update(
            layout.published_attrs(
                self.identity,
                classes=self.classes,
                colors=self.colors,
                valid_pixels=valid_pixels,
                tiles=len(self.grid),
            )
        )
        zarr.consolidate_metadata(self.staging.zarr_store(), zarr_format=2)
        check_ours(self.final)  # replace only an output of this project
        if self.final.remote:
            self._copy_into_place()
            return self.final
        old = self._old()
        _remove_ours(old)
        if self.final.exists():
            os.replace(self.final.path, old.path)
        os.replace(self.staging.path, self.final.path)
        _remove_ours(old)
        return self.final

    def _copy_into_place(self) -> None:
        """Publish on a store without rename (S3): copy, the completion marker last.

        1. An older output there is first withdrawn: its consolidated metadata,
           its group attributes (rewritten with ``complete: false``) and its
           arrays' ``.zarray`` go, so neither this project's skip check nor
           GDAL or xarray can take it for a whole raster while chunks change.
        2. Its chunk objects that the new grid does not have are deleted.
        3. The staging group's chunks are copied in (server-side copies), then
           the arrays' metadata, then the group's ``.zattrs`` (``complete:
           true``), then ``.zmetadata``: the last object written.
        4. The staging group is deleted.

        A run stopped anywhere in between leaves the staging group complete, and
        the next run finds it published-ready (every tile on disk) and publishes
        it again; until then the scene reads as absent, never as whole.
        """
        final, staging = self.final, self.staging
        new = set(staging.list())
        old = set(final.list())
        if old:
            attrs = read_attrs(final) or {}
            (final / ".zattrs").write_bytes(json.dumps({**attrs, "complete": False}).encode())
            retire = [k for k in old if k == ".zmetadata" or k.endswith("/.zarray")]
            for key in sorted(retire) + sorted(old - new - set(retire) - {".zattrs"}):
                (final / key).delete_tree()
        metadata = {".zattrs", ".zmetadata"}
        arrays = {k for k in new if k.rsplit("/", 1)[-1] in (".zarray", ".zattrs", ".zgroup")}
        order = sorted(new - arrays - metadata) + sorted(arrays - metadata)
        for key in [*order, ".zattrs", ".zmetadata"]:
            (staging / key).copy_to(final / key)
        staging.delete_tree()


def _write_georeferencing(root: zarr.Group, info: SceneInfo) -> None:
    """The ``x``/``y`` coordinate arrays and the ``spatial_ref`` grid mapping."""
    for name, values in zip(("x", "y"), layout.coordinates(info), strict=True):
        # No fill value: xarray would turn a coordinate equal to it into NaN.
        coord = root.create_array(
            name,
            shape=values.shape,
            chunks=values.shape,
            dtype="float64",
            fill_value=None,
            compressors=_COMPRESSOR,
        )
        coord[:] = values
        coord.attrs.update(layout.axis_attrs(info, name))
    ref = root.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0)
    ref.attrs.update(layout.grid_mapping_attrs(info))


def _chunk_indexes(keys: Iterable[str], prefix: str) -> set[tuple[int, int]]:
    """(row, col) of the chunk keys ``<prefix><row>.<col>`` of a Zarr v2 array
    (``labels/3.4``; ``probabilities/0.3.4``)."""
    found = set()
    for key in keys:
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix) :].split(".")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            found.add((int(parts[0]), int(parts[1])))
    return found


def staging_group(
    plan: ScenePlan, *, meta: ModelMeta, model_digest: str, settings: SegmentSettings
) -> StagingGroup:
    """The staging group of a planned scene, carrying what its bytes depend on
    (model, output settings, bands), so a later run can tell whether to skip or
    resume it."""
    return StagingGroup(
        plan.output,
        info=plan.info,
        grid=plan.grid,
        classes=meta.classes,
        colors=meta.colors,
        probabilities=settings.probabilities,
        attrs={
            "model_digest": model_digest,
            "model_variant": meta.variant,
            "bands": list(plan.bands),
            "settings": settings.output_settings(),
            "settings_digest": settings.digest(),
        },
    )
