"""The store: one SQLAlchemy URL (SQLite by default, PostgreSQL for shared state across replicas).

Every stage that persists something declares its tables on `metadata` in its own module under
autarky.store (gateway_tables, eval_tables); `open_store` creates and migrates them. Migrations are
additive and recorded in `schema_version`, so an old database is upgraded in place and never rebuilt.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError

from autarky.errors import UserError
from autarky.paths import default_store_url

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("component", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
)

# Modules that declare tables on `metadata`; imported before create_all so every table exists.
TABLE_MODULES = ("autarky.store.gateway_tables", "autarky.store.eval_tables")

# component -> ordered list of migrations; migration i upgrades from version i to i + 1.
MIGRATIONS: dict[str, list[Callable[[Engine], None]]] = {}


def safe_url(url: str) -> str:
    """The URL as it may be shown: its password, if any, replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def make_engine(url: str | None = None) -> Engine:
    url = url or default_store_url()
    try:
        if url.startswith("sqlite"):
            _private_file(url)
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    except (ArgumentError, ImportError) as exc:
        detail = str(exc).replace(url, safe_url(url))
        raise UserError(f"bad store URL {safe_url(url)!r}: {detail}; use sqlite:///PATH or "
                        "postgresql+psycopg://...") from None
    return engine


def _private_file(url: str) -> None:
    """Create a new SQLite store readable by its owner only (keys' hashes, spend, prompts of opted-in teams);
    SQLite gives its -wal and -shm files the same mode."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise UserError(f"cannot create the store at {database}: {exc.strerror or exc}") from None


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 (DB-API objects)
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed while the batch writer commits; NORMAL sync is durable across app crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def open_store(url: str | None = None) -> Engine:
    """An engine with every table created and migrated to the current version."""
    engine = make_engine(url)
    for module in TABLE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    try:
        metadata.create_all(engine)
        _migrate(engine)
    except DatabaseError as exc:  # also "file is not a database"
        shown = engine.url.render_as_string(hide_password=True)
        detail = str(exc.orig).replace(engine.url.password or "\0", "***")
        raise UserError(f"cannot open the store at {shown}: {' '.join(detail.split())}") from None
    return engine


def _migrate(engine: Engine) -> None:
    with engine.begin() as conn:
        current = dict(conn.execute(select(schema_version.c.component, schema_version.c.version)).all())
    for component, steps in MIGRATIONS.items():
        version = current.get(component)
        if version is None:  # fresh tables were just created at the newest shape
            with engine.begin() as conn:
                conn.execute(schema_version.insert().values(component=component, version=len(steps)))
            continue
        for index in range(version, len(steps)):
            steps[index](engine)
            with engine.begin() as conn:
                conn.execute(
                    schema_version.update()
                    .where(schema_version.c.component == component)
                    .values(version=index + 1)
                )
