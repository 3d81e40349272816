"""Checkpoints: one safetensors file holding the weights and, in its header, JSON metadata.

Loading never unpickles: safetensors stores raw tensors and a JSON header only.
The metadata says everything a run needs besides the weights: the architecture
(variant, width, bands, classes), the per-band normalisation, the class colours
and where the weights came from.
"""

from __future__ import annotations

import hashlib
import json
import platform
import struct
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CheckpointError
from .files import replaced_whole
from .meta import FORMAT_NAME, FORMAT_VERSION, HaloMeasurement, ModelMeta, default_colors
from .network import FCN, VARIANTS


def _validate(meta: ModelMeta, model: FCN) -> None:
    problems = []
    if len(meta.classes) != model.num_classes:
        problems.append(f"{len(meta.classes)} class names for a {model.num_classes}-class model")
    if len(meta.bands) != model.in_channels:
        problems.append(f"{len(meta.bands)} bands for a {model.in_channels}-band model")
    if any(b < 1 for b in meta.bands):
        problems.append(f"bands are 1-based, got {list(meta.bands)}")
    if len(meta.mean) != len(meta.bands) or len(meta.std) != len(meta.bands):
        problems.append(
            f"mean and std need one value per band ({len(meta.bands)}), "
            f"got {len(meta.mean)} and {len(meta.std)}"
        )
    if any(not s > 0 for s in meta.std):
        problems.append(f"std must be positive, got {list(meta.std)}")
    if len(meta.colors) != len(meta.classes):
        problems.append(f"{len(meta.colors)} colours for {len(meta.classes)} classes")
    if any(not 0 <= c <= 255 for rgb in meta.colors for c in rgb):
        problems.append("colours are RGB triples of 0-255")
    if len(set(meta.classes)) != len(meta.classes):
        problems.append(f"class names must be unique, got {list(meta.classes)}")
    if problems:
        raise CheckpointError("Invalid checkpoint metadata: " + "; ".join(problems) + ".")


def save_checkpoint(
    path: str | PathLike[str],
    model: FCN,
    *,
    classes: Sequence[str],
    bands: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    colors: Sequence[Sequence[int]] | None = None,
    provenance: Mapping[str, Any] | None = None,
    halo: HaloMeasurement | None = None,
) -> Path:
    """Write ``model`` and its metadata to exactly ``path`` (one safetensors file).

    The file is written to a temporary name beside ``path`` and renamed, so a
    reader never sees half a checkpoint.

    Parameters
    ----------
    path
        Output file; by convention it ends in ``.safetensors``.
    model
        An FCN of any variant (:data:`~fcnrs.fcn_model.VARIANTS`: FCN-32s to FCN-2s).
    classes
        One name per output class, in class-id order.
    bands
        1-based source band indexes the model reads, in input-channel order.
    mean, std
        Per-band normalisation applied as ``(value - mean) / std``.
    colors
        RGB (0-255) per class; a default palette when omitted.
    provenance
        Free-form facts about where the weights came from (data, run, parent).
    halo
        The context the network needs, when measured
        (:func:`fcnrs.pipeline.context.measure_halo`); see :func:`record_halo`.
    """
    path = Path(path)
    meta = ModelMeta(
        variant=model.variant,
        width=model.width,
        bands=tuple(int(b) for b in bands),
        classes=tuple(str(c) for c in classes),
        colors=tuple(tuple(int(v) for v in c) for c in colors)  # type: ignore[misc]
        if colors is not None
        else default_colors(len(classes)),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        skip_scaling=model.skip_scaling,
        learnable_upsampling=model.learnable_upsampling,
        provenance={
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            **dict(provenance or {}),
        },
        halo=halo,
    )
    _validate(meta, model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _write_whole(path, tensors, meta)
    return path


def _write_whole(
    path: Path, tensors: dict[str, torch.Tensor], meta: ModelMeta, *, mode: int | None = None
) -> None:
    """Write a checkpoint file whole (:func:`~fcnrs.fcn_model.files.replaced_whole`):
    a reader sees the old file or the new one, never half of either."""
    header = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "meta": meta.to_json(),
    }
    with replaced_whole(path, mode=mode) as tmp:
        save_file(tensors, tmp, metadata=header)


def record_halo(path: str | PathLike[str], halo: HaloMeasurement) -> ModelMeta:
    """Record ``halo`` in an existing checkpoint's metadata, in place and atomically.

    The weights are copied unchanged into a new file beside ``path``, which then
    replaces it (a crash leaves the old checkpoint whole); its permissions are
    kept. The file's digest, the model's identity in outputs, changes with it, so
    outputs made with the old file are recomputed by the next run.

    Returns
    -------
    ModelMeta
        The checkpoint's metadata as now recorded.

    Raises
    ------
    CheckpointError
        ``path`` is not a readable checkpoint of this project (naming it).
    """
    path = Path(path)
    meta = read_meta(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: checkpoint weights are unreadable ({exc}).") from exc
    updated = replace(meta, halo=halo)
    _write_whole(path, tensors, updated, mode=path.stat().st_mode & 0o777)
    return updated


def read_meta(path: str | PathLike[str]) -> ModelMeta:
    """Read only a checkpoint's metadata (cheap: the header, not the weights)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a checkpoint (not a readable safetensors file: {exc})."
        ) from exc
    if header.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path}: a safetensors file, but not a checkpoint of this project "
            f"(header format {header.get('format')!r}, expected {FORMAT_NAME!r})."
        )
    if int(header.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {header['format_version']} is newer than this "
            f"software reads ({FORMAT_VERSION}); upgrade the package."
        )
    try:
        meta = ModelMeta.from_json(header["meta"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is unreadable ({exc}).") from exc
    if meta.variant not in VARIANTS:
        raise CheckpointError(f"{path}: unknown variant {meta.variant!r}.")
    return meta


def load_checkpoint(
    path: str | PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[FCN, ModelMeta]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    (model, meta)
        The model in eval mode on ``device``, and its metadata.
    """
    path = Path(path)
    meta = read_meta(path)
    model = meta.build()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: checkpoint weights are unreadable ({exc}).") from exc
    try:
        _validate(meta, model)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, CheckpointError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the metadata ({exc}).") from exc
    return model.to(device).eval(), meta


def checkpoint_digest(path: str | PathLike[str]) -> str:
    """The model's identity in outputs and manifests: a SHA-256 of its weights
    (every tensor's name, dtype, shape and bytes) and of the metadata that shape
    its labels (architecture, bands, classes and colours, normalisation), but not
    of its provenance. Re-saving the same weights (another ``created`` time,
    another machine) keeps the identity, so finished scenes stay skipped; any
    change to a weight or to what the labels mean changes it."""
    path = Path(path)
    h = hashlib.sha256()
    with path.open("rb") as fh:
        try:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
            meta = json.loads(header.pop("__metadata__", {}).get("meta", "{}"))
        except (ValueError, AttributeError, struct.error) as exc:
            raise CheckpointError(f"{path}: not a readable checkpoint header ({exc}).") from exc
        meta.pop("provenance", None)
        h.update(json.dumps(header, sort_keys=True).encode())
        h.update(json.dumps(meta, sort_keys=True).encode())
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
