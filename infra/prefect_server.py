"""Start and stop a Prefect server on PostgreSQL and a process work-pool worker.

    python infra/prefect_server.py start --state DIR --database-url postgresql://USER@HOST/DB
    python infra/prefect_server.py stop --state DIR

`start` runs ``prefect server start`` on loopback with its database on PostgreSQL (the
asyncpg driver; the database must exist), waits until the API answers, creates the work pool
(type ``process``) if missing, starts ``prefect worker start`` on it, and writes DIR/env
(``PREFECT_API_URL=…``) and DIR/state.json. `stop` stops what `start` started. The same
commands, without ``--host 127.0.0.1``, run it for real (see the README).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse, urlunparse
from urllib.request import urlopen

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def log(message: str) -> None:
    print(f"prefect-server: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def asyncpg_url(database_url: str) -> str:
    """The SQLAlchemy URL Prefect wants: ``postgresql+asyncpg://…``."""
    parsed = urlparse(database_url)
    if parsed.scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise SystemExit(f"--database-url {database_url!r}: not a postgresql:// URL")
    return urlunparse(parsed._replace(scheme="postgresql+asyncpg"))


def healthy(api_url: str) -> bool:
    try:
        with urlopen(f"{api_url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (URLError, OSError):
        return False


def spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def wait_until_healthy(api_url: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not healthy(api_url):
        if server.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise SystemExit(f"the Prefect server did not come up:\n{tail}")
        time.sleep(0.5)


def start(state: Path, database_url: str, pool: str, port: int | None) -> dict[str, str]:
    state.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api_url = f"http://{HOST}:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(state / "home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": asyncpg_url(database_url),
    }
    env.pop("PREFECT_API_URL", None)
    server_log = state / "server.log"
    server = spawn(
        [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(port), "--no-ui"],
        env,
        server_log,
    )
    save_state(state, {"server": server.pid})
    wait_until_healthy(api_url, server, server_log)
    client_env = {**env, "PREFECT_API_URL": api_url}
    client_env.pop("PREFECT_API_DATABASE_CONNECTION_URL")
    subprocess.run(
        [str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"],
        env=client_env, check=True, capture_output=True,
    )  # fmt: skip
    worker = spawn(
        [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
        client_env,
        state / "worker.log",
    )
    save_state(state, {"server": server.pid, "worker": worker.pid})
    (state / "env").write_text(f"PREFECT_API_URL={api_url}\n", encoding="utf-8")
    log(f"up: API {api_url}, work pool {pool!r} (worker pid {worker.pid})")
    return {"PREFECT_API_URL": api_url}


def save_state(state: Path, pids: dict[str, int]) -> None:
    (state / "state.json").write_text(json.dumps(pids), encoding="utf-8")


def stop(state: Path) -> None:
    path = state / "state.json"
    if not path.exists():
        return
    pids: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))
    for name in ("worker", "server"):  # the worker first: it talks to the server
        if name in pids:
            terminate_group(pids[name], name)
    path.unlink()


def terminate_group(pid: int, name: str) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            log(f"{name} (pid {pid}) stopped")
            return
        reap(pid)
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    log(f"{name} (pid {pid}) killed after {STOP_TIMEOUT_S:.0f} s")


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    start_parser = sub.add_parser("start")
    start_parser.add_argument("--state", type=Path, required=True)
    start_parser.add_argument("--database-url", required=True)
    start_parser.add_argument("--pool", default="lunarchive")
    start_parser.add_argument("--port", type=int)
    stop_parser = sub.add_parser("stop")
    stop_parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "start":
        try:
            start(args.state, args.database_url, args.pool, args.port)
        except BaseException:
            stop(args.state)
            raise
    else:
        stop(args.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
