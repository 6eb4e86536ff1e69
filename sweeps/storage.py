"""Opening Optuna storages safely, and writing a round of finished trials cheaply.

SQLite gets a long lock timeout (short ones make workers die with "database is locked" and leave
RUNNING orphans), WAL journaling (readers such as the dashboard no longer block the writer) and
`synchronous=NORMAL` (one fsync per checkpoint instead of per commit; WAL keeps it crash-safe).
Heartbeats are on, so a worker killed mid-batch leaves trials that the next worker fails and
retries. URLs are printed with their password masked.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

SQLITE_TIMEOUT_S = 60
HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 120
MAX_RETRY = 2


class StorageError(RuntimeError):
    """A storage that cannot be opened or used; the message is one line and names the URL."""


def mask(url: str) -> str:
    """The URL with any password replaced by ***."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing to hide beyond the text itself
        return url


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite:/// URL (None for other back ends and in-memory SQLite)."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def open_storage(url: str, *, create: bool = True) -> RDBStorage:
    """An RDBStorage for `url` with the settings above; StorageError if it cannot be used.

    With `create=False` a missing SQLite file is an error instead of a new empty database.
    """
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        raise StorageError(f"not a storage URL: {url!r} (try sqlite:///studies/studies.db)") from None
    engine_kwargs: dict[str, Any] = {}
    path = sqlite_path(url)
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
        if path is not None:
            if not path.exists():
                if not create:
                    raise StorageError(f"no such database: {path}")
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not _is_sqlite_file(path):
                raise StorageError(f"{path} is not a SQLite database; give another --storage or move the file away")
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        storage = RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=GRACE_PERIOD_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=True),
        )
    except ModuleNotFoundError as exc:
        raise StorageError(f"{mask(url)}: database driver missing ({exc.name}); install it into .venv") from None
    except RuntimeError as exc:
        if "upgrade" in str(exc):
            raise StorageError(f"{mask(url)}: made by an older Optuna; run `optuna storage upgrade --storage URL` first") from None
        raise StorageError(f"{mask(url)}: {_first_line(exc)}") from None
    except Exception as exc:
        raise StorageError(f"cannot open storage {mask(url)}: {_root_cause(exc)}") from None
    if parsed.get_backend_name() == "sqlite":
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # reconnect so every pooled connection gets the pragmas
    return storage


def _is_sqlite_file(path: Path) -> bool:
    if path.stat().st_size == 0:
        return True
    with path.open("rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _root_cause(exc: BaseException) -> str:
    """The deepest cause in an exception chain, one line (libraries wrap the real reason)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return f"{type(exc).__name__}: {_first_line(exc)}"


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not JSON; the dashboard's parser rejects them) by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_user_attrs(study: optuna.Study, items: list[tuple[int, dict[str, Any]]]) -> None:
    """Set user attributes of many running trials: [(trial_id, {key: value})].

    On an RDBStorage every attribute of the round goes in one transaction (Optuna's public API
    commits each attribute on its own: ~6 commits a trial). Other storages use the public API.
    """
    backend = getattr(study._storage, "_backend", study._storage)
    if isinstance(backend, RDBStorage):
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(backend.scoped_session, True) as session:
            for trial_id, attrs in items:
                for key, value in attrs.items():
                    backend._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, json_safe(value))
        return
    for trial_id, attrs in items:
        for key, value in attrs.items():
            study._storage.set_trial_user_attr(trial_id, key, json_safe(value))


def describe_error(exc: BaseException, url: str) -> str:
    """One line for a storage failure, naming the real cause (disk full hides behind assertions)."""
    cause = _root_cause(exc)
    if isinstance(exc, sqlite3.OperationalError) or "database or disk is full" in cause or "No space left" in cause:
        return f"storage {mask(url)}: {cause} (free some space and run again: finished trials are kept)"
    return f"storage {mask(url)}: {cause}"

