"""The network: FCN-32s/16s/8s on a VGG16 trunk (and FCN-4s/2s, which continue the
skip chain to pool2 and pool1), ImageNet net surgery, and safe checkpoints.

Names load on first use (PEP 562): a process that only needs the metadata and the
stride (:mod:`.meta`), such as a Ray task that reads scenes or writes label
rasters, never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import (
        checkpoint_digest,
        load_checkpoint,
        read_meta,
        record_halo,
        save_checkpoint,
    )
    from .errors import CheckpointError, FCNModelError, WeightsError
    from .meta import STRIDE, HaloMeasurement, ModelMeta, Variant, default_colors
    from .network import (
        FCN,
        VARIANTS,
        FCN2s,
        FCN4s,
        FCN8s,
        FCN16s,
        FCN32s,
        bilinear_kernel,
        build_model,
    )
    from .surgery import load_vgg16_weights

_WHERE = {
    "FCN": "network",
    "STRIDE": "meta",
    "VARIANTS": "network",
    "CheckpointError": "errors",
    "FCN2s": "network",
    "FCN4s": "network",
    "FCN8s": "network",
    "FCN16s": "network",
    "FCN32s": "network",
    "FCNModelError": "errors",
    "HaloMeasurement": "meta",
    "ModelMeta": "meta",
    "Variant": "meta",
    "WeightsError": "errors",
    "bilinear_kernel": "network",
    "build_model": "network",
    "checkpoint_digest": "checkpoint",
    "default_colors": "meta",
    "load_checkpoint": "checkpoint",
    "load_vgg16_weights": "surgery",
    "read_meta": "checkpoint",
    "record_halo": "checkpoint",
    "save_checkpoint": "checkpoint",
}

__all__ = [
    "FCN",
    "STRIDE",
    "VARIANTS",
    "CheckpointError",
    "FCN2s",
    "FCN4s",
    "FCN8s",
    "FCN16s",
    "FCN32s",
    "FCNModelError",
    "HaloMeasurement",
    "ModelMeta",
    "Variant",
    "WeightsError",
    "bilinear_kernel",
    "build_model",
    "checkpoint_digest",
    "default_colors",
    "load_checkpoint",
    "load_vgg16_weights",
    "read_meta",
    "record_halo",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
