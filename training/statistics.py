"""Statistics of the training scenes, measured on sampled windows before a run:
per-band mean and std (the normalisation) and labelled pixels per class (the
loss's class weights)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from fcnrs.pipeline.reading import open_raster, read_bands

from .data import LabeledScene
from .settings import TrainSettings
from .windows import IGNORE_INDEX, random_window, read_targets

#: How the loss weighs classes: by a power of the inverse class frequency.
Weighting = Literal["none", "sqrt", "inverse"]
#: ``--class-weighting``: the power of the inverse class frequency in the loss weights.
WEIGHTING_POWERS: dict[Weighting, float] = {"none": 0.0, "sqrt": 0.5, "inverse": 1.0}
#: The default weighting (measured: see the README's defaults).
DEFAULT_WEIGHTING: Weighting = "sqrt"


def band_statistics(
    scenes: Sequence[LabeledScene],
    bands: Sequence[int],
    *,
    samples: int = 64,
    size: int = 128,
    seed: int = 0,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and std over each band's valid values in random windows of
    the training scenes (a sample, so huge scenes cost the same as small ones).

    A band's statistics count that band's valid values only (:func:`read_bands`'
    rule), the same values :func:`~fcnrs.pipeline.reading.normalize` keeps, so a
    nodata value in one band never shifts its mean, and another band's nodata
    never hides it.

    Parameters
    ----------
    scenes
        Labeled scenes; those with ``split == "train"`` are sampled, in turn.
    bands
        1-based band indexes.
    samples, size
        Number of windows and their edge in pixels (clipped to the scene).
    seed
        Seeds the window positions.

    Returns
    -------
    tuple of tuple of float
        ``(mean, std)``, one value per band; std is at least 1e-6.

    Raises
    ------
    ValueError
        When a band has no valid value in any sampled window.
    """
    rng = np.random.default_rng(seed)
    sums = np.zeros(len(bands))
    squares = np.zeros(len(bands))
    counts = np.zeros(len(bands), dtype=np.int64)
    train = [s for s in scenes if s.split == "train"]
    for k in range(samples):
        # One file open at a time: the table may list thousands of scenes.
        with open_raster(train[k % len(train)].image) as src:
            window = random_window(rng, height=src.height, width=src.width, size=size)
            raw, band_valid = read_bands(src, bands, window)
        values = np.where(band_valid, raw, 0.0).astype(np.float64)
        sums += values.sum(axis=(1, 2))
        squares += (values**2).sum(axis=(1, 2))
        counts += band_valid.sum(axis=(1, 2))
    empty = [b for b, n in zip(bands, counts, strict=True) if n == 0]
    if empty:
        raise ValueError(
            f"No valid value of band(s) {empty} found in the training scenes to compute "
            "band statistics."
        )
    mean = sums / counts
    std = np.sqrt(np.maximum(squares / counts - mean**2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(max(v, 1e-6)) for v in std)


def class_counts(
    scenes: Sequence[LabeledScene],
    settings: TrainSettings,
    *,
    samples: int = 64,
    size: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Labelled pixels per class in random windows of the training scenes (a
    sample, like :func:`band_statistics`), for the loss's class weights."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(settings.classes), dtype=np.int64)
    train = [s for s in scenes if s.split == "train"]
    for k in range(samples):
        with open_raster(train[k % len(train)].label) as label:
            window = random_window(rng, height=label.height, width=label.width, size=size)
            target = read_targets(
                label,
                window,
                num_classes=len(settings.classes),
                ignore_value=settings.ignore_value,
            )
        counts += np.bincount(target[target != IGNORE_INDEX], minlength=len(counts))
    return counts


def class_weights(counts: np.ndarray, power: float) -> tuple[float, ...]:
    """Loss weights ``(1 / frequency) ** power``, scaled so that the average weight
    over the labelled pixels is 1 (the loss keeps its scale).

    Parameters
    ----------
    counts
        Labelled pixels per class (:func:`class_counts`).
    power
        0 weighs all classes alike; a class never seen gets the largest weight of
        the seen ones.

    Returns
    -------
    tuple of float
        One weight per class.
    """
    freq = counts / max(counts.sum(), 1)
    seen = freq > 0
    w = np.ones(len(counts))
    if power and seen.any():
        w[seen] = freq[seen] ** -power
        w[~seen] = w[seen].max()
        w /= (freq * w).sum() if seen.any() else 1.0
    return tuple(float(v) for v in w)
