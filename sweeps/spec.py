"""Sweep specs: TOML files in `sweeps/specs/`, loaded and validated into a typed `Spec`.

A spec names a study and says what it searches (`[space.KEY]`), what it holds fixed
(`[fixed]`), how it samples (`[study]`) and which configurations it always runs (`[[enqueue]]`).
`preset = "NAME"` (see `space.PRESETS`) in [fixed] or in an [[enqueue]] entry stands for that
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

from .space import CONFIG_KEYS, DEFAULTS, KEYS, PRESETS, Dimension

SAMPLERS = ("tpe", "random", "grid")
DEFAULT_STORAGE = "sqlite:///studies/studies.db"  # = storage.DEFAULT_URL (no optuna import here)
# Config keys added after studies were made: left out of the space hash while at their defaults,
# so that a study made before they existed keeps its identity.
LATER_KEYS = ("abstol", "reltol", "bias_copies")


class SpecError(ValueError):
    """A spec that cannot be used; the message is one line naming the file and key."""


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
        blob = json.dumps(ident, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

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
    """Validate an already-parsed TOML document."""
    v = _Validator(path)
    v.only(raw, "", {"study", "space", "fixed", "enqueue"})
    study = v.table(raw, "study")
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
    threshold = v.get(study, "study.success_threshold", float, 1e-3)
    if not (threshold > 0 and math.isfinite(threshold)):
        v.fail("study.success_threshold", f"must be a positive number, got {threshold}")

    space_raw = v.table(raw, "space")
    fixed_raw = v.table(raw, "fixed")
    space: dict[str, Dimension] = {}
    for key, dim_raw in space_raw.items():
        if key not in KEYS:
            v.fail(f"space.{key}", f"unknown key; known keys: {', '.join(CONFIG_KEYS)}")
        if not isinstance(dim_raw, dict):
            v.fail(f"space.{key}", "must be a table with `choices` or `low`/`high`")
        space[key] = _dimension(v, key, dim_raw)
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

    if sampler == "grid":
        for key, dim in space.items():
            if dim.choices is None and dim.grid is None:
                v.fail(f"space.{key}", "a grid spec needs `choices` or a `grid` list for every dimension")

    enqueue_raw = raw.get("enqueue", [])
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

    return Spec(
        name=name,
        path=path,
        description=v.get(study, "study.description", str, ""),
        sampler=sampler,
        trials=trials,
        seeds=seeds,
        seed=v.get(study, "study.seed", int, 0),
        data_seed=v.get(study, "study.data_seed", int, 0),
        success_threshold=threshold,
        storage=v.get(study, "study.storage", str, DEFAULT_STORAGE),
        space=space,
        fixed=fixed,
        enqueue=tuple(enqueue),
    )


def _preset(v: "_Validator", where: str, name: Any) -> dict[str, Any]:
    if not isinstance(name, str) or name not in PRESETS:
        v.fail(where, f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def _dimension(v: "_Validator", key: str, raw: dict[str, Any]) -> Dimension:
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


class _Validator:
    """Type checks that raise one-line SpecErrors naming the file and key."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> None:
        raise SpecError(f"{self.path}: {key}: {message}")

    def only(self, table: dict[str, Any], where: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                name = f"{where}.{key}" if where else key
                self.fail(name, f"unknown key; allowed: {', '.join(sorted(allowed))}")

    def table(self, raw: dict[str, Any], key: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.fail(key, "must be a table")
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
