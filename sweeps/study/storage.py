"""Opening Optuna storages safely for many workers, and the rule that picks the storage URL.

SQLite (one host only; never on a network file system, whose locks SQLite cannot trust): a long
lock timeout (short ones make workers die with "database is locked" and leave RUNNING orphans),
WAL journaling, and for workers every transaction opened with `BEGIN IMMEDIATE`. That last one
matters: Python's sqlite3 runs SELECTs outside any transaction, so Optuna's "read the trial is
WAITING, then mark it RUNNING" and "count the trials, then insert number n" were not atomic across
processes; measured here, 4 processes popping 300 queued trials popped 32 of them twice. Holding
the write lock from the first statement makes each Optuna call atomic (cost: workers' calls queue
behind each other, milliseconds each; readers opened with create=False do not take part).
PostgreSQL: `SELECT … FOR UPDATE` already makes those calls atomic; a connect timeout makes an
unreachable server fail fast, and `postgresql://` uses psycopg2 when psycopg 3 is not installed.

Heartbeats are on (interval and grace from SWEEPS_HEARTBEAT_S / SWEEPS_GRACE_S), so a worker that
dies mid-batch leaves trials that the next worker fails and retries (`RetryStale`). Passwords come
from the URL, SWEEPS_STORAGE, PGPASSWORD or ~/.pgpass (libpq reads the last two) and are masked in
every message (`sweeps.study.errors`). Locks live in `sweeps.study.locks`, Optuna's private API in
`sweeps.study.rdb`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from ..config import DEFAULT_STORAGE, ENV_STORAGE
from .errors import StorageError, first_line, mask, root_cause, scrub, sqlite_path
from . import ownership
from .ownership import SQLITE_TIMEOUT_S
from .locks import init_lock, reader_lock
from .record import RETRY_OF

PG_CONNECT_TIMEOUT_S = 10
MAX_RETRY = 2  # a trial that took its worker down is retried at most twice (three attempts)
ENV_HEARTBEAT = "SWEEPS_HEARTBEAT_S"
ENV_GRACE = "SWEEPS_GRACE_S"
DEFAULT_HEARTBEAT_S = 30
DEFAULT_GRACE_S = 120  # four missed beats: a busy database or a long GC pause is not a death


def resolve_url(flag: str | None = None, spec_storage: str | None = None) -> str:
    """The storage URL: the flag, else $SWEEPS_STORAGE (keeps a password out of the process list),
    else the spec's own, else the project's SQLite file."""
    return flag or os.environ.get(ENV_STORAGE) or spec_storage or DEFAULT_STORAGE


def quiet_optuna() -> None:
    """Silence what Optuna says about features used on purpose (heartbeats with ask/tell, notes)."""
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


class RetryStale(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial (a WAITING copy with the same parameters, the failed trial's
    number in the system attributes `failed_trial`/`retry_history`), but the copy starts clean.

    Optuna copies the user attributes too: a trial killed between writing its results and being
    told would hand its retry a `fail_reason` and stale results. The copy gets only `retry_of`.
    """

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.copy(trial)
        clean.user_attrs = {RETRY_OF: trial.number}
        super().__call__(study, clean)


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds, from the environment or the defaults.

    Tests shorten both; the grace must exceed the interval or live trials would be failed.
    """
    values = []
    for name, default in ((ENV_HEARTBEAT, DEFAULT_HEARTBEAT_S), (ENV_GRACE, DEFAULT_GRACE_S)):
        text = os.environ.get(name, "").strip()
        try:
            value = int(text) if text else default
        except ValueError:
            raise StorageError(f"{name}={text!r}: expected whole seconds") from None
        if value < 1:
            raise StorageError(f"{name}={value}: must be at least 1 second")
        values.append(value)
    interval, grace = values
    if grace <= interval:
        raise StorageError(f"{ENV_GRACE}={grace} must be longer than {ENV_HEARTBEAT}={interval}")
    return interval, grace


def driver_url(parsed: sqlalchemy.engine.URL) -> sqlalchemy.engine.URL:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the project ships psycopg2."""
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        return parsed.set(drivername="postgresql+psycopg2")
    return parsed


def _sqlite_connect_serialized(dbapi_conn: Any, record: Any) -> None:
    # isolation_level None: sqlite3 stops issuing its own (late) BEGIN; `_sqlite_begin` does it.
    dbapi_conn.isolation_level = None
    _sqlite_connect(dbapi_conn, record)


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL keeps this crash-safe; one fsync per checkpoint
    cur.close()


def _sqlite_begin(conn: sqlalchemy.engine.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def open_storage(url: str, *, create: bool = True) -> RDBStorage:
    """An RDBStorage for `url` with the settings above; StorageError if it cannot be used.

    `create=True` is for workers: a missing SQLite file becomes a new database, and every SQLite
    transaction is `BEGIN IMMEDIATE`. `create=False` is for readers (list, show, dashboard,
    analysis): a missing file is an error, and transactions stay SQLite's ordinary ones, so that
    reading never holds up a worker and a read-only file stays readable.
    """
    parsed = parse_url(url)
    interval, grace = heartbeat_settings()
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any] = {}
    path = sqlite_path(url)
    if backend == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
        if path is None:
            raise StorageError(f"{mask(url)} is an in-memory database: it keeps nothing between processes or "
                               f"threads; give a file, e.g. {DEFAULT_STORAGE}")
        if not path.exists():
            if not create:
                raise StorageError(f"no such database: {path}")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create the folder of {path}: {exc.strerror or exc}") from None
        else:
            ownership.check_sqlite(path, create)
    else:
        engine_kwargs["pool_pre_ping"] = True
        if backend == "postgresql":
            engine_kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S, "application_name": "sweeps"}
    full_url = parsed.render_as_string(hide_password=False)
    try:
        # Concurrent first opens would race to create the schema: one at a time. Read-only readers
        # (`open_readonly`: list, show, report) wait for a schema being created and never write.
        with init_lock(full_url, path, engine_kwargs):
            if backend == "postgresql":
                ownership.check_postgresql(full_url, engine_kwargs, url, create)
            storage = RDBStorage(
                full_url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=RetryStale(max_retry=MAX_RETRY),
            )
    except StorageError:
        raise
    except ModuleNotFoundError as exc:
        raise StorageError(f"{mask(url)}: database driver missing ({exc.name}); install it into .venv") from None
    except RuntimeError as exc:
        if "upgrade" in str(exc):
            raise StorageError(f"{mask(url)} was written by an older Optuna; back it up, then run "
                               f"`optuna storage upgrade --storage URL`") from None
        raise StorageError(scrub(f"{mask(url)}: {first_line(exc)}", url)) from None
    except Exception as exc:
        raise StorageError(scrub(f"cannot open storage {mask(url)}: {root_cause(exc)}", url)) from None
    if backend == "sqlite":
        if create:
            sqlalchemy.event.listen(storage.engine, "connect", _sqlite_connect_serialized)
            sqlalchemy.event.listen(storage.engine, "begin", _sqlite_begin)
        else:
            sqlalchemy.event.listen(storage.engine, "connect", _sqlite_connect)
        storage.engine.dispose()  # reconnect so every pooled connection gets the settings
    return storage


def parse_url(url: str) -> sqlalchemy.engine.URL:
    """The URL parsed, with the project's PostgreSQL driver; StorageError (password hidden) if it is none."""
    try:
        return driver_url(sqlalchemy.engine.make_url(url))
    except Exception:
        raise StorageError(f"not a storage URL: {mask(url)!r} (try {DEFAULT_STORAGE})") from None


def open_readonly(url: str) -> RDBStorage:
    """An RDBStorage on `url` that refuses writes (the report's); StorageError if it cannot be read.

    SQLite through a `mode=ro` URI (SQLite itself refuses every write, whatever Optuna would try),
    PostgreSQL with read-only transactions, and Optuna's table creation skipped.
    """
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any] = {}
    target = parsed.render_as_string(hide_password=False)  # RDBStorage takes a URL as text
    path = sqlite_path(url)
    if backend == "sqlite":
        if path is None:
            raise StorageError(f"{mask(url)}: an in-memory SQLite storage holds no studies")
        if not path.is_file():
            raise StorageError(f"no such database: {path}")
        target = f"sqlite:///{ownership.read_only_uri(path)}&uri=true"
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    elif backend == "postgresql":
        engine_kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on",
                                         "connect_timeout": PG_CONNECT_TIMEOUT_S, "application_name": "sweeps"}
    try:
        with reader_lock(path) if path is not None else contextlib.nullcontext():
            tables = ownership.sqlite_tables(path) if path is not None else ownership.pg_tables(target, engine_kwargs)
            if tables is None:
                raise StorageError(f"{path} is not a SQLite database")
            if not {"studies", "version_info", "alembic_version"} <= tables:
                raise StorageError(f"{path or mask(url)} holds no Optuna studies" +
                                   (" (another program's database)" if tables else ""))
            return RDBStorage(target, engine_kwargs=engine_kwargs, skip_table_creation=True)
    except StorageError:
        raise
    except RuntimeError as exc:
        if "upgrade" in str(exc):
            raise StorageError(f"{mask(url)} was written by an older Optuna; back it up, then run "
                               f"`optuna storage upgrade --storage URL`") from None
        raise StorageError(scrub(f"cannot read storage {mask(url)}: {first_line(exc)}", url)) from None
    except Exception as exc:
        raise StorageError(scrub(f"cannot read storage {mask(url)}: {root_cause(exc)}", url)) from None
