"""The configuration file: the original's format, plus our optional sections.

::

    logger: {level: info, output: [stdout]}     # the original's; level is used
    auth:                                        # the original's client map
      go-client: {client_id: ..., client_secret: ...}
    server:                                      # ours, all optional
      listen: "tcp:8080:interface=127.0.0.1"
      database: "sqlite:///eventbus.db"
      ...

A file that is missing, unreadable or invalid raises :class:`ConfigError`
with one sentence naming the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from eventbus import secrets

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
DEFAULT_DATABASE = "sqlite:///eventbus.db"
RETENTION_DAYS = 30  # as in the original: events expire 720 hours after creation


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


@dataclass(frozen=True)
class ClientConfig:
    name: str
    client_id: str
    client_secret: str
    streams: tuple[str, ...] | None = None  # None: every stream
    operations: tuple[str, ...] | None = None  # None: every operation


@dataclass(frozen=True)
class ServerConfig:
    """Tunables of the server (the ``server`` section); defaults are ours."""

    listen: str = DEFAULT_LISTEN
    database: str = DEFAULT_DATABASE
    max_line_bytes: int = 1024 * 1024
    max_page: int = 10_000
    retention_seconds: int = RETENTION_DAYS * 24 * 3600
    idle_timeout_seconds: int = 300
    max_connections: int = 10_000
    max_pending_requests: int = 1000
    #: Bytes of request lines a connection may have unanswered before it
    #: stops being read (requests held behind a long poll, say).
    max_pending_bytes: int = 64 * 1024 * 1024
    readers: int = 4
    housekeeping_interval_seconds: float = 1.0
    #: How long a write waits for a database lock held by another process
    #: before it is answered ``unavailable``.
    busy_timeout_seconds: float = 5.0
    #: Repeated auth failures from one address are answered later and later,
    #: up to this long (see eventbus.auth.FailureThrottle).
    auth_failure_max_delay_seconds: float = 5.0


@dataclass(frozen=True)
class Config:
    path: str
    clients: tuple[ClientConfig, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    log_level: str = "info"


def load(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}': not found") from None
    except OSError as e:
        raise ConfigError(f"config file '{path}': cannot be read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}': not valid YAML: {_one_line(e)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}': not UTF-8 text") from None
    try:
        return parse(raw, path)
    except ConfigError as e:
        raise ConfigError(f"config file '{path}': {e}") from None


def parse(raw: Any, path: str = "<config>") -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping")
    clients = _parse_auth(raw.get("auth"))
    server = _parse_server(raw.get("server"))
    logger = raw.get("logger") or {}
    if not isinstance(logger, dict):
        raise ConfigError("'logger' must be a mapping")
    level = logger.get("level", "info")
    if level not in ("debug", "info", "warn", "warning", "error", "critical"):
        raise ConfigError(f"logger.level must be one of debug, info, warn, error, critical (got {level!r})")
    return Config(path=path, clients=clients, server=server, log_level=str(level))


def _parse_auth(auth: Any) -> tuple[ClientConfig, ...]:
    if auth is None:
        return ()
    if not isinstance(auth, dict):
        raise ConfigError("'auth' must be a mapping of client names to credentials")
    clients = []
    seen: set[str] = set()
    for name, entry in auth.items():
        where = f"auth.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping with client_id and client_secret")
        client_id = entry.get("client_id")
        secret = entry.get("client_secret")
        if not isinstance(client_id, str) or not client_id:
            raise ConfigError(f"{where}.client_id must be a non-empty string")
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{where}.client_secret must be a non-empty string")
        if secrets.is_hashed(secret):
            try:
                secrets.parse(secret)
            except ValueError as e:
                raise ConfigError(f"{where}.client_secret: {e}") from None
        if client_id in seen:
            raise ConfigError(f"{where}.client_id {client_id!r} is used by another client")
        seen.add(client_id)
        clients.append(
            ClientConfig(
                name=str(name),
                client_id=client_id,
                client_secret=secret,
                streams=_string_list(entry.get("streams"), f"{where}.streams"),
                operations=_string_list(entry.get("operations"), f"{where}.operations"),
            )
        )
    return tuple(clients)


def _string_list(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a list of non-empty strings")
    return tuple(value)


def _parse_server(section: Any) -> ServerConfig:
    if section is None:
        return ServerConfig()
    if not isinstance(section, dict):
        raise ConfigError("'server' must be a mapping")
    known = {f.name: f for f in fields(ServerConfig)}
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in known:
            raise ConfigError(f"server.{key} is not a known setting (known: {', '.join(sorted(known))})")
        default = known[key].default
        if isinstance(default, str):
            ok = isinstance(value, str) and value != ""
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if not ok:
            kind = {str: "a non-empty string", float: "a positive number"}.get(
                type(default), "a positive integer"
            )
            raise ConfigError(f"server.{key} must be {kind} (got {value!r})")
        values[key] = value
    return ServerConfig(**values)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
