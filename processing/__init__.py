"""lunarchive.processing: lunar products to analysis-ready data (no Prefect, no catalog).

Modules: ``crs`` (Moon CRSs, IAU_2015 codes, lunar footprints), ``readers`` (DEM products to
lazy xarray, specimen CSV to records), ``mosaic`` (tiles onto one lunar grid with dask),
``cube`` (Zarr v3 cubes: build, write, summarise), ``demo_archive`` (the demo's synthetic
lunar archive).
"""

__all__ = ["crs", "cube", "demo_archive", "mosaic", "readers"]
