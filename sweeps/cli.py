"""Command line: `sweeps run|worker|list|show|specs|dashboard` (also `python -m sweeps`).

Exit codes: 0 done, 1 a failure while running, 2 bad input (spec, flags, storage, study name),
130 interrupted (finished trials kept, the round in flight failed and retried on the next run).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from .config import DEFAULT_STORAGE, ENV_STORAGE
from .console import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, OneLineParser, fail
from .dashboard import serve as dashboard
from .study import rdb
from .study import spec as specs
from .study import storage as st
from .study.errors import StorageError, describe_error, mask
from .study.record import read

STORAGE_HELP = f"storage URL (default: ${ENV_STORAGE}, else {DEFAULT_STORAGE})"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `sweeps` argument parser, every subcommand."""
    p = OneLineParser(prog="sweeps", description="Batched Optuna sweeps of 1-H-1 networks fitting sin(x) on [0, 10].")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    for name, text in (("run", "run (or continue) the study of a spec until its trial budget is reached"),
                       ("worker", "join a study (creating it if first) and work until its global budget is done")):
        r = sub.add_parser(name, help=text, description=text)
        r.add_argument("spec", help="a bundled spec's name (see `sweeps specs`) or a path to a .toml file")
        r.add_argument("--trials", type=_positive_int, help="the study's total trial budget (default: the spec's)")
        r.add_argument("--storage", help=f"storage URL (default: ${ENV_STORAGE}, else the spec's, else {DEFAULT_STORAGE})")
        r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if present, else cpu")
        r.add_argument("--batch-size", type=_positive_int, help="models trained together (1 = one at a time, the reference path)")
        r.add_argument("--seed", type=int, help="base seed for the sampler and the models' inits (default: the spec's)")
        r.add_argument("--study", help="study name (default: the spec's name)")
        r.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
        r.add_argument("--compile", action="store_true",
                       help="fuse the training step with torch.compile: same numbers, faster on long runs (one-off compile per activation)")

    ls = sub.add_parser("list", help="studies in a storage, with trial counts and best values")
    ls.add_argument("--storage", help=STORAGE_HELP)
    sh = sub.add_parser("show", help="a study's best trials and their configuration")
    sh.add_argument("study")
    sh.add_argument("--storage", help=STORAGE_HELP)
    sh.add_argument("--top", type=_positive_int, default=10)
    sub.add_parser("specs", help="the bundled specs")
    dashboard.add_cli(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `sweeps` command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command in ("list", "show"):
        args.storage = st.resolve_url(args.storage)
    st.quiet_optuna()
    try:
        if args.command in ("run", "worker"):
            return _run(args)
        if args.command == "list":
            return _list(args)
        if args.command == "show":
            return _show(args)
        if args.command == "specs":
            return _specs()
        if args.command == "dashboard":
            return dashboard.run_cli(args)
    except specs.SpecError as exc:
        return fail(str(exc), EXIT_USAGE)
    except StorageError as exc:
        return fail(str(exc), EXIT_USAGE)
    raise AssertionError(args.command)


def _run(args: argparse.Namespace) -> int:
    from .engine import DeviceUnavailable
    from .study.runner import Interrupted, Options, StudyMismatch, run, storage_url

    spec = specs.load(args.spec)  # validated before any storage is touched
    opts = Options(storage=args.storage, device=args.device, batch_size=args.batch_size, trials=args.trials,
                   study_name=args.study, seed=args.seed, progress=False if args.no_progress else None,
                   compile=args.compile)
    url = storage_url(spec, opts)
    try:
        summary = run(spec, opts)
    except StudyMismatch as exc:
        return fail(str(exc), EXIT_USAGE)
    except Interrupted as exc:
        return fail(str(exc), EXIT_INTERRUPTED)
    except StorageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except DeviceUnavailable as exc:
        return fail(str(exc), EXIT_USAGE)
    except Exception as exc:  # storage failures surface as many library types; name the real cause
        return fail(describe_error(exc, url), EXIT_FAILURE)
    _publish(url, summary.study_name, spec, summary.budget)
    print(f"study {summary.study_name!r} in {summary.storage}: {summary.finished}/{summary.budget} trials finished "
          f"({summary.trials_run} this run, {summary.models} models on {summary.device} in {summary.wall_s:.1f} s, "
          f"{summary.models_per_s:.1f} models/s)")
    if summary.best_value is not None:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(summary.best_params.items()))
        print(f"best median test MSE {summary.best_value:.3g}: {params}")
    print("next: `make dashboard` to inspect it, `make report` for tables and figures")
    return 0


def _publish(url: str, name: str, spec: "specs.Spec", budget: int) -> None:
    """The dashboard's study note and fit figures after a run; a failure only warns, never fails a sweep."""
    from .dashboard.publish import publish_run

    try:
        publish_run(st.open_storage(url), url, name, spec, budget=budget)
    except Exception as exc:
        print(f"warning: study note and fit figures not updated: {describe_error(exc, url)}")


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _list(args: argparse.Namespace) -> int:
    import optuna

    storage = st.open_storage(args.storage, create=False)
    summaries = optuna.get_all_study_summaries(storage)
    if not summaries:
        print(f"no studies in {mask(args.storage)}")
        return 0
    print(f"{'study':<24} {'trials':>7} {'complete':>9} {'best median MSE':>16}")
    for s in summaries:
        trials = storage.get_all_trials(rdb.study_id(s), deepcopy=False)
        complete = sum(t.state.name == "COMPLETE" for t in trials)
        best = f"{s.best_trial.value:.3g}" if s.best_trial is not None and s.best_trial.value is not None else "-"
        print(f"{s.study_name:<24} {len(trials):>7} {complete:>9} {best:>16}")
    return 0


def _show(args: argparse.Namespace) -> int:
    import optuna

    storage = st.open_storage(args.storage, create=False)
    names = [s.study_name for s in storage.get_all_studies()]
    if args.study not in names:
        return fail(f"no study {args.study!r} in {mask(args.storage)} (have: {', '.join(names) or 'none'})", EXIT_USAGE)
    study = optuna.load_study(study_name=args.study, storage=storage)
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    done.sort(key=lambda t: t.value if t.value is not None and not math.isnan(t.value) else math.inf)
    print(f"study {args.study!r}: {len(study.trials)} trials, {len(done)} complete; top {min(args.top, len(done))}:")
    keys = ("hidden", "bias", "activation", "optimizer", "lr", "data", "loss", "init", "steps", "bias_copies")
    print(f"{'#':>5} {'median MSE':>11} {'success':>8} " + " ".join(f"{k:>10}" for k in keys))
    for t in done[:args.top]:
        record = read(t)
        cfg = record.config
        rate = record.success_rate if record.success_rate is not None else float("nan")
        print(f"{t.number:>5} {t.value:>11.3g} {rate:>8.0%} "
              + " ".join(f"{_fmt(cfg.get(k, '-')):>10}" for k in keys))
    return 0


def _specs() -> int:
    for name, path in sorted(specs.bundled_specs().items()):
        s = specs.load(str(path))
        print(f"{name:<14} {s.sampler:<6} {s.trials:>5} trials x {s.seeds:>2} seeds  {s.description}")
    return 0
