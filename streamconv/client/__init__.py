"""Client side of the wire: Sender (frames out), Subscriber (outputs in) and the `subscribe`
sinks."""

from streamconv.client.link import WorkerLostError
from streamconv.client.sender import Sender
from streamconv.client.subscriber import Subscriber, collect

__all__ = ["Sender", "Subscriber", "WorkerLostError", "collect"]
