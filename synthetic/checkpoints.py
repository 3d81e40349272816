"""Seeded, untrained checkpoints: what tests and benchmarks need when no training is."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import torch

from fcnrs.fcn_model import FCN8s, save_checkpoint


def random_checkpoint(
    path: str | PathLike[str],
    *,
    bands: Sequence[int] = (1, 2, 3),
    classes: Sequence[str] = ("a", "b", "c", "d"),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    width: float = 0.125,
    seed: int = 0,
    logit_scale: float = 1.0,
) -> Path:
    """Write a seeded, untrained FCN-8s checkpoint.

    Its weights are the network's own initialisation after ``torch.manual_seed(seed)``:
    the same arguments give the same weights and metadata (only the provenance's
    ``created`` time differs).

    Parameters
    ----------
    path
        The checkpoint file to write (``.safetensors``).
    bands
        1-based source bands the network reads, one input channel each.
    classes
        Class names, one output class each.
    mean, std
        Per-band normalisation; None: 5000 and 3000 for every band, what
        :func:`~fcnrs.synthetic.scenes.write_large_scene`'s uint16 waves and the
        tests' scene factory need.
    width
        The network's channel width multiplier (1.0: the paper's VGG16).
    seed
        The seed of torch's generator before the network is built.
    logit_scale
        Multiplies the score layers' weights (``score_fr``, ``score_pool4``,
        ``score_pool3``; their biases are 0): sharper class probabilities, the
        same labels.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    torch.manual_seed(seed)
    network = FCN8s(len(classes), in_channels=len(bands), width=width)
    with torch.no_grad():
        for name, weights in network.named_parameters():
            if name.startswith("score_") and name.endswith(".weight"):
                weights.mul_(logit_scale)
    return save_checkpoint(
        path,
        network,
        classes=classes,
        bands=bands,
        mean=[5000.0] * len(bands) if mean is None else mean,
        std=[3000.0] * len(bands) if std is None else std,
    )
