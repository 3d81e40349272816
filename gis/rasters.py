"""Reading published label rasters back: what exports, area queries and GIS
layers need, and the list of an output folder's finished scenes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import zarr
from rasterio.transform import Affine

from fcnrs.pipeline.errors import OutputError
from fcnrs.pipeline.layout import is_complete_attrs
from fcnrs.pipeline.writing import is_complete, read_attrs


@dataclass(frozen=True)
class LabelRaster:
    """A published Zarr label raster, opened for reading."""

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
    root_attrs = read_attrs(path)
    if not is_complete_attrs(root_attrs):
        raise OutputError(
            f"{path}: not a complete label raster of this pipeline (missing, still "
            "being written, or written by something else)."
        )
    root = zarr.open_group(str(path), mode="r", zarr_format=2)
    fingerprint = hashlib.sha256(json.dumps(root_attrs, sort_keys=True).encode("utf-8")).hexdigest()
    labels = root["labels"]
    attrs = dict(labels.attrs)
    gt = [float(v) for v in read_attrs(path / "spatial_ref")["GeoTransform"].split()]
    return LabelRaster(
        path=path,
        labels=labels,
        probabilities=root["probabilities"] if "probabilities" in root else None,
        crs_wkt=attrs.get("_CRS", {}).get("wkt"),
        transform=Affine.from_gdal(*gt),
        classes=tuple(attrs["class_names"]),
        colors=tuple(tuple(c) for c in attrs["class_colors"]),
        fingerprint=fingerprint,
    )


def find_outputs(out_dir: str | PathLike[str]) -> list[Path]:
    """Published label rasters in ``out_dir`` (staging folders are skipped)."""
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: no such output folder.")
    return sorted(p for p in out.glob("*.zarr") if is_complete(p))
