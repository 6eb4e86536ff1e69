"""A sweep's progress display: trials finished, the best value so far, models per second."""

from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool | None, total: int, initial: int) -> Any:
    """A tqdm bar over the study's trial budget; `enabled=None` shows it on a terminal only."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="trial", disable=None if enabled is None else not enabled,
                dynamic_ncols=True)
