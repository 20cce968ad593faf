"""Opening the database: engines for SQLite and PostgreSQL, transactions, migrations.

:class:`Store` holds what every part of the ledger shares; the modules beside this one add the
statements of each concern to it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any, Self, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    UpdateBase,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import QueuePool, StaticPool

from publisher.calendar import utcnow
from publisher.errors import LedgerError
from publisher.ledger import schema
from publisher.ledger.schema import schema_migrations
from publisher.ledger_reads import BUSY_TIMEOUT_MS, IN_MEMORY, connect_read_only, write_problem

# A send commits once per message; each checkpoint of the log waits for the disk twice (fsync).
# Every 10,000 pages (40 MB of log at most) rather than SQLite's 1,000: 10 fsyncs instead of 89
# for 20,000 messages, 0.25-0.39 s of waiting instead of 0.79-1.70 s (million.py's send).
WAL_CHECKPOINT_PAGES = 10_000
# Any constant works: it only has to be the same in every process that migrates this database.
_MIGRATION_LOCK = 0x70756201


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module so that the "begin" hook below decides it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the write lock at BEGIN: two processes never both read a row as free
        # and then both claim it, and no deferred transaction dies upgrading its lock.
        writes = conn.get_execution_options().get("ledger_write", False)
        # Straight to the driver: this runs for every transaction, and needs no SQLAlchemy.
        conn.connection.driver_connection.execute(  # type: ignore[union-attr]
            "BEGIN IMMEDIATE" if writes else "BEGIN")


def _unchanged(value: Any) -> Any:
    return value


# Half of _DriverStatement's figure: no pool checkout and rollback around each message's write.
class _HeldConnections:
    """One driver connection per thread, kept out of the pool for the per-message writes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[Any] = []

    def get(self) -> Any:
        """Return this thread's connection, taking one from the pool the first time."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = self.engine.raw_connection()
            # The pool hands out the driver's own error, not SQLAlchemy's wrapper.
            except (DBAPIError, self.engine.dialect.loaded_dbapi.Error) as exc:
                raise LedgerError(f"database error: {_first_line(exc)}") from exc
            self._local.connection = connection
            with self._lock:
                self._open.append(connection)
        return connection

    def discard(self, connection: Any) -> None:
        """Throw away a connection the server dropped; this thread's next write opens another."""
        self._local.connection = None
        with self._lock:
            self._open.remove(connection)
        connection.invalidate()

    def close(self) -> None:
        """Give every held connection back to the pool."""
        with self._lock:
            held, self._open = self._open, []
        for connection in held:
            with suppress(Exception):  # closing must not fail the ledger's own close
                connection.close()
        self._local = threading.local()


# send.py, loopback, 1 connection: 137-139 us of processor per message; 196-218 via SQLAlchemy.
class _DriverStatement:
    """A statement compiled once for one database and run straight on the driver's connection."""

    def __init__(self, statement: UpdateBase, connections: _HeldConnections) -> None:
        dialect = connections.engine.dialect
        compiled = statement.compile(dialect=dialect)
        self.dialect = dialect
        self.connections = connections
        self.sql = compiled.string
        self.positions = compiled.positiontup  # None when the driver takes names
        self.processors: dict[str, Callable[[Any], Any]] = {}
        # Values written into the statement itself (e.g. status = 'sending') are bound too.
        self.constants: dict[str, Any] = {}
        for bind, name in compiled.bind_names.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.required:
                self.processors[name] = process or _unchanged
            else:
                self.constants[name] = process(bind.value) if process else bind.value
        # Only the values whose type changes them go through a function.
        self._converters = [(name, process) for name, process in self.processors.items()
                            if process is not _unchanged]
        self.errors: type[Exception] = dialect.loaded_dbapi.Error

    def run(self, values: dict[str, Any]) -> int:
        """Run the statement in a transaction of its own; return how many rows it changed."""
        params = {**self.constants, **values}
        for name, process in self._converters:
            params[name] = process(params[name])
        if self.positions is None:
            return self._run({name: params[name] for name in (*self.constants, *self.processors)})
        return self._run(tuple([params[name] for name in self.positions]))

    def arguments(self, rows: Iterable[dict[str, Any]], shared: dict[str, Any] | None = None
                  ) -> list[Any]:
        """Return the driver's parameters for each row; values ``shared`` by all are bound once.

        Binding a value (a timestamp, say) costs more than SQLite takes to insert a short row.
        """
        base = dict(self.constants)
        for name, value in (shared or {}).items():
            base[name] = self.processors[name](value)
        own = [(name, process) for name, process in self.processors.items() if name not in base]
        found: list[Any] = []
        for values in rows:
            params = dict(base)
            for name, process in own:
                params[name] = process(values[name])
            found.append(params if self.positions is None
                         else tuple(params[name] for name in self.positions))
        return found

    def _run(self, arguments: Any) -> int:
        for attempt in (1, 2):
            connection = self.connections.get()
            driver = connection.dbapi_connection
            try:
                cursor = driver.cursor()
                try:
                    # SQLite runs a lone statement as its own transaction (the connection is
                    # in autocommit mode), and a write takes the write lock before it reads:
                    # the BEGIN IMMEDIATE the other writes need would add nothing.
                    cursor.execute(self.sql, arguments)
                    changed = int(cursor.rowcount)
                finally:
                    cursor.close()
                driver.commit()
                return changed
            except self.errors as exc:
                with suppress(self.errors):  # a lost connection cannot roll back
                    connection.rollback()
                if not self.dialect.is_disconnect(cast(Any, exc), driver, None):
                    raise LedgerError(f"database error: {_first_line(exc)}") from exc
                self.connections.discard(connection)
                if attempt == 2:
                    raise LedgerError(f"database error: {_first_line(exc)}") from exc
                # The held connection died while idle (say, the server restarted): running
                # the same write again is safe, as it changes nothing a first run did.
        raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy appends a multi-line "background on this error" note; the first line says it.
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def _describe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Store:
    """A connection to the ledger's database; every method is one short transaction."""

    def __init__(self, engine: Engine, *, read_only: bool = False) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.read_only = read_only
        self._held = _HeldConnections(engine)

    @classmethod
    def open(cls, url: str, *, read_only: bool = False) -> Self:
        """Connect to ``url`` (SQLite or PostgreSQL) and apply any pending migrations.

        ``read_only``: the caller only reads, so an SQLite file this process may not write is
        opened read-only (no migration, nothing settled) rather than refused.
        """
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise LedgerError(f"invalid database URL {url!r}: {exc}") from None
        backend = parsed.get_backend_name()
        problem = write_problem(parsed.database) if backend == "sqlite" else None
        if problem is not None and read_only:
            assert parsed.database is not None
            return cls._read_only_sqlite(parsed.database, url)
        if problem is not None:
            raise LedgerError(f"cannot open {_describe(url)} to write: {problem}")
        if backend == "sqlite":
            engine = cls._sqlite_engine(parsed.database)
        elif backend == "postgresql":
            try:
                engine = create_engine(url, pool_pre_ping=True)
            except ImportError as exc:
                raise LedgerError(f"{_describe(url)} needs a PostgreSQL driver ({exc.name}): "
                                  "pip install 'anniversary-publisher[postgres]'") from None
        else:
            raise LedgerError(f"unsupported database {backend!r} in {_describe(url)}: "
                              "use sqlite:/// or postgresql+psycopg://")
        ledger = cls(engine)
        try:
            ledger.migrate()
        except LedgerError as exc:
            engine.dispose()
            raise LedgerError(f"cannot open {_describe(url)}: {exc}") from None
        return ledger

    @classmethod
    def _read_only_sqlite(cls, database: str, url: str) -> Self:
        def connect() -> sqlite3.Connection:
            return connect_read_only(database, BUSY_TIMEOUT_MS / 1000)

        engine = create_engine("sqlite://", creator=connect, poolclass=QueuePool)
        _configure_sqlite(engine)
        ledger = cls(engine, read_only=True)
        try:
            version = ledger.schema_version()
            needed = len(schema.MIGRATIONS)
            if version != needed:
                raise LedgerError(f"its schema is at version {version} and this publisher "
                                  f"needs {needed}: run a command that writes where "
                                  "the database can be written")
        except LedgerError as exc:
            engine.dispose()
            raise LedgerError(f"cannot open {_describe(url)} read-only: {exc}") from None
        return ledger

    @staticmethod
    def _sqlite_engine(database: str | None) -> Engine:
        memory = database in IN_MEMORY
        if not memory:
            assert database is not None
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LedgerError(f"cannot create the folder of {database}: {exc.strerror}"
                                  ) from None
        engine = create_engine(
            f"sqlite:///{database}" if not memory else "sqlite://",
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
            # An in-memory database exists only inside its one connection.
            poolclass=StaticPool if memory else None,
        )
        _configure_sqlite(engine)
        return engine

    def close(self) -> None:
        """Release every pooled connection."""
        self._held.close()
        self.engine.dispose()

    def __enter__(self) -> Self:
        """Return the ledger itself, closed when the block ends."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close the ledger."""
        self.close()

    def _write(self) -> AbstractContextManager[Connection]:
        # preserve_rowcount: SQLAlchemy drops an INSERT's row count unless asked to keep it.
        return self._transaction(ledger_write=True, preserve_rowcount=True)

    def _read(self) -> AbstractContextManager[Connection]:
        return self._transaction()

    @contextmanager
    def _transaction(self, **options: Any) -> Iterator[Connection]:
        try:
            with self.engine.connect().execution_options(**options) as conn, conn.begin():
                yield conn
        except DBAPIError as exc:
            raise LedgerError(f"database error: {_first_line(exc)}") from exc

    def _insert(self, table: Table) -> Any:
        if self.dialect == "postgresql":
            # Imported here: the dialect takes a tenth of a second to import, which every
            # command opening an SQLite ledger (`publisher status`, say) would pay for nothing.
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        return sqlite.insert(table)

    # -- schema --------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply the migration steps not yet recorded; return the schema version."""
        # Every command opens the ledger, many while another process writes: looking without
        # the write lock first spares them waiting for a long write (queueing a million
        # deliveries) to end.
        migrations = schema.MIGRATIONS
        with suppress(LedgerError):  # unreadable so: the write below says why
            if self._applied() == set(range(1, len(migrations) + 1)):
                return len(migrations)
        with self._write() as conn:
            if self.dialect == "postgresql":
                # Two processes opening a fresh database at once: the second waits here, then
                # finds the steps recorded. (SQLite's BEGIN IMMEDIATE already serialises them.)
                conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            schema_migrations.create(conn, checkfirst=True)
            done = set(conn.scalars(select(schema_migrations.c.version)))
            newest = max(done, default=0)
            if newest > len(migrations):
                raise LedgerError(f"the database is at schema version {newest}, newer than this "
                                  f"publisher knows ({len(migrations)}): upgrade the publisher")
            for version, step in enumerate(migrations, start=1):
                if version not in done:
                    step(conn)
                    conn.execute(schema_migrations.insert().values(
                        version=version, applied_at=utcnow()))
            return len(migrations)

    def _applied(self) -> set[int]:
        with self._read() as conn:
            if not inspect(conn).has_table(schema_migrations.name):
                return set()
            return set(conn.scalars(select(schema_migrations.c.version)))

    def schema_version(self) -> int:
        """Return the newest applied migration."""
        with self._read() as conn:
            return int(conn.scalar(select(func.max(schema_migrations.c.version))) or 0)
