"""MQTT I/O, the only package that imports paho (besides the bench's reference load): the daemon's
link (:mod:`.link`), run in a process of its own (:mod:`.process`, :mod:`.child`), and plain
clients for the tools and tests (:mod:`.clients`)."""

from streamrnn.transport.mqtt.clients import Publisher, Subscriber
from streamrnn.transport.mqtt.link import Link

__all__ = ["Link", "Publisher", "Subscriber"]
