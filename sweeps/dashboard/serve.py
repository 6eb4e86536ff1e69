"""`sweeps dashboard`: optuna-dashboard for the project's storage, safe by default.

The dashboard has no authentication (anyone who reaches the port can delete studies), so it binds
to 127.0.0.1 unless `--host` says otherwise, and then warns. It is handed an opened storage object
(`storage.open_storage`: SQLite lock timeout and WAL, so reading a study never breaks a sweep that
writes it), never the URL, and URLs are printed with the password masked. A password typed on the
command line would sit in the process list for as long as the server runs, so the command line
restarts itself at once with the URL moved into the environment (`sweeps.cli.secret`, as for every
command; `SWEEPS_STORAGE` is readable by its owner only); better still, give it there or in
~/.pgpass from the start.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any, TextIO


from ..config import DEFAULT_STORAGE, ENV_STORAGE
from ..study import storage as st
from ..study.errors import StorageError, mask
from .publish import artifact_dir_for

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def is_loopback(host: str) -> bool:
    """True for addresses that only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_for(host: str, port: int) -> str:
    """The address to open in a browser."""
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host) or (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/dashboard"


def serve(storage_url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          artifact_dir: Path | str | None = None, *, out: TextIO | None = None) -> None:
    """Serve optuna-dashboard for `storage_url` until interrupted (blocks).

    Raises `storage.StorageError` when the storage cannot be opened (a missing SQLite file is an
    error, not a new database) and `OSError` when the address cannot be bound.
    """
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    out = out or sys.stderr
    if not is_loopback(host):
        print(f"warning: the dashboard has no authentication: anyone who can reach {host}:{port} can read, "
              "change and delete every study in this storage", file=out, flush=True)
    storage = st.open_storage(storage_url, create=False)
    folder = Path(artifact_dir) if artifact_dir is not None else artifact_dir_for(storage_url)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the artifact folder {folder}: {exc.strerror or exc}") from None
    print(f"optuna-dashboard for {mask(storage_url)} (artifacts in {folder}) on {url_for(host, port)}; "
          "Ctrl-C stops it", file=out, flush=True)
    run_server(storage, host=host, port=port, artifact_store=FileSystemArtifactStore(folder))


def add_cli(subparsers: Any, parents: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
    """Add the `dashboard` subcommand to the CLI's subparsers; `main` dispatches it to `run_cli`."""
    d = subparsers.add_parser(
        "dashboard", help="optuna-dashboard for a storage (127.0.0.1 only unless --host)",
        description="Serve optuna-dashboard for a storage. It has no authentication: keep it on loopback. "
                    f"Give a password-protected URL in ${ENV_STORAGE} or use ~/.pgpass, not on the command line.",
        parents=parents or [])
    d.add_argument("--storage", help=f"storage URL (default: ${ENV_STORAGE}, else {DEFAULT_STORAGE})")
    d.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}; anything "
                                                        "else exposes an unauthenticated dashboard)")
    d.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    d.add_argument("--artifact-dir", help="the artifact store (default: artifacts/ beside a SQLite file, "
                                          "else studies/artifacts)")
    return d


def run_cli(args: argparse.Namespace) -> int:
    """Handle `sweeps dashboard`: 0 when stopped with Ctrl-C, 1 if it cannot listen, 2 bad storage."""
    url = st.resolve_url(args.storage)
    try:
        serve(url, args.host, args.port, args.artifact_dir)
    except StorageError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n")
        return 1
    return 0


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {value}")
    return value
