"""The argument parser every command line of the project uses: errors are one line, exit code 2."""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (and a pointer to --help) instead of the usage dump."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)
