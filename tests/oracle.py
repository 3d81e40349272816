"""The reference the tiled path is measured against: one pass over a whole scene.

It reads the scene in one window, so it is for validation on small scenes only;
production runs go through :mod:`pipeline.segment`.
"""

from __future__ import annotations

from os import PathLike

import numpy as np
import torch

from fcnrs.fcn_model import load_checkpoint
from fcnrs.pipeline.labels import NODATA
from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.reading import TileReader, inspect_scene


def whole_scene_labels(
    scene: str | PathLike[str], model: str | PathLike[str], *, max_pixels: int = 20_000_000
) -> np.ndarray:
    """Labels of a single whole-scene pass (uint8, 255 where invalid)."""
    net, meta = load_checkpoint(model)
    info = inspect_scene(scene)
    if info.height * info.width > max_pixels:
        raise ValueError(
            f"{scene}: {info.height}x{info.width} is too large for a whole-scene pass "
            f"(max_pixels={max_pixels}); use pipeline.segment.segment_scene."
        )
    with TileReader(scene, meta.bands, mean=meta.mean, std=meta.std) as reader:
        image, valid = reader.read(Window(0, 0, info.height, info.width))
    with torch.inference_mode():
        labels = net(torch.from_numpy(image)[None]).argmax(1)[0].numpy().astype(np.uint8)
    labels[~valid] = NODATA
    return labels
