"""Test-time augmentation (TTA) that keeps the stride grid: flips and 90° turns.

A window's class scores are averaged over transformed copies of it: ``flips``
(identity, left-right, up-down, both: 4 passes) or ``d4`` (those and the four
transposed ones: every flip and 90° rotation, 8 passes). Each copy goes through
the model, its scores are transformed back, turned into probabilities (softmax,
fp32) and averaged in a fixed order, so the result is deterministic.

Why the window is padded first
------------------------------
Tiles start on multiples of the network's stride (32) from the scene origin,
so a pixel's phase on the pooling grid, its column ``p`` mod 32 inside the
window, is the phase a whole-scene pass gives it. A flip maps column ``p`` of
a ``w``-wide window to ``w - 1 - p``: the stride cell ``[32k, 32k + 31]`` lands on
``[w - 32 - 32k, w - 1 - 32k]``, which is a cell of the flipped pass's grid only
when ``w`` is a multiple of 32. Edge windows are not (they end at the scene edge),
so a naive flip pools them at another phase and its scores disagree with the
unflipped pass for reasons that have nothing to do with the image.

The model itself zero-pads every input at the bottom and right to ``W' =
32 * ceil(w / 32)`` (:meth:`fcnrs.fcn_model.FCN.forward`). Padding the window the
same way *before* transforming it maps ``p`` to ``W' - 1 - p`` and the cell
``[32k, 32k + 31]`` to ``[W' - 32(k + 1), W' - 1 - 32k]``: a cell again. The
flipped pass then sees exactly the mirror image of what the unflipped pass
sees, padding included, on the same grid; transposes swap ``H'`` and ``W'``, both
multiples of 32. After the inverse transform the scores are cropped to the
tile's core. For a network whose filters are themselves mirror-symmetric, the
flipped pass's scores equal the unflipped ones to rounding; a naive flip of a
window whose width is not a multiple of 32 does not (``tests/pipeline/test_tta.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from fcnrs.fcn_model.meta import STRIDE

if TYPE_CHECKING:  # torch loads where a model runs, never in read or write tasks
    import torch

#: ``none``: one pass; ``flips``: 4 passes (identity, left-right, up-down, both);
#: ``d4``: 8 passes (every flip and 90° rotation).
TTA = Literal["none", "flips", "d4"]
TTA_MODES: tuple[str, ...] = get_args(TTA)


@dataclass(frozen=True)
class Transform:
    """An element of the square's symmetry group: flip rows, flip columns, then
    transpose (every flip and 90° rotation is one of the 8 combinations)."""

    flip_rows: bool = False
    flip_cols: bool = False
    transpose: bool = False

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The transformed copy of ``x`` ``(..., H, W)``."""
        dims = [d for d, on in ((-2, self.flip_rows), (-1, self.flip_cols)) if on]
        if dims:
            x = x.flip(dims)
        return x.transpose(-2, -1) if self.transpose else x

    def undo(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse: ``undo(apply(x)) == x``."""
        if self.transpose:
            y = y.transpose(-2, -1)
        dims = [d for d, on in ((-2, self.flip_rows), (-1, self.flip_cols)) if on]
        return y.flip(dims) if dims else y


_FLIPS = tuple(Transform(r, c) for r in (False, True) for c in (False, True))

#: The passes of each mode, in the order their probabilities are summed.
TRANSFORMS: dict[str, tuple[Transform, ...]] = {
    "none": (Transform(),),
    "flips": _FLIPS,
    "d4": _FLIPS + tuple(Transform(t.flip_rows, t.flip_cols, True) for t in _FLIPS),
}


def check_mode(mode: str) -> TTA:
    """``mode`` if it is one of :data:`TTA_MODES`, else a ValueError saying which are."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {list(TTA_MODES)}, not {mode!r}")
    return mode  # type: ignore[return-value]


def pad_to_stride(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(n, c, h, w)`` zero-padded at the bottom and right to multiples of
    :data:`~fcnrs.fcn_model.STRIDE`: what the model does to every input, done
    before a transform so the transformed copy keeps the stride grid."""
    from torch.nn.functional import pad

    h, w = x.shape[-2:]
    pad_h, pad_w = -h % STRIDE, -w % STRIDE
    return pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def averaged_probabilities(
    network: torch.nn.Module,
    x: torch.Tensor,
    *,
    mode: TTA,
    core: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Class probabilities of windows averaged over ``mode``'s transforms.

    Parameters
    ----------
    network
        An FCN: ``(n, bands, H, W)`` in, class scores ``(n, classes, H, W)`` out.
    x
        The model's input ``(n, bands, h, w)``, windows that start on the stride grid.
    mode
        ``none``, ``flips`` or ``d4``.
    core
        Row, column, height, width of the part to return (default: all of it).

    Returns
    -------
    torch.Tensor
        float32 ``(n, classes, core height, core width)``: the mean over the passes
        of the softmax of each pass's scores, transformed back (see the module
        docstring for the alignment), summed in :data:`TRANSFORMS` order.
    """
    import torch

    h, w = x.shape[-2:]
    r, c, ch, cw = core if core is not None else (0, 0, h, w)
    padded = pad_to_stride(x)
    passes = TRANSFORMS[check_mode(mode)]
    total: torch.Tensor | None = None
    for t in passes:
        scores = network(t.apply(padded).contiguous(memory_format=torch.channels_last))
        scores = t.undo(scores)[:, :, r : r + ch, c : c + cw]
        p = torch.softmax(scores.float(), dim=1)
        total = p if total is None else total.add_(p)
    assert total is not None
    return total.div_(len(passes))
