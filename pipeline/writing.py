"""Label rasters as georeferenced Zarr (format 2) groups that GDAL, QGIS and xarray open.

Layout, as GDAL's own Zarr driver writes it (GDAL 3.6 and 3.10 both read the CRS
and geotransform of it; neither reads zarr-python 3's default format 3):

- ``labels``: uint8 ``(y, x)``, 255 = nodata, ``_ARRAY_DIMENSIONS = ["y", "x"]``,
  a ``_CRS`` attribute (WKT2 and PROJJSON), class names and colours;
- ``probabilities`` (optional): uint8 ``(class, y, x)``, softmax x 255;
- ``x``, ``y``: 1-D float64 pixel-centre coordinates;
- ``spatial_ref``: a scalar with CF grid-mapping attributes (``crs_wkt``,
  ``GeoTransform``) so xarray users (and rioxarray) see the CRS.

Chunks are the tile cores, so every chunk has exactly one writer and no locks
are needed; each chunk is written whole (zarr's local store writes a chunk file
in one call). A scene is written into a staging folder ``.<name>.zarr.partial``
beside its destination; its metadata, with ``complete = true``, is written last,
after every chunk, and only then is the folder renamed into place. A reader
therefore never sees a half-written scene at ``<name>.zarr``, and a failed run
leaves an earlier complete output untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from pyproj import CRS
from rasterio.transform import Affine

from .errors import OutputError
from .planning import TileGrid, Window
from .reading import SceneInfo

NODATA = 255
OUTPUT_FORMAT = "fcn-remote-sensing-labels/1"
# zstd: both GDAL 3.6 and 3.10 decode it, and it beats zlib on label rasters.
_COMPRESSOR = numcodecs.Zstd(level=3)


def staging_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def _coordinates(info: SceneInfo) -> tuple[np.ndarray, np.ndarray]:
    a, _, c, _, e, f = info.transform
    x = c + a * (np.arange(info.width, dtype=np.float64) + 0.5)
    y = f + e * (np.arange(info.height, dtype=np.float64) + 0.5)
    return x, y


def _crs_attrs(info: SceneInfo) -> dict[str, Any]:
    if not info.crs_wkt:
        return {}
    crs = CRS.from_wkt(info.crs_wkt)
    return {"_CRS": {"wkt": crs.to_wkt(version="WKT2_2019"), "projjson": crs.to_json_dict()}}


class ChunkWriter:
    """Writes tile cores into an existing staging group: what a worker needs, and
    all it needs (the path), so it can run in any process of a cluster."""

    def __init__(self, stage: str | PathLike[str], *, probabilities: bool) -> None:
        root = zarr.open_group(str(stage), mode="r+", zarr_format=2)
        # Every chunk is written, even all-nodata ones: a chunk file on disk is the
        # record that its tile is done. (The setting is not stored with the array.)
        cfg = {"write_empty_chunks": True}
        self.labels = root["labels"].with_config(cfg)
        self.probabilities = root["probabilities"].with_config(cfg) if probabilities else None

    def write(
        self, core: Window, labels: np.ndarray, probabilities: np.ndarray | None = None
    ) -> None:
        """Write one core: exactly one chunk of each array, each chunk file whole."""
        rows, cols = core.slices()
        self.labels[rows, cols] = labels
        if self.probabilities is not None:
            if probabilities is None:
                probabilities = np.zeros((self.probabilities.shape[0], *core.shape), np.uint8)
            self.probabilities[:, rows, cols] = probabilities

    def write_nodata(self, core: Window) -> None:
        self.write(core, np.full(core.shape, NODATA, dtype=np.uint8))


class LabelWriter:
    """Creates a scene's staging group, writes tiles into it, and publishes it.

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
        Further attributes recorded on the group (model digest, settings, source).
    """

    def __init__(
        self,
        final: str | PathLike[str],
        *,
        info: SceneInfo,
        grid: TileGrid,
        classes: Sequence[str],
        colors: Sequence[Sequence[int]],
        probabilities: bool = False,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.final = Path(final)
        if self.final.suffix != ".zarr":
            raise OutputError(f"{self.final}: a label raster path must end in .zarr.")
        self.stage = staging_path(self.final)
        self.info = info
        self.grid = grid
        self.classes = list(classes)
        self.colors = [list(map(int, c)) for c in colors]
        self.with_probabilities = probabilities
        self.attrs = dict(attrs or {})
        self._chunks: ChunkWriter | None = None

    # -- creation ----------------------------------------------------------
    def create(self) -> None:
        """Start a fresh staging group (discarding any earlier partial one)."""
        if self.stage.exists():
            shutil.rmtree(self.stage)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(self.stage), mode="w", zarr_format=2)
        info, chunk = self.info, self.grid.tile_size
        chunk_shape = (min(chunk, info.height), min(chunk, info.width))
        common = dict(compressors=_COMPRESSOR)
        crs_attrs = _crs_attrs(info)
        labels = root.create_array(
            "labels",
            shape=(info.height, info.width),
            chunks=chunk_shape,
            dtype="uint8",
            fill_value=NODATA,
            **common,
        )
        labels.attrs.update(
            {
                "_ARRAY_DIMENSIONS": ["y", "x"],
                **crs_attrs,
                "grid_mapping": "spatial_ref",
                "coordinates": "spatial_ref",
                "long_name": "class id",
                "flag_values": list(range(len(self.classes))),
                "flag_meanings": " ".join(c.replace(" ", "_") for c in self.classes),
                "class_names": self.classes,
                "class_colors": self.colors,
            }
        )
        if self.with_probabilities:
            probs = root.create_array(
                "probabilities",
                shape=(len(self.classes), info.height, info.width),
                chunks=(len(self.classes), *chunk_shape),
                dtype="uint8",
                # No fill value: both GDALs would show a probability of 0 as nodata.
                fill_value=None,
                **common,
            )
            probs.attrs.update(
                {
                    "_ARRAY_DIMENSIONS": ["class", "y", "x"],
                    **crs_attrs,
                    "grid_mapping": "spatial_ref",
                    "coordinates": "spatial_ref",
                    "long_name": "class probability x 255",
                    "class_names": self.classes,
                }
            )
        x, y = _coordinates(info)
        for name, values in (("x", x), ("y", y)):
            # float64 (GDAL derives the geotransform from these) and no fill value
            # (xarray would turn a coordinate equal to the fill value into NaN).
            coord = root.create_array(
                name,
                shape=values.shape,
                chunks=values.shape,
                dtype="float64",
                fill_value=None,
                compressors=_COMPRESSOR,
            )
            coord[:] = values
            coord.attrs.update({"_ARRAY_DIMENSIONS": [name], **_axis_attrs(info, name)})
        ref = root.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0)
        ref.attrs.update({"_ARRAY_DIMENSIONS": [], **_grid_mapping_attrs(info)})
        # What the chunks are a function of, so a later run can tell whether this
        # staging group can be resumed; "complete" stays false until publish().
        root.attrs.update({**self.identity(), "complete": False})
        self._open()

    def identity(self) -> dict[str, Any]:
        """The facts that decide the output's bytes: model, settings, source, grid."""
        return _jsonable(
            {
                **self.attrs,
                "source": self.info.path,
                "source_size": self.info.size_bytes,
                "source_mtime_ns": self.info.mtime_ns,
                "tile_grid": self.grid.as_dict(),
            }
        )

    def _same_identity(self, attrs: dict[str, Any] | None) -> bool:
        return attrs is not None and all(attrs.get(k) == v for k, v in self.identity().items())

    def is_published(self) -> bool:
        """Whether the destination already holds this very output (same model,
        settings, source and grid), complete: a re-run can skip the scene."""
        attrs = read_attrs(self.final)
        return self._same_identity(attrs) and attrs.get("complete") is True

    def resume_or_create(self) -> set[tuple[int, int]]:
        """Reuse a staging group left by an interrupted run of the same model,
        settings and source, returning the tiles it already holds; otherwise
        start afresh and return an empty set."""
        if self._same_identity(read_attrs(self.stage)):
            self._open()
            return self.done_tiles()
        self.create()
        return set()

    def done_tiles(self) -> set[tuple[int, int]]:
        """Tiles whose chunks are all on disk (zarr writes each chunk file whole,
        to a temporary name then renamed)."""

        def chunks(name: str, prefix: str) -> set[tuple[int, int]]:
            found = set()
            for entry in os.scandir(self.stage / name):
                parts = entry.name.split(".")
                if entry.name.startswith(prefix) and len(parts) == 2 + prefix.count("."):
                    if all(p.isdigit() for p in parts):
                        found.add((int(parts[-2]), int(parts[-1])))
            return found

        done = chunks("labels", "")
        if self.with_probabilities:
            done &= chunks("probabilities", "0.")
        return done

    def count_valid(self) -> int:
        """Pixels with a class label, counted chunk by chunk (bounded memory)."""
        labels = self._open().labels
        return sum(int((labels[t.core.slices()] != NODATA).sum()) for t in self.grid)

    def _open(self) -> None:
        root = zarr.open_group(str(self.stage), mode="r+", zarr_format=2)
        # Every chunk is written, even all-nodata ones: a chunk file on disk is the
        # record that its tile is done. (The setting is not stored with the array.)
        cfg = {"write_empty_chunks": True}
        self._labels = root["labels"].with_config(cfg)
        self._probs = root["probabilities"].with_config(cfg) if self.with_probabilities else None

    # -- tiles -----------------------------------------------------------------
    def _open(self) -> ChunkWriter:
        if self._chunks is None:
            self._chunks = ChunkWriter(self.stage, probabilities=self.with_probabilities)
        return self._chunks

    def write_tile(
        self, core: Window, labels: np.ndarray, probabilities: np.ndarray | None = None
    ) -> None:
        """Write one core: exactly one chunk of each array."""
        self._open().write(core, labels, probabilities)

    def write_nodata_tile(self, core: Window) -> None:
        """Write a core with no valid input pixel (the model never sees it)."""
        self._open().write_nodata(core)

    # -- publication -------------------------------------------------------------
    def publish(self) -> Path:
        """Write the scene metadata and the completion marker last, then move the
        staging group into place (replacing an older output of the same scene).

        The metadata holds nothing run-specific (no timings: those go to the
        manifest), so a resumed run publishes the same bytes as an uninterrupted one.
        """
        valid = self.count_valid()
        root = zarr.open_group(str(self.stage), mode="r+", zarr_format=2)
        root.attrs.update(
            {
                "format": OUTPUT_FORMAT,
                **self.identity(),
                "class_names": self.classes,
                "class_colors": self.colors,
                "nodata": NODATA,
                "valid_pixels": valid,
                "tiles": len(self.grid),
                "complete": True,
            }
        )
        zarr.consolidate_metadata(str(self.stage), zarr_format=2)
        old = self.final.with_name(f".{self.final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.stage, self.final)
        if old.exists():
            shutil.rmtree(old)
        return self.final


def _axis_attrs(info: SceneInfo, name: str) -> dict[str, Any]:
    geographic = bool(info.crs_wkt) and CRS.from_wkt(info.crs_wkt).is_geographic
    if geographic:
        return {
            "standard_name": "longitude" if name == "x" else "latitude",
            "units": "degrees_east" if name == "x" else "degrees_north",
        }
    return {
        "standard_name": f"projection_{name}_coordinate",
        "units": "m",
        "long_name": f"{name} coordinate of pixel centre",
    }


def _grid_mapping_attrs(info: SceneInfo) -> dict[str, Any]:
    attrs: dict[str, Any] = {"GeoTransform": " ".join(repr(v) for v in _gdal_transform(info))}
    if info.crs_wkt:
        crs = CRS.from_wkt(info.crs_wkt)
        attrs |= crs.to_cf()
        attrs["crs_wkt"] = crs.to_wkt()
        attrs["spatial_ref"] = crs.to_wkt()
    return attrs


def _gdal_transform(info: SceneInfo) -> tuple[float, ...]:
    a, b, c, d, e, f = info.transform
    return (c, a, b, f, d, e)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values, default=str))


def read_attrs(path: str | PathLike[str]) -> dict[str, Any] | None:
    """A Zarr v2 group's attributes, or None where there is no readable group."""
    try:
        attrs = json.loads((Path(path) / ".zattrs").read_text())
    except (OSError, ValueError):
        return None
    return attrs if isinstance(attrs, dict) else None


def is_complete(path: str | PathLike[str]) -> bool:
    """Whether ``path`` is a published label raster of this pipeline."""
    return _complete(read_attrs(path) or {})


def _complete(attrs: Mapping[str, Any]) -> bool:
    return attrs.get("format") == OUTPUT_FORMAT and attrs.get("complete") is True


# -- reading a published output back ---------------------------------------------


@dataclass(frozen=True)
class LabelRaster:
    """What an export needs from a published Zarr label raster."""

    path: Path
    labels: zarr.Array
    probabilities: zarr.Array | None
    crs_wkt: str | None
    transform: Affine
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    #: SHA-256 of the published group's attributes (model, settings, source file,
    #: grid, classes): equal fingerprints, equal rasters.
    fingerprint: str

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".zarr")


def open_label_raster(path: str | PathLike[str]) -> LabelRaster:
    """Open a published output (refusing partial or foreign folders, naming them)."""
    path = Path(path)
    root_attrs = read_attrs(path) or {}
    if not _complete(root_attrs):
        raise OutputError(
            f"{path}: not a complete label raster of this pipeline (missing, still "
            "being written, or written by something else)."
        )
    root = zarr.open_group(str(path), mode="r", zarr_format=2)
    fingerprint = hashlib.sha256(json.dumps(root_attrs, sort_keys=True).encode("utf-8")).hexdigest()
    labels = root["labels"]
    attrs = dict(labels.attrs)
    gt = [float(v) for v in read_attrs(path / "spatial_ref")["GeoTransform"].split()]
    crs = attrs.get("_CRS", {}).get("wkt")
    return LabelRaster(
        path=path,
        labels=labels,
        probabilities=root["probabilities"] if "probabilities" in root else None,
        crs_wkt=crs,
        transform=Affine.from_gdal(*gt),
        classes=tuple(attrs["class_names"]),
        colors=tuple(tuple(c) for c in attrs["class_colors"]),
        fingerprint=fingerprint,
    )
