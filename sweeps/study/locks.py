"""Locks that serialise what must not interleave between workers of one study, on any machine.

`study_lock` is held while creating a study, queueing, claiming and re-queueing trials;
`init_lock` while a brand-new database gets Optuna's schema (two first opens would race to create
it). PostgreSQL: session advisory locks (released by the server if the worker dies). SQLite: an
flock on `<db>.lock` beside the database (a sidecar: closing any descriptor of the database file
itself would drop SQLite's own POSIX locks). In-memory SQLite: one process, no lock. Both are
polled, not blocking, so that a signal still ends the wait, and give up after LOCK_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import sqlalchemy
from optuna.storages import RDBStorage

from .errors import StorageError, mask, sqlite_path

LOCK_TIMEOUT_S = 600


@contextlib.contextmanager
def init_lock(url: str, path: Path | None, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    """Held while a database is opened for writing, so that only one process creates its schema."""
    if path is not None:
        with _file_lock(_lock_path(path)):
            yield
    elif url.startswith("postgresql"):
        engine = sqlalchemy.create_engine(url, **engine_kwargs)
        try:
            with _pg_lock(engine, _lock_key("sweeps schema")):
                yield
        finally:
            engine.dispose()
    else:
        yield


@contextlib.contextmanager
def study_lock(storage: RDBStorage, study_name: str) -> Iterator[None]:
    """Hold the study's lock, shared by every worker of the study, for the duration.

    PostgreSQL: a session advisory lock (released by the server if the worker dies). SQLite: an
    flock on `<db>.lock` beside the database (a sidecar: closing any descriptor of the database
    file itself would drop SQLite's own POSIX locks). In-memory SQLite: one process, no lock. Other
    back ends: none (grid cells may then run twice); use PostgreSQL for many machines.
    """
    backend = storage.engine.url.get_backend_name()
    path = sqlite_path(str(storage.engine.url))
    if path is not None:
        with _file_lock(_lock_path(path)):
            yield
    elif backend == "postgresql":
        with _pg_lock(storage.engine, _lock_key(f"sweeps study {study_name}")):
            yield
    else:
        yield


def _lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


def _lock_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def _waits() -> Iterator[float]:
    """Sleeps between tries of a lock (2 ms growing to 50 ms) until LOCK_TIMEOUT_S has passed.

    Short: a round holds the lock for milliseconds, and with 4 workers polls of 20-200 ms were
    most of the time a round waited for it (measured with sweeps.tools.bench_storage)."""
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    pause = 0.002
    while time.monotonic() < deadline:
        yield pause
        pause = min(pause * 1.5, 0.05)


@contextlib.contextmanager
def reader_lock(db: Path) -> Iterator[None]:
    """Held while a reader opens a SQLite database: waits (shared) while a writer holds the lock,
    e.g. while it creates the schema. No lock file (no writer ever ran here), no wait; a lock file
    that cannot be opened (another user's, a read-only file system) is read without it."""
    path = _lock_path(db)
    try:
        fh: IO[bytes] = path.open("rb")
    except OSError:
        yield
        return
    with fh, _flocked(fh, path, fcntl.LOCK_SH):
        yield


@contextlib.contextmanager
def _flocked(fh: IO[bytes], path: Path, mode: int) -> Iterator[None]:
    for pause in _waits():  # polled, not blocking: a signal can still end the wait
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(pause)
    else:
        raise StorageError(f"another worker held {path} for over {LOCK_TIMEOUT_S} s")
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        fh: IO[bytes] = path.open("a+b")
    except OSError as exc:
        raise StorageError(f"cannot open the lock file {path}: {exc.strerror}") from None
    with fh, _flocked(fh, path, fcntl.LOCK_EX):
        yield


@contextlib.contextmanager
def _pg_lock(engine: sqlalchemy.engine.Engine, key: int) -> Iterator[None]:
    conn = engine.connect()
    try:
        for pause in _waits():
            got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            conn.commit()
            if got:
                break
            time.sleep(pause)
        else:
            raise StorageError(f"another worker held the study's lock on {mask(str(engine.url))} "
                               f"for over {LOCK_TIMEOUT_S} s")
        try:
            yield
        finally:
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
            except BaseException:
                conn.invalidate()  # a pooled connection must not keep the lock: drop it
                raise
    finally:
        conn.close()
