"""SIGINT/SIGTERM for a worker: acted on at safe points, never in the middle of a storage write.

Inside `interruptible()` (training, waiting) a signal raises KeyboardInterrupt at once; elsewhere
it is noted and raised at the next `check()`. A second signal raises at once wherever it lands.
Before raising, the engine's C kernels are told to stop (`engine.cancel()`): a kernel call holds
its thread until it returns, and it returns within milliseconds once cancelled. Leaving
`interruptible()` lets kernels run again (`engine.clear_cancel()`), for a caller that goes on.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from .. import engine


class Signals:
    """SIGINT/SIGTERM: raise KeyboardInterrupt inside `interruptible()`, else note it for `check()`."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self._raise_now = False
        self._cancelled = False

    def _handler(self, signum: int, _frame: object) -> None:
        second = self.pending is not None
        self.pending = signum
        if self._raise_now:  # training (or waiting): a kernel in flight returns at once
            engine.cancel()
            self._cancelled = True
        if self._raise_now or second:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The handlers for SIGINT and SIGTERM, for the duration (main thread only)."""
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
        """A stretch where a signal acts at once (training, waiting)."""
        self.check()
        self._raise_now = True
        try:
            yield
        finally:
            self._raise_now = False
            if self._cancelled:
                self._cancelled = False
                engine.clear_cancel()

    def check(self) -> None:
        """Raise KeyboardInterrupt if a signal arrived since the last safe point."""
        if self.pending is not None:
            raise KeyboardInterrupt
