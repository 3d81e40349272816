"""What a model is, without its weights and without torch: the network's stride
and variants, and the metadata a checkpoint carries.

Everything here imports in milliseconds, so the processes that only read scenes
and write label rasters (Ray's read and write tasks) never load torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .network import FCN

#: The variants by name: ``fcnNs`` has output stride N before its last upsampling.
Variant = Literal["fcn32s", "fcn16s", "fcn8s", "fcn4s", "fcn2s"]

#: The network's coarsest stride: tile origins must sit on multiples of it.
STRIDE = 32

FORMAT_NAME = "fcn-remote-sensing-checkpoint"
FORMAT_VERSION = 1

# Distinct colours for classes that come without one (QGIS-friendly, colour-blind aware first).
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def default_colors(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """A colour per class: a fixed palette, then deterministic pseudo-random colours."""
    colors = list(_PALETTE[:num_classes])
    for i in range(len(colors), num_classes):
        digest = hashlib.sha256(f"class-{i}".encode()).digest()
        colors.append((digest[0], digest[1], digest[2]))
    return tuple(colors)


@dataclass(frozen=True)
class HaloMeasurement:
    """How much context a network needs, as measured on scenes (its *halo*).

    ``needed`` is the smallest multiple of :data:`STRIDE` whose tiles, with
    ``tile_size``-px cores (dense seams), agree with one whole-scene pass on at
    least ``threshold`` of the valid pixels of every scene measured
    (:func:`fcnrs.pipeline.context.measure_halo`); ``halo``, what the nightly
    job uses as its default ``--overlap``, adds a margin for other scenes.
    """

    #: Pixels of context on each side of a core that runs use, a multiple of :data:`STRIDE`.
    halo: int
    #: The lowest share of agreeing valid pixels over the scenes, at ``halo``.
    agreement: float
    threshold: float
    #: The core edge the tiles were cut at while measuring.
    tile_size: int
    precision: str
    #: What it was measured on: scene paths, or ``generated:...``.
    scenes: tuple[str, ...]
    #: When (ISO 8601, UTC).
    measured: str
    #: Every halo tried, with its (lowest) agreement: ``((0, 0.93), (32, 0.998), ...)``.
    tried: tuple[tuple[int, float], ...] = ()
    #: The smallest halo that reached ``threshold`` on these scenes (None: ``halo``).
    needed: int | None = None

    def __post_init__(self) -> None:
        for value in (self.halo, self.halo if self.needed is None else self.needed):
            if value < 0 or value % STRIDE:
                raise ValueError(
                    f"a recorded halo must be a multiple of {STRIDE} px, 0 or more; got {value}"
                )
        if not 0.0 <= self.agreement <= 1.0:
            raise ValueError(f"agreement is a share in [0, 1]; got {self.agreement}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> HaloMeasurement:
        return cls(
            halo=int(raw["halo"]),
            agreement=float(raw["agreement"]),
            threshold=float(raw["threshold"]),
            tile_size=int(raw["tile_size"]),
            precision=str(raw["precision"]),
            scenes=tuple(str(s) for s in raw["scenes"]),
            measured=str(raw["measured"]),
            tried=tuple((int(h), float(a)) for h, a in raw.get("tried", ())),
            needed=int(raw["needed"]) if raw.get("needed") is not None else None,
        )

    def describe(self) -> str:
        """One line for logs: the halo and how it was measured."""
        where = ", ".join(self.scenes)
        needed = "" if self.needed in (None, self.halo) else f"{self.needed} px needed + margin, "
        return (
            f"{self.halo} px ({needed}{self.agreement:.3%} agreement with a whole-scene pass "
            f"at {self.tile_size}-px cores on {where}, {self.precision}, measured {self.measured})"
        )


@dataclass(frozen=True)
class ModelMeta:
    """What a checkpoint says about its model, besides the weights.

    ``bands`` are 1-based source band indexes (GDAL's convention), in the order
    the network sees them; ``mean`` and ``std`` normalise those bands in that order.
    """

    variant: str
    width: float
    bands: tuple[int, ...]
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skip_scaling: bool = False
    learnable_upsampling: bool = False
    provenance: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    #: The context the network needs (None: never measured; checkpoints written
    #: before the field existed read as None).
    halo: HaloMeasurement | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        raw = json.loads(text)
        return cls(
            variant=str(raw["variant"]),
            width=float(raw["width"]),
            bands=tuple(int(b) for b in raw["bands"]),
            classes=tuple(str(c) for c in raw["classes"]),
            colors=tuple((int(r), int(g), int(b)) for r, g, b in raw["colors"]),
            mean=tuple(float(v) for v in raw["mean"]),
            std=tuple(float(v) for v in raw["std"]),
            skip_scaling=bool(raw.get("skip_scaling", False)),
            learnable_upsampling=bool(raw.get("learnable_upsampling", False)),
            provenance=dict(raw.get("provenance", {})),
            format_version=int(raw.get("format_version", FORMAT_VERSION)),
            halo=HaloMeasurement.from_dict(raw["halo"]) if raw.get("halo") else None,
        )

    def build(self) -> FCN:
        """A freshly initialised model with this architecture."""
        from .network import build_model

        return build_model(
            self.variant,  # type: ignore[arg-type]
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            width=self.width,
            skip_scaling=self.skip_scaling,
            learnable_upsampling=self.learnable_upsampling,
        )
