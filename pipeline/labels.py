"""What the values of a label raster mean: one word, one constant.

Labels are uint8 class ids ``0 .. MAX_CLASSES - 1``; :data:`NODATA` marks pixels
whose input was invalid (nodata, masked, not finite). Inference writes it, the
Zarr and COG outputs declare it, the area queries and polygons skip it.
"""

from __future__ import annotations

#: The label of a pixel with no valid input; also the declared nodata of outputs.
NODATA = 255
#: Class ids must fit uint8 below NODATA.
MAX_CLASSES = 255
