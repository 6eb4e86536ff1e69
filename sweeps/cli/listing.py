"""`sweeps list`, `sweeps show` and `sweeps specs`: what a storage and the bundled specs hold, as text
or as JSON (`--json`). Readers open the storage read-only: they never write, nor create a schema.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..console import EXIT_USAGE, fail
from ..study import rdb
from ..study import spec as specs
from ..study import storage as st
from ..study.errors import mask
from ..study.record import read

SHOWN_KEYS = ("phase", "cell", "hidden", "bias", "activation", "optimizer", "lr", "data", "loss", "init", "scaling",
              "steps", "precision", "bias_copies")
SECOND_ORDER_UNUSED = ("lr", "precision", "bias_copies")  # what bfgs and lm do not use


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=lambda o: None if isinstance(o, float) and not math.isfinite(o) else str(o)))


def list_studies(args: argparse.Namespace) -> int:
    """The studies in a storage with their trial counts and best values."""
    import optuna

    storage = st.open_readonly(args.storage)
    rows = []
    for s in optuna.get_all_study_summaries(storage):
        trials = storage.get_all_trials(rdb.study_id(s), deepcopy=False)
        best = s.best_trial.value if s.best_trial is not None and s.best_trial.value is not None else None
        rows.append({"study": s.study_name, "trials": len(trials),
                     "complete": sum(t.state.name == "COMPLETE" for t in trials),
                     "sampler": (s.user_attrs.get("spec") or {}).get("sampler"), "best_median_mse": best})
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no studies in {mask(args.storage)}")
        return 0
    print(f"{'study':<24} {'sampler':>8} {'trials':>7} {'complete':>9} {'best median MSE':>16}")
    for r in rows:
        print(f"{r['study']:<24} {_fmt(r['sampler']):>8} {r['trials']:>7} {r['complete']:>9} "
              f"{_fmt(r['best_median_mse']):>16}")
    return 0


def show_study(args: argparse.Namespace) -> int:
    """A study's best trials: the settings that vary across them as columns, the rest in one line.

    A designed study shows its confirmations only (their seeds were not used to choose anything).
    """
    import optuna

    storage = st.open_readonly(args.storage)
    names = [s.study_name for s in storage.get_all_studies()]
    if args.study not in names:
        return fail(f"no study {args.study!r} in {mask(args.storage)} (have: {', '.join(names) or 'none'})", EXIT_USAGE)
    study = optuna.load_study(study_name=args.study, storage=storage)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None and not math.isnan(t.value)]
    if any(t.params.get("phase") == "confirm" for t in done):
        done = [t for t in done if t.params.get("phase") == "confirm"]
    done.sort(key=lambda t: t.value)
    top = done[:args.top]
    rows = []
    for t in top:
        rec = read(t)
        cfg = {**rec.config, "phase": rec.params.get("phase"), "cell": rec.cell.get("label")}
        if cfg.get("optimizer") in ("bfgs", "lm"):
            cfg.update({k: None for k in SECOND_ORDER_UNUSED})
        rows.append({"trial": t.number, "median_test_mse": t.value, "success_rate": rec.success_rate,
                     "n_params": rec.n_params, **{k: cfg.get(k) for k in SHOWN_KEYS}})
    varying = [k for k in SHOWN_KEYS if len({_fmt(r[k]) for r in rows}) > 1]
    fixed = {k: rows[0][k] for k in SHOWN_KEYS if k not in varying and rows and rows[0][k] is not None}
    if args.json:
        _print_json({"study": args.study, "trials": len(trials), "complete": len(done), "fixed": fixed, "top": rows})
        return 0
    print(f"study {args.study!r}: {len(trials)} trials, {len(done)} complete"
          + (" confirmations" if any(t.params.get("phase") for t in top) else "") + f"; top {len(top)}:")
    if fixed:
        print("same in all of these: " + ", ".join(f"{k}={_fmt(v)}" for k, v in fixed.items()))
    widths = {k: max([len(k)] + [len(_fmt(r[k])) for r in rows]) for k in varying}
    print(f"{'#':>5} {'median MSE':>11} {'success':>8} {'params':>6}  " + "  ".join(f"{k:<{widths[k]}}" for k in varying))
    for r in rows:
        rate = f"{r['success_rate']:.0%}" if isinstance(r["success_rate"], (int, float)) else "-"
        print(f"{r['trial']:>5} {r['median_test_mse']:>11.3g} {rate:>8} {_fmt(r['n_params']):>6}  "
              + "  ".join(f"{_fmt(r[k]):<{widths[k]}}" for k in varying))
    return 0


def list_specs(args: argparse.Namespace) -> int:
    """The bundled specs: sampler, budget, seeds, what each is for."""
    from ..study.design import trials_planned

    rows = []
    for name, path in sorted(specs.bundled_specs().items()):
        s = specs.load(str(path))
        trials = trials_planned(s.cells()) if s.design is not None else s.trials
        rows.append({"spec": name, "sampler": s.sampler, "trials": trials, "seeds": s.seeds,
                     "confirm_seeds": s.design.confirm_seeds if s.design is not None else None,
                     "description": s.description, "path": str(path)})
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        seeds = f"{r['seeds']:>2} seeds" + (f" (+{r['confirm_seeds']} to confirm)" if r["confirm_seeds"] else "")
        print(f"{r['spec']:<12} {r['sampler']:<7} {r['trials']:>5} trials x {seeds:<22} {r['description']}")
    return 0
