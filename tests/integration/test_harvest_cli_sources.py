"""``lunarchive harvest SOURCE`` (the ``harvest-source`` flow) on the step-2 and step-3 sources.

One test drives the CLI over a DARTS mirror (HTTP listing), the LROC bucket mirror (S3
prefix), a partner's payload inbox and the CLPDS mirror without credentials, on a folder
store and on SeaweedFS, then reads ``lunarchive status``. The registry's pacing for the real
hosts (30 s between DARTS requests) is lifted through ``LUNARCHIVE_HARVEST_REGISTRY_DIR``,
the operator's way to override a built-in source by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
from typer.testing import CliRunner

from lunarchive.catalog.store import Store
from lunarchive.flows._runtime import load_settings, prefect_api
from lunarchive.flows.cli_harvest import harvest_command, status_command
from lunarchive.flows.harvest_engine import load_source
from lunarchive.schemas.sources import PartnerInboxAccess, SourceSpec
from tests.mirrors import clpds, darts, lroc, partner
from tests.mirrors.server import MirrorServer, serve


def test_the_harvest_command_runs_each_new_kind_and_status_reports_them(
    store: Store, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    for name in ("kaguya-tc-dtm", "lroc-wac-gld100", "clpds-ce2-dom"):
        unpaced = load_source(name).model_copy(update={"min_interval_s": 0.0})
        (registry / f"{name}.json").write_text(unpaced.model_dump_json())
    inbox = SourceSpec(
        name="partner-cubesat-team",
        title="Example partner payload",
        mission="Chang'e-6 CubeSat (example)",
        instrument="camera",
        access=PartnerInboxAccess(partner=partner.PARTNER),
        cadence_days=90,
        licence="CC-BY-4.0",
    )
    (registry / "partner-cubesat-team.json").write_text(inbox.model_dump_json())
    monkeypatch.setenv("LUNARCHIVE_HARVEST_REGISTRY_DIR", str(registry))
    monkeypatch.setenv("LUNARCHIVE_HARVEST_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("LUNARCHIVE_HARVEST_BACKOFF_S", "0")
    monkeypatch.delenv("LUNARCHIVE_CLPDS_CREDENTIALS", raising=False)
    files, products = partner.real_products(shared)
    partner.write_drop(store, "2026-06-01-a", files, partner.manifest(products))

    app = typer.Typer()
    app.command("harvest")(harvest_command)
    app.command("status")(status_command)
    runner = CliRunner()
    built = darts.build_darts(shared)
    with (
        # one temporary Prefect API for every command below, given time to start on a
        # loaded test machine (the default 20 s is not always enough)
        temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 300}),
        prefect_api(load_settings()),
        serve(MirrorServer(files=built.files, ranges=False)) as kaguya,
        serve(MirrorServer(files=lroc.build_lroc(shared).files, buckets=(lroc.BUCKET,))) as rdr,
        serve(
            MirrorServer(
                files=clpds.build_clpds(), protected={"/PUBDATA/CE2TMap2015/": clpds.COOKIE}
            )
        ) as portal,
    ):
        runs = (
            ("kaguya-tc-dtm", kaguya.url + darts.ROOT, "1 upstream, 1 new, 1 fetched"),
            ("lroc-wac-gld100", rdr.url + lroc.BUCKET, "2 upstream, 2 new, 2 fetched"),
            (
                "partner-cubesat-team",
                None,
                "3 upstream, 3 new, 2 fetched, 0 unchanged, 0 failed, 1 quarantined",
            ),
        )
        for source, base, line in runs:
            args = ["harvest", source, "--store", store.url, "--allow-local-sources"]
            done = runner.invoke(app, [*args, *(["--base-url", base] if base else [])])
            assert done.exit_code == 0, done.output
            assert line in " ".join(done.stdout.split())
        refused = runner.invoke(
            app,
            [
                "harvest",
                "clpds-ce2-dom",
                "--store",
                store.url,
                "--allow-local-sources",
                "--base-url",
                portal.url + clpds.ROOT,
            ],
        )
        assert refused.exit_code == 1
        assert "redirected to a login page" in " ".join(refused.output.split())
        assert len(portal.log) == 2  # not retried

        status = runner.invoke(app, ["status", "--store", store.url, "--json"])
    assert status.exit_code == 0, status.output
    rows = {row["source"]: row for row in json.loads(status.stdout)}
    assert {
        s: (rows[s]["upstream"], rows[s]["held"], rows[s]["missing"])
        for s in ("kaguya-tc-dtm", "lroc-wac-gld100", "partner-cubesat-team")
    } == {
        "kaguya-tc-dtm": (1, 1, 0),
        "lroc-wac-gld100": (2, 2, 0),
        "partner-cubesat-team": (3, 2, 1),
    }
    assert len([info.key for info in store.list("raw/")]) == 2 + 4 + 3
