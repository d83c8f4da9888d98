"""``twistd eventbus``: command-line options and the service they make."""

from __future__ import annotations

import dataclasses
import sys

from twisted.application.service import IService
from twisted.python import usage

from eventbus.config import Config, ConfigError, load

DEFAULT_CONFIG = "config/config.yaml"


class Options(usage.Options):
    synopsis = "[--config PATH] [--listen ENDPOINT] [--database URL]"
    longdesc = (
        "Run the Event Bus server. Values not given here come from the config "
        "file's `server` section, then from the defaults."
    )
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "Configuration file (YAML)."],
        ["listen", "l", None, "Twisted endpoint to listen on [default: tcp:8080:interface=127.0.0.1]."],
        ["database", "d", None, "SQLAlchemy database URL [default: sqlite:///eventbus.db]."],
    ]

    def postOptions(self) -> None:
        try:
            config = load(self["config"])
        except ConfigError as e:
            # One clear line, not twistd's usage text and not a traceback.
            sys.stderr.write(f"eventbus: {e}\n")
            raise SystemExit(2) from None
        overrides = {k: self[k] for k in ("listen", "database") if self[k]}
        self.bus_config = dataclasses.replace(
            config, server=dataclasses.replace(config.server, **overrides)
        )


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from eventbus.server import build_service

    config: Config = options.bus_config
    return build_service(config, reactor)
