"""Designed studies: every cell of the scientific choices, the nuisance tuned per cell, then confirmed.

A search (TPE) finds a good configuration but cannot compare choices; a designed study can
(`../shared/DESIGN.md`, after Google's tuning playbook). A spec with `sampler = "design"` and a
`[design]` table defines its *cells* either by crossing the `crossed` keys of `[space]` (every
combination is visited) or by listing `[[design.rows]]` (an ablation: each row names the one thing
it changes from `[fixed]`). Each cell is trained in two phases:

- **tune**: one trial per value of the nuisance (`tuned`, the learning rate: `[space.lr]`'s `grid`),
  each on `study.seeds` seeds. Second-order optimizers have no learning rate: nothing to tune.
- **confirm**: once every tuning trial of the cell is done, one trial at the chosen value on
  `confirm_seeds` fresh seeds. Only these runs are compared: choosing the best of several
  learning rates on the seeds that report the result would inflate it.

The chosen value is the one whose tuning seeds fit most often, then with the lowest median test
MSE, then the smallest. Cells whose values match `[design.control]` (e.g. `sin` units, which
represent the target exactly) are the control arm: run like the others, reported apart.

A trial's Optuna params are the cell's key (its crossed values, or `row`), `phase`, and `lr` where
the optimizer has one. Seeds come from (study seed, phase, cell, lr, index) with the phase in a
bit of its own: a confirmation seed can never equal a tuning seed, and a cell's seeds do not depend
on trial numbers, workers or batches.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import CONFIG_KEYS, FIRST_ORDER, PRESETS, Config
from .search import Dimension
from .validator import Validator

PHASE, TUNE, CONFIRM, ROW = "phase", "tune", "confirm", "row"
PHASES = (TUNE, CONFIRM)
TUNABLE = ("lr",)  # the nuisance keys a design may tune (the learning rate: first-order optimizers only)
_CONFIRM_BIT = 1 << 62


@dataclass(frozen=True)
class Row:
    """One ablation row as written: its label, its ladder, what it changes, whether lr is tuned."""

    label: str
    ladder: str
    changes: dict[str, Any]
    tune: bool


@dataclass(frozen=True)
class Cell:
    """One cell of a design: what identifies it, its settings, and the learning rates it tries."""

    key: tuple[tuple[str, Any], ...]  # its Optuna params besides phase and lr
    settings: dict[str, Any]  # every config key but lr
    lrs: tuple[float, ...]  # several: tuned; one: fixed; none: the optimizer has no learning rate
    control: bool
    label: str
    ladder: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)  # an ablation row's changes

    @property
    def tuned(self) -> bool:
        return len(self.lrs) > 1

    @property
    def name(self) -> str:
        """The cell's identity as text (stable: it seeds the cell's models)."""
        return json.dumps(dict(self.key), sort_keys=True, default=str)

    def params(self, phase: str, lr: float | None) -> dict[str, Any]:
        """The Optuna params of this cell's trial in `phase` at `lr`."""
        out = {**dict(self.key), PHASE: phase}
        if lr is not None:
            out["lr"] = lr
        return out

    def config(self, lr: float | None, fallback_lr: float) -> Config:
        """The model recipe of this cell at `lr` (`fallback_lr` where the optimizer has none)."""
        return Config(**self.settings, lr=fallback_lr if lr is None else lr)


@dataclass(frozen=True)
class Design:
    """The `[design]` table of a spec."""

    confirm_seeds: int
    crossed: tuple[str, ...] = ()
    tuned: str | None = None
    control: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    rows: tuple[Row, ...] = ()

    def identity(self) -> dict[str, Any]:
        """What the study means (for the spec's hash)."""
        return {"confirm_seeds": self.confirm_seeds, "crossed": list(self.crossed), "tuned": self.tuned,
                "control": {k: list(v) for k, v in sorted(self.control.items())},
                "rows": [vars(r) for r in self.rows]}

    def cells(self, space: dict[str, Dimension], fixed: dict[str, Any]) -> list[Cell]:
        """Every cell, in a stable order: the crossed combinations, or the rows as listed."""
        grid = tuple(space[self.tuned].grid_values()) if self.tuned else ()
        out = []
        if self.rows:
            for row in self.rows:
                settings = {k: v for k, v in {**fixed, **row.changes}.items() if k != "lr"}
                lr = row.changes.get("lr", fixed.get("lr"))
                lrs = _lrs(settings["optimizer"], grid if row.tune else (lr,))
                out.append(Cell(key=((ROW, row.label),), settings=settings, lrs=lrs, control=False, label=row.label,
                                ladder=row.ladder, changes=dict(row.changes)))
            return out
        import itertools

        values = [space[k].grid_values() for k in self.crossed]
        for combo in itertools.product(*values):
            key = tuple(zip(self.crossed, combo))
            settings = {k: v for k, v in {**fixed, **dict(key)}.items() if k != "lr"}
            control = any(dict(key).get(k) in vs for k, vs in self.control.items())
            out.append(Cell(key=key, settings=settings, lrs=_lrs(settings["optimizer"], grid or (fixed.get("lr"),)),
                            control=control, label=", ".join(f"{k}={v}" for k, v in key)))
        return out


def _lrs(optimizer: str, candidates: Sequence[Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in candidates if v is not None) if optimizer in FIRST_ORDER else ()


def trials_planned(cells: Sequence[Cell]) -> int:
    """Tuning trials plus one confirmation per cell."""
    return sum(len(c.lrs) if c.tuned else 0 for c in cells) + len(cells)


def distributions(cells: Sequence[Cell]) -> dict[str, Any]:
    """The Optuna distribution of every param a design's trials carry (one per name, study-wide)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out: dict[str, Any] = {}
    names = list(dict.fromkeys(k for c in cells for k, _ in c.key))
    for name in names:
        out[name] = CategoricalDistribution(list(dict.fromkeys(dict(c.key)[name] for c in cells)))
    out[PHASE] = CategoricalDistribution(list(PHASES))
    lrs = [lr for c in cells for lr in c.lrs]
    if lrs:
        out["lr"] = FloatDistribution(min(lrs), max(lrs), log=True)
    return out


def seed(study_seed: int, cell: Cell, phase: str, lr: float | None, index: int) -> int:
    """The init seed of one model of a design: its cell, phase, learning rate and index.

    Confirmation seeds have bit 62 set and tuning seeds do not, so the two sets are disjoint by
    construction (the test checks it anyway).
    """
    tag = cell.name if phase == CONFIRM else f"{cell.name}/{lr!r}"
    digest = hashlib.sha256(f"{study_seed}/{phase}/{tag}/{index}".encode()).digest()
    value = int.from_bytes(digest[:8], "little") & (_CONFIRM_BIT - 1)
    return value | _CONFIRM_BIT if phase == CONFIRM else value


@dataclass(frozen=True)
class Tried:
    """One finished tuning trial of a cell, as the choice of its learning rate sees it."""

    lr: float
    successes: int
    value: float  # median test MSE over its seeds (inf: most or all diverged)
    number: int


def choose(tried: Iterable[Tried]) -> Tried:
    """The tuning trial whose learning rate a cell confirms: most seeds fit, then lowest median
    MSE, then the smallest learning rate (the most conservative of equals)."""
    return min(tried, key=lambda t: (-t.successes, t.value if math.isfinite(t.value) else math.inf, t.lr))


def key_of(params: dict[str, Any], cells_by_name: dict[str, Cell]) -> Cell | None:
    """The cell a trial's params belong to (None: not a cell of this design)."""
    key = {k: v for k, v in params.items() if k not in (PHASE, "lr")}
    return cells_by_name.get(json.dumps(key, sort_keys=True, default=str))


def parse(v: Validator, raw: dict[str, Any], space: dict[str, Dimension], fixed: dict[str, Any]) -> Design:
    """The `[design]` table of a spec whose sampler is `design`."""
    v.only(raw, "design", {"confirm_seeds", "crossed", "tuned", "control", "rows"})
    confirm = v.get(raw, "design.confirm_seeds", int, 16)
    if not 1 <= confirm <= 1024:
        v.fail("design.confirm_seeds", f"must be between 1 and 1024, got {confirm}")
    tuned = raw.get("tuned")
    if tuned is not None:
        if tuned not in TUNABLE:
            v.fail("design.tuned", f"must be one of {', '.join(TUNABLE)}, got {tuned!r}")
        if tuned not in space or (space[tuned].grid is None and space[tuned].choices is None):
            v.fail("design.tuned", f"needs [space.{tuned}] with a `grid` list of the values to tune over")
    crossed = raw.get("crossed", [])
    rows_raw = raw.get("rows", [])
    if bool(crossed) == bool(rows_raw):
        v.fail("design", "give either `crossed` (keys whose every combination is a cell) or [[design.rows]]")
    if not isinstance(crossed, list) or not all(isinstance(k, str) for k in crossed):
        v.fail("design.crossed", "must be a list of [space] keys")
    for key in crossed:
        if key not in space or space[key].choices is None:
            v.fail("design.crossed", f"{key!r} must be a [space] key with `choices`")
        if key == tuned:
            v.fail("design.crossed", f"{key!r} is the tuned nuisance; it cannot also be crossed")
    extra = sorted(set(space) - set(crossed) - ({tuned} if tuned else set()))
    if extra:
        v.fail("space", f"a design searches only its crossed keys and the tuned one; also in [space]: {', '.join(extra)}")
    control: dict[str, tuple[Any, ...]] = {}
    for key, values in v.table(raw, "control", where="design.control").items():
        if key not in crossed:
            v.fail(f"design.control.{key}", "must be a crossed key")
        values = values if isinstance(values, list) else [values]
        for value in values:
            if value not in space[key].choices:
                v.fail(f"design.control.{key}", f"{value!r} is not one of its choices")
        control[key] = tuple(values)
    rows = tuple(r for r in (v.attempt(lambda i=i, r=r: _row(v, i, r, tuned), None) for i, r in enumerate(rows_raw))
                 if r is not None) if rows_raw else ()
    labels = [r.label for r in rows]
    if len(set(labels)) != len(labels):
        v.fail("design.rows", "two rows have the same label")
    return Design(confirm_seeds=confirm, crossed=tuple(crossed), tuned=tuned, control=control, rows=rows)


def _row(v: Validator, i: int, raw: Any, tuned: str | None) -> Row:
    where = f"design.rows[{i}]"
    if not isinstance(raw, dict):
        v.fail(where, "must be a table")
    v.only(raw, where, {"label", "ladder", "set", "tune"})
    label = v.get(raw, f"{where}.label", str, "")
    if not label:
        v.fail(f"{where}.label", "every row needs a label naming what it changes")
    changes: dict[str, Any] = {}
    table = dict(v.table(raw, "set", where=f"{where}.set"))
    if "preset" in table:  # a named recipe first (nnet's call), the row's own values over it
        name = table.pop("preset")
        if not isinstance(name, str) or name not in PRESETS:
            v.fail(f"{where}.set.preset", f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        changes.update(PRESETS[name])
    for key, value in table.items():
        if key not in CONFIG_KEYS:
            v.fail(f"{where}.set.{key}", f"unknown key; known keys: {', '.join(CONFIG_KEYS)}")
        changes[key] = v.value(f"{where}.set.{key}", key, value)
    tune = v.get(raw, f"{where}.tune", bool, False)
    if tune and tuned is None:
        v.fail(f"{where}.tune", "needs `tuned` in [design] (and its grid in [space])")
    if tune and "lr" in changes:
        v.fail(f"{where}.tune", "a tuned row cannot also set lr")
    return Row(label=label, ladder=v.get(raw, f"{where}.ladder", str, ""), changes=changes, tune=tune)
