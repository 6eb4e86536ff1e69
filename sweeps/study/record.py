"""The trial record: what a finished trial stores in Optuna, written and read only here.

A trial's value is the median over seeds of the test MSE (diverged seeds count as +inf, so a trial
where most seeds diverge is worse than any that fit). Its user attributes:

- `success_rate` (seeds under the success threshold), `diverged` (seeds that diverged), `n_params`;
- `config`: the whole configuration, fixed settings included;
- `seeds`: per seed its init `seed`, `test_mse` (None where it diverged: JSON has no inf),
  `train_mse`, `steps`, `evals` (gradient or Jacobian evaluations), `seconds` (its share of its
  batch's time), `diverged_at`, and `test_at`: its test MSE at each of the trial's `checkpoints`
  (None once diverged; a second-order model that stopped keeps its final value);
- `checkpoints`: the steps (second order: iterations) at which test MSEs were recorded: 0, the
  1-2-5 series and the budget, so that "has this seed fit by step s" needs no retraining;
- `fit`: `hidden`, `activation`, the input `shift`/`scale`, every seed's fitted `params` (own layout
  [w1|b1|w2|b2], None where diverged), the `median_seed` and its learning `curve`;
- `run`: device, versions, host, spec name and hash, batch size, start time, wall times;
- `fail_reason` on FAIL trials (`diverged` when every seed did; `interrupted`, `stale`, an error),
  `retry_of` on a retry (the number of the failed trial it redoes);
- flat, short copies for tables that show attributes as columns (optuna-dashboard's): `seeds_fit`
  ("12/16"), `median_test_mse`, `log10_median_test_mse` (MSEs span ten decades: a history plot
  of it reads where the value's linear axis flattens everything near 0), `best_test_mse`,
  `evals_median`, `seconds_per_fit_s`, `trial_wall_s`, `device`; a designed study's trials also `phase` and `cell_label`
  (`design_attrs`). Readers use the structured attributes above; these are for people.

A study carries `spec` (the spec it was made from, as a table), `spec_toml` (the spec file's text,
headed by what `--set` changed, if anything), `space_hash` (its identity: a changed space is
refused) and `opens` (how often it was opened: seeds each opening's sampler).

`summarise` writes a record from the engine's results; `read` gives any consumer (report,
dashboard, `sweeps show`, the R reference) a typed view of a stored trial, so that no other module
indexes user attributes by string. `is_done`/`superseded` say which trials count toward a budget.

Over 300 lines on purpose: the schema's writers and its reader stay in one module so that they
cannot drift apart.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from ..config import Config
from ..engine.jobs import Result, checkpoints
from .spec import Spec

FAIL_REASON = "fail_reason"
FAIL_DETAIL = "fail_detail"
DIVERGED = "diverged"
INTERRUPTED = "interrupted"
SEEDS_FIT = "seeds_fit"  # flat "k/n": seeds under the success threshold (also the runner's index reads it)
RETRY_OF = "retry_of"  # user attribute of a retry: the number of the failed trial it redoes
SPEC, SPACE_HASH, OPENS, SPEC_TOML = "spec", "space_hash", "opens", "spec_toml"  # study user attributes
# Flat copies of a trial's numbers, short enough for a table column (units in the names).
FLAT = ("seeds_fit", "median_test_mse", "best_test_mse", "evals_median", "seconds_per_fit_s", "trial_wall_s",
        "device", "phase", "cell_label")
CELL = "cell"  # a designed study's trial: its cell (label, control arm, ladder, changes, tuned)
TUNED_FROM = "tuned_from"  # a confirmation: [lr, seeds fit, median MSE, trial number] of each tuning trial


@dataclass(frozen=True)
class TrialOutcome:
    """value is None when every seed diverged (the trial is then told FAIL with `reason`)."""

    value: float | None
    reason: str | None
    attrs: dict[str, Any]


def versions() -> dict[str, str]:
    """The library versions a record carries."""
    import optuna
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__}


def host() -> str:
    """This machine's name, as records name it."""
    return platform.node() or sys.platform


def summarise(config: Config, seeds: Sequence[int], results: Sequence[Result], *, threshold: float,
              run: dict[str, Any]) -> TrialOutcome:
    """The value and attributes of one trial from its models' results (in seed order)."""
    mses = [r.test_mse for r in results]
    n = len(results)
    diverged = sum(r.diverged for r in results)
    successes = sum(m < threshold for m in mses)
    finite = sorted((m, i) for i, m in enumerate(mses) if math.isfinite(m))
    median_seed = finite[(len(finite) - 1) // 2][1] if finite else None
    points = checkpoints(config.steps)
    attrs: dict[str, Any] = {
        "success_rate": successes / n,
        "diverged": diverged,
        "n_params": config.n_params(),
        "config": config.as_dict(),
        "checkpoints": points,
        "seeds": {
            "seed": list(seeds),
            "test_mse": [short(m) for m in mses],
            "train_mse": [short(r.train_mse) for r in results],
            "steps": [r.steps for r in results],
            "evals": [r.evals for r in results],
            "seconds": [short(r.seconds, 3) for r in results],
            "diverged_at": [r.diverged_at for r in results],
            "test_at": [_test_at(r, points) for r in results],
        },
        "fit": {
            "hidden": config.hidden,
            "activation": config.activation,
            "shift": results[0].shift,
            "scale": results[0].scale,
            "params": [[short(v) for v in r.params] if r.params is not None else None for r in results],
            "median_seed": median_seed,
            "curve": [[s, short(a), short(b)] for s, a, b in results[median_seed].curve] if median_seed is not None else [],
        },
        "run": run,
    }
    attrs.update(_flat(mses, successes, results, run))
    if diverged == n:
        attrs[FAIL_REASON] = DIVERGED
        attrs[FAIL_DETAIL] = f"all {n} seeds diverged"
        return TrialOutcome(None, attrs[FAIL_DETAIL], attrs)
    return TrialOutcome(statistics.median(mses), None, attrs)


def _flat(mses: Sequence[float], successes: int, results: Sequence[Result], run: dict[str, Any]) -> dict[str, Any]:
    """The flat, short attributes of a trial (see the module docstring); inf is stored as null."""
    finite = [m for m in mses if math.isfinite(m)]
    evals = [r.evals for r in results if r.evals is not None]
    seconds = [r.seconds for r in results if r.seconds is not None and math.isfinite(r.seconds)]
    wall = run.get("wall_time_s")
    return {
        SEEDS_FIT: f"{successes}/{len(mses)}",
        "median_test_mse": short(statistics.median(mses), 4) if mses else None,
        "log10_median_test_mse": _log10(statistics.median(mses)) if mses else None,
        "best_test_mse": short(min(finite), 4) if finite else None,
        "evals_median": statistics.median(evals) if evals else None,
        "seconds_per_fit_s": short(statistics.median(seconds), 3) if seconds else None,
        "trial_wall_s": short(float(wall), 3) if isinstance(wall, (int, float)) else None,
        "device": run.get("device"),
    }


def _log10(mse: float) -> float | None:
    """log10 of an MSE to 3 decimals; None where it has none (0, or most seeds diverged: inf)."""
    return round(math.log10(mse), 3) if 0 < mse < math.inf else None


def seeds_fit(user_attrs: dict[str, Any], threshold: float) -> int | None:
    """Seeds of a finished trial under the success threshold, from its user attributes: its
    `seeds_fit` ("k/n", the spec's own threshold) or its per-seed test MSEs; None when it carries
    neither (the runner's light index row of a study written before `seeds_fit` existed)."""
    fit = user_attrs.get(SEEDS_FIT)
    if isinstance(fit, str) and "/" in fit:
        return int(fit.split("/", 1)[0])
    mses = (user_attrs.get("seeds") or {}).get("test_mse")
    if mses is None:
        return None
    return sum(m is not None and m < threshold for m in mses)


def design_attrs(cell: dict[str, Any], phase: str) -> dict[str, Any]:
    """The flat attributes of a designed study's trial: its `phase` (tune/confirm) and `cell_label`.

    Meant to be merged into the trial's attributes beside `CELL` (the structured cell) where the
    designed study's work is planned.
    """
    return {"phase": phase, "cell_label": str(cell.get("label") or "")[:80]}


def short(x: float, digits: int = 8) -> float:
    """A float to `digits` significant digits: float32 results carry no more, and JSON stays small."""
    return float(f"{x:.{digits}g}") if math.isfinite(x) else x


def _test_at(result: Result, points: Sequence[int]) -> list[float | None]:
    """The model's test MSE at each checkpoint: None where it had diverged or not got to; a model
    that stopped early (second order, converged) keeps its final value."""
    seen = {step: test for step, _, test in result.curve}
    last = result.curve[-1][0] if result.curve else -1
    out: list[float | None] = []
    for p in points:
        if p in seen:
            out.append(short(seen[p]))
        elif p > last and not result.diverged and result.curve:
            out.append(short(result.test_mse))
        else:
            out.append(None)
    return out


def reference_attrs(config: dict[str, Any], rows: Sequence[dict[str, Any]], *, threshold: float,
                    run: dict[str, Any], extra_columns: Sequence[str] = ()) -> dict[str, Any]:
    """The record of a reference implementation's fits (R's nnet), one row per seed.

    Rows carry seed, test_mse, train_mse, iterations and the `extra_columns` (e.g. R's seconds and
    convergence code); there are no fitted parameters.
    """
    mses = [r["test_mse"] for r in rows]
    return {
        "success_rate": sum(m < threshold for m in mses) / len(mses),
        "diverged": sum(not math.isfinite(m) for m in mses),
        "config": config,
        "seeds": {**{k: [r[k] for r in rows] for k in ("seed", "test_mse", "train_mse", *extra_columns)},
                  "steps": [r["iterations"] for r in rows], "diverged_at": [None] * len(rows)},
        "run": run,
    }


def study_attrs(spec: Spec) -> dict[str, Any]:
    """The user attributes a study gets from its spec when it is made."""
    return {
        SPEC: {"name": spec.name, "path": spec.path, "description": spec.description, "sampler": spec.sampler,
               "seeds": spec.seeds, "success_threshold": spec.success_threshold, "data_seed": spec.data_seed,
               "fixed": spec.fixed,
               "space": {k: {kk: vv for kk, vv in vars(d).items() if vv is not None} for k, d in spec.space.items()},
               **({"design": spec.design.identity()} if spec.design is not None else {})},
        SPACE_HASH: spec.space_hash(),
        SPEC_TOML: spec_toml(spec),
    }


def spec_toml(spec: Spec) -> str:
    """The spec as TOML text: its file, headed by comments naming what `--set` changed (if anything).

    The file is re-read and re-parsed without overrides; every setting where the spec that ran
    differs from it is listed, so that the text never claims a run that did not happen.
    """
    from .spec import load
    from .validator import SpecError

    try:
        text = Path(spec.path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return (f"# {spec.path} could not be read when this study was made ({exc.__class__.__name__}); "
                f"the study's `spec` attribute holds what ran.\n")
    try:
        changed = _differences(spec, load(spec.path))
    except SpecError as exc:
        changed = [f"(could not compare with the file: {exc})"]
    if not changed:
        return text
    head = [f"# Ran with --set overrides: the study differs from {Path(spec.path).name} below in", "#"]
    head += [f"#   {line}" for line in changed]
    return "\n".join(head + ["#", ""]) + text


def _differences(ran: Spec, file: Spec) -> list[str]:
    """'section.key = value (the file: value)' for every setting where `ran` differs from `file`."""
    def show(value: Any) -> str:
        return json.dumps(value, default=str)

    out = []
    for key in ("name", "description", "sampler", "trials", "seeds", "seed", "data_seed", "success_threshold",
                "storage"):
        if getattr(ran, key) != getattr(file, key):
            out.append(f"study.{key} = {show(getattr(ran, key))} (the file: {show(getattr(file, key))})")
    for key in sorted(set(ran.fixed) | set(file.fixed)):
        a, b = ran.fixed.get(key), file.fixed.get(key)
        if a != b:
            was = "searched" if key in file.space else show(b)
            out.append(f"fixed.{key} = {show(a)} (the file: {was})" if key in ran.fixed
                       else f"fixed.{key}: not fixed (the file: {was})")
    for key in sorted(set(ran.space) | set(file.space)):
        a = vars(ran.space[key]) if key in ran.space else None
        b = vars(file.space[key]) if key in file.space else None
        if a != b and a is not None:
            out.append(f"space.{key} changed (the file: {'not searched' if b is None else 'other values'})")
        elif a != b:
            out.append(f"space.{key}: not searched (fixed instead)")
    a_design = ran.design.identity() if ran.design is not None else None
    b_design = file.design.identity() if file.design is not None else None
    if a_design != b_design:
        keys = sorted(k for k in set(a_design or {}) | set(b_design or {})
                      if (a_design or {}).get(k) != (b_design or {}).get(k))
        out.append(f"design: {', '.join(keys) or 'changed'} (see the study's `spec` attribute)")
    return out


# -- reading ------------------------------------------------------------------------------------


def read_spec(study_user_attrs: dict[str, Any]) -> dict[str, Any]:
    """The spec a study was made from, as stored (empty when it has none)."""
    return dict(study_user_attrs.get(SPEC) or {})


def read_spec_toml(study_user_attrs: dict[str, Any]) -> str | None:
    """The spec's TOML text as stored when the study was made (None for studies made before it was)."""
    text = study_user_attrs.get(SPEC_TOML)
    return text if isinstance(text, str) else None


@dataclass(frozen=True)
class Fit:
    """What it takes to redraw a trial's fitted curves without retraining."""

    hidden: int
    activation: str
    shift: float
    scale: float
    params: list[list[float] | None]  # per seed, own layout; None where the seed diverged
    median_seed: int | None
    curve: list[tuple[float, ...]]  # the median seed's (step, training MSE[, test MSE])


@dataclass(frozen=True)
class Seeds:
    """Per-seed numbers of a trial, in seed order (test_mse None: that seed diverged)."""

    seed: list[int] = field(default_factory=list)
    test_mse: list[float | None] = field(default_factory=list)
    train_mse: list[float | None] = field(default_factory=list)
    steps: list[int | None] = field(default_factory=list)
    diverged_at: list[int | None] = field(default_factory=list)
    evals: list[int | None] = field(default_factory=list)
    seconds: list[float | None] = field(default_factory=list)
    test_at: list[list[float | None]] = field(default_factory=list)  # per seed, at Record.checkpoints
    extra: dict[str, list[Any]] = field(default_factory=dict)  # a reference's own columns (convergence, …)


@dataclass(frozen=True)
class Record:
    """A stored trial as every consumer sees it."""

    number: int
    state: TrialState
    value: float | None
    params: dict[str, Any]
    config: dict[str, Any]  # the full configuration (stored, else the params)
    success_rate: float | None
    diverged: int | None
    n_params: int | None
    seeds: Seeds
    fit: Fit | None
    run: dict[str, Any]
    fail_reason: str | None
    retry_of: int | None
    labels: dict[str, str]  # short text attributes a spec or tool added (e.g. a program's name)
    checkpoints: list[int] = field(default_factory=list)
    cell: dict[str, Any] = field(default_factory=dict)  # a designed study's cell (see CELL)
    tuned_from: list[list[Any]] = field(default_factory=list)  # a confirmation's tuning trials (see TUNED_FROM)

    @property
    def bias(self) -> str | None:
        return self.config.get("bias")


_KNOWN = {"success_rate", "diverged", "n_params", "config", "seeds", "fit", "run", FAIL_REASON, FAIL_DETAIL,
          RETRY_OF, "checkpoints", CELL, TUNED_FROM, *FLAT}
_SEED_KEYS = ("seed", "test_mse", "train_mse", "steps", "diverged_at", "evals", "seconds", "test_at")


def read(trial: FrozenTrial) -> Record:
    """The typed view of a stored trial (missing attributes read as empty, never as an error)."""
    ua = trial.user_attrs
    seeds_raw = ua.get("seeds") or {}
    fit_raw = ua.get("fit") or {}
    fit = None
    if fit_raw.get("params") is not None and "hidden" in fit_raw:
        fit = Fit(hidden=int(fit_raw["hidden"]), activation=str(fit_raw["activation"]),
                  shift=float(fit_raw.get("shift", 0.0)), scale=float(fit_raw.get("scale", 1.0)),
                  params=list(fit_raw["params"]), median_seed=fit_raw.get("median_seed"),
                  curve=[tuple(float(v) for v in point) for point in fit_raw.get("curve") or []])
    value = trial.values[0] if trial.values else None
    return Record(
        number=trial.number,
        state=trial.state,
        value=value,
        params=dict(trial.params),
        config={**trial.params, **(ua.get("config") or {})},
        success_rate=ua.get("success_rate"),
        diverged=ua.get("diverged"),
        n_params=ua.get("n_params"),
        seeds=Seeds(**{k: list(seeds_raw.get(k) or []) for k in _SEED_KEYS},
                    extra={k: list(v) for k, v in seeds_raw.items() if k not in _SEED_KEYS}),
        fit=fit,
        run=dict(ua.get("run") or {}),
        fail_reason=ua.get(FAIL_REASON),
        retry_of=ua.get(RETRY_OF),
        labels={k: v for k, v in ua.items() if k not in _KNOWN and isinstance(v, str) and len(v) <= 80},
        checkpoints=list(ua.get("checkpoints") or []),
        cell=dict(ua.get(CELL) or {}),
        tuned_from=list(ua.get(TUNED_FROM) or []),
    )


def superseded(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of trials that some other trial retries."""
    out: set[int] = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", ()))
        if RETRY_OF in t.user_attrs:
            out.add(t.user_attrs[RETRY_OF])
    return out


def is_done(trial: FrozenTrial, retried: set[int]) -> bool:
    """Whether the trial counts toward the budget: COMPLETE, or FAIL because every seed diverged
    (a real result), unless a later trial retries it. Interrupted, crashed or stale trials never count."""
    if trial.number in retried:
        return False
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and trial.user_attrs.get(FAIL_REASON) == DIVERGED)


def seed_mse(value: float | None) -> float:
    """A stored per-seed test MSE as a number: None (a diverged seed) is +inf."""
    return math.inf if value is None else float(value)


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not JSON; the dashboard's parser rejects them) by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
