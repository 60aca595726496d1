"""Benchmark: lunarchive vs GDAL building the same lunar mosaics as Zarr v3.

Input (generated, deterministic): float32 GeoTIFF tiles in IAU_2015:30100 sampling a known
smooth surface, split between an equatorial set (mosaicked to IAU_2015:30110) and a
south-polar set, latitudes −90..−80° (mosaicked to IAU_2015:30135).

* lunarchive: ``open_map`` on each tile (as the process flow opens a tile's inputs),
  ``mosaic_onto`` (one GDAL warp per 1024 × 1024 block, on Dask threads), ``write_tile``
  without overviews.
* GDAL (the libgdal bundled in rasterio's wheel, called in-process through its C API):
  ``GDALBuildVRT`` → ``GDALWarp -of VRT -multi -wo NUM_THREADS=ALL_CPUS`` →
  ``GDALTranslate -of Zarr`` (FORMAT=ZARR_V3).

Both use bilinear resampling, zstd level 3, 512 × 512 chunks and the same CPUs (each runs in
its own process pinned to them, which also gives each its own peak-memory figure). Both
outputs are checked against the known surface. Wall time is measured inside each process,
from opening the inputs to the last byte written. Each tool builds the mosaics one after the
other, as the issue's GDAL command lines do; ``--at-once`` builds them at once, a thread each
(as the process flow builds a run's tiles).

The scaling (lunarchive on ``--cores`` workers against one) comes with what the machine allows
for it: in each round, ``--cores`` one-worker builds also run at once, each pinned to a core of
its own, sharing nothing but the machine (memory, caches, the host). If N of them take k times
as long as one alone, no N-worker build of the same work can be more than N / k times faster
than one worker here. Each run also reports the CPU time the host took from its cores (steal,
from ``/proc/stat``), the noise of a shared virtual machine that a wall time cannot show.

    python -m tests.benchmarks.bench_cubes --size-mb 288 --cores 2
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MOON_RADIUS_M = 1_737_400.0
DEGREE_M = math.pi * MOON_RADIUS_M / 180.0
TILE_PX = 2048
POLAR_EDGE_LAT = -80.0
ZSTD_LEVEL = 3
CHUNK_PX = 512
TOLERANCE_M = 1.0  # bilinear interpolation error of the smooth surface at these resolutions


def surface(lon_deg: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    """The known height (m): smooth on the sphere, poles included (a function of the unit
    vector, so it has no seam and no polar singularity)."""
    lon, lat = np.radians(lon_deg), np.radians(lat_deg)
    vx, vy, vz = np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)
    result: np.ndarray = (
        2000.0 * np.sin(3.0 * vx) + 1500.0 * np.cos(2.0 * vy + 0.5) + 1000.0 * np.sin(4.0 * vz)
    )
    return result


@dataclass(frozen=True)
class Job:
    name: str
    inputs: list[str]
    crs: str
    bounds: tuple[float, float, float, float]  # output left, bottom, right, top (m)
    resolution: float  # output m/px


# --- input generation ---------------------------------------------------------------------


def generate(folder: Path, size_mb: float) -> tuple[list[Job], int]:
    """Write the input tiles; return the two mosaic jobs and the input bytes."""
    import rasterio  # type: ignore[import-untyped]
    from rasterio.transform import from_origin  # type: ignore[import-untyped]

    pixels = size_mb * 1024**2 / 4 / 2  # per set
    step = math.sqrt(360.0 * (POLAR_EDGE_LAT + 90.0) / pixels)  # degrees per pixel, both sets
    step = 360.0 / round(360.0 / step)  # a whole number of pixels round the Moon, as real maps
    total = 0

    def write(name: str, west: float, north: float, width: int, height: int) -> str:
        nonlocal total
        path = folder / f"{name}.tif"
        lons = west + step * (np.arange(width) + 0.5)
        lats = north - step * (np.arange(height) + 0.5)
        values = surface(lons[None, :], lats[:, None]).astype(np.float32)
        profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": 1,
            "dtype": "float32",
            "crs": "IAU_2015:30100",
            "transform": from_origin(west, north, step, step),
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
        }
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(values, 1)
        total += values.nbytes
        return str(path)

    # South-polar set: latitudes −90..−80, all longitudes, in columns of TILE_PX.
    polar_w, polar_h = round(360.0 / step), round((POLAR_EDGE_LAT + 90.0) / step)
    polar = [
        write(
            f"sp_{i:03d}", -180.0 + x0 * step, POLAR_EDGE_LAT, min(TILE_PX, polar_w - x0), polar_h
        )
        for i, x0 in enumerate(range(0, polar_w, TILE_PX))
    ]
    # Equatorial set: a square of the same pixel count, centred on (0°, 0°), in TILE_PX tiles.
    side = round(math.sqrt(polar_w * polar_h))
    west = north = side * step / 2.0
    equatorial = [
        write(
            f"eq_{r:02d}{c:02d}",
            -west + x0 * step,
            north - y0 * step,
            min(TILE_PX, side - x0),
            min(TILE_PX, side - y0),
        )
        for r, y0 in enumerate(range(0, side, TILE_PX))
        for c, x0 in enumerate(range(0, side, TILE_PX))
    ]
    resolution = step * DEGREE_M
    half_eq = math.floor(west * DEGREE_M / resolution) * resolution
    reach = 2.0 * MOON_RADIUS_M * math.tan(math.radians(90.0 + POLAR_EDGE_LAT) / 2.0)
    half_sp = math.floor(reach / math.sqrt(2.0) / resolution) * resolution  # inside the cap
    jobs = [
        Job(
            "equatorial",
            equatorial,
            "IAU_2015:30110",
            (-half_eq, -half_eq, half_eq, half_eq),
            resolution,
        ),
        Job(
            "south-polar",
            polar,
            "IAU_2015:30135",
            (-half_sp, -half_sp, half_sp, half_sp),
            resolution,
        ),
    ]
    return jobs, total


# --- the two builders (each runs in its own process) ---------------------------------------


def run_lunarchive(job: Job, out: Path, workers: int) -> dict[str, float]:
    """Build ``job``; return the seconds of each phase. Opening the inputs, planning and
    writing the store's metadata run on one thread whatever ``workers`` is; the chunks (warp,
    encode, write) on all of them. On Dask's local schedulers the write is split where its
    first chunk task starts (``setup``: metadata and graph; ``chunks``: the rest); on a
    cluster it is one phase (``build``)."""
    import threading

    import zarr.storage
    from affine import Affine
    from dask.callbacks import Callback
    from odc.geo.geobox import GeoBox

    from lunarchive.processing.cube import build_cube
    from lunarchive.processing.pyramid import write_tile
    from lunarchive.processing.readers import open_map
    from lunarchive.processing.tiles import Layer, mosaic_onto

    left, bottom, right, top = job.bounds
    shape = (round((top - bottom) / job.resolution), round((right - left) / job.resolution))
    geobox = GeoBox(shape, Affine(job.resolution, 0, left, 0, -job.resolution, top), job.crs)
    start = time.perf_counter()
    layers = [Layer(open_map(Path(p)), Path(p).stem) for p in job.inputs]
    opened = time.perf_counter()
    cube = build_cube(mosaic_onto(layers, geobox, resampling="bilinear"), name="height")
    planned = time.perf_counter()
    first: list[float] = []
    here = threading.get_ident()  # the local scheduler calls back on the thread computing

    def pretask(*_: Any) -> None:  # the first task of this job's graph (not another job's)
        if not first and threading.get_ident() == here:
            first.append(time.perf_counter())

    with Callback(pretask=pretask):
        write_tile(cube, zarr.storage.LocalStore(out), overviews=False)  # on the current client
    built = time.perf_counter()
    phases = {"open": opened - start, "plan": planned - opened}
    if not first:
        return phases | {"build": built - planned}
    return phases | {"setup": first[0] - planned, "chunks": built - first[0]}


def run_gdal(job: Job, out: Path, workers: int) -> None:
    from lunarchive.processing.gdal import libgdal  # rasterio's libgdal, nothing more imported

    lib = libgdal()
    lib.CPLSetConfigOption(b"GDAL_NUM_THREADS", str(workers).encode())
    for name in ("GDALBuildVRT", "GDALWarp", "GDALTranslate"):
        getattr(lib, name).restype = ctypes.c_void_p
    for name in ("GDALBuildVRTOptionsNew", "GDALWarpAppOptionsNew", "GDALTranslateOptionsNew"):
        getattr(lib, name).restype = ctypes.c_void_p

    def argv(args: list[str]) -> Any:
        array = (ctypes.c_char_p * (len(args) + 1))(*[a.encode() for a in args], None)
        return array

    error = ctypes.c_int(0)
    names = argv(job.inputs)
    vrt_options = lib.GDALBuildVRTOptionsNew(argv([]), None)
    vrt = lib.GDALBuildVRT(
        f"/vsimem/{job.name}-in.vrt".encode(),
        len(job.inputs),
        None,
        names,
        ctypes.c_void_p(vrt_options),
        ctypes.byref(error),
    )
    left, bottom, right, top = job.bounds
    warp_args = [
        "-of", "VRT", "-t_srs", job.crs, "-r", "bilinear", "-multi",
        "-wo", "NUM_THREADS=ALL_CPUS", "-ot", "Float32", "-dstnodata", "nan",
        "-te", *map(repr, (left, bottom, right, top)),
        "-tr", repr(job.resolution), repr(job.resolution),
    ]  # fmt: skip
    warp_options = lib.GDALWarpAppOptionsNew(argv(warp_args), None)
    sources = (ctypes.c_void_p * 1)(vrt)
    warped = lib.GDALWarp(
        f"/vsimem/{job.name}-warped.vrt".encode(),
        None,
        1,
        sources,
        ctypes.c_void_p(warp_options),
        ctypes.byref(error),
    )
    translate_args = [
        "-of", "Zarr", "-co", "FORMAT=ZARR_V3", "-co", "COMPRESS=ZSTD",
        "-co", f"ZSTD_LEVEL={ZSTD_LEVEL}", "-co", f"BLOCKSIZE={CHUNK_PX},{CHUNK_PX}",
    ]  # fmt: skip
    translate_options = lib.GDALTranslateOptionsNew(argv(translate_args), None)
    written = lib.GDALTranslate(
        str(out).encode(),
        ctypes.c_void_p(warped),
        ctypes.c_void_p(translate_options),
        ctypes.byref(error),
    )
    if not written or error.value:
        raise RuntimeError(f"GDALTranslate failed for {job.name}")
    for handle in (written, warped, vrt):
        lib.GDALClose(ctypes.c_void_p(handle))


def child(
    tool: str,
    jobs_file: Path,
    out_dir: Path,
    cores: int,
    scheduler: str,
    memory_limit_mib: float | None = None,
    *,
    at_once: bool = False,
    first_cpu: int = 0,
) -> None:
    """One builder, pinned to ``cores`` CPUs (from the ``first_cpu``-th this process may use);
    prints its wall times, its CPU time, the peak memory of its process tree (RSS summed over
    the processes, sampled every 20 ms; and the largest of any one process but this one) and
    the CPU time the host took from its CPUs (steal) as JSON.

    lunarchive runs on Dask threads (``threads``: one process, ``cores`` threads) or as the
    process flow does (``processes``: a ``LocalCluster`` of ``cores`` single-threaded worker
    processes, each with ``memory_limit_mib`` if given, started and warmed before the clock).
    """
    cpus = set(sorted(os.sched_getaffinity(0))[first_cpu : first_cpu + cores])
    os.sched_setaffinity(0, cpus)
    jobs = [Job(**j) for j in json.loads(jobs_file.read_text())]
    client = None
    if tool == "lunarchive":
        # lunarchive's small GDAL block cache, as the process flow's workers get it: each
        # worker thread its own (the flow's workers are single-threaded processes). Imported
        # here only: the GDAL child must not pay for lunarchive's imports.
        from lunarchive.processing.readers import GDAL_CACHE_MIB
        from lunarchive.processing.worker import warm

        threads = cores if scheduler == "threads" else 1
        os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MIB * threads))
    if tool == "lunarchive" and scheduler == "threads":
        import dask
        from dask.threaded import ContextAwareThreadPoolExecutor

        # One pool of ``cores`` threads for every job's graph, as a cluster's worker threads
        # are shared by the tiles being built (dask would otherwise give each calling thread
        # a pool of its own).
        pool = ContextAwareThreadPoolExecutor(cores, thread_name_prefix="dask")
        dask.config.set(scheduler="threads", pool=pool)
    elif tool == "lunarchive":
        from distributed import Client

        from lunarchive.flows._runtime import dask_task_runner, local_cluster
        from lunarchive.flows.settings import Settings

        # The process flow's own LocalCluster (its workers' preload, GDAL cache, zarr write
        # pipeline and start environment), with the memory limit asked for.
        runner = dask_task_runner(Settings(dask_workers=cores, dask_address=None))
        cluster = local_cluster(
            **runner.cluster_kwargs,
            memory_limit=f"{memory_limit_mib}MiB" if memory_limit_mib else "auto",
        )
        client = Client(cluster)
    # Imports are not timed (either tool's).
    import rasterio  # noqa: F401

    if tool == "lunarchive":
        # dask imports distributed (when installed) at the first compute to look for a
        # client, whatever the scheduler: done here, not on the clock.
        import distributed  # noqa: F401

        import lunarchive.processing.pyramid
        import lunarchive.processing.readers
        import lunarchive.processing.tiles  # noqa: F401
    if tool == "lunarchive" and scheduler == "threads":
        warm()  # this process is the worker: it starts as the process flow's workers do
    runner = run_lunarchive if tool == "lunarchive" else run_gdal
    phases = {}

    def run(job: Job) -> None:
        phases[job.name] = runner(job, out_dir / f"{job.name}.zarr", cores)

    monitor = _PeakMemory()
    stolen = steal_seconds(cpus)
    start = time.perf_counter()
    if at_once:
        with ThreadPoolExecutor(len(jobs), thread_name_prefix="job") as jobs_pool:
            list(jobs_pool.map(run, jobs))
    else:
        for job in jobs:
            run(job)
    wall = time.perf_counter() - start
    stolen = steal_seconds(cpus) - stolen
    peak_mib = monitor.stop()
    if client is not None:
        client.close()
    result = {
        "wall": wall,
        "phases": phases,
        "peak_mib": peak_mib,
        "worker_peak_mib": monitor.child_peak_mib,
        "cpu_seconds": monitor.cpu_seconds,
        "steal_seconds": stolen,
    }
    print(json.dumps(result))


def steal_seconds(cpus: set[int]) -> float:
    """CPU time the hypervisor has given to other guests on ``cpus`` since boot (``steal``,
    the eighth field of each CPU's line in ``/proc/stat``); 0 where the kernel reports none.
    On a shared virtual machine it is the noise a wall time cannot see: a run whose CPUs
    were taken from it for a while is slower by that while, whatever the code did."""
    ticks = 0
    with contextlib.suppress(OSError), open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if name[3:].isdigit() and name.startswith("cpu") and int(name[3:]) in cpus:
                ticks += int(fields[7]) if len(fields) > 7 else 0
    return ticks / os.sysconf("SC_CLK_TCK")


class _PeakMemory:
    """Samples the RSS of this process and all its descendants in a thread.

    The process tree is listed again only every ``_TREE_EVERY`` samples: listing it reads
    every process of the machine (psutil scans ``/proc``), which at each 20 ms sample took
    half a core from the build being measured. A process's own peak is exact at the end
    (the kernel's high-water mark), whatever the sampling misses.
    """

    _SAMPLE_S = 0.02
    _TREE_EVERY = 25

    def __init__(self) -> None:
        import threading

        import psutil

        self._root = psutil.Process()
        self._peak = 0
        self._child_peak = 0
        self._cpu: dict[int, float] = {}
        self._cpu_start = 0.0
        self._tree = [self._root, *self._root.children(recursive=True)]
        for process in self._tree:
            with contextlib.suppress(psutil.Error):
                self._cpu_start += self._cpu_of(process)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        samples = 0
        while not self._done.wait(self._SAMPLE_S):
            samples += 1
            if samples % self._TREE_EVERY == 0:
                with contextlib.suppress(psutil.Error):
                    self._tree = [self._root, *self._root.children(recursive=True)]
            total = 0
            for process in self._tree:
                with contextlib.suppress(psutil.Error):
                    rss = process.memory_info().rss
                    total += rss
                    if process.pid != self._root.pid:
                        self._child_peak = max(self._child_peak, rss)
                        if samples % self._TREE_EVERY == 0:
                            self._cpu[process.pid] = self._cpu_of(process)
            self._peak = max(self._peak, total)

    @staticmethod
    def _cpu_of(process: Any) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        import psutil

        for process in self._tree:  # the workers are still running: read their CPU last
            with contextlib.suppress(psutil.Error):
                self._cpu[process.pid] = self._cpu_of(process)
        return max(self._peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20

    @property
    def child_peak_mib(self) -> float:
        """The largest RSS any one process of the tree but this one reached (a worker's)."""
        return self._child_peak / 2**20

    @property
    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the process tree since the monitor started."""
        return sum(self._cpu.values()) - self._cpu_start


# --- checking against the known surface ------------------------------------------------------


def check(job: Job, path: Path, *, sample: int = 4) -> tuple[float, float]:
    """Max |error| (m) against the surface and the valid fraction, on every ``sample``-th
    pixel. Read through GDAL, which opens both tools' Zarr."""
    import pyproj
    import rasterio

    target = f'ZARR:"{path}":/height' if (path / "height").is_dir() else str(path)
    with rasterio.open(target) as src:
        values = src.read(1)[::sample, ::sample].astype(np.float64)
        transform = src.transform
        radius = pyproj.CRS.from_user_input(src.crs).ellipsoid.semi_major_metre
    if radius != MOON_RADIUS_M:
        raise AssertionError(f"{path}: CRS on a sphere of {radius} m, not the Moon")
    rows, cols = np.mgrid[0 : values.shape[0], 0 : values.shape[1]] * sample + 0.5
    xs, ys = transform @ (cols, rows)
    to_lonlat = pyproj.Transformer.from_crs(job.crs, "IAU_2015:30100", always_xy=True)
    lons, lats = to_lonlat.transform(xs, ys)
    expected = surface(np.asarray(lons), np.asarray(lats))
    valid = np.isfinite(values)
    error = float(np.abs(values[valid] - expected[valid]).max()) if valid.any() else math.inf
    return error, float(valid.mean())


# --- the run ---------------------------------------------------------------------------------


def measure(
    tool: str,
    jobs_file: Path,
    out_dir: Path,
    cores: int,
    scheduler: str = "threads",
    memory_limit_mib: float | None = None,
    *,
    at_once: bool = False,
) -> dict[str, Any]:
    command = _child_command(tool, jobs_file, out_dir, cores, scheduler, at_once=at_once)
    if memory_limit_mib:
        command += ["--memory-limit-mib", str(memory_limit_mib)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=_child_environ())
    return _child_result(done.stdout)


def measure_copies(
    copies: int, jobs_file: Path, out_dir: Path, scheduler: str, *, at_once: bool
) -> dict[str, Any]:
    """``copies`` one-worker lunarchive builds at once, each a whole build of its own, pinned
    to a CPU of its own and writing its own outputs: they share nothing but the machine (its
    memory, caches and host), so how much slower each runs than one alone is the machine's
    part of any ``copies``-worker build's loss. The wall is the mean of the copies' walls;
    the steal is their sum."""
    with contextlib.ExitStack() as stack:
        children = []
        for i in range(copies):
            command = _child_command(
                "lunarchive", jobs_file, out_dir / str(i), 1, scheduler, at_once=at_once
            )
            # Files, not pipes: a child blocked on a full pipe would stall the measurement.
            out, err = (stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2))
            child_process = subprocess.Popen(
                [*command, "--first-cpu", str(i)], stdout=out, stderr=err, env=_child_environ()
            )
            stack.callback(child_process.kill)  # a no-op once it has exited
            children.append((child_process, out, err))
        results = []
        for child_process, out, err in children:
            if child_process.wait():
                err.seek(0)
                raise subprocess.CalledProcessError(
                    child_process.returncode, child_process.args, stderr=err.read()
                )
            out.seek(0)
            results.append(_child_result(out.read()))
    return {
        "wall": statistics.mean(r["wall"] for r in results),
        "walls": [r["wall"] for r in results],
        "steal_seconds": sum(r["steal_seconds"] for r in results),
    }


def _child_result(stdout: str) -> dict[str, Any]:
    """What a child printed last: its measurements, as JSON."""
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def _child_command(
    tool: str, jobs_file: Path, out_dir: Path, cores: int, scheduler: str, *, at_once: bool
) -> list[str]:
    out_dir.mkdir(parents=True)
    command = [sys.executable, "-m", "tests.benchmarks.bench_cubes", "--child", tool,
               "--jobs", str(jobs_file), "--out", str(out_dir), "--cores", str(cores),
               "--scheduler", scheduler]  # fmt: skip
    return command + (["--at-once"] if at_once else [])


def _child_environ() -> dict[str, str]:
    """Both tools' processes start with the environment every worker process of the process
    flow starts with (``processing.worker.spawn_environ``: Dask's pre-spawn environment, with
    glibc's trim threshold and one BLAS thread, and the build's mmap threshold and zarr write
    pipeline)."""
    from lunarchive.processing.worker import spawn_environ

    environ = {**os.environ, **spawn_environ()}
    return {key: value for key, value in environ.items() if value is not None}  # None: unset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=64.0, help="input size (both sets)")
    parser.add_argument("--cores", type=int, default=min(2, len(os.sched_getaffinity(0))))
    parser.add_argument("--scheduler", choices=["threads", "processes"], default="threads")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="runs of each tool, interleaved; each reports its best wall time (the shared "
        "machine's noise only ever adds time) and its highest peak memory",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep inputs/outputs here")
    parser.add_argument(
        "--memory-limit-mib",
        type=float,
        default=None,
        help="instead of the comparison, the bounded-memory run: lunarchive alone on a "
        "LocalCluster of --cores workers with this memory limit each, on an input of four "
        "times the limit (or --size-mb, if larger)",
    )
    parser.add_argument(
        "--at-once",
        action="store_true",
        help="each tool builds the mosaics at once, in a thread each (as the process flow "
        "builds a run's tiles), not one after the other",
    )
    parser.add_argument("--child", choices=["lunarchive", "gdal"], help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--first-cpu", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(
            args.child,
            args.jobs,
            args.out,
            args.cores,
            args.scheduler,
            args.memory_limit_mib,
            at_once=args.at_once,
            first_cpu=args.first_cpu,
        )
        return 0
    root = args.keep or Path(tempfile.mkdtemp(prefix="lunarchive-bench-"))
    try:
        if args.memory_limit_mib:
            size_mb = max(args.size_mb, 4 * args.memory_limit_mib)
            return _run_bounded(root, size_mb, args.cores, args.memory_limit_mib)
        return _run(
            root,
            args.size_mb,
            args.cores,
            args.scheduler,
            args.repeats,
            at_once=args.at_once,
        )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


def _run(
    root: Path, size_mb: float, cores: int, scheduler: str, repeats: int = 1, *, at_once: bool
) -> int:
    (root / "in").mkdir(parents=True, exist_ok=True)
    jobs, input_bytes = generate(root / "in", size_mb)
    jobs_file = root / "jobs.json"
    jobs_file.write_text(json.dumps([job.__dict__ for job in jobs]))
    plan = [("gdal", cores), ("lunarchive", cores)] + ([("lunarchive-1", 1)] if cores > 1 else [])
    tries: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in plan}
    copies: list[dict[str, Any]] = []  # the machine's ceiling (cores > 1)
    for attempt in range(repeats):
        for name, n in plan:
            out = root / f"{name}-{attempt}"
            tool = "gdal" if name == "gdal" else "lunarchive"
            tries[name].append(measure(tool, jobs_file, out, n, scheduler, at_once=at_once))
            if attempt < repeats - 1:
                shutil.rmtree(out)
            else:
                out.rename(root / name)  # the last outputs are checked
        if cores > 1:
            out = root / f"copies-{attempt}"  # lunarchive-1's code: its outputs stand for these
            copies.append(measure_copies(cores, jobs_file, out, scheduler, at_once=at_once))
            shutil.rmtree(out)
    runs = {name: _best(results) for name, results in tries.items()}
    for name, results in tries.items():
        walls = ", ".join(f"{r['wall']:.2f}" for r in results)
        stolen = ", ".join(f"{r['steal_seconds']:.2f}" for r in results)
        print(f"{name}: wall s of each run {walls}; CPU s the host took (steal) {stolen}")
        if name != "gdal":
            print(f"  phases of its best run, s: {_phases(runs[name])}")
    if copies:
        walls = "; ".join(", ".join(f"{w:.2f}" for w in c["walls"]) for c in copies)
        stolen = ", ".join(f"{c['steal_seconds']:.2f}" for c in copies)
        print(f"lunarchive-1 x {cores} at once: wall s of each {walls}; steal {stolen}")
    mib = input_bytes / 1024**2
    print(f"\nload average (1, 5, 15 min) at the end: {' '.join(map(str, os.getloadavg()))}")
    print(
        f"input: {mib:.0f} MiB float32 in {sum(len(j.inputs) for j in jobs)} GeoTIFF tiles "
        f"(IAU_2015:30100); {cores} core(s); bilinear; zstd {ZSTD_LEVEL}; {CHUNK_PX}² chunks; "
        f"lunarchive on Dask {scheduler}; the mosaics "
        f"{'at once' if at_once else 'one after the other'}; best of {repeats} interleaved "
        "run(s), the highest peak of them"
    )
    print(
        f"{'tool':<14}{'wall s':>8}{'MiB/s':>8}{'CPU s':>8}{'peak MiB':>10}"
        "   max |error| m (valid %)"
    )
    failures = []
    for tool, run in runs.items():
        wall = run["wall"]
        checks = []
        for job in jobs:
            error, valid = check(job, root / tool / f"{job.name}.zarr")
            checks.append(f"{job.name} {error:.3f} ({100 * valid:.1f})")
            if not (error < TOLERANCE_M and valid > 0.99):
                failures.append(f"{tool} {job.name}: error {error:.3f} m, valid {valid:.3f}")
        print(
            f"{tool:<14}{wall:>8.2f}{mib / wall:>8.1f}{run['cpu_seconds']:>8.2f}"
            f"{run['peak_mib']:>10.0f}   " + "; ".join(checks)
        )
    gdal, ours = runs["gdal"], runs["lunarchive"]
    time_ratio = ours["wall"] / gdal["wall"]
    memory_ratio = ours["peak_mib"] / gdal["peak_mib"]
    print(
        f"\nlunarchive / GDAL: wall time {time_ratio:.2f}x (goal <= 0.8), "
        f"peak memory {memory_ratio:.2f}x (goal <= 1.5)"
    )
    if "lunarchive-1" in runs:
        one = runs["lunarchive-1"]
        speedup = one["wall"] / ours["wall"]
        print(f"lunarchive {cores} workers vs 1: {speedup:.2f}x faster (goal >= 1.7)")
        rounds = [
            single["wall"] / both["wall"]
            for both, single in zip(tries["lunarchive"], tries["lunarchive-1"], strict=True)
        ]
        print(
            "  round by round (runs next to each other in time): "
            + ", ".join(f"{r:.2f}" for r in rounds)
            + f" (median {statistics.median(rounds):.2f}); CPU s of the best runs, "
            f"{cores} workers / 1: {ours['cpu_seconds'] / one['cpu_seconds']:.2f}x"
        )
        serial_n, serial_1 = _serial_seconds(ours), _serial_seconds(one)
        if serial_n is not None and serial_1 is not None and not at_once:
            # Amdahl: the serial set-up does not shrink with workers; the rest at best by N.
            parallel = (one["wall"] - serial_1) / (ours["wall"] - serial_n)
            bound = one["wall"] / (serial_n + (one["wall"] - serial_1) / cores)
            print(
                f"  serial set-up of the best runs (opening, planning, the store's metadata "
                f"until the first chunk task), s: {cores} workers {serial_n:.2f}, 1 worker "
                f"{serial_1:.2f}; the rest ran {parallel:.2f}x faster on {cores} workers; "
                f"were it {cores}x, {cores} workers would be {bound:.2f}x faster than one"
            )
        # What the machine allows: N one-worker builds at once, each on its own core, finish
        # N builds in the time each takes; one worker does one in its time alone.
        ceilings = [
            cores * single["wall"] / together["wall"]
            for single, together in zip(tries["lunarchive-1"], copies, strict=True)
        ]
        shares = [r / c for r, c in zip(rounds, ceilings, strict=True)]
        print(
            f"  the machine's ceiling: {cores} one-worker builds at once, each on a core of "
            "its own, took "
            + ", ".join(f"{cores / c:.2f}" for c in ceilings)
            + f" x as long as one alone, round by round: no {cores}-worker build of this work "
            f"can be more than {statistics.median(ceilings):.2f}x faster than one worker here "
            f"(median); lunarchive reached {statistics.median(shares):.0%} of that (median "
            "of the rounds)"
        )
    if failures:
        print("\nFAILED against the known surface:\n  " + "\n  ".join(failures))
        return 1
    return 0


def _phases(run: dict[str, Any]) -> str:
    """Each job's open / plan / build seconds (the set-up is serial: what limits scaling)."""
    return "; ".join(
        f"{job} " + " / ".join(f"{name} {s:.2f}" for name, s in phases.items())
        for job, phases in run["phases"].items()
    )


def _serial_seconds(run: dict[str, Any]) -> float | None:
    """The seconds of a run spent before each job's first chunk task (on one thread), or
    None where the run could not tell (on a cluster)."""
    jobs = run["phases"].values()
    if not all("setup" in phases for phases in jobs):
        return None
    return sum(phases["open"] + phases["plan"] + phases["setup"] for phases in jobs)


def _best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the least wall time, with the highest peak memory of all the runs."""
    best = dict(min(results, key=lambda r: r["wall"]))
    best["peak_mib"] = max(r["peak_mib"] for r in results)
    return best


def _run_bounded(root: Path, size_mb: float, cores: int, limit_mib: float) -> int:
    """lunarchive alone, as the process flow runs it (a LocalCluster of ``cores``
    single-threaded workers), each worker limited to ``limit_mib``: Dask spills what it holds
    past the limit's thresholds and the nanny would kill a worker past 95 %, so finishing
    with correct outputs shows the build's memory bounded by the workers, not the input."""
    from lunarchive.processing.readers import GDAL_CACHE_MIB

    (root / "in").mkdir(parents=True, exist_ok=True)
    jobs, input_bytes = generate(root / "in", size_mb)
    jobs_file = root / "jobs.json"
    jobs_file.write_text(json.dumps([job.__dict__ for job in jobs]))
    run = measure("lunarchive", jobs_file, root / "bounded", cores, "processes", limit_mib)
    mib = input_bytes / 1024**2
    wall = run["wall"]
    print(
        f"\nbounded memory: input {mib:.0f} MiB float32 in "
        f"{sum(len(j.inputs) for j in jobs)} GeoTIFF tiles = {mib / limit_mib:.1f} x the "
        f"{limit_mib:.0f} MiB memory limit of each of {cores} Dask worker(s) "
        f"(GDAL_CACHEMAX={GDAL_CACHE_MIB} MiB in each)"
    )
    print(
        f"wall {wall:.2f} s ({mib / wall:.1f} MiB/s), CPU {run['cpu_seconds']:.1f} s; peak RSS: "
        f"largest worker {run['worker_peak_mib']:.0f} MiB, whole process tree "
        f"{run['peak_mib']:.0f} MiB (client, scheduler, {cores} workers)"
    )
    failures = []
    for job in jobs:
        error, valid = check(job, root / "bounded" / f"{job.name}.zarr")
        print(f"  {job.name}: max |error| {error:.3f} m, valid {100 * valid:.1f} %")
        if not (error < TOLERANCE_M and valid > 0.99):
            failures.append(f"{job.name}: error {error:.3f} m, valid {valid:.3f}")
    if failures:
        print("\nFAILED against the known surface:\n  " + "\n  ".join(failures))
        return 1
    return 0


def test_benchmark_outputs_match_the_known_surface() -> None:
    """Run through pytest explicitly (``pytest tests/benchmarks``): a small size."""
    assert main(["--size-mb", "16"]) == 0


if __name__ == "__main__":
    sys.exit(main())
