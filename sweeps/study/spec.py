"""Sweep specs: TOML files in `sweeps/specs/`, loaded and validated into a typed `Spec`.

A spec names a study and says what it searches (`[space.KEY]`), what it holds fixed
(`[fixed]`), how it samples (`[study]`) and which configurations it always runs (`[[enqueue]]`).
`preset = "NAME"` (see `config.PRESETS`) in [fixed] or in an [[enqueue]] entry stands for that
recipe's settings.
Every mistake is a `SpecError` whose message names the file and the key, raised before anything
touches a storage.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import CONFIG_KEYS, DEFAULT_STORAGE, DEFAULTS, KEYS, PRESETS, SUCCESS_THRESHOLD
from . import design as designs
from .design import Cell, Design
from .search import Dimension
from .validator import SpecError, Validator

SAMPLERS = ("tpe", "random", "grid", "design")
# Config keys added after studies were made: left out of the space hash while at their defaults,
# so that a study made before they existed keeps its identity.
LATER_KEYS = ("abstol", "reltol", "bias_copies")


@dataclass(frozen=True)
class Spec:
    """A validated sweep: searched dimensions, fixed settings, sampler and budgets."""

    name: str
    path: str
    description: str
    sampler: str
    trials: int
    seeds: int
    seed: int
    data_seed: int
    success_threshold: float
    storage: str
    space: dict[str, Dimension]
    fixed: dict[str, Any]
    enqueue: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    design: Design | None = None

    def space_hash(self) -> str:
        """Identity of what the study means: space, fixed settings, seeds, data seed.

        Budgets and the storage may change between runs of one study; this may not.
        """
        fixed = {k: v for k, v in self.fixed.items() if not (k in LATER_KEYS and v == DEFAULTS[k])}
        ident = {
            "space": {k: vars(d) for k, d in sorted(self.space.items())},
            "fixed": fixed,
            "seeds": self.seeds,
            "seed": self.seed,
            "data_seed": self.data_seed,
            "success_threshold": self.success_threshold,
        }
        if self.design is not None:
            ident["design"] = self.design.identity()
        blob = json.dumps(ident, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def cells(self) -> list[Cell]:
        """The cells of a designed study (empty for other samplers)."""
        return self.design.cells(self.space, self.fixed) if self.design is not None else []

    def grid_cells(self) -> list[dict[str, Any]]:
        """Every combination of the searched values (grid specs), in a stable order."""
        import itertools

        names = sorted(self.space)
        values = [self.space[n].grid_values() for n in names]
        return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def bundled_specs() -> dict[str, Path]:
    """Specs shipped with the package, by name."""
    folder = resources.files("sweeps") / "specs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def resolve(name_or_path: str) -> Path:
    """A bundled spec's name, or a path to a TOML file."""
    specs = bundled_specs()
    if name_or_path in specs:
        return specs[name_or_path]
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SpecError(f"{path}: no such spec file")
        return path
    raise SpecError(f"unknown spec {name_or_path!r}: choose one of {', '.join(sorted(specs))} or give a path to a .toml file")


def load(name_or_path: str) -> Spec:
    """Load and validate a spec; raises SpecError with a one-line message."""
    path = resolve(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read: {exc}") from None
    return parse(raw, path=str(path), default_name=path.stem)


def parse(raw: dict[str, Any], *, path: str, default_name: str) -> Spec:
    """Validate an already-parsed TOML document, section by section."""
    v = Validator(path)
    v.only(raw, "", {"study", "space", "fixed", "enqueue", "design"})
    study = _study(v, v.table(raw, "study"), default_name)
    space = _space(v, v.table(raw, "space"))
    # A design's tuned key may also be fixed: the value of the rows and cells that do not tune it.
    tuned = (raw.get("design") or {}).get("tuned") if study["sampler"] == "design" else None
    fixed = _fixed(v, v.table(raw, "fixed"), {k: d for k, d in space.items() if k != tuned})
    if study["sampler"] == "grid":
        for key, dim in space.items():
            if dim.choices is None and dim.grid is None:
                v.fail(f"space.{key}", "a grid spec needs `choices` or a `grid` list for every dimension")
    enqueue = _enqueue(v, raw.get("enqueue", []), space, fixed)
    design = None
    if study["sampler"] == "design":
        design = designs.parse(v, v.table(raw, "design"), space, fixed)
        if enqueue:
            v.fail("enqueue", "a designed study lists its cells in [design]; use [[design.rows]]")
    elif "design" in raw:
        v.fail("design", 'only a spec with sampler = "design" has a [design] table')
    return Spec(path=path, space=space, fixed=fixed, enqueue=enqueue, design=design, **study)


def _study(v: Validator, study: dict[str, Any], default_name: str) -> dict[str, Any]:
    """The [study] table: name, sampler, budgets, seeds, threshold, storage."""
    v.only(study, "study", {"name", "description", "sampler", "trials", "seeds", "seed", "data_seed",
                            "success_threshold", "storage"})
    name = v.get(study, "study.name", str, default_name)
    if not name or any(c.isspace() for c in name):
        v.fail("study.name", f"must be a non-empty name without spaces, got {name!r}")
    sampler = v.get(study, "study.sampler", str, "tpe")
    if sampler not in SAMPLERS:
        v.fail("study.sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    trials = v.get(study, "study.trials", int, 100)
    seeds = v.get(study, "study.seeds", int, 8)
    if trials < 1:
        v.fail("study.trials", f"must be at least 1, got {trials}")
    if not 1 <= seeds <= 1024:
        v.fail("study.seeds", f"must be between 1 and 1024, got {seeds}")
    threshold = v.get(study, "study.success_threshold", float, SUCCESS_THRESHOLD)
    if not (threshold > 0 and math.isfinite(threshold)):
        v.fail("study.success_threshold", f"must be a positive number, got {threshold}")
    return {"name": name, "description": v.get(study, "study.description", str, ""), "sampler": sampler,
            "trials": trials, "seeds": seeds, "seed": v.get(study, "study.seed", int, 0),
            "data_seed": v.get(study, "study.data_seed", int, 0), "success_threshold": threshold,
            "storage": v.get(study, "study.storage", str, DEFAULT_STORAGE)}


def _space(v: Validator, space_raw: dict[str, Any]) -> dict[str, Dimension]:
    """The [space.KEY] tables: each searched key's choices or range."""
    space: dict[str, Dimension] = {}
    for key, dim_raw in space_raw.items():
        if key not in KEYS:
            v.fail(f"space.{key}", f"unknown key; known keys: {', '.join(CONFIG_KEYS)}")
        if not isinstance(dim_raw, dict):
            v.fail(f"space.{key}", "must be a table with `choices` or `low`/`high`")
        space[key] = _dimension(v, key, dim_raw)
    return space


def _fixed(v: Validator, fixed_raw: dict[str, Any], space: dict[str, Dimension]) -> dict[str, Any]:
    """The [fixed] table (a preset first, the spec's own values over it), then the defaults."""
    fixed: dict[str, Any] = {}
    fixed_raw = dict(fixed_raw)
    if "preset" in fixed_raw:
        # The preset's settings, except for keys the spec searches or fixes itself.
        for key, value in _preset(v, "fixed.preset", fixed_raw.pop("preset")).items():
            if key not in space and key not in fixed_raw:
                fixed[key] = value
    for key, value in fixed_raw.items():
        if key not in KEYS:
            v.fail(f"fixed.{key}", f"unknown key; known keys: {', '.join(CONFIG_KEYS)}")
        if key in space:
            v.fail(f"fixed.{key}", "is also in [space]; a key is either searched or fixed")
        fixed[key] = v.value(f"fixed.{key}", key, value)
    for key in CONFIG_KEYS:
        if key not in space and key not in fixed:
            fixed[key] = DEFAULTS[key]
    return fixed


def _enqueue(v: Validator, enqueue_raw: Any, space: dict[str, Dimension],
             fixed: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The [[enqueue]] entries: configurations always run, each setting every searched key."""
    if not isinstance(enqueue_raw, list):
        v.fail("enqueue", "must be an array of tables ([[enqueue]])")
    enqueue = []
    for i, item in enumerate(enqueue_raw):
        where = f"enqueue[{i}]"
        if not isinstance(item, dict):
            v.fail(where, "must be a table")
        params = {}
        item = dict(item)
        if "preset" in item:
            for key, value in _preset(v, f"{where}.preset", item.pop("preset")).items():
                if key in item:
                    continue  # the entry's own value wins
                if key in space:
                    if not space[key].contains(value):
                        v.fail(f"{where}.preset", f"sets {key} = {value!r}, outside [space.{key}]; add it to the choices")
                    params[key] = value
                elif fixed[key] != value:
                    v.fail(f"{where}.preset", f"sets {key} = {value!r} but the spec fixes it to {fixed[key]!r}; "
                                              f"search {key} with both values, or fix it to {value!r}")
        for key, value in item.items():
            if key not in space:
                v.fail(f"{where}.{key}", "is not a searched key; enqueued trials set values of [space] keys only")
            value = v.value(f"{where}.{key}", key, value)
            if not space[key].contains(value):
                v.fail(f"{where}.{key}", f"value {value!r} is outside the dimension")
            params[key] = value
        missing = sorted(set(space) - set(params))
        if missing:
            v.fail(where, f"must set every searched key; missing {', '.join(missing)}")
        enqueue.append(params)
    return tuple(enqueue)


def _preset(v: Validator, where: str, name: Any) -> dict[str, Any]:
    if not isinstance(name, str) or name not in PRESETS:
        v.fail(where, f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def _dimension(v: Validator, key: str, raw: dict[str, Any]) -> Dimension:
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
