"""The store: one SQLAlchemy URL (SQLite by default, PostgreSQL for shared gateways), tables created and
migrated by autarky itself. `open_store(url)` gives a ready engine; `make_engine(url)` a bare one."""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "open_store": "database",
    "make_engine": "database",
})
