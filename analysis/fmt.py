"""How numbers read in the report: MSEs to three significant figures, rates as percentages with CIs.

CSV files keep the raw numbers; only the HTML/Markdown tables and the sentences use these.
`columns` gives each column of a shown table one number format (all plain decimals, or all
scientific), whatever formatted its cells; `settings` lists fixed settings saying which optimizers
use each (`lr` and `precision` mean nothing to bfgs/lm, the tolerances nothing to first order).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from sweeps.config import FIRST_ORDER, SECOND_ORDER

DASH = "–"
# Which optimizers ignore a setting: second order has no learning rate and always computes in
# float64; the stopping tolerances are second order's own.
UNUSED_BY: dict[str, tuple[str, ...]] = {"lr": SECOND_ORDER, "precision": SECOND_ORDER, "abstol": FIRST_ORDER,
                                         "reltol": FIRST_ORDER}


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
    """'hidden=4, bias=both, lr=0.01': the given keys of a configuration (leaving out what its
    optimizer does not use)."""
    parts = []
    for key in keys:
        v = row.get(key)
        if _missing(v) or not used(key, row.get("optimizer")):
            continue
        parts.append(f"{key}={lr(v) if key == 'lr' else value(v)}")
    return ", ".join(parts)


def used(key: str, optimizer: Any) -> bool:
    """Whether `optimizer` uses setting `key` (unknown optimizers use everything)."""
    return optimizer not in UNUSED_BY.get(key, ())


def settings(fixed: dict[str, Any], optimizers: Iterable[Any]) -> str:
    """'`data=r50`, `lr=0.01` (first-order only)': fixed settings as code, each said to apply only to
    the optimizers of `optimizers` that use it; settings none of them uses are named apart."""
    rank = {o: i for i, o in enumerate(FIRST_ORDER + SECOND_ORDER)}
    present = sorted({o for o in optimizers if isinstance(o, str)}, key=lambda o: (rank.get(o, len(rank)), o))
    shown, unused = [], []
    for key, v in fixed.items():
        users = [o for o in present if used(key, o)]
        if present and not users:
            unused.append(key)
            continue
        text = f"`{key}={lr(v) if key == 'lr' else value(v)}`"
        if len(users) < len(present):
            text += f" ({_group(users)} only)"
        shown.append(text)
    out = ", ".join(shown)
    if unused:
        out += f"; unused by {_group(present, 'optimizers')}: " + ", ".join(f"`{k}`" for k in unused)
    return out


def _group(optimizers: list[str], noun: str = "") -> str:
    """'first-order' (or 'first-order optimizers'), 'second-order', or the names, for a set of optimizers."""
    if len(optimizers) > 1 and set(optimizers) <= set(FIRST_ORDER):
        return f"first-order {noun}".strip()
    if len(optimizers) > 1 and set(optimizers) <= set(SECOND_ORDER):
        return f"second-order {noun}".strip()
    if len(optimizers) == 1 and not noun:
        return "first-order" if optimizers[0] in FIRST_ORDER else "second-order" if optimizers[0] in SECOND_ORDER \
            else optimizers[0]
    return "/".join(optimizers)


_NUMBER = re.compile(r"^(?P<sign>[-+]?)(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?P<unit> s)?$")


def is_number(text: Any) -> bool:
    """Whether a shown cell is a plain number ('0.461', '1.6e-05', '300', '0.5 s'; 'inf' too)."""
    return isinstance(text, str) and (text == "inf" or _NUMBER.match(text) is not None)


def _significant(text: str) -> int:
    """Significant digits a formatted number shows ('0.00113' 3, '1.6e-05' 2, '300' 1)."""
    mantissa = text.lower().split("e")[0].replace(".", "").lstrip("0")
    if "." not in text and "e" not in text.lower():
        mantissa = mantissa.rstrip("0")
    return max(len(mantissa), 1)


def _plain(x: float, sig: int) -> str:
    """x as a plain decimal with `sig` significant figures (1230, 0.461, 0.000381)."""
    if x == 0:
        return "0"
    digits = sig - 1 - math.floor(math.log10(abs(x)))
    return f"{round(x, digits):.{max(digits, 0)}f}"


def column(cells: Sequence[Any]) -> list[Any]:
    """One number format for a shown column: cells that are plain numbers (optionally ' s') are
    rewritten all as plain decimals (every value in [1e-3, 1e4)) or all in scientific notation, at
    the most significant figures any of them shows (at most 3); other cells are left as they are."""
    parsed = {}
    for i, cell in enumerate(cells):
        m = _NUMBER.match(cell) if isinstance(cell, str) else None
        if m:
            parsed[i] = (float(m.group("sign") + m.group("num")), m.group("num"), m.group("unit") or "")
    decimal = [p for p in parsed.values() if "." in p[1] or "e" in p[1].lower()]
    if len(parsed) < 2 or not decimal:
        return list(cells)  # whole numbers (counts, sizes, steps) read as they are
    sig = min(max(_significant(p[1]) for p in parsed.values()), 3)
    nonzero = [abs(p[0]) for p in parsed.values() if p[0] != 0]
    plain = not nonzero or (min(nonzero) >= 1e-3 and max(nonzero) < 1e4)
    out = list(cells)
    for i, (x, _, unit) in parsed.items():
        out[i] = (_plain(x, sig) if plain or x == 0 else f"{x:.{sig - 1}e}") + unit
    return out


def columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A shown table with `column` applied to each of its columns."""
    return pd.DataFrame({c: column(frame[c].tolist()) for c in frame.columns}, index=frame.index)
