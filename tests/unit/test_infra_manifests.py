"""The deployment files in infra/ refer only to things that exist in the project.

No container engine or cluster runs here: the manifests are parsed and every command, entry
point and setting they name is checked against the code.
"""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lunarchive.flows._runtime import dask_task_runner
from lunarchive.flows.settings import Settings
from lunarchive.processing.pyramid import WRITE_PIPELINE_ENV
from lunarchive.processing.readers import GDAL_CACHE_MIB
from lunarchive.processing.worker import PRELOAD, SPAWN_ENV

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
BIN = Path(sys.executable).parent
POOL = "lunarchive"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "containers":
                found += value
            else:
                found += containers(value)
    elif isinstance(doc, list):
        for value in doc:
            found += containers(value)
    return found


def k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in sorted((INFRA / "k8s").glob("*.yaml")) for doc in documents(path)]


def test_every_container_command_is_an_installed_program() -> None:
    found = [c for doc in k8s_documents() for c in containers(doc)]
    assert len(found) == 3  # dask worker, dask scheduler, prefect worker
    for container in found:
        program = (container.get("command") or container["args"])[0]
        assert (BIN / program).exists() or shutil.which(program), program


def test_every_lunarchive_setting_in_the_manifests_exists() -> None:
    names = set()
    for doc in k8s_documents():
        if doc["kind"] in ("ConfigMap", "Secret"):
            names |= set(doc.get("data", {})) | set(doc.get("stringData", {}))
    ours = {n for n in names if n.startswith("LUNARCHIVE_")}
    fields = {f"LUNARCHIVE_{name.upper()}" for name in Settings.model_fields}
    fields.add("LUNARCHIVE_PROJECT_DIR")  # read by infra/prefect.yaml's pull step
    assert ours, "the manifests set no lunarchive setting"
    assert ours <= fields, sorted(ours - fields)


def test_the_worker_serves_the_pool_the_deployments_use() -> None:
    (worker,) = [
        c for doc in k8s_documents() if doc["kind"] == "Deployment" for c in containers(doc)
    ]
    command = worker["command"]
    assert command[:3] == ["prefect", "worker", "start"]
    assert command[command.index("--pool") + 1] == POOL
    deployments = documents(INFRA / "prefect.yaml")[0]["deployments"]
    assert {d["work_pool"]["name"] for d in deployments} == {POOL}


def test_dask_workers_reach_the_scheduler_the_settings_name() -> None:
    (cluster,) = [doc for doc in k8s_documents() if doc["kind"] == "DaskCluster"]
    (config,) = [doc for doc in k8s_documents() if doc["kind"] == "ConfigMap"]
    address = config["data"]["LUNARCHIVE_DASK_ADDRESS"]
    host, port = re.fullmatch(r"tcp://([\w.-]+):(\d+)", address).groups()  # type: ignore[union-attr]
    assert host == f"{cluster['metadata']['name']}-scheduler"  # the operator's service name
    ports = cluster["spec"]["scheduler"]["service"]["ports"]
    assert int(port) in {p["port"] for p in ports}


def test_dask_workers_start_warm_as_the_flow_s_local_workers_do() -> None:
    (cluster,) = [doc for doc in k8s_documents() if doc["kind"] == "DaskCluster"]
    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    args = worker["args"]
    assert args[args.index("--preload") + 1] == PRELOAD
    assert callable(importlib.import_module(PRELOAD).dask_setup)


def test_dask_workers_get_the_environment_the_flow_s_local_workers_get() -> None:
    (cluster,) = [doc for doc in k8s_documents() if doc["kind"] == "DaskCluster"]
    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    given = {item["name"]: item["value"] for item in worker["env"]}
    # The flow's LocalCluster: GDAL's block cache and zarr's write pipeline (its env), and
    # the start environment (SPAWN_ENV).
    assert given == {"GDAL_CACHEMAX": str(GDAL_CACHE_MIB), **WRITE_PIPELINE_ENV, **SPAWN_ENV}
    local_env = dask_task_runner(Settings(dask_workers=1)).cluster_kwargs["env"]
    assert local_env.keys() | SPAWN_ENV.keys() == given.keys()


@pytest.mark.parametrize("deployment", documents(INFRA / "prefect.yaml")[0]["deployments"],
                         ids=lambda d: d["name"])  # fmt: skip
def test_every_deployment_names_a_real_flow_and_its_parameters(deployment: dict[str, Any]) -> None:
    from prefect.flows import load_flow_from_entrypoint

    path, _, name = deployment["entrypoint"].partition(":")
    assert (ROOT / path).is_file()
    flow = load_flow_from_entrypoint(str(ROOT / path) + ":" + name, use_placeholder_flow=False)
    accepted = set(inspect.signature(flow.fn).parameters)
    assert set(deployment.get("parameters", {})) <= accepted
    secret_like = {p for p in deployment.get("parameters", {}) if re.search("key|secret|pass", p)}
    assert not secret_like  # secrets come from settings, never from parameters (R15)


def test_the_dockerfile_copies_what_exists_and_runs_what_is_installed() -> None:
    lines = [line.split() for line in (INFRA / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line[0].startswith("#")]
    for words in instructions:
        if words[0] == "COPY":
            for source in words[1:-1]:
                assert (ROOT / source).exists(), source
    (cmd,) = [words for words in instructions if words[0] == "CMD"]
    program = cmd[1].strip('[",')
    assert (BIN / program).exists(), program
    images = {c["image"] for doc in k8s_documents() for c in containers(doc)}
    assert len(images) == 1  # one image for the scheduler, the workers and the Prefect worker


def test_the_watchdog_runs_on_a_schedule_with_its_settings_known() -> None:
    deployments = documents(INFRA / "prefect.yaml")[0]["deployments"]
    (watchdog,) = [d for d in deployments if d["entrypoint"] == "flows/watchdog.py:watchdog"]
    assert watchdog["schedules"] and all(
        "cron" in s or "interval" in s for s in watchdog["schedules"]
    )
    for name in re.findall(r"LUNARCHIVE_([A-Z_]+)\*?", watchdog["description"]):
        assert any(field.upper().startswith(name) for field in Settings.model_fields), name
