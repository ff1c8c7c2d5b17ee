"""The service's settings: one frozen object, read once from `DEVBOX_*` variables and TOML.

Precedence: environment over the TOML file named by `DEVBOX_CONFIG` over defaults. A
`DEVBOX_` variable that names no setting stops the service: a typo must not be ignored.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from devbox_service.backends.base import GUEST_SERVICE_ADDRESS
from devbox_service.errors import ConfigError

ENV_PREFIX = "DEVBOX_"
CONFIG_FILE_VARIABLE = "DEVBOX_CONFIG"

Port = Annotated[int, Meta(ge=0, le=65535)]


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "devbox-service")


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "devbox-service")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting the service reads. README.md documents each one (a test checks)."""

    data_dir: str = msgspec.field(default_factory=_default_data_dir)
    # PostgreSQL shared by several replicas (postgresql://user:password@host:port/db); empty:
    # the embedded SQLite file in data_dir. Never logged: it may hold a password.
    database_url: Annotated[str, Meta(pattern=r"^(|postgres(ql)?://\S+)$")] = ""
    cache_dir: str = msgspec.field(default_factory=_default_cache_dir)
    host: str = "127.0.0.1"
    port: Port = 8000
    ssh_port: Port = 2222
    ssh_host: str = "localhost"
    public_url: str = ""
    preview_domain: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024
    upload_max_bytes: Annotated[int, Meta(ge=1024)] = 100 * 1024 * 1024
    exec_output_max_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024
    vm_backend: Literal["qemu", "none"] = "qemu"
    vm_machine: Literal["microvm", "pc"] = "microvm"
    vm_accel: Literal["auto", "kvm", "tcg"] = "auto"
    vm_vcpus: Annotated[int, Meta(ge=1, le=64)] = 1
    vm_memory_mb: Annotated[int, Meta(ge=128, le=65536)] = 256
    vm_disk_mb: Annotated[int, Meta(ge=512)] = 2048
    # the largest devbox one request may ask for (snapshots.create, boot, disk-resize)
    vm_max_vcpus: Annotated[int, Meta(ge=1, le=64)] = 8
    vm_max_memory_mb: Annotated[int, Meta(ge=128, le=1024 * 1024)] = 16384
    vm_max_disk_mb: Annotated[int, Meta(ge=512, le=1024 * 1024)] = 1024 * 1024
    # QEMU processes started ahead, waiting for the default image's state (faster creates)
    vm_warm_pool: Annotated[int, Meta(ge=0, le=16)] = 2
    standby_after_seconds: Annotated[float, Meta(ge=0)] = 900.0
    template_secret_wait_seconds: Annotated[float, Meta(gt=0, le=86400)] = 600.0
    limit_devboxes_per_user: Annotated[int, Meta(ge=0)] = 10
    limit_devboxes_per_org: Annotated[int, Meta(ge=0)] = 30
    limit_snapshots_per_user: Annotated[int, Meta(ge=0)] = 100
    limit_snapshots_per_org: Annotated[int, Meta(ge=0)] = 300
    limit_disk_mb_per_user: Annotated[int, Meta(ge=0)] = 40 * 1024
    limit_disk_mb_per_org: Annotated[int, Meta(ge=0)] = 120 * 1024
    host_memory_reserve_mb: Annotated[int, Meta(ge=0)] = 1024
    vm_memory_overhead_mb: Annotated[int, Meta(ge=0)] = 64
    web_session_hours: Annotated[float, Meta(gt=0, le=24 * 90)] = 12.0
    gc_interval_seconds: Annotated[float, Meta(ge=0)] = 3600.0
    # destination ports guests may reach through the egress proxy: web and package mirrors
    # (80, 443, git over HTTPS) and git over SSH (22); comma-separated
    egress_ports: Annotated[str, Meta(pattern=r"^\s*\d{1,5}\s*(,\s*\d{1,5}\s*)*$")] = "80,443,22"

    def __post_init__(self) -> None:
        if not all(0 < port <= 65535 for port in self.egress_port_set):
            raise ValueError(f"egress_ports: ports are 1 to 65535, not {self.egress_ports!r}")

    @property
    def database_path(self) -> Path:
        return Path(self.data_dir) / "devbox.sqlite3"

    @property
    def egress_port_set(self) -> frozenset[int]:
        return frozenset(int(port) for port in self.egress_ports.split(","))

    @property
    def base_url(self) -> str:
        """Where users reach the HTTP API (used in links the service hands out)."""
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    @property
    def preview_origin_domain(self) -> str:
        """Exposed services get their own origin `{name}-{devbox_id}.<this>` (browsers and
        libnss-myhostname resolve `*.localhost` to loopback, so a laptop needs no DNS)."""
        if self.preview_domain:
            return self.preview_domain
        host = urlsplit(self.base_url).hostname or "localhost"
        return "localhost" if host in ("127.0.0.1", "::1", "0.0.0.0", "::") else host

    @property
    def guest_base_url(self) -> str:
        """Where a guest reaches the API: the one service address its closed network has
        (relayed by the service to wherever the API listens)."""
        return f"http://{GUEST_SERVICE_ADDRESS}"


def setting_names() -> tuple[str, ...]:
    """The environment variable name of every setting (plus the config-file pointer)."""
    fields = msgspec.structs.fields(Settings)
    return (CONFIG_FILE_VARIABLE, *(ENV_PREFIX + f.name.upper() for f in fields))


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read settings once; raise ConfigError with a message that says what to fix."""
    environ = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    config_file = environ.get(CONFIG_FILE_VARIABLE)
    if config_file:
        try:
            raw.update(tomllib.loads(Path(config_file).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {CONFIG_FILE_VARIABLE}={config_file}: {exc}") from exc
    known = {f.name for f in msgspec.structs.fields(Settings)}
    unknown_in_file = sorted(set(raw) - known)
    if unknown_in_file:
        raise ConfigError(
            f"unknown setting(s) in {config_file}: {', '.join(unknown_in_file)}; "
            f"known: {', '.join(sorted(known))}"
        )
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_VARIABLE:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in known:
            raise ConfigError(
                f"unknown setting {name}; known settings: {', '.join(setting_names())}"
            )
        raw[key] = value
    raw.update(overrides)
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {_env_name_in(str(exc))}") from exc


def _env_name_in(message: str) -> str:
    """Turn msgspec's `$.port` paths into the variable name a user sets."""
    if "$." in message:
        head, _, field = message.rpartition("$.")
        return f"{head}{ENV_PREFIX}{field.strip('`').upper()}"
    return message
