"""Command line: `python -m analysis report [--study NAME] [--storage URL] [--out DIR]`.

Prints the path of each report written (the study-list index last when every study is reported).
Exit codes: 0 written, 2 bad input (storage unreadable, no such study, a study with no finished
trial), each with one line on stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from sweeps.config import DEFAULT_STORAGE, ENV_STORAGE
from sweeps.console import EXIT_FAILURE, EXIT_USAGE, OneLineParser, fail
from sweeps.study.errors import READ_ERRORS, describe_error
from sweeps.study.storage import quiet_optuna, resolve_url

from .load import ReportError



def add_report_arguments(r: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The report's flags, on `python -m analysis report` and `sweeps report` alike."""
    r.add_argument("--study", help="one study (default: every study in the storage, plus an index page)")
    r.add_argument("--storage", help=f"storage URL (default: ${ENV_STORAGE}, else {DEFAULT_STORAGE})")
    r.add_argument("--out", default="studies/reports", type=Path,
                   help="output folder; each study goes to OUT/<study>/ (default: studies/reports)")
    return r


def build_parser() -> argparse.ArgumentParser:
    """The `python -m analysis` argument parser."""
    p = OneLineParser(prog="python -m analysis", description="Tables, figures and a written report of sweep studies.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_report_arguments(sub.add_parser("report", help="write studies/reports/<study>/{index.html,report.md,figures,"
                                                       "tables}", description="Write the report of one study, or of "
                                        "every study plus an index page. The storage is opened read-only."))
    return p


def run_report(args: argparse.Namespace) -> int:
    """Build the report(s) the parsed flags ask for; prints each path written; returns the exit code."""
    from .report import build  # after parsing: --help stays instant

    quiet_optuna()  # reading a study made with heartbeats warns that they are experimental
    try:
        paths = build(resolve_url(args.storage), args.out, args.study)
    except ReportError as exc:
        return fail(str(exc), EXIT_USAGE)
    except READ_ERRORS as exc:  # a storage that opened but cannot be read (a corrupted page)
        return fail(describe_error(exc, resolve_url(args.storage)), EXIT_FAILURE)
    for path in paths:
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m analysis report …`; returns the exit code."""
    return run_report(build_parser().parse_args(argv))
