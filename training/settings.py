"""The settings of a fine-tuning run, as plain values, and their defaults.

A :class:`TrainSettings` is pickled to every Ray Train worker, so it holds
values only (paths as strings, no open files or tensors). Its field defaults
are the run's defaults, written here once: ``jobs/finetune.py`` builds its
flags from them (:func:`setting_argument`).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from fcnrs.fcn_model import Variant
from fcnrs.pipeline.precision import Precision

from .data import LabeledScene

#: ``adam`` (the default) or the paper's ``sgd``.
OptimizerName = Literal["adam", "sgd"]
#: The learning-rate schedule after the warm-up (:func:`fcnrs.training.steps.lr_factor`).
Schedule = Literal["wsd", "cosine", "constant"]
#: How layers not loaded from a checkpoint or VGG16 start.
WeightInit = Literal["pytorch", "he"]

#: The validation tiling: val scenes are cut into tiles of this size with this
#: overlap (not the segmentation job's tiling, whose 1536-px cores take the halo
#: the checkpoint records), so that validation stays cheap and every epoch's
#: score is comparable.
VAL_TILE_SIZE = 512
VAL_OVERLAP = 192


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training worker needs.

    Attributes
    ----------
    scenes
        Labeled scenes; ``split == "train"`` ones are sampled, ``"val"`` ones
        scored each epoch.
    classes, colors
        Class names in class-id order and their RGB colours.
    bands
        1-based band indexes, in the order the network takes them.
    out
        Run folder: ``best`` and ``best_report.json`` are written there.
    variant, width
        The network (:func:`fcnrs.fcn_model.build_model`).
    window, batch_size
        Training window edge in pixels and windows per step per worker.
    epochs, steps_per_epoch
        Run length; an epoch ends with a report (and, on rank 0, validation).
    time_limit_minutes
        Stop cleanly once this much wall time has passed (None: no limit).
    optimizer, lr
        ``"adam"`` or ``"sgd"``; None takes the optimizer's default rate
        (:func:`fcnrs.training.state.base_lr`).
    ignore_value
        A label value the loss ignores (beyond the label file's nodata).
    rare_class_oversampling
        0-1, probability of redrawing a window that holds no rare class.
    brightness
        Augmentation: gain range ``[1 - b, 1 + b]`` on the raw bands (0: off).
    init_vgg16, init
        Starting weights: ImageNet VGG16 or a checkpoint (None: from scratch).
    seed
        Seeds the network, and with rank and epoch, the windows.
    val_tile_size, val_overlap
        The validation tiling (:data:`VAL_TILE_SIZE`, :data:`VAL_OVERLAP` by
        default): the tile size and overlap the val scenes are cut with.
    mean, std
        Per-band normalisation (from :func:`fcnrs.training.statistics.band_statistics`).
    trained_by
        Recorded in the exported checkpoint's provenance.
    precision
        ``auto`` (bf16 autocast where the device runs it fast, fp32 master
        weights either way), ``bf16`` or ``fp32``.
    schedule, warmup_steps
        ``wsd`` (hold, then decay linearly to zero over the last 30% of the run's
        steps or time, whichever ends first), ``cosine`` or ``constant``, after a
        linear warm-up (:func:`fcnrs.training.steps.lr_factor`).
    class_weights
        The loss's per-class weights (empty: all 1).
    memory_budget_mb
        Training scenes are held in memory, per worker, while they fit this.
    weight_init
        ``he`` (the network's own: He-normal trunk, small score layers) or
        ``pytorch`` (each layer's ``reset_parameters``) for layers not loaded
        from ``init_vgg16`` or ``init``.
    val_share
        Validation and checkpoints, after the first, run only while their time
        stays within this share of the time so far (the last epoch always validates).
    """

    scenes: tuple[LabeledScene, ...]
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    bands: tuple[int, ...]
    out: str
    variant: Variant = "fcn4s"
    width: float = 0.25
    window: int = 256
    batch_size: int = 4
    epochs: int = 10
    steps_per_epoch: int = 100
    time_limit_minutes: float | None = None
    optimizer: OptimizerName = "adam"
    lr: float | None = None
    ignore_value: int | None = None
    rare_class_oversampling: float = 0.0
    brightness: float = 0.0
    init_vgg16: str | None = None
    init: str | None = None
    seed: int = 0
    val_tile_size: int = VAL_TILE_SIZE
    val_overlap: int = VAL_OVERLAP
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    trained_by: str = "jobs/finetune.py"
    precision: Precision = "auto"
    schedule: Schedule = "wsd"
    warmup_steps: int = 50
    class_weights: tuple[float, ...] = ()
    memory_budget_mb: float = 2048.0
    val_share: float = 0.1
    weight_init: WeightInit = "pytorch"

    @property
    def train_scenes(self) -> tuple[LabeledScene, ...]:
        return tuple(s for s in self.scenes if s.split == "train")

    @property
    def val_scenes(self) -> tuple[LabeledScene, ...]:
        return tuple(s for s in self.scenes if s.split == "val")


def setting_default(name: str) -> Any:
    """The default of :class:`TrainSettings`' field ``name``.

    Raises
    ------
    KeyError
        When ``name`` is not a field, or a field without a default.
    """
    for f in fields(TrainSettings):
        if f.name == name and f.default is not MISSING:
            return f.default
    raise KeyError(f"Expected a TrainSettings field with a default. Got {name!r}.")


def setting_argument(name: str) -> dict[str, Any]:
    """``argparse`` keywords for a flag that sets :class:`TrainSettings`' field ``name``.

    Returns
    -------
    dict
        ``default``: the field's; ``choices``: a ``Literal`` field's values, or
        ``type``: the field's type (``int``, ``float`` or ``str``; ``X | None``
        gives ``X``).

    Raises
    ------
    KeyError
        When ``name`` is not a field, or a field without a default.
    """
    hint = get_type_hints(TrainSettings)[name]
    keywords: dict[str, Any] = {"default": setting_default(name)}
    if get_origin(hint) is Literal:
        keywords["choices"] = list(get_args(hint))
    else:
        keywords["type"] = next(t for t in (*get_args(hint), hint) if t is not type(None))
    return keywords
