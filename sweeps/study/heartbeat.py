"""Heartbeats for a worker's trials in flight, recorded from a thread while the engine trains, so that
a worker that dies leaves trials another worker can fail and retry (`recovery.fail_stale`).
"""

from __future__ import annotations

import contextlib
import threading

import optuna

from . import rdb


class Heartbeat:
    """Records heartbeats for the trials in flight, from a thread, while the engine trains."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval: float, trial_ids: list[int]) -> None:
        self.storage, self.interval, self.trial_ids = storage, interval, trial_ids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweeps-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            ids = list(self.trial_ids)
            if ids:
                with contextlib.suppress(Exception):  # a missed beat is retried next interval
                    rdb.record_heartbeats(self.storage, ids)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
