"""Where the CLI connects and as whom: flags, then environment, then a profile file.

The profile file (``~/.config/eventbus/cli.yaml``, or ``--profile-file``,
or ``EVENTBUS_PROFILE_FILE``) holds either the settings at its top level or
named profiles::

    default: local               # the profile used without --profile
    profiles:
      local:
        address: 127.0.0.1:8080
        client_id: dope_go_client_id
        client_secret: dope_go_client_secret
      prod:
        address: tls://bus.example.org:8443
        ca_file: /etc/ssl/bus-ca.pem
        client_id: ops
        client_secret: "..."
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_ADDRESS = "127.0.0.1:8080"
KEYS = ("address", "client_id", "client_secret", "tls", "ca_file", "insecure", "timeout")
ENV = {
    "address": "EVENTBUS_ADDRESS",
    "client_id": "EVENTBUS_CLIENT_ID",
    "client_secret": "EVENTBUS_CLIENT_SECRET",
    "tls": "EVENTBUS_TLS",
    "ca_file": "EVENTBUS_CA_FILE",
    "insecure": "EVENTBUS_INSECURE",
    "timeout": "EVENTBUS_TIMEOUT",
}


class SettingsError(Exception):
    """The profile file or a setting cannot be used (a usage error)."""


@dataclass(frozen=True)
class Settings:
    address: str = DEFAULT_ADDRESS
    client_id: str | None = None
    client_secret: str | None = None
    tls: bool | None = None
    ca_file: str | None = None
    insecure: bool = False
    timeout: float = 30.0


def default_profile_file(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "eventbus" / "cli.yaml"


def load_profile(path: Path, name: str | None, explicit: bool) -> dict[str, Any]:
    """The chosen profile's settings; {} when the default file is absent."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if explicit:
            raise SettingsError(f"profile file '{path}': not found") from None
        if name:
            raise SettingsError(f"profile {name!r} asked for, but '{path}' does not exist") from None
        return {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SettingsError(f"profile file '{path}': {' '.join(str(e).split())}") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise SettingsError(f"profile file '{path}': the top level must be a mapping")
    if "profiles" in raw:
        profiles = raw["profiles"] or {}
        chosen = name or raw.get("default")
        if chosen is None:
            return {}
        if not isinstance(profiles, dict) or chosen not in profiles:
            known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) else ""
            raise SettingsError(f"profile file '{path}': no profile {chosen!r} (known: {known or 'none'})")
        raw = profiles[chosen] or {}
        if not isinstance(raw, dict):
            raise SettingsError(f"profile file '{path}': profile {chosen!r} must be a mapping")
    elif name:
        raise SettingsError(f"profile file '{path}' has no 'profiles' section, so no profile {name!r}")
    unknown = set(raw) - set(KEYS) - {"default"}
    if unknown:
        raise SettingsError(f"profile file '{path}': unknown keys {', '.join(sorted(unknown))}")
    return raw


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{where} must be true or false, got {value!r}")


def resolve(flags: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Each setting from the first of: flag, environment, profile file, default."""
    explicit = flags.get("profile_file") or env.get("EVENTBUS_PROFILE_FILE")
    path = Path(explicit).expanduser() if explicit else default_profile_file(env)
    profile = load_profile(path, flags.get("profile") or env.get("EVENTBUS_PROFILE"), bool(explicit))
    values: dict[str, Any] = {}
    for key in KEYS:
        if flags.get(key) is not None:
            values[key] = flags[key]
        elif env.get(ENV[key]):
            values[key] = env[ENV[key]]
        elif profile.get(key) is not None:
            values[key] = profile[key]
    if "tls" in values:
        values["tls"] = _bool(values["tls"], "tls")
    if "insecure" in values:
        values["insecure"] = _bool(values["insecure"], "insecure")
    if "timeout" in values:
        try:
            values["timeout"] = float(values["timeout"])
        except (TypeError, ValueError):
            raise SettingsError(f"timeout must be a number of seconds, got {values['timeout']!r}") from None
    for key in ("address", "client_id", "client_secret", "ca_file"):
        if key in values:
            values[key] = str(values[key])
    return Settings(**values)

