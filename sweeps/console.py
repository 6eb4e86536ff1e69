"""What every command line of the project shares: the argument parser (errors are one line) and
the exit codes. Standard library only, so any layer's entry point may use it."""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (and a pointer to --help) instead of the usage dump."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


def fail(message: str, code: int) -> int:
    """Print `error: message` on stderr (one line) and return `code`, for `return fail(...)`."""
    sys.stderr.write(f"error: {message}\n")
    return code
