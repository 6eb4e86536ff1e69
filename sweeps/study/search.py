"""The search space on Optuna's side: a spec's searched keys (`Dimension`) and how an Optuna trial
turns into a `Config` (`suggest`). The engine never sees this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..config import KEYS, Config


@dataclass(frozen=True)
class Dimension:
    """A searched key: categorical `choices`, or a numeric range `low..high` (optionally log).

    `grid` lists the values a grid spec visits for a numeric range.
    """

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    grid: tuple[float, ...] | None = None

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return self.low <= value <= self.high

    def grid_values(self) -> tuple[Any, ...]:
        if self.choices is not None:
            return self.choices
        if self.grid is None:
            raise ValueError(f"dimension {self.name!r} has no grid values")
        return self.grid


class TrialLike(Protocol):
    """The slice of `optuna.trial.Trial` this module uses (keeps the engine side Optuna-free)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float: ...


def suggest(trial: TrialLike, dims: dict[str, Dimension], fixed: dict[str, Any]) -> Config:
    """Draw a Config from `trial` for the searched keys; the rest come from `fixed`."""
    values = dict(fixed)
    for name, dim in dims.items():
        if dim.choices is not None:
            values[name] = trial.suggest_categorical(name, list(dim.choices))
        elif KEYS[name].kind is int:
            values[name] = trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
        else:
            values[name] = trial.suggest_float(name, float(dim.low), float(dim.high), log=dim.log)
    return Config(**values)
