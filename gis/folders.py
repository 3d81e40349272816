"""Where the GIS outputs go inside an output folder: every name, once.

::

    OUT/
      <stem>.zarr                 label rasters (the pipeline's)
      cogs/<stem>.tif, .png       COGs and quicklooks (fcnrs.gis.cog)
      vectors/<stem>.parquet      polygons; vectors_fgb/, vectors_gpkg/ for
                                  the GDAL formats (fcnrs.gis.vectors)
      mosaic/labels.vrt           the night's raster layer (fcnrs.gis.mosaic)
      mosaic/labels.gti.gpkg      the same layer as a GDAL tile index
      mosaic/warped/<stem>.vrt    scenes in another CRS, warped
      mosaic/polygons.<ext>       the night's polygons (fcnrs.gis.night_polygons)
      stac/collection.json        the STAC catalogue (fcnrs.gis.catalog)
      report.html                 the night's page (fcnrs.gis.report)
"""

from __future__ import annotations

#: COGs and their quicklooks (the default of ``fcnrs mosaic --cogs`` and
#: ``fcnrs catalog --cogs``).
COG_DIR = "cogs"
#: Polygons in GeoParquet: together the files are one dataset.
VECTOR_DIR = "vectors"
#: The night's layers: the mosaic and the night's polygons.
MOSAIC_DIR = "mosaic"
#: The mosaic as a VRT, inside :data:`MOSAIC_DIR`.
MOSAIC_VRT = "labels.vrt"
#: The mosaic as a GDAL tile index (GTI), inside :data:`MOSAIC_DIR`.
MOSAIC_GTI = "labels.gti.gpkg"
#: Warped VRTs of scenes in another CRS than the mosaic's, inside :data:`MOSAIC_DIR`.
WARPED_DIR = "warped"
#: The night's polygons: ``<out>/mosaic/polygons<suffix>``.
NIGHT_POLYGONS = "polygons"
#: The STAC catalogue.
STAC_DIR = "stac"
#: The night's page.
REPORT_NAME = "report.html"
