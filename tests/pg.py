"""PostgreSQL for the tests: a fresh database per test on the server named by SWEEPS_TEST_PG_URL.

`.ci/run` starts a throwaway cluster and sets the variables; without them the PostgreSQL tests are
skipped and say why, unless SWEEPS_TEST_REQUIRE_PG=1 (`.ci/run` sets it): then they fail, so that a
CI whose server did not start cannot pass without its PostgreSQL tests. SWEEPS_TEST_PG_URL names a superuser (it creates and drops one database per
test). SWEEPS_TEST_PG_PASSWORD_ROLE ("name:password") names a role the server makes log in with a
password, for the tests of passwords from PGPASSWORD and ~/.pgpass.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy

ENV_URL = "SWEEPS_TEST_PG_URL"
ENV_PASSWORD_ROLE = "SWEEPS_TEST_PG_PASSWORD_ROLE"
ENV_REQUIRE = "SWEEPS_TEST_REQUIRE_PG"


def missing(reason: str) -> None:
    """Skip the test saying why, or fail it where PostgreSQL is required (SWEEPS_TEST_REQUIRE_PG=1)."""
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{reason}, and {ENV_REQUIRE}=1 requires PostgreSQL", pytrace=False)
    pytest.skip(reason)


def admin_url() -> sqlalchemy.engine.URL:
    """The superuser URL, or skip the test saying what is missing."""
    text = os.environ.get(ENV_URL)
    if not text:
        missing(f"{ENV_URL} is not set: no PostgreSQL server to test against (.ci/run starts one)")
    return sqlalchemy.engine.make_url(text)


def _admin_connect(url: sqlalchemy.engine.URL):  # psycopg2 connection, autocommit (CREATE DATABASE)
    import psycopg2

    conn = psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                            dbname=url.database or "postgres", connect_timeout=10)
    conn.autocommit = True
    return conn


@contextlib.contextmanager
def database(owner: str | None = None) -> Iterator[sqlalchemy.engine.URL]:
    """A new empty database (owned by `owner` if given), dropped afterwards; yields its URL."""
    admin = admin_url()
    name = f"sweeps_t_{uuid.uuid4().hex[:12]}"
    conn = _admin_connect(admin)
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
        yield admin.set(database=name)
    finally:
        with contextlib.suppress(Exception), conn.cursor() as cur:
            # FORCE: a SIGKILLed worker's connection may linger for a moment.
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A `postgresql://` URL (plain driver name, as users write it) to a fresh database."""
    with database() as url:
        yield url.render_as_string(hide_password=False)


@pytest.fixture
def pg_password_role() -> tuple[str, str]:
    """(role, password) of a role that must log in with a password, or skip saying why."""
    admin_url()
    text = os.environ.get(ENV_PASSWORD_ROLE, "")
    if ":" not in text:
        missing(f"{ENV_PASSWORD_ROLE} is not set: no password-protected role to test with (.ci/run makes one)")
    role, password = text.split(":", 1)
    return role, password
