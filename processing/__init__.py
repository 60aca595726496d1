"""lunarchive.processing: lunar products to analysis-ready data (no Prefect, no catalog).

Modules: ``products`` (one entry point: any product → its ``ProductRecord``), the readers
``pds4``, ``pds3``, ``isis3``, ``geotiff`` (labels → records, hostile input refused),
``labels`` (the hardened XML parser), ``arrays`` (declared sizes checked before allocating),
``crs`` (Moon CRSs, IAU_2015 codes, lunar footprints), ``grids`` (named lunar grids and
their tilings), ``tiles`` / ``warp`` (per-tile cubes on Dask, overlap rules, provenance),
``gdal`` (GDAL's warper through its C API, without the GIL), ``pyramid`` (Zarr tiles with
overviews and ``multiscales``), ``stats``, ``quicklook``, ``samples`` (sample tables:
validation, units, GeoParquet), ``readers`` (DEM products to lazy xarray, specimen CSV to
records), ``cube`` (a lunar raster as a one-variable cube with its CRS), ``at_site`` (tile
values at sample sites), ``demo_archive`` (the demo's synthetic archive).
"""

__all__ = [
    "arrays",
    "crs",
    "cube",
    "demo_archive",
    "gdal",
    "geotiff",
    "grids",
    "isis3",
    "labels",
    "pds3",
    "pds4",
    "products",
    "pyramid",
    "quicklook",
    "readers",
    "samples",
    "stats",
    "tiles",
    "warp",
]
