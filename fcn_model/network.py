"""FCN-32s, FCN-16s and FCN-8s on a VGG16 trunk (Long, Shelhamer & Darrell, CVPR 2015),
and FCN-4s/FCN-2s, which continue the skip chain to pool2 and pool1.

Layer names follow the paper and the Berkeley reference (``voc-fcn8s/net.py``):
``conv1_1`` … ``conv5_3``, ``fc6``, ``fc7``, ``score_fr``, ``upscore2``,
``score_pool4``, ``upscore_pool4``, ``score_pool3``, ``upscore8`` (``upscore16``,
``upscore`` for the coarser variants).

Any input size
--------------
The reference pads the first convolution by 100 pixels and crops every score map
back with hand-derived offsets. That costs 3x the pixels on a 256-px tile, so this
implementation pads *and crops exactly* instead:

1. The input is zero-padded at the bottom and right to the next multiple of 32
   (zero is the band mean after normalisation). The top-left corner is never
   padded, so a pixel's phase with respect to the stride-32 grid is its offset
   from the input origin, which the tiler keeps on multiples of 32.
2. ``fc6`` is a 7x7 convolution with padding 3, so the pool5 grid keeps its size
   and the score map at stride 32 has exactly ``H'/32 x W'/32`` cells.
3. A coarse cell ``i`` at stride ``f`` is centred on fine pixel ``f*i + (f-1)/2``.
   A transposed convolution with kernel ``2f`` and stride ``f`` puts the centre
   of its bilinear kernel at output ``f*i + f - 1/2``, i.e. ``f/2`` pixels too far.
   Padding ``f/2`` on the transposed convolution removes exactly those ``f/2``
   pixels on each side, so every upsampled map is aligned cell-for-pixel with the
   skip it is fused with (stride 32 -> 16 -> 8) and the final map with the input.
4. The final map (``H' x W'``) is cropped to the input's ``H x W``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .meta import STRIDE, Variant

# VGG16 configuration D: (block, number of 3x3 convolutions, output channels).
_VGG16_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 2, 64),
    (2, 2, 128),
    (3, 3, 256),
    (4, 3, 512),
    (5, 3, 512),
)
_FC_CHANNELS = 4096
# At-once skip scaling of the reference ("voc-fcn8s-atonce"): pool4 x 0.01, pool3 x 0.0001;
# the finer skips of FCN-4s/2s continue the same factor of 0.01 per level.
_SKIP_SCALE = {"pool4": 1e-2, "pool3": 1e-4, "pool2": 1e-6, "pool1": 1e-8}


def scaled_channels(channels: int, width: float) -> int:
    """Channels a layer keeps under a width multiplier (at least one)."""
    return max(1, round(channels * width))


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights of a transposed convolution that performs bilinear upsampling.

    The kernel is ``(channels, channels, k, k)`` with the bilinear filter on the
    diagonal (class ``c`` upsamples into class ``c`` only), as the reference's
    ``surgery.interp`` builds it.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    ramp = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - torch.abs(ramp - center) / factor
    filt = torch.outer(filt1d, filt1d).to(torch.float32)
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


class Upsample(nn.ConvTranspose2d):
    """Transposed convolution by ``factor`` that starts as exact bilinear interpolation.

    Kernel ``2 * factor``, stride ``factor`` and padding ``factor // 2``: the
    padding is the crop that aligns the output with the finer grid (see the
    module docstring). No bias, as in the reference. Frozen unless ``learnable``.
    """

    def __init__(self, channels: int, factor: int, *, learnable: bool = False) -> None:
        super().__init__(
            channels,
            channels,
            kernel_size=2 * factor,
            stride=factor,
            padding=factor // 2,
            bias=False,
        )
        self.factor = factor
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(channels, 2 * factor))
        self.weight.requires_grad_(learnable)


class FCN(nn.Module):
    """The FCN family's base class: VGG16 trunk, fully convolutional head
    (``fc6`` as a 7x7 convolution, ``fc7`` as 1x1, ``score_fr``) and the skip
    wiring that the subclasses name (``skips``).

    Parameters
    ----------
    num_classes
        Output classes (score channels).
    in_channels
        Input bands.
    width
        Channel multiplier; 1.0 is the paper's VGG16 (and the only width ImageNet
        weights fit), smaller values make fast CPU models.
    learnable_upsampling
        Train the transposed convolutions (they start as exact bilinear kernels
        and are frozen otherwise).
    skip_scaling
        The reference's at-once scaling of the pool skips (pool4 x 0.01, pool3 x 1e-4).
    dropout
        Dropout after ``fc6`` and ``fc7``.
    """

    variant: Variant
    skips: tuple[str, ...]

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: float = 1.0,
        *,
        learnable_upsampling: bool = False,
        skip_scaling: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1. Got {num_classes} instead.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1. Got {in_channels} instead.")
        if not (width > 0 and math.isfinite(width)):
            raise ValueError(f"width must be a positive number. Got {width!r} instead.")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width = float(width)
        self.learnable_upsampling = learnable_upsampling
        self.skip_scaling = skip_scaling

        channels = in_channels
        self.pool_channels: dict[str, int] = {}
        for block, n_convs, out in _VGG16_BLOCKS:
            out = scaled_channels(out, width)
            for i in range(1, n_convs + 1):
                setattr(self, f"conv{block}_{i}", nn.Conv2d(channels, out, 3, padding=1))
                channels = out
            self.pool_channels[f"pool{block}"] = out
        fc = scaled_channels(_FC_CHANNELS, width)
        # Net surgery: the fully connected layers as convolutions. Padding 3 keeps
        # the pool5 grid's size so any input size yields a score map.
        self.fc6 = nn.Conv2d(channels, fc, 7, padding=3)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop7 = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        # The decoder, walking the skip chain: score_fr x2 ("upscore2"), fused with
        # score_pool4; x2 ("upscore_pool4"), fused with score_pool3; ...; then one
        # last upsampling to the input grid ("upscore<factor>", "upscore" for
        # FCN-32s, "upscore_pool1" for FCN-2s, whose x2 name is taken).
        for name in self.skips:
            setattr(self, f"score_{name}", nn.Conv2d(self.pool_channels[name], num_classes, 1))
        self._upsamplers = [
            f"upscore{2 if i == 0 else '_' + self.skips[i - 1]}" for i in range(len(self.skips))
        ]
        for name in self._upsamplers:
            setattr(self, name, Upsample(num_classes, 2, learnable=learnable_upsampling))
        final = STRIDE >> len(self.skips)
        self._final = "upscore" if not self.skips else f"upscore{final}"
        if self._final in self._upsamplers:
            self._final = f"upscore_{self.skips[-1]}"
        setattr(self, self._final, Upsample(num_classes, final, learnable=learnable_upsampling))
        self._init_weights()

    def _init_weights(self) -> None:
        """He initialisation for the trunk and fc6/fc7 (as torchvision's VGG), small
        normal weights for the score layers, zero biases. PyTorch's default conv
        init shrinks activations over 15 ReLU layers until a fresh network's output
        is nearly its biases; a from-scratch run needs them to carry signal."""
        for name, module in self.named_modules():
            if isinstance(module, Upsample) or not isinstance(module, nn.Conv2d):
                continue
            if name.startswith("score"):
                nn.init.normal_(module.weight, std=0.01)
            else:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # -- trunk --------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the trunk and fc6/fc7 on an input padded to a multiple of 32.

        Returns ``fc7`` (stride 32) and the pool maps the variant's skips fuse
        (``pool4`` at stride 16, ``pool3`` at 8, ...).
        """
        feats: dict[str, torch.Tensor] = {}
        for block, n_convs, _ in _VGG16_BLOCKS:
            for i in range(1, n_convs + 1):
                x = F.relu(getattr(self, f"conv{block}_{i}")(x), inplace=True)
            x = F.max_pool2d(x, 2, stride=2)
            if f"pool{block}" in self.skips:
                feats[f"pool{block}"] = x
        x = self.drop6(F.relu(self.fc6(x), inplace=True))
        x = self.drop7(F.relu(self.fc7(x), inplace=True))
        feats["fc7"] = x
        return feats

    def _skip(self, feats: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        pool = feats[name]
        if self.skip_scaling:
            pool = pool * _SKIP_SCALE[name]
        score: torch.Tensor = getattr(self, f"score_{name}")(pool)
        return score

    def _decode(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        score = self.score_fr(feats["fc7"])
        for up, name in zip(self._upsamplers, self.skips, strict=True):
            score = getattr(self, up)(score) + self._skip(feats, name)
        final: torch.Tensor = getattr(self, self._final)(score)
        return final

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(N, num_classes, H, W)`` for an input ``(N, bands, H, W)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Expected input of shape (N, {self.in_channels}, H, W). "
                f"Got {tuple(x.shape)} instead."
            )
        height, width = x.shape[-2:]
        pad_h = -height % STRIDE
        pad_w = -width % STRIDE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        scores = self._decode(self.forward_features(x))
        return scores[..., :height, :width]


class FCN32s(FCN):
    """FCN-32s: score_fr upsampled x32 in one step."""

    variant: Variant = "fcn32s"
    skips = ()


class FCN16s(FCN):
    """FCN-16s: score_fr x2, fused with score_pool4, upsampled x16."""

    variant: Variant = "fcn16s"
    skips = ("pool4",)


class FCN8s(FCN):
    """FCN-8s: FCN-16s's fusion, x2 again, fused with score_pool3, upsampled x8."""

    variant: Variant = "fcn8s"
    skips = ("pool4", "pool3")


class FCN4s(FCN):
    """FCN-4s: FCN-8s's fusion, x2 again, fused with score_pool2, upsampled x4.

    Not in the paper's table (it reports diminishing returns from pool2 on
    PASCAL VOC), but remote-sensing classes such as flood water are often only
    a few pixels wide: an output that is bilinear at stride 8 cannot draw them
    (``benchmarks/stride_ceiling.py``)."""

    variant: Variant = "fcn4s"
    skips = ("pool4", "pool3", "pool2")


class FCN2s(FCN):
    """FCN-2s: the skip chain down to pool1, so the last bilinear step is x2."""

    variant: Variant = "fcn2s"
    skips = ("pool4", "pool3", "pool2", "pool1")


VARIANTS: dict[str, type[FCN]] = {cls.variant: cls for cls in (FCN32s, FCN16s, FCN8s, FCN4s, FCN2s)}


def build_model(
    variant: Variant,
    *,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    learnable_upsampling: bool = False,
    skip_scaling: bool = False,
    dropout: float = 0.5,
) -> FCN:
    """Build an FCN by variant name (one of :data:`Variant`: ``"fcn8s"``, ...);
    the keywords are :class:`FCN`'s."""
    try:
        cls = VARIANTS[variant]
    except KeyError:
        raise ValueError(
            f"Expected a variant in {sorted(VARIANTS)}. Got {variant!r} instead."
        ) from None
    return cls(
        num_classes,
        in_channels,
        width,
        learnable_upsampling=learnable_upsampling,
        skip_scaling=skip_scaling,
        dropout=dropout,
    )
