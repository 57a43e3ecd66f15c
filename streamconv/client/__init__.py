"""Client side of the wire: Subscriber (outputs in) and the `subscribe` sinks."""

from streamconv.client.sender import Sender
from streamconv.client.subscriber import Subscriber, collect

__all__ = ["Sender", "Subscriber", "collect"]
