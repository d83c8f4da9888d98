"""Every implementation provides its interface (eventbus/interfaces.py).

verifyObject checks that each declared method exists with a compatible
signature and each attribute is present, so an interface that drifts from
the code it describes fails here instead of misleading its reader.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from zope.interface import Interface, implementedBy
from zope.interface.verify import verifyClass, verifyObject

from eventbus import interfaces
from eventbus.auth import Authenticator
from eventbus.bus import Events, Streams
from eventbus.config import ClientConfig
from eventbus.notify import ChangeNotifier
from eventbus.operations import Dispatcher
from eventbus.storage.database import Database


def _instances(tmp_path: Path) -> list[tuple[type[Interface], Any]]:
    clock = Clock()
    db = Database(f"sqlite:///{tmp_path / 'x.db'}", clock)
    notifier = ChangeNotifier(clock)
    streams, events = Streams(db, notifier), Events(db, notifier)
    auth = Authenticator((ClientConfig("c", "id", "secret"),))
    return [
        (interfaces.IDatabase, db),
        (interfaces.IStreams, streams),
        (interfaces.IEvents, events),
        (interfaces.IAuthenticator, auth),
        (interfaces.IDispatcher, Dispatcher(streams, events, auth, clock)),
    ]


ALL_INTERFACES = [
    obj
    for _, obj in inspect.getmembers(interfaces)
    if isinstance(obj, type(Interface)) and obj is not Interface and obj.__module__ == interfaces.__name__
]


def test_every_interface_is_covered(tmp_path: Path) -> None:
    """A new interface needs an implementation checked here."""
    assert {iface for iface, _ in _instances(tmp_path)} == set(ALL_INTERFACES)


@pytest.mark.parametrize("index", range(5))
def test_implementation_provides_interface(tmp_path: Path, index: int) -> None:
    iface, obj = _instances(tmp_path)[index]
    assert iface.providedBy(obj)
    assert verifyClass(iface, type(obj))
    assert verifyObject(iface, obj)


@pytest.mark.parametrize("index", range(5))
def test_interface_declares_every_public_method(tmp_path: Path, index: int) -> None:
    """What other layers call on an implementation is in its contract: no
    public method beyond the interface (service plumbing excepted)."""
    iface, obj = _instances(tmp_path)[index]
    declared = set()
    for provided in implementedBy(type(obj)).flattened():
        declared |= set(provided.names(all=True))
    plumbing = {name for name in dir(type(obj)) if hasattr(_ServiceLike, name)}
    public = {
        name
        for name, value in inspect.getmembers(type(obj))
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))
    }
    assert public - declared - plumbing == set()


class _ServiceLike:
    """Methods every twisted Service has; not part of a bus contract."""

    def startService(self) -> None: ...
    def stopService(self) -> None: ...
    def privilegedStartService(self) -> None: ...
    def setName(self) -> None: ...
    def setServiceParent(self) -> None: ...
    def disownServiceParent(self) -> None: ...
