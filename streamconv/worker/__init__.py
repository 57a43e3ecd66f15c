"""The worker role: decode -> engine (per-stream state, layers) -> publisher.

Run one inside your own process (it blocks; stop() ends it from any thread):

    import threading
    from streamconv.config import load_settings
    from streamconv.worker import Worker

    worker = Worker(load_settings("default", {"worker": {"http": "off"}}))
    thread = threading.Thread(target=worker.run)
    thread.start()
    worker.ready.wait(60)     # model built, sockets bound
    ...                       # send with streamconv.client.Sender, read with Subscriber
    worker.stop()
    thread.join()

`Worker` is imported lazily, so that the torch-free modules here (results, stats, publisher)
can be imported without torch.
"""

from typing import Any

__all__ = ["Worker"]


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from streamconv.worker.role import Worker

        return Worker
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
