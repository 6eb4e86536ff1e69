"""Storage errors and what they say: one line, the real cause, never a password.

Libraries wrap the cause of a storage failure several layers deep (a full disk surfaces as
`AssertionError: Should not reach.`); `describe_error` digs it out. Every URL in a message goes
through `mask`, every driver message through `scrub`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy


class StorageError(RuntimeError):
    """A storage that cannot be opened or used; the message is one line and names the URL."""


# What reading a storage that opened raises when its content is broken (a corrupted page, an
# attribute that is not JSON): readers say it in one line (`describe_error`) instead of a traceback.
READ_ERRORS: tuple[type[BaseException], ...] = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError,
                                                sqlite3.Error, json.JSONDecodeError)


def mask(url: str) -> str:
    """The URL with any password replaced by ***, even when the URL does not parse."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL: hide whatever stands between `user:` and the last `@`
        return redact(url)


def redact(text: str) -> str:
    """Text that may hold a URL with everything between `scheme://user:` and the last `@` hidden
    (a password with unencoded `:@/#` must not show in part either)."""
    return re.sub(r"(://[^:/@\s]*:).*@", r"\1***@", text)


def scrub(text: str, url: str) -> str:
    """`text` with the URL's password (if any) replaced by ***: drivers may echo their DSN."""
    with contextlib.suppress(Exception):
        password = sqlalchemy.engine.make_url(url).password
        if password:
            text = text.replace(str(password), "***")
    return redact(text)


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite:/// URL (None for other back ends and in-memory SQLite)."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (its type's name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def root_cause(exc: BaseException) -> str:
    """The deepest cause in an exception chain, one line (libraries wrap the real reason)."""
    seen = set()
    while (exc.__cause__ is not None or exc.__context__ is not None) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return f"{type(exc).__name__}: {first_line(exc)}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def describe_error(exc: BaseException, url: str) -> str:
    """One line for a storage failure, naming the real cause (disk full hides behind assertions)."""
    full = [link for link in _chain(exc) if "database or disk is full" in str(link) or "No space left" in str(link)
            or (isinstance(link, OSError) and link.errno == errno.ENOSPC)]
    if full:
        link = full[-1]  # the deepest: the driver's own words, not a wrapper's
        place = sqlite_path(url)
        where = f" (the file system of {place.parent})" if place is not None else ""
        return scrub(f"storage {mask(url)}: the disk is full{where}: {type(link).__name__}: {first_line(link)}; "
                     f"free some space and run again: finished trials are kept", url)
    cause = root_cause(exc)
    if any(isinstance(link, (sqlite3.Error, sqlalchemy.exc.SQLAlchemyError)) for link in _chain(exc)):
        return scrub(f"storage {mask(url)}: {cause}", url)
    top = f"{type(exc).__name__}: {first_line(exc)}"
    return scrub(top if top == cause else f"{top} (cause: {cause})", url)
