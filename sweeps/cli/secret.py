"""Keeping a storage password off the process list.

A password typed in `--storage` would sit in /proc/PID/cmdline (and `ps`) for as long as the
process runs: hours for a worker or the dashboard. `reexec_without_password` restarts the same
process (same pid, same arguments) with the URL moved into $SWEEPS_STORAGE and the flag dropped;
every command reads $SWEEPS_STORAGE when no flag is given, so it goes on unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import sqlalchemy

from ..config import ENV_STORAGE


def without_storage(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """`argv` without its `--storage URL` / `--storage=URL` flags, and the last URL they gave."""
    rest: list[str] = []
    url, i = None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--storage" and i + 1 < len(argv):
            url, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--storage="):
            url = arg.partition("=")[2]
        else:
            rest.append(arg)
        i += 1
    return rest, url


def password_of(url: str | None) -> str | None:
    """The URL's password, None if it has none or does not parse (then it is masked wherever shown)."""
    try:
        return sqlalchemy.engine.make_url(url).password if url else None
    except Exception:
        return None


def reexec_without_password(url: str | None, argv: Sequence[str] | None = None) -> None:
    """Restart this process as `python -m sweeps` with `url` in $SWEEPS_STORAGE and no `--storage`
    on its command line, when the URL has a password and this process's command line holds it.
    Never when `main` was called from Python with its own argument list (the password is not in
    `sys.argv` then); returns without doing anything in every such case."""
    argv = sys.argv[1:] if argv is None else list(argv)
    password = password_of(url)
    if not password or not any(password in a for a in argv):
        return
    rest, given = without_storage(argv)
    if given != url:
        return
    # Said only with -v: stdout may be JSON (`list --json`) and stderr is for one-line errors.
    logging.getLogger("sweeps").debug(f"the storage password was on the command line; restarting with it in "
                                      f"${ENV_STORAGE} (set it there or in ~/.pgpass to keep it out of the "
                                      f"process list altogether)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "sweeps", *rest], {**os.environ, ENV_STORAGE: str(url)})
