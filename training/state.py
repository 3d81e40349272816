"""What a fine-tuning run keeps and resumes from: the network, its optimizer and
the training state (the last epoch, the best score, every epoch's record).

A run starts from scratch, from ImageNet VGG16 or from a checkpoint
(:func:`initial_network`); at each epoch's end rank 0 saves the three to a
folder (:func:`save_state`), which Ray Train keeps as its checkpoint and hands to
a restarted worker group (:func:`initial_state`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fcnrs.fcn_model import FCN, build_model, load_checkpoint, load_vgg16_weights
from fcnrs.pipeline.storage import local_copy

from .settings import TrainSettings

#: The training state's file inside a checkpoint folder.
STATE_FILE = "state.pt"

#: Adam's peak learning rate by default (measured against 1e-3: see the README).
ADAM_LR = 2e-3
#: SGD's peak learning rate by default (the paper's).
SGD_LR = 1e-4


def initial_network(settings: TrainSettings) -> FCN:
    """The network to train: from scratch, from ImageNet VGG16 (net surgery) or from
    a checkpoint (with another class list, the score and upsampling layers start
    afresh and the rest is kept)."""
    s = settings
    network = build_model(
        s.variant,
        num_classes=len(s.classes),
        in_channels=len(s.bands),
        width=s.width,
        skip_scaling=s.optimizer == "sgd",
    )
    if s.weight_init == "pytorch":
        for module in network.modules():
            reset = getattr(module, "reset_parameters", None)
            weight = getattr(module, "weight", None)
            if reset is not None and weight is not None and weight.requires_grad:
                reset()  # torch's default: Kaiming-uniform, a = sqrt(5)
    if s.init_vgg16:  # local or s3:// (fetched once per version, on each node)
        load_vgg16_weights(network, local_copy(s.init_vgg16))
    if s.init:
        parent, meta = load_checkpoint(local_copy(s.init))
        own = network.state_dict()
        same_classes = tuple(meta.classes) == tuple(s.classes)
        keep = {
            k: v
            for k, v in parent.state_dict().items()
            if k in own
            and own[k].shape == v.shape
            and (same_classes or not k.startswith(("score", "upscore")))
        }
        own.update(keep)
        network.load_state_dict(own)
    return network


def base_lr(settings: TrainSettings) -> float:
    """The peak learning rate: ``settings.lr``, else :data:`ADAM_LR` or :data:`SGD_LR`."""
    return settings.lr or (SGD_LR if settings.optimizer == "sgd" else ADAM_LR)


def make_optimizer(network: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """Adam by default; ``sgd`` is the paper's (momentum 0.99, weight decay 5e-4)."""
    params = [p for p in network.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=base_lr(settings), momentum=0.99, weight_decay=5e-4)
    return torch.optim.Adam(params, lr=base_lr(settings))


@dataclass
class TrainingState:
    """Where a run stands: the last finished epoch (-1: none), the best val mean
    IoU so far and every epoch's record (rank 0's)."""

    epoch: int = -1
    best: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Optimizer steps taken so far (the learning-rate schedule's position).
    steps: int = 0
    #: Seconds rank 0 has spent validating and checkpointing so far.
    overhead_s: float = 0.0


@dataclass
class SavedState:
    """A checkpoint folder's content as loaded: the network's weights, the
    optimizer's state and the training state."""

    network: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    training: TrainingState


def save_state(
    directory: str | Path,
    *,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
) -> Path:
    """Write the network, the optimizer and the training state to
    ``directory/state.pt`` (a checkpoint's content); return that path."""
    path = Path(directory) / STATE_FILE
    torch.save(
        {
            "model": network.state_dict(),  # the file's key since its first version
            "optimizer": optimizer.state_dict(),
            "epoch": state.epoch,
            "best": state.best,
            # JSON text: weights_only loading takes tensors and plain containers only.
            "history": json.dumps(state.history),
            "steps": state.steps,
            "overhead_s": state.overhead_s,
        },
        path,
    )
    return path


def load_state(directory: str | Path) -> SavedState:
    """Read what :func:`save_state` wrote (tensors only, no pickled code)."""
    saved = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    training = TrainingState(
        saved["epoch"],
        saved["best"],
        json.loads(saved["history"]),
        int(saved.get("steps", 0)),
        float(saved.get("overhead_s", 0.0)),
    )
    return SavedState(saved["model"], saved["optimizer"], training)


def initial_state(
    settings: TrainSettings, checkpoint_dir: str | Path | None = None
) -> tuple[FCN, torch.optim.Optimizer, TrainingState]:
    """Network, optimizer and training state of a fresh run, or as saved.

    Parameters
    ----------
    settings
        The run; its seed seeds the network's initialisation.
    checkpoint_dir
        A folder :func:`save_state` wrote (None: a fresh run).

    Returns
    -------
    tuple
        The network (on the CPU), its optimizer and the training state.
    """
    torch.manual_seed(settings.seed)
    network = initial_network(settings)
    optimizer = make_optimizer(network, settings)
    if checkpoint_dir is None:
        return network, optimizer, TrainingState()
    saved = load_state(checkpoint_dir)
    network.load_state_dict(saved.network)
    optimizer.load_state_dict(saved.optimizer)
    return network, optimizer, saved.training


@dataclass(kw_only=True)
class Worker:
    """One worker's share of a run: ``network`` is the bare network that is
    validated, saved and exported; ``wrapped`` is what the steps go through (the
    network DDP-wrapped under Ray Train, the network itself in process)."""

    settings: TrainSettings
    network: FCN
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    rank: int = 0
