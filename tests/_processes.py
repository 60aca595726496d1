"""Real background services for tests: a Prefect server and a Dask cluster of processes.

Each is a separate OS process on loopback, as in a real deployment, stopped at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from lunarchive.processing.worker import PRELOAD

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 300.0  # a loaded 2-core machine has needed more than 120 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(what: str, ready: object, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():  # type: ignore[operator]
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.25)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """``prefect server start`` on a free loopback port (SQLite under ``home``); its API URL."""
    port = free_port()
    log = home / "prefect-server.log"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
             "--no-ui"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait("prefect server", healthy, process, log)
        yield url
    finally:
        _stop([process])


@contextmanager
def dask_cluster(folder: Path, *, workers: int, env: dict[str, str]) -> Iterator[str]:
    """``dask scheduler`` and ``workers`` × ``dask worker`` (1 thread each); the address."""
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    log = folder / "dask.log"
    common = ["--no-dashboard"]
    child_env = {**os.environ, **env}
    processes = []
    with log.open("wb") as out:
        processes.append(subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--scheduler-file", str(scheduler_file), *common],
            stdout=out, stderr=subprocess.STDOUT, env=child_env,
        ))  # fmt: skip
    try:
        _wait("dask scheduler", scheduler_file.exists, processes[0], log)
        time.sleep(0.5)  # the file is written whole, but give the scheduler its first tick
        address = str(json.loads(scheduler_file.read_text())["address"])
        with log.open("ab") as out:
            for _ in range(workers):
                processes.append(subprocess.Popen(
                    [str(BIN / "dask"), "worker", address, "--host", "127.0.0.1",
                     "--nthreads", "1", "--nworkers", "1", "--preload", PRELOAD, *common],
                    stdout=out, stderr=subprocess.STDOUT, env=child_env,
                ))  # fmt: skip
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=START_TIMEOUT_S)
        yield address
    finally:
        _stop(processes[::-1])
