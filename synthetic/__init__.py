"""Synthetic inputs the project makes itself, for the demo, the tests and the benchmarks.

- :mod:`.scenes`: the sample scene (4 bands, 4 land-cover classes, labels) and
  large scenes of any size, written strip by strip;
- :mod:`.thin`: thin-structures scenes (1 m RGB with 2-4 px roads and rare
  buildings, and their labels);
- :mod:`.checkpoints`: seeded, untrained checkpoints;
- :mod:`.label_rasters`: large label rasters published chunk by chunk.

Deterministic: the same arguments give the same pixels, labels and weights. This room
imports :mod:`fcnrs.fcn_model` and :mod:`fcnrs.pipeline` only.
"""
