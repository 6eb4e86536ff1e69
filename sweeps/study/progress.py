"""A sweep's progress display: trials finished, the best value so far, models per second, time left.

On a terminal a tqdm bar (on stderr); on a pipe or a file (`make sweep | tee log`, a batch job's
log) a plain line every `LINE_EVERY_S` seconds through the runner's `echo`, so that a long sweep
shows it is alive without filling a log with bar redraws.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

LINE_EVERY_S = 10.0


class Progress:
    """One run's progress over its study's budget (see the module docstring)."""

    def __init__(self, enabled: bool | None, total: int, initial: int, *, label: str,
                 echo: Callable[[str], Any] = print, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`enabled`: None shows a bar on a terminal and lines elsewhere, False nothing, True a bar.
        `tty` (None: whether stderr is a terminal) and `clock` are for tests."""
        self.total, self.done, self.label, self.echo, self.clock = total, initial, label, echo, clock
        self.start_done, self.start = initial, clock()
        self.last_line = self.start
        tty = sys.stderr.isatty() if tty is None else tty
        self.bar: Any = None
        self.lines = enabled is None and not tty
        if enabled or (enabled is None and tty):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="trial", dynamic_ncols=True)

    def update(self, told: int, best: Callable[[], float | None], models_per_s: float) -> None:
        """The trials just told. `best()` (from the runner's light index: reading the best trial
        from the storage would read its big attributes) is asked only when something is shown."""
        self.done += told
        if self.bar is not None:
            self.bar.update(told)
            value = best()
            self.bar.set_postfix(best="-" if value is None else f"{value:.3g}", models_s=f"{models_per_s:.0f}")
        elif self.lines and self.clock() - self.last_line >= LINE_EVERY_S and self.done < self.total:
            self.last_line = self.clock()
            self.echo(self.line(best(), models_per_s))

    def line(self, best: float | None, models_per_s: float) -> str:
        """The plain progress line: done/total, share, models/s, best, time left at this run's pace."""
        elapsed, ran = self.clock() - self.start, self.done - self.start_done
        left = f", about {_duration((self.total - self.done) * elapsed / ran)} left" if ran > 0 else ""
        shown = "-" if best is None else f"{best:.3g}"
        return (f"{self.label}: {self.done}/{self.total} trials ({self.done / max(self.total, 1):.0%}), "
                f"{models_per_s:.0f} models/s, best {shown}{left}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    """'45 s', '3 min', '2.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
