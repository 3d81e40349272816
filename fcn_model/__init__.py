"""FCN-32s/16s/8s on a VGG16 trunk, ImageNet net surgery, and safe checkpoints."""

from .checkpoint import (
    ModelMeta,
    checkpoint_digest,
    default_colors,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from .errors import CheckpointError, FCNModelError, WeightsError
from .network import STRIDE, VARIANTS, FCN8s, FCN16s, FCN32s, bilinear_kernel, build_model
from .surgery import load_vgg16_weights

__all__ = [
    "STRIDE",
    "VARIANTS",
    "CheckpointError",
    "FCN8s",
    "FCN16s",
    "FCN32s",
    "FCNModelError",
    "ModelMeta",
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
