"""Training data: labeled windows, band statistics and the per-worker window sampler.

Pixel validity follows the one rule of :func:`fcnrs.pipeline.reading.read_bands`
(GDAL's per-band mask and finite values), exactly as inference reads scenes: a
pixel is valid where any selected band is, and an invalid band value inside a
valid pixel is normalised to 0 (its band's mean). Labels are invalid where the
label file's own mask says so, where they equal the run's ignore value, or
where they fall outside the classes; the loss skips all of those, and every
pixel the image marks invalid, through :data:`IGNORE_INDEX`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import NamedTuple

import numpy as np
import rasterio
import torch

from fcnrs.pipeline.planning import Window
from fcnrs.pipeline.reading import normalize, open_raster, pixel_valid, read_bands

from .data import LabeledScene
from .settings import TrainSettings

#: The target of a pixel the loss skips (``F.cross_entropy``'s default ignore_index).
IGNORE_INDEX = -100


class LabeledWindow(NamedTuple):
    """A training window as read, before normalisation."""

    raw: np.ndarray  # float32 (bands, h, w): the band values as stored
    band_valid: np.ndarray  # bool (bands, h, w): read_bands' rule
    target: np.ndarray  # int64 (h, w): class ids, IGNORE_INDEX where not to learn


def read_targets(
    label: rasterio.io.DatasetReader,
    window: Window,
    *,
    num_classes: int,
    ignore_value: int | None,
) -> np.ndarray:
    """int64 targets of a label window from an open label raster.

    :data:`IGNORE_INDEX` where the label file's mask marks nodata, where the label
    equals ``ignore_value`` (an undeclared nodata, such as Sen1Floods11's -1) and
    where it is outside ``0 .. num_classes - 1``.
    """
    win = window.to_rasterio()
    target = label.read(1, window=win).astype(np.int64)
    bad = label.read_masks(1, window=win) == 0
    bad |= (target < 0) | (target >= num_classes)
    if ignore_value is not None:
        bad |= target == ignore_value
    target[bad] = IGNORE_INDEX
    return target


def read_labeled_window(
    image: rasterio.io.DatasetReader,
    label: rasterio.io.DatasetReader,
    window: Window,
    *,
    bands: Sequence[int],
    num_classes: int,
    ignore_value: int | None,
) -> LabeledWindow:
    """Raw bands, their validity and the targets of one window of an open scene.

    Targets are :func:`read_targets`' and also :data:`IGNORE_INDEX` where the image
    has no valid band, so the loss never learns from a pixel inference would
    label nodata.
    """
    raw, band_valid = read_bands(image, bands, window)
    target = read_targets(label, window, num_classes=num_classes, ignore_value=ignore_value)
    target[~pixel_valid(band_valid)] = IGNORE_INDEX
    return LabeledWindow(raw, band_valid, target)


def _random_window(rng: np.random.Generator, height: int, width: int, size: int) -> Window:
    """A ``size`` x ``size`` window (clipped to the scene) at a uniform position."""
    h, w = min(size, height), min(size, width)
    row = int(rng.integers(0, height - h + 1))
    col = int(rng.integers(0, width - w + 1))
    return Window(row, col, h, w)


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
            window = _random_window(rng, src.height, src.width, size)
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


class WindowSampler:
    """Random training windows for one worker, with flips and 90-degree rotations,
    and with ``brightness = b > 0`` a random gain on the raw bands.

    The sampler opens every training scene and its labels once and keeps them
    open for its life (close it, or use it as a context manager): a window is a
    read from GDAL's block cache, not a file open and a decompression.

    Windows are seeded by ``(seed, rank, epoch)``, so ranks draw different
    windows and a resumed epoch draws the same ones; :meth:`set_epoch` reseeds.
    With ``rare_class_oversampling = p > 0``, a window whose pixels hold none of
    the classes rarer than average (counted this epoch) is redrawn with
    probability ``p``, so rare classes are seen more often.

    Parameters
    ----------
    settings
        The run: scenes, bands, classes, window and batch size, normalisation,
        augmentation and seed.
    rank
        The worker's rank (0 in process).
    epoch
        The epoch the first windows belong to.
    """

    #: Draws per window before taking whatever came (a scene with few labels).
    ATTEMPTS = 20

    def __init__(self, settings: TrainSettings, *, rank: int, epoch: int = 0) -> None:
        self.s = settings
        self.rank = rank
        self.train = settings.train_scenes
        self._files = ExitStack()
        try:
            self.sources = [
                (
                    self._files.enter_context(open_raster(scene.image)),
                    self._files.enter_context(open_raster(scene.label)),
                )
                for scene in self.train
            ]
        except BaseException:
            self._files.close()
            raise
        self.shapes = [(image.height, image.width) for image, _ in self.sources]
        # Windows stack into batches: never larger than the smallest training scene.
        self.size = min([settings.window] + [min(shape) for shape in self.shapes])
        self.mean = np.asarray(settings.mean, np.float32)
        self.std = np.asarray(settings.std, np.float32)
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Reseed for ``epoch`` and restart the class counts of the oversampling."""
        self.rng = np.random.default_rng([self.s.seed, self.rank, epoch])
        # Gains draw from their own stream: windows and flips do not depend on them.
        self.gain_rng = np.random.default_rng([self.s.seed, self.rank, epoch, 1])
        self.counts = np.ones(len(self.s.classes))

    def draw(self) -> LabeledWindow:
        """Read a random window, redrawing empty ones and (see above) common ones."""
        for _attempt in range(self.ATTEMPTS):
            k = int(self.rng.integers(len(self.train)))
            h, w = self.shapes[k]
            r = int(self.rng.integers(0, max(h - self.size, 0) + 1))
            c = int(self.rng.integers(0, max(w - self.size, 0) + 1))
            item = read_labeled_window(
                *self.sources[k],
                Window(r, c, self.size, self.size),
                bands=self.s.bands,
                num_classes=len(self.s.classes),
                ignore_value=self.s.ignore_value,
            )
            labels = item.target[item.target != IGNORE_INDEX]
            if labels.size == 0:
                continue
            present = np.bincount(labels, minlength=len(self.s.classes))
            rare = self.counts < self.counts.mean()
            if self.s.rare_class_oversampling and rare.any() and not present[rare].any():
                if self.rng.random() < self.s.rare_class_oversampling:
                    continue
            self.counts += present
            break
        return item

    def brighten(self, raw: np.ndarray) -> np.ndarray:
        """Scale raw bands by one random gain per window in ``[1 - b, 1 + b]``, times
        a smaller one per band (sigma ``b / 6``): illumination, haze and turbidity
        scale reflectance, before any normalisation."""
        b = self.s.brightness
        gain = 1 + b * self.gain_rng.uniform(-1, 1)
        gain = gain * (1 + b / 6 * self.gain_rng.standard_normal(raw.shape[0]))
        return raw * gain.astype(np.float32)[:, None, None]

    def augment(self, image: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same random flips and quarter turns applied to image and targets."""
        flips = self.rng.integers(0, 2, 2)
        turns = int(self.rng.integers(0, 4))
        if flips[0]:
            image, target = image[:, ::-1], target[::-1]
        if flips[1]:
            image, target = image[:, :, ::-1], target[:, ::-1]
        image, target = np.rot90(image, turns, axes=(1, 2)), np.rot90(target, turns)
        return np.ascontiguousarray(image), np.ascontiguousarray(target)

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """One normalised, augmented window: float32 (bands, n, n) and int64 (n, n)."""
        raw, band_valid, target = self.draw()
        if self.s.brightness:
            raw = self.brighten(raw)
        image = normalize(raw, band_valid, self.mean, self.std)
        return self.augment(image, target)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` windows stacked: images (b, bands, n, n), targets (b, n, n)."""
        items = [self.window() for _ in range(self.s.batch_size)]
        return (
            torch.from_numpy(np.stack([i for i, _ in items])),
            torch.from_numpy(np.stack([t for _, t in items])),
        )

    def close(self) -> None:
        self._files.close()

    def __enter__(self) -> WindowSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
