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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (pyproject.toml installs it there)
    import tomli as tomllib  # type: ignore[no-redef]

from ..config import CONFIG_KEYS, DEFAULT_STORAGE, DEFAULTS, KEYS, PRESETS, SUCCESS_THRESHOLD
from . import design as designs
from .design import Cell, Design
from .search import Dimension, parse_dimension
from .validator import SpecError, Validator

SAMPLERS = ("tpe", "random", "grid", "design")
STUDY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
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


def load(name_or_path: str, overrides: Sequence[str] = ()) -> Spec:
    """Load and validate a spec (with `--set KEY=VALUE` overrides); SpecError with one line."""
    path = resolve(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read: {exc}") from None
    return parse(override(raw, overrides), path=str(path), default_name=path.stem)


def override(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The spec with `KEY=VALUE` settings applied: `study.KEY` / `design.KEY` set that table's key;
    a config key is fixed to the value (and searched no more). VALUE is read as TOML (`500`,
    `1e-3`, `true`, `"relu"`, `[1, 2]`), else taken as text."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set steps=500")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        section, dot, name = key.partition(".")
        if dot and section in ("study", "design"):
            out.setdefault(section, {})[name] = value
        elif key in CONFIG_KEYS:
            out.setdefault("fixed", {})[key] = value
            if isinstance(out.get("space"), dict):
                out["space"].pop(key, None)
        else:
            raise SpecError(f"--set {item!r}: unknown key {key!r}; use a config key ({', '.join(CONFIG_KEYS)}), "
                            f"study.KEY or design.KEY")
    return out


def parse(raw: dict[str, Any], *, path: str, default_name: str) -> Spec:
    """Validate an already-parsed TOML document, section by section."""
    v = Validator(path)
    v.only(raw, "", {"study", "space", "fixed", "enqueue", "design"})
    study = _study(v, v.attempt(lambda: v.table(raw, "study"), {}), default_name)
    space = _space(v, v.attempt(lambda: v.table(raw, "space"), {}))
    # A design's tuned key may also be fixed: the value of the rows and cells that do not tune it.
    design_raw = raw.get("design") if isinstance(raw.get("design"), dict) else {}
    tuned = design_raw.get("tuned") if study["sampler"] == "design" else None
    fixed = _fixed(v, v.attempt(lambda: v.table(raw, "fixed"), {}), {k: d for k, d in space.items() if k != tuned})
    if study["sampler"] == "grid":
        for key, dim in space.items():
            if dim.choices is None and dim.grid is None:
                v.attempt(lambda: v.fail(f"space.{key}", "a grid spec needs `choices` or a `grid` list for every "
                                                        "dimension"), None)
    enqueue = _enqueue(v, raw.get("enqueue", []), space, fixed)
    design = None
    if study["sampler"] == "design":
        design = v.attempt(lambda: designs.parse(v, v.table(raw, "design"), space, fixed), None)
        if enqueue:
            v.attempt(lambda: v.fail("enqueue", "a designed study lists its cells in [design]; use [[design.rows]]"),
                      None)
    elif "design" in raw:
        v.attempt(lambda: v.fail("design", 'only a spec with sampler = "design" has a [design] table'), None)
    v.done()
    return Spec(path=path, space=space, fixed=fixed, enqueue=enqueue, design=design, **study)


def _study(v: Validator, study: dict[str, Any], default_name: str) -> dict[str, Any]:
    """The [study] table: name, sampler, budgets, seeds, threshold, storage (each key on its own)."""
    v.only(study, "study", {"name", "description", "sampler", "trials", "seeds", "seed", "data_seed",
                            "success_threshold", "storage"})

    def key(name: str, kind: type, default: Any, ok: Any = None, why: str = "") -> Any:
        def unit() -> Any:
            value = v.get(study, f"study.{name}", kind, default)
            if ok is not None and not ok(value):
                v.fail(f"study.{name}", f"{why}, got {value!r}")
            return value
        return v.attempt(unit, default)

    return {
        "name": key("name", str, default_name, check_name, NAME_RULE),
        "description": key("description", str, ""),
        "sampler": key("sampler", str, "tpe", lambda s: s in SAMPLERS, f"must be one of {', '.join(SAMPLERS)}"),
        "trials": key("trials", int, 100, lambda n: n >= 1, "must be at least 1"),
        "seeds": key("seeds", int, 8, lambda n: 1 <= n <= 1024, "must be between 1 and 1024"),
        "seed": key("seed", int, 0),
        "data_seed": key("data_seed", int, 0),
        "success_threshold": key("success_threshold", float, SUCCESS_THRESHOLD, lambda t: t > 0 and math.isfinite(t),
                                 "must be a positive number"),
        "storage": key("storage", str, DEFAULT_STORAGE),
    }


NAME_RULE = "use 1-100 letters, digits, '.', '_' or '-' (not starting with '.' or '-')"  # said by both


def check_name(name: str) -> bool:
    """The one rule for study names (specs and --study alike): 1-100 letters, digits, `.`, `_`, `-`,
    not starting with `.` or `-` (a name becomes a report folder and appears in URLs)."""
    return bool(STUDY_NAME.fullmatch(name))


def _space(v: Validator, space_raw: dict[str, Any]) -> dict[str, Dimension]:
    """The [space.KEY] tables: each searched key's choices or range."""
    space: dict[str, Dimension] = {}
    for key, dim_raw in space_raw.items():
        def unit(key: str = key, dim_raw: Any = dim_raw) -> Dimension:
            if key not in KEYS:
                v.fail(f"space.{key}", f"unknown key; known keys: {', '.join(CONFIG_KEYS)}")
            if not isinstance(dim_raw, dict):
                v.fail(f"space.{key}", "must be a table with `choices` or `low`/`high`")
            return parse_dimension(v, key, dim_raw)
        dim = v.attempt(unit, None)
        if dim is not None:
            space[key] = dim
    return space


def _fixed(v: Validator, fixed_raw: dict[str, Any], space: dict[str, Dimension]) -> dict[str, Any]:
    """The [fixed] table (a preset first, the spec's own values over it), then the defaults."""
    fixed: dict[str, Any] = {}
    fixed_raw = dict(fixed_raw)
    if "preset" in fixed_raw:
        # The preset's settings, except for keys the spec searches or fixes itself.
        preset = fixed_raw.pop("preset")
        for key, value in v.attempt(lambda: _preset(v, "fixed.preset", preset), {}).items():
            if key not in space and key not in fixed_raw:
                fixed[key] = value
    for key, value in fixed_raw.items():
        def unit(key: str = key, value: Any = value) -> None:
            if key not in KEYS:
                v.fail(f"fixed.{key}", f"unknown key; known keys: {', '.join(CONFIG_KEYS)}")
            if key in space:
                v.fail(f"fixed.{key}", "is also in [space]; a key is either searched or fixed")
            fixed[key] = v.value(f"fixed.{key}", key, value)
        v.attempt(unit, None)
    for key in CONFIG_KEYS:
        if key not in space and key not in fixed:
            fixed[key] = DEFAULTS[key]
    return fixed


def _enqueue(v: Validator, enqueue_raw: Any, space: dict[str, Dimension],
             fixed: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The [[enqueue]] entries: configurations always run, each setting every searched key."""
    if not isinstance(enqueue_raw, list):
        return v.attempt(lambda: v.fail("enqueue", "must be an array of tables ([[enqueue]])"), ())
    entries = [v.attempt(lambda i=i, item=item: _entry(v, i, item, space, fixed), None)
               for i, item in enumerate(enqueue_raw)]
    return tuple(e for e in entries if e is not None)


def _entry(v: Validator, i: int, item: Any, space: dict[str, Dimension], fixed: dict[str, Any]) -> dict[str, Any]:
    """One [[enqueue]] entry: values of searched keys only (a preset's, then its own)."""
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
            elif fixed.get(key) != value:
                v.fail(f"{where}.preset", f"sets {key} = {value!r} but the spec fixes it to {fixed.get(key)!r}; "
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
    return params


def _preset(v: Validator, where: str, name: Any) -> dict[str, Any]:
    if not isinstance(name, str) or name not in PRESETS:
        v.fail(where, f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]
