"""The search space on Optuna's side: a spec's searched keys (`Dimension`) and how an Optuna trial
turns into a `Config` (`suggest`). The engine never sees this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..config import KEYS, Config
from .validator import Validator


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


def parse_dimension(v: Validator, key: str, raw: dict[str, Any]) -> Dimension:
    """A `[space.KEY]` table as a Dimension: `choices`, or `low`/`high` (`log`, a `grid`)."""
    where = f"space.{key}"
    spec = KEYS[key]
    v.only(raw, where, {"choices", "low", "high", "log", "grid"})
    if "choices" in raw:
        if set(raw) - {"choices"}:
            v.fail(where, "give either `choices` or `low`/`high`, not both")
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            v.fail(f"{where}.choices", "must be a non-empty list")
        values = tuple(v.value(f"{where}.choices", key, c) for c in choices)
        if len(set(values)) != len(values):
            v.fail(f"{where}.choices", "has duplicate values")
        return Dimension(key, choices=values)
    if spec.choices is not None:
        v.fail(where, f"is categorical: give `choices` from {', '.join(map(str, spec.choices))}")
    if "low" not in raw or "high" not in raw:
        v.fail(where, "needs `choices`, or both `low` and `high`")
    low = v.value(f"{where}.low", key, raw["low"])
    high = v.value(f"{where}.high", key, raw["high"])
    log = v.get(raw, f"{where}.log", bool, False)
    if low > high:
        v.fail(where, f"low ({low}) is greater than high ({high})")
    if log and low <= 0:
        v.fail(f"{where}.low", f"a log range must stay above 0, got {low}")
    grid = None
    if "grid" in raw:
        if not isinstance(raw["grid"], list) or not raw["grid"]:
            v.fail(f"{where}.grid", "must be a non-empty list")
        grid = tuple(v.value(f"{where}.grid", key, g) for g in raw["grid"])
        for g in grid:
            if not low <= g <= high:
                v.fail(f"{where}.grid", f"value {g} is outside [{low}, {high}]")
    return Dimension(key, low=low, high=high, log=log, grid=grid)
