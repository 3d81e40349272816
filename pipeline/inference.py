"""Prediction: a callable class that turns batches of normalised tiles into labels.

Ray's batch-inference idiom: ``__init__`` loads the model once per worker and
``__call__(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` runs under
``torch.inference_mode()``. It is equally usable with no cluster at all.
"""

from __future__ import annotations

from os import PathLike
from typing import Literal

import numpy as np
import torch

from fcnrs.fcn_model import load_checkpoint

from .labels import MAX_CLASSES, NODATA
from .storage import local_copy

#: ``auto`` resolves to ``bf16`` where the hardware runs it fast, else ``fp32``.
Precision = Literal["auto", "fp32", "bf16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: CPU features with native bf16 matrix arithmetic (AVX512-BF16, AMX).
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there bf16
    convolutions run 1.6-2x faster than fp32 (``benchmarks/model_throughput.py``);
    elsewhere bf16 is emulated and slower."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:  # not Linux: no flags to read, stay with fp32
            return False
    flags = set(cpuinfo.split())
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def resolve_precision(precision: Precision, device: str) -> Literal["fp32", "bf16"]:
    """The precision ``auto`` stands for on ``device`` (``cpu`` or ``cuda``).

    CUDA: bf16 where the device supports it (Ampere and later; a driver with no
    local GPU, planning for a GPU cluster, assumes it does). CPU: bf16 with
    AVX512-BF16 or AMX, fp32 otherwise.
    """
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return "bf16"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


class Predictor:
    """Labels (and optionally class probabilities) for batches of tiles.

    A batch is a dict of arrays whose first axis is the tile:

    - ``image``: float32 ``(N, bands, H, W)``, normalised, invalid pixels at 0;
    - ``valid``: bool ``(N, H, W)``;
    - ``core``: int ``(N, 4)``: row, col, height, width of the core inside the
      window, the same for every tile of the batch (tiles are grouped so).

    The answer holds ``labels`` uint8 ``(N, h, w)`` cropped to the core, with
    :data:`~fcnrs.pipeline.labels.NODATA` where the input is invalid, and with ``probabilities``
    set, ``probabilities`` uint8 ``(N, classes, h, w)`` (softmax x 255, 0 where invalid).
    """

    def __init__(
        self,
        model_path: str | PathLike[str],
        *,
        device: str | None = None,
        precision: Precision = "auto",
        probabilities: bool = False,
    ) -> None:
        self.device = torch.device(device or default_device())
        self.precision = resolve_precision(precision, self.device.type)
        self.dtype = _DTYPES[self.precision]
        model, self.meta = load_checkpoint(local_copy(model_path))  # s3:// too
        # Channels-last: oneDNN's (and cuDNN's) fast convolution layout; 1.7x
        # (fp32) to 1.8x (bf16) the throughput of the default layout on CPU here.
        self.model = model.to(
            device=self.device, dtype=self.dtype, memory_format=torch.channels_last
        ).eval()
        self.probabilities = probabilities
        if self.num_classes > MAX_CLASSES:
            raise ValueError(
                f"At most {MAX_CLASSES} classes fit uint8 labels; got {self.num_classes}."
            )

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        core = np.asarray(batch["core"])
        if not (core == core[0]).all():
            raise ValueError("Every tile of a batch must have the same core box.")
        r, c, h, w = (int(v) for v in core[0])
        valid = np.asarray(batch["valid"])[:, r : r + h, c : c + w]
        # Arrays from Ray's object store are read-only; torch wants writable memory.
        x = torch.from_numpy(np.require(batch["image"], np.float32, ["C", "W"]))
        if self.device.type == "cuda":
            x = x.pin_memory()  # lets the copy below overlap with the host's work
        with torch.inference_mode():
            x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
            scores = self.model(x.contiguous(memory_format=torch.channels_last))
            scores = scores[:, :, r : r + h, c : c + w].float()
            labels = scores.argmax(dim=1).to(torch.uint8).cpu().numpy()
            probs = None
            if self.probabilities:
                p = torch.softmax(scores, dim=1).mul_(255).round_().to(torch.uint8)
                probs = p.cpu().numpy()
        labels[~valid] = NODATA
        out = {"labels": labels}
        if probs is not None:
            probs *= valid[:, None]
            out["probabilities"] = probs
        return out
