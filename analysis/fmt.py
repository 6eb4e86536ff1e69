"""How numbers read in the report: MSEs to three significant figures, rates as percentages with CIs.

CSV files keep the raw numbers; only the HTML/Markdown tables and the sentences use these.
"""

from __future__ import annotations

import math
from typing import Any

DASH = "–"


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def mse(x: Any) -> str:
    """A mean squared error: 3 significant figures, 'inf' for diverged."""
    if _missing(x):
        return DASH
    x = float(x)
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 or x == 0 else f"{x:.2e}"


def lr(x: Any) -> str:
    """A learning rate, 2 significant figures."""
    return DASH if _missing(x) else f"{float(x):.2g}"


def pct(x: Any) -> str:
    """A share in [0, 1] as a whole percentage (one decimal under 1 % so that 0.4 % is not 0 %)."""
    if _missing(x):
        return DASH
    x = 100.0 * float(x)
    return f"{x:.1f}%" if 0 < x < 1 else f"{x:.0f}%"


def rate_ci(rate: Any, low: Any, high: Any) -> str:
    """'62% [51, 72]': a pooled success rate with its 95 % Wilson interval in percent."""
    if _missing(rate):
        return DASH
    return f"{pct(rate)} [{100 * float(low):.0f}, {100 * float(high):.0f}]"


def seconds(x: Any) -> str:
    """A duration in seconds, 2 significant figures under 10 s."""
    if _missing(x):
        return DASH
    x = float(x)
    return f"{x:.2g} s" if x < 10 else f"{x:.0f} s"


def value(x: Any) -> str:
    """Any table cell: floats to 3 significant figures, the rest as text."""
    if _missing(x):
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return mse(x) if not x.is_integer() or abs(x) >= 1e6 else f"{int(x)}"
    return str(x)


def config(row: dict[str, Any], keys: list[str]) -> str:
    """'hidden=4, bias=both, lr=0.01': the given keys of a configuration."""
    parts = []
    for key in keys:
        v = row.get(key)
        if _missing(v):
            continue
        parts.append(f"{key}={lr(v) if key == 'lr' else value(v)}")
    return ", ".join(parts)
