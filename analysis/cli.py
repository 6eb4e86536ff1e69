"""Command line: `python -m analysis report [--study NAME] [--storage URL] [--out DIR]`.

Prints the path of each report written (the study-list index last when every study is reported).
Exit codes: 0 written, 2 bad input (storage unreadable, no such study, a study with no finished
trial), each with one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from sweeps.argparser import OneLineParser
from sweeps.storage import default_url

from .load import ReportError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m analysis", description="Tables, figures and a written report of sweep studies.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    r = sub.add_parser("report", help="write studies/reports/<study>/{index.html,report.md,figures,tables}",
                       description="Write the report of one study, or of every study plus an index page. "
                                   "The storage is opened read-only.")
    r.add_argument("--study", help="one study (default: every study in the storage, plus an index page)")
    r.add_argument("--storage", help="storage URL (default: $SWEEPS_STORAGE, else sqlite:///studies/studies.db)")
    r.add_argument("--out", default="studies/reports", type=Path,
                   help="output folder; each study goes to OUT/<study>/ (default: studies/reports)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .report import build  # after parsing: --help stays instant

    with warnings.catch_warnings():
        # Reading a study made with heartbeats warns that they are experimental; the report only reads.
        import optuna

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        try:
            paths = build(args.storage or default_url(), args.out, args.study)
        except ReportError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return EXIT_USAGE
    for path in paths:
        print(path)
    return 0
