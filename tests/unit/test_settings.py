"""Settings: the LUNARCHIVE_ prefix, secrets kept secret, the shared folder found or loud."""

from __future__ import annotations

from pathlib import Path

import pytest

from lunarchive.flows._runtime import load_settings, s3_options, store_for
from lunarchive.flows.settings import Settings, shared_dir
from lunarchive.schemas.errors import ConfigurationError


def test_settings_come_from_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNARCHIVE_STORE_URL", "s3://lunar/archive")
    monkeypatch.setenv("LUNARCHIVE_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LUNARCHIVE_DASK_WORKERS", "3")
    monkeypatch.setenv("LUNARCHIVE_ALLOW_LOCAL_SOURCES", "true")
    monkeypatch.setenv("STORE_URL", "/not/ours")  # unprefixed: ignored
    settings = Settings()
    assert settings.store_url == "s3://lunar/archive"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9"
    assert settings.dask_workers == 3
    assert settings.allow_local_sources is True


def test_defaults_are_the_embedded_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STORE_URL", "ALLOW_LOCAL_SOURCES", "DASK_ADDRESS", "PREFECT_API_URL"):
        monkeypatch.delenv(f"LUNARCHIVE_{name}", raising=False)
    settings = Settings()
    assert settings.store_url == "./lunarchive-data"
    assert settings.allow_local_sources is False
    assert settings.dask_address is None
    assert settings.prefect_api_url is None


def test_secrets_never_show_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNARCHIVE_S3_ACCESS_KEY_ID", "AKIDSECRETVALUE1")
    monkeypatch.setenv("LUNARCHIVE_S3_SECRET_ACCESS_KEY", "sk-very-secret-2")
    monkeypatch.setenv("LUNARCHIVE_STORE_URL", "s3://lunar/x")
    settings = Settings()
    store = store_for(settings)
    for text in (repr(settings), str(settings), repr(store.__dict__.get("options"))):
        assert "AKIDSECRETVALUE1" not in text
        assert "sk-very-secret-2" not in text
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == "sk-very-secret-2"


def test_flow_overrides_replace_only_what_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNARCHIVE_DASK_WORKERS", "4")
    settings = load_settings(store_url="/tmp/elsewhere", allow_local_sources=None)
    assert settings.store_url == "/tmp/elsewhere"
    assert settings.dask_workers == 4
    assert settings.allow_local_sources is False


def test_missing_shared_folder_is_loud(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="fixtures/real"):
        shared_dir(Settings(shared_dir=tmp_path / "nowhere"))


def test_shared_folder_is_found(shared: Path) -> None:
    assert (shared / "stac-schemas" / "index.json").is_file()


def test_anonymous_s3_reaches_the_store_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNARCHIVE_S3_ANONYMOUS", "true")
    assert s3_options(Settings()).anonymous is True
    monkeypatch.setenv("LUNARCHIVE_S3_ANONYMOUS", "false")
    assert s3_options(Settings()).anonymous is False
