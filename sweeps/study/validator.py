"""Type checks for spec values, collected: every mistake of a spec in one line (`SpecError`).

`fail` records a mistake (file, key, what is wrong) and stops the unit of validation it is in;
`attempt` runs one unit (a key, a dimension, an enqueued entry, a design row) and carries on with the
next after a mistake; `done` raises one `SpecError` naming every mistake, in the order found.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from ..config import KEYS


class SpecError(ValueError):
    """A spec that cannot be used; the message is one line naming the file and key."""


T = TypeVar("T")


class _Invalid(Exception):
    """A recorded mistake that ends the current unit of validation."""


class Validator:
    """Type checks that record one-line mistakes naming the file and key (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[str] = []

    def fail(self, key: str, message: str) -> None:
        self.errors.append(f"{key}: {message}")
        raise _Invalid

    def attempt(self, unit: Callable[[], T], default: T) -> T:
        """`unit()`, or `default` when it recorded a mistake (validation goes on)."""
        try:
            return unit()
        except _Invalid:
            return default

    def done(self) -> None:
        """Raise one SpecError naming every recorded mistake (nothing when there is none)."""
        if len(self.errors) == 1:
            raise SpecError(f"{self.path}: {self.errors[0]}")
        if self.errors:
            raise SpecError(f"{self.path}: {len(self.errors)} problems: " + "; ".join(self.errors))

    def only(self, table: dict[str, Any], where: str, allowed: set[str]) -> None:
        """Record every key of `table` that is not `allowed` (the rest is still checked)."""
        for key in table:
            if key not in allowed:
                name = f"{where}.{key}" if where else key
                self.errors.append(f"{name}: unknown key; allowed: {', '.join(sorted(allowed))}")

    def table(self, raw: dict[str, Any], key: str, where: str | None = None) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.fail(where or key, "must be a table")
        return value

    def get(self, table: dict[str, Any], key: str, kind: type, default: Any) -> Any:
        short = key.rsplit(".", 1)[-1]
        if short not in table:
            return default
        return self.typed(key, kind, table[short])

    def typed(self, key: str, kind: type, value: Any) -> Any:
        # TOML ints are acceptable floats; bools are not ints here.
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(key, f"must be {kind.__name__}, got {type(value).__name__} {value!r}")
        if kind is float and not math.isfinite(value):
            self.fail(key, f"must be finite, got {value}")
        return value

    def value(self, where: str, key: str, value: Any) -> Any:
        """Check a value for config key `key`: type, choices, bounds."""
        spec = KEYS[key]
        value = self.typed(where, spec.kind, value)
        if spec.choices is not None and value not in spec.choices:
            self.fail(where, f"{value!r} is not one of {', '.join(map(str, spec.choices))}")
        if spec.low is not None and value < spec.low or spec.high is not None and value > spec.high:
            self.fail(where, f"{value!r} is outside [{spec.low}, {spec.high}]")
        if key == "lr" and value <= 0:
            self.fail(where, f"learning rate must be above 0, got {value}")
        return value
