"""ImageNet VGG16 weights into an FCN: the paper's "net surgery".

The weights come from a local file in torchvision's ``vgg16`` state-dict layout
(``features.N.weight``/``bias`` for the 13 convolutions, ``classifier.0.*`` for
fc6 and ``classifier.3.*`` for fc7; ``classifier.6`` is ImageNet's 1000-way
classifier and is dropped, as the paper does). Nothing is downloaded.

The file may be a ``.safetensors`` file (loaded without any pickle) or a
``torch.save`` state dict (loaded with ``weights_only=True``, which refuses
arbitrary objects).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import WeightsError
from .network import _VGG16_BLOCKS, FCN

# torchvision's ``vgg16().features`` indexes: the 13 convolutions, in order.
_TORCHVISION_CONV_INDEXES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_CONV_NAMES = tuple(
    f"conv{block}_{i}" for block, n_convs, _ in _VGG16_BLOCKS for i in range(1, n_convs + 1)
)


def read_state_dict(path: str | PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file or a weights-only torch file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file.")
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
        if head.startswith(b"PK"):  # torch.save's zip container
            state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
            return state
        return load_file(str(path))
    except Exception as exc:
        raise WeightsError(
            f"{path}: cannot read a state dict ({exc}). Expected a .safetensors file "
            "or a torch.save state dict."
        ) from exc


def adapt_first_layer(rgb: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Derive first-layer filters for ``in_channels`` bands from RGB filters.

    The first three bands keep the red, green and blue filters; every further
    band (or, with fewer than three bands, every band) gets the mean of the three.
    All filters are then scaled by ``3 / in_channels``, so that an image whose
    bands all hold the same value ``v`` produces the same first-layer response as
    the RGB network on a grey image of ``v``.
    """
    if in_channels == 3:
        return rgb.clone()
    mean = rgb.mean(dim=1, keepdim=True)
    if in_channels < 3:
        weight = mean.repeat(1, in_channels, 1, 1)
    else:
        weight = torch.cat([rgb, mean.repeat(1, in_channels - 3, 1, 1)], dim=1)
    return weight * (3.0 / in_channels)


def load_vgg16_weights(model: FCN, path: str | PathLike[str]) -> FCN:
    """Load ImageNet VGG16 weights into ``model`` in place, convolutionalising fc6/fc7.

    fc6's ``4096 x 25088`` matrix becomes the ``4096 x 512 x 7 x 7`` convolution
    (torchvision flattens pool5 as channel, row, column, which is exactly the
    convolution's weight layout) and fc7's ``4096 x 4096`` matrix the 1x1
    convolution. The score and upsampling layers keep their initialisation.

    Parameters
    ----------
    model
        An FCN built with ``width=1.0``; any number of input bands.
    path
        A local file in torchvision's ``vgg16`` state-dict layout.

    Returns
    -------
    The same model, for chaining.
    """
    if model.width != 1.0:
        raise WeightsError(
            f"{path}: ImageNet VGG16 weights fit only width=1.0. Got a model with "
            f"width={model.width}; build the model with width=1.0 or train from scratch."
        )
    state = read_state_dict(path)
    fc_sources = {"fc6": "classifier.0", "fc7": "classifier.3"}
    wanted = [f"features.{i}" for i in _TORCHVISION_CONV_INDEXES] + list(fc_sources.values())
    missing = [f"{k}.{p}" for k in wanted for p in ("weight", "bias") if f"{k}.{p}" not in state]
    if missing:
        raise WeightsError(
            f"{path}: not a torchvision VGG16 state dict; missing {', '.join(missing[:4])}"
            + (" …" if len(missing) > 4 else "")
        )

    new: dict[str, torch.Tensor] = {}
    for name, index in zip(_CONV_NAMES, _TORCHVISION_CONV_INDEXES, strict=True):
        weight = state[f"features.{index}.weight"]
        if name == "conv1_1":
            weight = adapt_first_layer(weight, model.in_channels)
        new[f"{name}.weight"] = weight
        new[f"{name}.bias"] = state[f"features.{index}.bias"]
    for name, source in fc_sources.items():
        conv = getattr(model, name)
        weight = state[f"{source}.weight"]
        if weight.numel() != conv.weight.numel():
            raise WeightsError(
                f"{path}: {source}.weight has shape {tuple(weight.shape)}; expected "
                f"{conv.weight.shape[0]} x {conv.weight[0].numel()} for {name}."
            )
        new[f"{name}.weight"] = weight.reshape(conv.weight.shape)
        new[f"{name}.bias"] = state[f"{source}.bias"]

    own = model.state_dict()
    for key, value in new.items():
        if own[key].shape != value.shape:
            raise WeightsError(
                f"{path}: {key} has shape {tuple(value.shape)}; the model expects "
                f"{tuple(own[key].shape)}."
            )
    with torch.no_grad():
        for key, value in new.items():
            own[key].copy_(value.to(own[key].dtype))
    return model
