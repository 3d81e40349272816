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

Precision = Literal["fp32", "bf16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


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
        precision: Precision = "fp32",
        probabilities: bool = False,
    ) -> None:
        self.device = torch.device(device or default_device())
        self.dtype = _DTYPES[precision]
        model, self.meta = load_checkpoint(model_path)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
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
        with torch.inference_mode():
            scores = self.model(x.to(device=self.device, dtype=self.dtype))
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
