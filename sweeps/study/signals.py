"""SIGINT/SIGTERM for a worker: acted on at safe points, never in the middle of a storage write.

Inside `interruptible()` (training, waiting) a signal raises KeyboardInterrupt at once; elsewhere
it is noted and raised at the next `check()`. A second signal raises at once wherever it lands.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Signals:
    """SIGINT/SIGTERM: raise KeyboardInterrupt inside `interruptible()`, else note it for `check()`."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self._raise_now = False

    def _handler(self, signum: int, _frame: object) -> None:
        second = self.pending is not None
        self.pending = signum
        if self._raise_now or second:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only; an embedding caller handles them
            return
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        self.check()
        self._raise_now = True
        try:
            yield
        finally:
            self._raise_now = False

    def check(self) -> None:
        if self.pending is not None:
            raise KeyboardInterrupt
