"""New weights without a restart: SIGHUP (always), or POST /reload on the worker's HTTP port
when `[worker] reload_http` is on, loads `[model] weights` again into the served model.

The load happens between two turns of the serve loop, so every stream keeps its temporal
state unchanged and the new weights apply from its next chunk. The file must fit the model
as it is (the same keys and shapes, checked before anything changes); another structure is
refused with one log line and the old weights stay: that needs a restart. Every output header
carries `model_version` (the weights' fingerprint), as /status does, and checkpoints taken
afterwards carry the new fingerprint, so a worker restarted on the old weights refuses them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from streamconv import weights
from streamconv.errors import ConfigError
from streamconv.layers import Layer

log = logging.getLogger(__name__)

Outcome = dict[str, Any]  # {"model_version": ...} and, refused, {"error": ...}


class Reload:
    def __init__(
        self, model: Layer, path: Path | None, on_version: Callable[[str], None]
    ) -> None:  # fmt: skip
        self.model, self.path, self.on_version = model, path, on_version
        self.version = weights.version(model)
        self.reloads = 0
        self.refused = 0
        # SIGHUP sets this plain flag (a handler must not take a lock the loop may hold).
        self.signalled = False
        self._asked: list[Future[Outcome]] = []
        self._lock = threading.Lock()
        on_version(self.version)

    def ask(self) -> Future[Outcome]:
        """A reload at the loop's next turn (any thread); the future gets its outcome."""
        future: Future[Outcome] = Future()
        with self._lock:
            self._asked.append(future)
        return future

    def tick(self, now: float) -> None:
        with self._lock:
            asked, self._asked = self._asked, []
        if self.signalled:
            self.signalled = False
        elif not asked:
            return
        outcome = self._reload()
        for future in asked:
            future.set_result(outcome)

    def _reload(self) -> Outcome:
        if self.path is None:
            why = "no [model] weights file is configured: nothing to reload"
            log.warning("reload asked for, but %s", why)
            return {"model_version": self.version, "error": why}
        try:
            weights.load(self.model, self.path)
        except ConfigError as e:
            self.refused += 1
            log.error("reload refused, still serving weights version %s (a changed structure "
                      "needs a restart): %s", self.version, e)  # fmt: skip
            return {"model_version": self.version, "error": str(e)}
        previous, self.version = self.version, weights.version(self.model)
        self.reloads += 1
        self.on_version(self.version)
        log.info("weights reloaded from %s: version %s -> %s; every stream keeps its state, "
                 "the new weights apply from its next chunk", self.path, previous,
                 self.version)  # fmt: skip
        return {"model_version": self.version, "previous": previous}
