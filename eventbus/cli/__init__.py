"""The ``eventbus`` command line (see :mod:`eventbus.cli.commands`)."""

from eventbus.cli.commands import (
    EXIT_CONNECTION,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    build_parser,
    main,
)

__all__ = [
    "EXIT_CONNECTION",
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]
