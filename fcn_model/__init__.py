"""The network: FCN-32s/16s/8s on a VGG16 trunk (and FCN-4s/2s, which continue the
skip chain to pool2 and pool1), ImageNet net surgery, and safe checkpoints."""

from .checkpoint import (
    ModelMeta,
    checkpoint_digest,
    default_colors,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from .errors import CheckpointError, FCNModelError, WeightsError
from .network import (
    FCN,
    STRIDE,
    VARIANTS,
    FCN2s,
    FCN4s,
    FCN8s,
    FCN16s,
    FCN32s,
    Variant,
    bilinear_kernel,
    build_model,
)
from .surgery import load_vgg16_weights

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
    "save_checkpoint",
]
