"""Whose database is this: the checks that keep sweeps out of files and databases that are not
Optuna's (never add Optuna's tables to another program's database, never turn an empty file that
no sweep made into one), and the read-only SQLite URI that readers open, also on a read-only file
system. Used by `storage` when it opens a storage for a worker or a reader.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

import sqlalchemy

from .errors import StorageError, mask

SQLITE_TIMEOUT_S = 60  # how long any connection waits for SQLite's lock (short ones kill workers)

OPTUNA_TABLES = {"studies", "trials", "alembic_version", "version_info"}


def read_only_uri(path: Path) -> str:
    """A `file:` URI that opens the SQLite file read-only. On a folder this process cannot write
    (a read-only file system, another user's files) with no WAL beside the file, also
    `immutable=1`: a WAL database opened read-only needs its -shm file, which only a writer could
    create there. On a read-only file system no one writes; on another user's folder its owner
    could start a worker while this reads, and an immutable reader would not see its writes (a
    report of that moment may then be inconsistent: run it again; it never writes either way)."""
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    if not os.access(path.parent, os.W_OK) and not path.with_name(path.name + "-wal").exists():
        uri += "&immutable=1"
    return uri


def sqlite_tables(path: Path) -> set[str] | None:
    """The tables of a SQLite file (None if SQLite says it is no database); read-only.

    Asked of SQLite itself, never by opening the file from Python: closing any descriptor of a
    database drops every POSIX lock this process's SQLite connections hold on it, and a reader
    whose locks vanished saw "database disk image is malformed" after another worker removed the
    WAL (SQLite's "How To Corrupt" §2.2; it happened here in a test that reopened the storage).
    """
    try:
        con = sqlite3.connect(read_only_uri(path), uri=True, timeout=SQLITE_TIMEOUT_S)
    except sqlite3.Error:
        return set()  # cannot open at all (permissions): let the real open say why
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        return None if "not a database" in str(exc) else set()
    finally:
        con.close()


def check_sqlite(path: Path, create: bool) -> None:
    """Refuse a file that is not an Optuna database: never add Optuna's tables to someone else's.

    A writer may complete a schema it started (a crash mid-creation); an empty file only counts as
    ours when this tool's lock file stands beside it (an interrupted first open made both).
    """
    tables = sqlite_tables(path)
    if tables is None:
        raise StorageError(f"{path} is not a SQLite database; give another --storage or move the file away")
    if not tables:
        if path.stat().st_size == 0 and not path.with_name(path.name + ".lock").exists():
            raise StorageError(f"{path} exists and is empty, and no sweep made it; give another --storage or "
                               f"remove the file")
        if not create:
            raise StorageError(f"{path} holds no Optuna studies yet")
        return
    if not tables & OPTUNA_TABLES:
        raise StorageError(f"{path} is another program's database (tables: {', '.join(sorted(tables)[:5])}); "
                           f"give another --storage: sweeps never adds its tables to it")


def check_postgresql(full_url: str, engine_kwargs: dict[str, Any], url: str, create: bool) -> None:
    """PostgreSQL: refuse a database that holds tables but no Optuna schema."""
    tables = pg_tables(full_url, engine_kwargs)
    if tables and not tables & OPTUNA_TABLES:
        raise StorageError(f"{mask(url)} holds another program's tables ({', '.join(sorted(tables)[:5])}); give "
                           f"another database: sweeps never adds its tables to it")
    if not tables and not create:
        raise StorageError(f"{mask(url)} holds no Optuna studies yet")


def pg_tables(url: str | sqlalchemy.engine.URL, engine_kwargs: dict[str, Any]) -> set[str]:
    """The tables of a PostgreSQL database."""
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
