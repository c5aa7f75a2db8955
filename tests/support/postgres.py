"""A real PostgreSQL for tests: one throwaway cluster per test session, a database per test.

``PostgresCluster.start()`` runs ``initdb`` and ``pg_ctl start`` in a temporary folder,
listening only on a Unix socket in that folder (no port to collide with another run).
PostgreSQL refuses to run as root, and this machine and CI run as root, so the server
then runs as the unprivileged ``postgres`` user that Debian's package creates (through
``runuser``), and the folder is made that user's. Tests connect as ``barnraise``, an
ordinary role that owns its database, as a deployment's coordinator would.

PostgreSQL missing is a failure that says how to install it, never a skip: CI installs it
(``postgresql`` is in the Makefile's APT_PACKAGES), so a skip would hide a broken setup.

``tests/conftest.py`` makes the fixtures from the generators at the end:
``postgres_cluster`` (``cluster_for_session``), ``postgres_url`` (``fresh_database``: an
empty database, for tests of migrating one) and ``migrated_postgres_url``
(``migrated_database``: the store's schema and no rows, for tests of what runs on a
store). Making and migrating a database costs about 100 ms on a 2-core machine and
emptying one about 1 ms, so a migrated database is emptied after its test and handed to
the next one; any connection the test left open is ended first.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from backend.store.postgres import PostgresStore

INSTALL_HINT = (
    "PostgreSQL is not installed: `apt-get install postgresql` (the tests look for initdb "
    "and pg_ctl under /usr/lib/postgresql/*/bin, then on PATH)"
)
UNPRIVILEGED_USERS = ("postgres", "nobody")
"""Whom the server runs as when the tests run as root: the first that exists."""
APP_ROLE = "barnraise"

TEST_SETTINGS = {
    "listen_addresses": "''",
    "max_connections": "200",  # each open store holds a writer and a few readers
    "shared_buffers": "32MB",
    "fsync": "off",  # a test cluster is thrown away; crash safety is not what it tests
    "full_page_writes": "off",
    "log_min_messages": "warning",
}
"""What a test cluster runs with; ``durable=True`` turns fsync back on (for benches)."""


def find_binaries() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: the newest Debian version, or PATH."""

    def version(initdb: str) -> int:
        name = Path(initdb).parent.parent.name
        return int(name) if name.isdigit() else 0

    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if versions:
        return Path(versions[-1]).parent
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    raise RuntimeError(INSTALL_HINT)


def _unprivileged_user() -> str | None:
    """None when not root (the server runs as whoever we are); else a user to run it as."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError(
        "PostgreSQL will not run as root and no unprivileged user exists to run it: "
        "`apt-get install postgresql` creates the postgres user"
    )


class PostgresCluster:
    """A PostgreSQL server in a temporary folder, reached through its Unix socket."""

    def __init__(self, *, durable: bool = False) -> None:
        self.bin = find_binaries()
        self.user = _unprivileged_user()
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="barnraise-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self._emptied: list[str] = []
        self.started = False

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
                + (self.log.read_text() if self.log.exists() else "")
            )

    def start(self) -> PostgresCluster:
        if self.user is not None:
            info = pwd.getpwnam(self.user)
            os.chown(self.root, info.pw_uid, info.pw_gid)
        self.root.chmod(0o700)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        settings = dict(TEST_SETTINGS, unix_socket_directories=f"'{self.root}'")
        if self.durable:
            settings.update(fsync="on", full_page_writes="on")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.started = True
        with self.admin() as conn:
            conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
        return self

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection (autocommit), to make and drop databases."""
        return psycopg.connect(host=str(self.root), user="postgres", dbname=dbname, autocommit=True)

    def url(self, dbname: str) -> str:
        """How the store under test reaches ``dbname``: as the app role, over the socket."""
        return f"host={self.root} user={APP_ROLE} dbname={dbname}"

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database owned by the app role; its name."""
        with self._lock:
            name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {APP_ROLE}")
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def take_migrated_database(self) -> str:
        """A database with the store's schema and no rows (one given back, or a new one)."""
        with self._lock:
            if self._emptied:
                return self._emptied.pop()
        name = self.create_database("migrated")
        PostgresStore(self.url(name), pool_size=1).close()
        return name

    def give_back_emptied(self, name: str) -> None:
        """End the connections to ``name``, delete its rows and restart its sequences, so
        the next taker finds it as migrating left it; drop it if that fails."""
        try:
            with self.admin(name) as conn:
                conn.execute(_EMPTY_DATABASE)
        except psycopg.Error:
            self.drop_database(name)
            return
        with self._lock:
            self._emptied.append(name)

    def stop(self) -> None:
        """Stop the server and remove its folder. Idempotent."""
        if self.started:
            self.started = False
            # The folder goes anyway; a server left behind has lost its files.
            with contextlib.suppress(RuntimeError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


_EMPTY_DATABASE = """DO $$
DECLARE item record;
BEGIN
    PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid();
    PERFORM set_config('lock_timeout', '10s', true);
    -- no foreign-key triggers while deleting: every table is emptied, in any order
    PERFORM set_config('session_replication_role', 'replica', true);
    FOR item IN SELECT schemaname, tablename FROM pg_tables
            WHERE schemaname = 'public' AND tablename <> 'barnraise_migrations' LOOP
        EXECUTE format('DELETE FROM %I.%I', item.schemaname, item.tablename);
    END LOOP;
    FOR item IN SELECT schemaname, sequencename FROM pg_sequences
            WHERE schemaname = 'public' LOOP
        PERFORM setval(format('%I.%I', item.schemaname, item.sequencename)::regclass, 1, false);
    END LOOP;
END $$"""
"""Back to a freshly migrated database in one round trip: the migrations' record stays."""

_shared: PostgresCluster | None = None
_shared_lock = threading.Lock()


def shared_cluster() -> PostgresCluster:
    """This process's test cluster, started on first use and stopped at the end of the
    session (``cluster_for_session``) or at exit, whichever comes first."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.started:
            try:
                cluster = PostgresCluster()
            except RuntimeError as exc:
                pytest.fail(str(exc), pytrace=False)
            try:
                cluster.start()
            except BaseException:
                cluster.stop()
                raise
            atexit.register(cluster.stop)
            _shared = cluster
        return _shared


def cluster_for_session() -> Iterator[PostgresCluster]:
    """The body of a session fixture: the shared cluster, stopped when the session ends."""
    cluster = shared_cluster()
    yield cluster
    cluster.stop()


def fresh_database(cluster: PostgresCluster) -> Iterator[str]:
    """The body of a test fixture: a connection string to a new, empty database, dropped
    after the test."""
    name = cluster.create_database()
    yield cluster.url(name)
    cluster.drop_database(name)


def migrated_database(cluster: PostgresCluster) -> Iterator[str]:
    """The body of a test fixture: a connection string to a database with the store's
    schema and no rows, emptied after the test for the next one."""
    name = cluster.take_migrated_database()
    yield cluster.url(name)
    cluster.give_back_emptied(name)
