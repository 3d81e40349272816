"""Training windows: labeled windows as read, the scenes they are cut from, and
the per-worker window sampler.

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


def random_window(rng: np.random.Generator, *, height: int, width: int, size: int) -> Window:
    """A ``size`` x ``size`` window (clipped to the scene) at a uniform position."""
    h, w = min(size, height), min(size, width)
    row = int(rng.integers(0, height - h + 1))
    col = int(rng.integers(0, width - w + 1))
    return Window(row, col, h, w)


class FileScene:
    """A training scene read window by window from its image and label files, both
    opened once and kept open until :meth:`close`."""

    def __init__(self, scene: LabeledScene, settings: TrainSettings) -> None:
        self.s = settings
        self._files = ExitStack()
        try:
            self.image = self._files.enter_context(open_raster(scene.image))
            self.label = self._files.enter_context(open_raster(scene.label))
        except BaseException:
            self._files.close()
            raise
        self.shape = (self.image.height, self.image.width)

    def read(self, window: Window) -> LabeledWindow:
        return read_labeled_window(
            self.image,
            self.label,
            window,
            bands=self.s.bands,
            num_classes=len(self.s.classes),
            ignore_value=self.s.ignore_value,
        )

    def close(self) -> None:
        self._files.close()


class MemoryScene:
    """A training scene read whole once (the same rule as :class:`FileScene`);
    windows are copies cut from memory."""

    def __init__(self, scene: FileScene) -> None:
        self.shape = scene.shape
        whole = scene.read(Window(0, 0, *scene.shape))
        self.raw, self.band_valid = whole.raw, whole.band_valid
        self.target = whole.target.astype(np.int16)  # IGNORE_INDEX fits int16

    @staticmethod
    def bytes_needed(shape: tuple[int, int], bands: int) -> int:
        """Memory a scene of ``shape`` takes: float32 values, validity, int16 targets."""
        return shape[0] * shape[1] * (bands * 5 + 2)

    def read(self, window: Window) -> LabeledWindow:
        """Views of the window (int16 targets): :meth:`WindowSampler.make` copies
        them, on a producer thread."""
        rows = slice(window.row, window.row + window.height)
        cols = slice(window.col, window.col + window.width)
        return LabeledWindow(
            self.raw[:, rows, cols], self.band_valid[:, rows, cols], self.target[rows, cols]
        )

    def close(self) -> None:
        pass


def open_sources(settings: TrainSettings) -> list[FileScene | MemoryScene]:
    """One source per training scene: scenes are held in memory, in table order,
    while they fit ``settings.memory_budget_mb``; the rest are read from their
    files through handles kept open."""
    budget = settings.memory_budget_mb * 2**20
    sources: list[FileScene | MemoryScene] = []
    try:
        for scene in settings.train_scenes:
            source = FileScene(scene, settings)
            sources.append(source)
            need = MemoryScene.bytes_needed(source.shape, len(settings.bands))
            if need <= budget:
                budget -= need
                sources[-1] = MemoryScene(source)
                source.close()
    except BaseException:
        for opened in sources:
            opened.close()
        raise
    return sources


def stack(windows: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows as one batch: images (b, bands, n, n), targets (b, n, n)."""
    return (
        torch.from_numpy(np.stack([i for i, _ in windows])),
        torch.from_numpy(np.stack([t for _, t in windows])),
    )


class Recipe(NamedTuple):
    """One training window as planned: what was read, and the random choices
    that make it (so any thread can make it, with the same result)."""

    item: LabeledWindow
    gain: np.ndarray | None  # per band, or None without brightness augmentation
    flips: tuple[bool, bool]
    turns: int


class WindowSampler:
    """Random training windows for one worker, with flips and 90-degree rotations,
    and with ``brightness = b > 0`` a random gain on the raw bands.

    Training scenes that fit the settings' memory budget are read whole once and
    windows are cut from memory; the others are opened once and kept open for the
    sampler's life (close it, or use it as a context manager), so a window is a
    read from GDAL's block cache, not a file open (:func:`open_sources`).

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
        self.sources = open_sources(settings)
        self.shapes = [source.shape for source in self.sources]
        # Windows stack into batches: never larger than the smallest training scene.
        self.size = min([settings.window] + [min(shape) for shape in self.shapes])
        self.mean = np.asarray(settings.mean, np.float32)
        self.std = np.asarray(settings.std, np.float32)
        self.set_epoch(epoch)

    @property
    def in_memory(self) -> int:
        """How many training scenes are held in memory (the rest are read from files)."""
        return sum(isinstance(source, MemoryScene) for source in self.sources)

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
            item = self.sources[k].read(Window(r, c, self.size, self.size))
            labels = item.target.ravel()
            present = np.bincount(labels[labels >= 0], minlength=len(self.s.classes))
            if not present.any():
                continue
            rare = self.counts < self.counts.mean()
            if self.s.rare_class_oversampling and rare.any() and not present[rare].any():
                if self.rng.random() < self.s.rare_class_oversampling:
                    continue
            self.counts += present
            break
        return item

    def plan(self, count: int) -> list[Recipe]:
        """The next ``count`` windows: drawn (:meth:`draw`) and their random gains
        (brightness: one per window in ``[1 - b, 1 + b]``, times a smaller one per
        band, sigma ``b / 6``, as illumination, haze and turbidity scale
        reflectance), flips and quarter turns chosen. The sampler's random
        streams are used here only, in this order."""
        recipes = []
        for _ in range(count):
            item = self.draw()
            gain: np.ndarray | None = None
            if self.s.brightness:
                b = self.s.brightness
                overall = 1 + b * self.gain_rng.uniform(-1, 1)
                per_band = self.gain_rng.standard_normal(int(item.raw.shape[0]))
                gain = overall * (1 + b / 6 * per_band)
            flips = self.rng.integers(0, 2, 2)
            turns = int(self.rng.integers(0, 4))
            recipes.append(Recipe(item, gain, (bool(flips[0]), bool(flips[1])), turns))
        return recipes

    def make(self, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
        """One planned window, normalised and augmented: float32 (bands, n, n)
        and int64 (n, n). Any thread may call it.

        The flips and turns are views; the first arithmetic writes the
        contiguous result, so the window is copied once, not once per step.
        """
        raw, band_valid, target = recipe.item
        views = [raw, band_valid, target]
        for axis, flipped in zip((-2, -1), recipe.flips, strict=True):
            if flipped:
                views = [np.flip(v, axis) for v in views]
        raw, band_valid, target = (np.rot90(v, recipe.turns, axes=(-2, -1)) for v in views)
        image = np.empty(raw.shape, np.float32)
        if recipe.gain is not None:
            np.multiply(raw, recipe.gain.astype(np.float32)[:, None, None], out=image)
            normalize(image, band_valid, self.mean, self.std)
        else:
            normalize(raw, band_valid, self.mean, self.std, out=image)
        return image, target.astype(np.int64, order="C")

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` windows stacked: images (b, bands, n, n), targets (b, n, n)."""
        return stack([self.make(r) for r in self.plan(self.s.batch_size)])

    def close(self) -> None:
        for source in self.sources:
            source.close()

    def __enter__(self) -> WindowSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
