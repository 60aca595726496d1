"""Benchmark: ``lunarchive sync`` against ``rclone sync --checksum``, ``s5cmd sync`` and
``aws s3 sync``, mirroring the same release from the same SeaweedFS bucket to a local folder.

The release is generated (deterministic for a seed): many ~1 KB STAC-like JSON items plus
some 1–8 MB Zarr chunks, a manifest and a pointer, as issue 8's "Speed" section describes.
Each tool mirrors it into its own empty folder, in the same run:

1. full sync into the empty folder;
2. no-op re-sync (nothing changed);
3. re-sync after 1 % of the objects were overwritten in the bucket with new bytes of the same
   size (and a new manifest and pointer, as the next release would bring).

Every copy is checked afterwards against what the bucket holds (sha256 of each object; the
pointer by the version it names, as a lunarchive mirror writes its own pointer). Each tool runs
as a child process; its wall time is measured around it and its peak memory is the largest
RSS of its process tree, polled with psutil every 20 ms (not ``ru_maxrss``: a forked
child counts the parent's pages until it execs). SeaweedFS is started here through
infra/services.py (fresh ports, its own state folder) and stopped at the end, unless
``--use-env`` says to use the endpoint in ``LUNARCHIVE_S3_*``.

    python -m tests.benchmarks.bench_sync --items 20000 --chunks 100 --json bench-sync.json

rclone 1.60 refuses to start while AWS_CA_BUNDLE is set, so it is removed from its
environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from lunarchive.catalog.layout import LATEST_KEY, manifest_key
from lunarchive.catalog.store import S3Options, Store, json_bytes, open_store
from lunarchive.schemas.release import ManifestEntry, ReleaseManifest, ReleasePointer

BIN = Path(sys.executable).parent
TOOLS = ("lunarchive", "lunarchive-lib", "rclone", "s5cmd", "aws")
OURS = ("lunarchive", "lunarchive-lib")
CALL = "lunarchive-call"  # the sync_release call inside lunarchive-lib, without start-up
ROWS = ("lunarchive", "lunarchive-lib", CALL, "rclone", "s5cmd", "aws")
BUCKET = "lunarchive-test"
PHASES = ("full", "noop", "change")


@dataclass
class Endpoint:
    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def options(self) -> S3Options:
        return S3Options(self.url, self.access_key, self.secret_key, self.region)


@dataclass
class Run:
    tool: str
    phase: str
    seconds: float
    peak_rss_mib: float
    exit_code: int
    verified: bool
    problems: list[str] = field(default_factory=list)  # the first few
    problem_count: int = 0
    inner_seconds: float | None = None  # lunarchive-lib: the sync_release call alone


# --------------------------------------------------------------------------- services


@contextmanager
def seaweedfs(use_env: bool) -> Iterator[Endpoint]:
    """SeaweedFS for the run: the one in LUNARCHIVE_S3_*, or a fresh one we stop after."""
    if use_env:
        yield Endpoint(
            os.environ["LUNARCHIVE_S3_ENDPOINT_URL"],
            os.environ["LUNARCHIVE_S3_ACCESS_KEY_ID"],
            os.environ["LUNARCHIVE_S3_SECRET_ACCESS_KEY"],
            os.environ.get("LUNARCHIVE_S3_REGION", "us-east-1"),
        )
        return
    from infra import services  # the same start as `make test` (free ports, conditional writes)

    state = Path(tempfile.mkdtemp(prefix="lunarchive-bench-sync-svc-"))
    data: dict[str, Any] = {"started_at": time.time()}
    try:
        weed = services.start_weed(state, data)
        yield Endpoint(weed.endpoint, weed.access_key, weed.secret_key, services.REGION)
    finally:
        if "seaweed" in data:
            services.stop_weed(state, data)
        shutil.rmtree(state, ignore_errors=True)


# --------------------------------------------------------------------------- the release


def item_json(rng: random.Random, collection: str, number: int) -> bytes:
    """A STAC-item-like document of about 1 KB."""
    west = rng.uniform(-180, 170)
    south = rng.uniform(-90, 80)
    item_id = f"{collection}-{number:06d}"
    doc = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "collection": collection,
        "bbox": [west, south, west + 0.5, south + 0.5],
        "geometry": {"type": "Point", "coordinates": [west + 0.25, south + 0.25]},
        "properties": {
            "datetime": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T00:00:00Z",
            "platform": "lro",
            "instruments": ["lola"],
            "lunar:orbit": rng.randint(1, 60000),
            "processing:software": {"lunarchive": "0.1"},
        },
        "assets": {
            "data": {"href": f"../../../../raw/{collection}/{item_id}.img", "roles": ["data"]},
            "metadata": {"href": f"../../../../raw/{collection}/{item_id}.xml"},
        },
        "links": [{"rel": "collection", "href": "../collection.json"}],
        "stac_extensions": [],
    }
    return json_bytes(doc)


def generate(rng: random.Random, items: int, chunks: int) -> dict[str, bytes]:
    """Key → bytes of the release's objects (without manifest and pointer)."""
    objects: dict[str, bytes] = {}
    collections = [f"collection-{n}" for n in range(max(1, items // 2000))]
    for n in range(items):
        collection = collections[n % len(collections)]
        key = f"stac/{collection}/{collection}-{n:06d}/{collection}-{n:06d}.json"
        objects[key] = item_json(rng, collection, n)
    for n in range(chunks):
        size = rng.randint(1024 * 1024, 8 * 1024 * 1024)
        objects[f"cubes/dem-{n // 25}.zarr/heights/c/{n % 5}/{n // 5}"] = rng.randbytes(size)
    return objects


def publish(
    store: Store, version: str, objects: dict[str, bytes], shas: dict[str, str], previous: str
) -> None:
    """The manifest of ``objects`` under ``version``, then the pointer flipped to it."""
    now = datetime.now(UTC).replace(microsecond=0)
    manifest = ReleaseManifest(
        version=version,
        created=now,
        objects=[
            ManifestEntry(key=k, size=len(v), sha256=shas[k]) for k, v in sorted(objects.items())
        ],
    )
    data = json_bytes(manifest.model_dump(mode="json"))
    store.write(manifest_key(version), data)
    shas[manifest_key(version)] = hashlib.sha256(data).hexdigest()
    pointer = ReleasePointer(
        version=version, manifest=manifest_key(version), published=now, previous=previous or None
    )
    current = store.read_tagged(LATEST_KEY)
    store.swap(
        LATEST_KEY,
        json_bytes(pointer.model_dump(mode="json")),
        expected_tag=current[1] if current else None,
    )


def upload(store: Store, objects: dict[str, bytes]) -> dict[str, str]:
    def put(item: tuple[str, bytes]) -> tuple[str, str]:
        sha = hashlib.sha256(item[1]).hexdigest()
        store.write(item[0], item[1], sha256=sha)
        return item[0], sha

    with ThreadPoolExecutor(16) as pool:
        return dict(pool.map(put, objects.items()))


# --------------------------------------------------------------------------- the tools


def command(tool: str, endpoint: Endpoint, prefix: str, dest: Path) -> list[str]:
    source = f"{BUCKET}/{prefix}"
    if tool == "lunarchive":
        return [str(BIN / "lunarchive"), "sync", f"s3://{source}", str(dest)]
    if tool == "lunarchive-lib":
        return [sys.executable, "-m", __spec__.name if __spec__ else "tests.benchmarks.bench_sync",
                "--child", f"s3://{source}", str(dest)]  # fmt: skip
    if tool == "rclone":
        return [
            str(BIN / "rclone"), "sync", "--checksum", f":s3:{source}", str(dest),
            "--s3-provider", "Other", "--s3-endpoint", endpoint.url,
            "--s3-access-key-id", endpoint.access_key,
            "--s3-secret-access-key", endpoint.secret_key, "--s3-region", endpoint.region,
        ]  # fmt: skip
    if tool == "s5cmd":
        return [
            str(BIN / "s5cmd"), "--endpoint-url", endpoint.url, "sync",
            f"s3://{source}/*", f"{dest}/",
        ]  # fmt: skip
    return [
        str(BIN / "aws"), "s3", "sync", f"s3://{source}", str(dest),
        "--endpoint-url", endpoint.url, "--only-show-errors",
    ]  # fmt: skip


def environment(tool: str, endpoint: Endpoint, staging: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LUNARCHIVE_"))}
    env |= {
        "AWS_ACCESS_KEY_ID": endpoint.access_key,
        "AWS_SECRET_ACCESS_KEY": endpoint.secret_key,
        "AWS_DEFAULT_REGION": endpoint.region,
        "AWS_REGION": endpoint.region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "RCLONE_CONFIG": os.devnull,
        "TMPDIR": str(staging),  # lunarchive's staging folder lives under it
    }
    if tool in OURS:
        env |= {
            "LUNARCHIVE_S3_ENDPOINT_URL": endpoint.url,
            "LUNARCHIVE_S3_ACCESS_KEY_ID": endpoint.access_key,
            "LUNARCHIVE_S3_SECRET_ACCESS_KEY": endpoint.secret_key,
            "LUNARCHIVE_S3_REGION": endpoint.region,
        }
    return env


def measured(cmd: Sequence[str], env: dict[str, str]) -> tuple[float, float, int, str, str]:
    """Wall seconds, peak RSS (MiB) of the process tree, exit code, stderr's tail, stdout."""
    began = time.perf_counter()
    with tempfile.TemporaryFile() as errors, tempfile.TemporaryFile() as output:
        child = subprocess.Popen(list(cmd), env=env, stdout=output, stderr=errors)
        peak = 0
        done = threading.Event()

        def poll() -> None:
            nonlocal peak
            try:
                root = psutil.Process(child.pid)
            except psutil.NoSuchProcess:
                return
            while not done.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                    peak = max(peak, sum(p.memory_info().rss for p in tree))
                except psutil.NoSuchProcess:
                    pass
                done.wait(0.02)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        _, status = os.waitpid(child.pid, 0)
        seconds = time.perf_counter() - began
        done.set()
        watcher.join()
        child.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        tail = errors.read().decode(errors="replace")[-600:]
        output.seek(0)
        out = output.read().decode(errors="replace")
    return seconds, peak / 2**20, child.returncode, tail, out


def check_copy(dest: Path, expected: dict[str, str], version: str) -> list[str]:
    """What is wrong in ``dest``: missing or different objects, or the wrong pointer."""
    problems = []
    for key, sha in sorted(expected.items()):
        path = dest / key
        if not path.is_file():
            problems.append(f"missing {key}")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            problems.append(f"differs {key}")
    pointer = dest / LATEST_KEY
    if not pointer.is_file() or json.loads(pointer.read_bytes()).get("version") != version:
        problems.append(f"{LATEST_KEY} does not name {version}")
    return problems


# --------------------------------------------------------------------------- report


def goals(runs: list[Run]) -> list[str]:
    """Issue 8's goals, each with its figures and whether it is met."""
    time_of = {(r.tool, r.phase): r.seconds for r in runs}
    peers = [t for t in TOOLS if t not in OURS and (t, "full") in time_of]
    if not peers:
        return []
    lines = []
    for ours in (t for t in ("lunarchive", CALL) if (t, "full") in time_of):
        if ("rclone", "full") in time_of:
            limit = time_of["rclone", "full"]
            lines.append(_goal(f"{ours}: full sync ≤ rclone's", time_of[ours, "full"], limit))
        for phase, share, name in (("noop", 4, "a quarter"), ("change", 2, "half")):
            fastest = min(peers, key=lambda t: time_of[t, phase])
            lines.append(
                _goal(
                    f"{ours}: {phase} re-sync ≤ {name} of the fastest peer's ({fastest})",
                    time_of[ours, phase],
                    time_of[fastest, phase] / share,
                )
            )
    ours_bad = sorted({r.tool for r in runs if not r.verified and r.tool in (*OURS, CALL)})
    lines.append(
        "every lunarchive copy verified: "
        + ("met" if not ours_bad else f"NOT met ({', '.join(ours_bad)})")
    )
    if peers_bad := sorted({r.tool for r in runs if not r.verified and r.tool in peers}):
        lines.append(f"peers whose copy differs from the bucket: {', '.join(peers_bad)}")
    return lines


def _goal(text: str, ours: float, limit: float) -> str:
    verdict = "met" if ours <= limit else "NOT met"
    return f"{text}: {ours:.2f} s vs {limit:.2f} s: {verdict}"


def table(runs: list[Run]) -> str:
    by = {(r.tool, r.phase): r for r in runs}
    base = "lunarchive" if ("lunarchive", "full") in by else CALL
    ours = {p: by[(base, p)].seconds for p in PHASES if (base, p) in by}
    head = (
        f"{'tool':<16}{'full s':>9}{'×':>7}{'no-op s':>9}{'×':>7}{'1 % s':>9}{'×':>7}"
        f"{'peak MiB':>10}  copy"
    )
    lines = [head, "-" * len(head)]
    for tool in ROWS:
        if (tool, "full") not in by:
            continue
        cells = ""
        for phase in PHASES:
            run = by[(tool, phase)]
            ratio = run.seconds / ours[phase] if ours.get(phase) else float("nan")
            cells += f"{run.seconds:>9.2f}{ratio:>7.1f}"
        peak = max(by[(tool, p)].peak_rss_mib for p in PHASES)
        verdict = "verified" if all(by[(tool, p)].verified for p in PHASES) else "WRONG"
        lines.append(f"{tool:<16}{cells}{peak:>10.0f}  {verdict}")
    lines.append(f"× = the tool's time / {base}'s time (above 1: {base} is faster)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def child(source_url: str, dest: str) -> int:
    """lunarchive-lib: the library call, timed inside its own process."""
    from lunarchive.catalog.sync import open_source, sync_release

    options = S3Options(
        os.environ["LUNARCHIVE_S3_ENDPOINT_URL"],
        os.environ["LUNARCHIVE_S3_ACCESS_KEY_ID"],
        os.environ["LUNARCHIVE_S3_SECRET_ACCESS_KEY"],
        os.environ.get("LUNARCHIVE_S3_REGION", "us-east-1"),
    )
    began = time.perf_counter()
    report = sync_release(open_source(source_url, s3=options), open_store(dest))
    seconds = time.perf_counter() - began
    print(report.summary(), file=sys.stderr)
    print(json.dumps({"seconds": seconds, "exit": report.exit_code()}))
    return report.exit_code()


def run_phase(
    tools: Sequence[str],
    phase: str,
    endpoint: Endpoint,
    prefix: str,
    work: Path,
    expected: dict[str, str],
    version: str,
    log: Callable[[str], None],
) -> list[Run]:
    runs = []
    for tool in tools:
        dest, staging = work / "copies" / tool, work / "staging" / tool
        staging.mkdir(parents=True, exist_ok=True)
        cmd = command(tool, endpoint, prefix, dest)
        seconds, peak, code, tail, out = measured(cmd, environment(tool, endpoint, staging))
        problems = check_copy(dest, expected, version)
        if code != 0:
            problems.insert(0, f"exit code {code}: {tail.strip()}")
        inner = json.loads(out.splitlines()[-1])["seconds"] if tool == "lunarchive-lib" else None
        found = (not problems, problems[:5], len(problems))
        runs.append(Run(tool, phase, seconds, peak, code, *found, inner))
        if inner is not None:
            runs.append(Run(CALL, phase, inner, peak, code, *found))
        state = "ok" if not problems else f"{len(problems)} problem(s): {problems[:2]}"
        call = f" (the call {inner:.2f} s)" if inner is not None else ""
        log(f"{phase:<6} {tool:<14} {seconds:7.2f} s{call}  peak {peak:6.0f} MiB  copy {state}")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=5000, help="~1 KB JSON objects")
    parser.add_argument("--chunks", type=int, default=60, help="1–8 MB chunks")
    parser.add_argument("--change-percent", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--tools", default=",".join(TOOLS), help="a subset of " + ",".join(TOOLS))
    parser.add_argument("--json", type=Path, default=Path("bench-sync.json"))
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temp folder)")
    parser.add_argument(
        "--use-env", action="store_true", help="use the SeaweedFS named by LUNARCHIVE_S3_*"
    )
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "DEST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    tools = [t for t in args.tools.split(",") if t]
    if unknown := set(tools) - set(TOOLS):
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="lunarchive-bench-sync-"))
    shutil.rmtree(work / "copies", ignore_errors=True)
    shutil.rmtree(work / "staging", ignore_errors=True)
    with seaweedfs(args.use_env) as endpoint:
        prefix = f"bench-sync-{int(time.time())}"
        store = open_store(f"s3://{BUCKET}/{prefix}", s3=endpoint.options())
        objects = generate(rng, args.items, args.chunks)
        total = sum(len(v) for v in objects.values())
        log(f"release: {len(objects)} objects, {total / 2**20:.0f} MiB → {store.url}")
        shas = upload(store, objects)
        publish(store, "v1", objects, shas, "")
        runs: list[Run] = []
        for phase in ("full", "noop"):
            runs += run_phase(tools, phase, endpoint, prefix, work, shas, "v1", log)
        changed = rng.sample(
            sorted(objects), max(1, round(len(objects) * args.change_percent / 100))
        )
        fresh = {key: rng.randbytes(len(objects[key])) for key in changed}
        objects |= fresh
        shas |= upload(store, fresh)
        publish(store, "v2", objects, shas, "v1")
        log(f"changed {len(changed)} objects in place ({sum(map(len, fresh.values()))} bytes)")
        runs += run_phase(tools, "change", endpoint, prefix, work, shas, "v2", log)
    result = {
        "release": {"objects": len(objects) + 2, "bytes": total, "changed": len(changed)},
        "items": args.items,
        "chunks": args.chunks,
        "cpus": os.cpu_count(),
        "runs": [asdict(r) for r in runs],
        "goals": goals(runs),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(runs))
    for line in result["goals"]:
        print(line)
    print(f"figures written to {args.json}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.verified for r in runs if r.tool == "lunarchive") else 1


if __name__ == "__main__":
    sys.exit(main())
