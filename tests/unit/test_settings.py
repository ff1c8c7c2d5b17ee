from __future__ import annotations

import re
from pathlib import Path

import pytest

from devbox_service.errors import ConfigError
from devbox_service.settings import load_settings, setting_names

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_in_the_readme() -> None:
    documented = set(re.findall(r"^\| `(DEVBOX_[A-Z_]+)`", README.read_text(), re.MULTILINE))
    missing = set(setting_names()) - documented
    assert not missing, f"README.md does not document: {sorted(missing)}"
    stale = documented - set(setting_names())
    assert not stale, f"README.md documents settings that do not exist: {sorted(stale)}"


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert (settings.host, settings.port, settings.ssh_port) == ("127.0.0.1", 8000, 2222)
    assert settings.data_dir.endswith("devbox-service")


def test_environment_values_are_converted() -> None:
    settings = load_settings(environ={"DEVBOX_PORT": "9001", "DEVBOX_DATA_DIR": "/tmp/x"})
    assert settings.port == 9001 and settings.data_dir == "/tmp/x"


def test_unknown_variable_stops_with_the_known_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting DEVBOX_PROT.*DEVBOX_PORT"):
        load_settings(environ={"DEVBOX_PROT": "1"})


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="DEVBOX_PORT"):
        load_settings(environ={"DEVBOX_PORT": "eighty"})
    with pytest.raises(ConfigError, match="DEVBOX_PORT"):
        load_settings(environ={"DEVBOX_PORT": "70000"})


def test_toml_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "devbox.toml"
    config.write_text('port = 8100\nhost = "0.0.0.0"\n')
    settings = load_settings(environ={"DEVBOX_CONFIG": str(config), "DEVBOX_PORT": "8200"})
    assert (settings.host, settings.port) == ("0.0.0.0", 8200)


def test_unknown_key_in_toml_file_stops(tmp_path: Path) -> None:
    config = tmp_path / "devbox.toml"
    config.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="colour"):
        load_settings(environ={"DEVBOX_CONFIG": str(config)})


def test_cli_refuses_to_start_on_a_bad_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from devbox_service.cli import main

    monkeypatch.setenv("DEVBOX_NOPE", "1")
    assert main(["keys", "list"]) == 2
    assert "DEVBOX_NOPE" in capsys.readouterr().err


def test_every_agent_scope_is_documented_in_the_readme() -> None:
    from devbox_service.auth.scopes import AgentScope

    text = README.read_text()
    missing = [scope.value for scope in AgentScope if f"`{scope}`" not in text]
    assert not missing, f"README.md does not document scopes: {missing}"
