"""Configuration sources and their errors."""

from __future__ import annotations

import pytest

from emlive.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in list(__import__("os").environ):
        if key.startswith("EMLIVE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))


def test_defaults_are_documented_values():
    settings = load_settings()
    assert settings.database_url is None
    assert settings.watch.settle_s == 5.0
    assert settings.motion.engine == "native" and settings.ctf.max_res_a == 5.0


def test_toml_then_environment_then_arguments_win(tmp_path, monkeypatch):
    config = tmp_path / "emlive.toml"
    config.write_text('database_url = "sqlite:////tmp/a.sqlite3"\n[watch]\nsettle_s = 2\npoll_interval_s = 3\n')
    assert load_settings(config).watch.settle_s == 2
    monkeypatch.setenv("EMLIVE_WATCH__SETTLE_S", "7")
    monkeypatch.setenv("EMLIVE_DATABASE_URL", "postgresql://db/emlive")
    settings = load_settings(config)
    assert settings.watch.settle_s == 7 and settings.watch.poll_interval_s == 3
    assert settings.database_url == "postgresql://db/emlive"
    settings = load_settings(config, watch={"settle_s": 9})
    assert settings.watch.settle_s == 9 and settings.watch.poll_interval_s == 3


def test_config_file_from_environment_and_default_location(tmp_path, monkeypatch):
    default = tmp_path / ".config" / "emlive" / "emlive.toml"
    default.parent.mkdir(parents=True)
    default.write_text("[cluster]\nn_workers = 3\n")
    assert load_settings().cluster.n_workers == 3
    other = tmp_path / "other.toml"
    other.write_text("[cluster]\nn_workers = 5\n")
    monkeypatch.setenv("EMLIVE_CONFIG", str(other))
    assert load_settings().cluster.n_workers == 5


def test_bad_values_name_the_key_the_variable_and_what_is_allowed(tmp_path, monkeypatch):
    config = tmp_path / "emlive.toml"
    config.write_text("[motion]\nbfactor_px2 = -1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert "motion.bfactor_px2 [EMLIVE_MOTION__BFACTOR_PX2]" in str(err.value)
    assert "greater than 0" in str(err.value) and str(config) in str(err.value)
    monkeypatch.setenv("EMLIVE_CTF__MAX_RES_A", "40")
    with pytest.raises(ConfigError, match="finer"):
        load_settings()


def test_unknown_keys_and_broken_files_are_errors(tmp_path):
    config = tmp_path / "emlive.toml"
    config.write_text("[watch]\nsettle_seconds = 1\n")
    with pytest.raises(ConfigError, match="watch.settle_seconds"):
        load_settings(config)
    config.write_text("[watch\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
