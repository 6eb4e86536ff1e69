"""Command line: `sweeps run|worker|list|show|specs|report|dashboard` (also `python -m sweeps`).

Exit codes: 0 done, 1 a failure while running, 2 bad input (spec, flags, storage, study name),
130 interrupted (finished trials kept, the round in flight failed and retried on the next run).
Messages go through `logging` (`-v` for more, `--quiet` for errors only); results go to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import argcomplete

from .. import __version__
from ..config import DEFAULT_STORAGE, ENV_STORAGE
from ..console import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, OneLineParser, fail
from ..dashboard import serve as dashboard
from ..study import spec as specs
from ..study import storage as st
from ..study.errors import READ_ERRORS, StorageError, describe_error, mask
from . import listing, secret

STORAGE_HELP = f"storage URL (default: ${ENV_STORAGE}, else {DEFAULT_STORAGE})"
log = logging.getLogger("sweeps")


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
    p.add_argument("--version", action="version", version=f"sweeps {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="say more (debug messages)")
    common.add_argument("-q", "--quiet", action="store_true", help="errors only")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    for name, text in (("run", "run (or continue) the study of a spec until its trial budget is reached"),
                       ("worker", "join a study (creating it if first) and work until its global budget is done")):
        r = sub.add_parser(name, help=text, description=text, parents=[common])
        r.add_argument("spec", help="a bundled spec's name (see `sweeps specs`) or a path to a .toml file"
                       ).completer = _complete_spec  # type: ignore[attr-defined]
        r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="change a setting for this run (repeatable): a config key (fixed to VALUE), study.KEY "
                            "or design.KEY; a changed space needs a new --study name")
        r.add_argument("--trials", type=_positive_int, help="the study's total trial budget (default: the spec's)")
        r.add_argument("--storage", help=f"storage URL (default: ${ENV_STORAGE}, else the spec's, else {DEFAULT_STORAGE})")
        r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if present, else cpu")
        r.add_argument("--batch-size", type=_positive_int, help="models trained together (1 = one at a time, the reference path)")
        r.add_argument("--seed", type=int, help="base seed for the sampler and the models' inits (default: the spec's)")
        r.add_argument("--study", type=_study_name, help="study name (default: the spec's name)")
        r.add_argument("--no-progress", action="store_true", help="no progress bar (terminal) or progress lines (pipe, file)")
        r.add_argument("--threads", type=_positive_int, help="threads for training (default: $OMP_NUM_THREADS, else "
                                                             "this machine's cores shared among its running workers)")
        r.add_argument("--compile", action="store_true",
                       help="fuse the training step with torch.compile: same numbers, faster on long runs (one-off compile per activation)")

    ls = sub.add_parser("list", help="studies in a storage, with trial counts and best values", parents=[common])
    ls.add_argument("--storage", help=STORAGE_HELP)
    ls.add_argument("--json", action="store_true", help="as JSON")
    sh = sub.add_parser("show", help="a study's best trials (a designed study's confirmations)", parents=[common])
    sh.add_argument("study")
    sh.add_argument("--storage", help=STORAGE_HELP)
    sh.add_argument("--top", type=_positive_int, default=10)
    sh.add_argument("--json", action="store_true", help="as JSON")
    sp = sub.add_parser("specs", help="the bundled specs", parents=[common])
    sp.add_argument("--json", action="store_true", help="as JSON")
    from analysis.cli import add_report_arguments

    add_report_arguments(sub.add_parser("report", help="tables, figures and the answer: studies/reports/<study>/",
                                        description="Write the report of one study, or of every study plus an "
                                                    "index page. The storage is opened read-only.", parents=[common]))
    dashboard.add_cli(sub, parents=[common])
    return p


def _complete_spec(prefix: str, **_: object) -> list[str]:
    """Shell completion of SPEC: the bundled specs' names, and .toml files below the prefix."""
    import glob

    names = [n for n in specs.bundled_specs() if n.startswith(prefix)]
    return names + [p for p in glob.glob(prefix + "*") if p.endswith(".toml") or os.path.isdir(p)]


def _study_name(text: str) -> str:
    if not specs.check_name(text):
        raise argparse.ArgumentTypeError(f"study name {text!r}: {specs.NAME_RULE}")
    return text


def _logging(args: argparse.Namespace) -> None:
    """Messages through `logging`: what a run is doing on stdout, warnings and errors on stderr
    (so that a failure's stderr is its one line)."""
    level = logging.ERROR if getattr(args, "quiet", False) else logging.DEBUG if getattr(args, "verbose", False) \
        else logging.INFO
    info, problems = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    info.addFilter(lambda record: record.levelno < logging.WARNING)
    problems.setLevel(logging.WARNING)
    for handler in (info, problems):
        handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [info, problems]
    log.setLevel(level)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `sweeps` command line; returns the exit code."""
    parser = build_parser()
    # Completion when the shell asks (`eval "$(register-python-argcomplete sweeps)"`); else nothing.
    argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    _logging(args)
    if getattr(args, "storage", None):
        secret.reexec_without_password(args.storage)  # a typed password leaves the process list
    if args.command in ("list", "show"):
        args.storage = st.resolve_url(args.storage)
    st.quiet_optuna()
    try:
        if args.command in ("run", "worker"):
            return _run(args)
        if args.command == "list":
            return listing.list_studies(args)
        if args.command == "show":
            return listing.show_study(args)
        if args.command == "specs":
            return listing.list_specs(args)
        if args.command == "report":
            from analysis.cli import run_report

            return run_report(args)
        if args.command == "dashboard":
            return dashboard.run_cli(args)
    except specs.SpecError as exc:
        return fail(str(exc), EXIT_USAGE)
    except StorageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except READ_ERRORS as exc:  # a storage that opened but cannot be read (a corrupted page)
        return fail(describe_error(exc, st.resolve_url(getattr(args, "storage", None))), EXIT_FAILURE)
    raise AssertionError(args.command)


def _run(args: argparse.Namespace) -> int:
    from ..engine import DeviceUnavailable
    from ..study.runner import Interrupted, Options, StudyMismatch, run, storage_url

    import torch

    from .cores import share

    spec = specs.load(args.spec, args.set)  # validated before any storage is touched
    threads = share(args.threads)
    torch.set_num_threads(threads)
    log.debug(f"training on {threads} thread(s)")
    opts = Options(storage=args.storage, device=args.device, batch_size=args.batch_size, trials=args.trials,
                   study_name=args.study, seed=args.seed, progress=False if args.no_progress else None,
                   compile=args.compile)
    url = storage_url(spec, opts)
    try:
        summary = run(spec, opts, echo=log.info)
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
        # sin units represent the target exactly: the best trial is then the control, not an answer.
        control = " (sin units represent sin(x) exactly: a control, not an answer)" \
            if summary.best_params.get("activation", spec.fixed.get("activation")) == "sin" else ""
        print(f"best median test MSE {summary.best_value:.3g}: {params}{control}")
    shown = "" if url == st.resolve_url() else f" --storage {mask(url)}"
    log.info(f"next: `sweeps report{shown}` for the answer, tables and figures; `sweeps dashboard{shown}` to "
             f"inspect the trials")
    return 0


def _publish(url: str, name: str, spec: "specs.Spec", budget: int) -> None:
    """The dashboard's study note and fit figures after a run; a failure only warns, never fails a sweep."""
    from ..dashboard.publish import publish_run

    try:
        publish_run(st.open_storage(url), url, name, spec, budget=budget)
    except Exception as exc:
        log.warning(f"warning: study note and fit figures not updated: {describe_error(exc, url)}")


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
