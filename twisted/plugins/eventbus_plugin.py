"""twistd plugin: ``twistd eventbus``."""

from twisted.application.service import ServiceMaker

eventbus = ServiceMaker(
    "Event Bus",
    "eventbus.tap",
    "A durable event bus speaking newline-delimited JSON over TCP.",
    "eventbus",
)
