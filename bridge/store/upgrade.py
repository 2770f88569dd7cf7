"""Schema upgrades: what a store holds, the SQLite backup, the log lines, and the lockout
of replicas of older releases.

`stored_version` reads a database without changing anything (check-config); the stores
call `log_start` and `log_result` around a migration, and SQLite backs itself up first
with `back_up_sqlite`.
"""
import datetime
import logging
import os
import sqlite3
import urllib.parse
from typing import Any, List, Optional, Tuple

from bridge.store import (
    SCHEMA_VERSION,
    StoreUnavailableError,
    require_postgres_driver,
    sqlite_path,
)

log = logging.getLogger("bridge")


# From schema 3 on, PostgreSQL refuses writes from sessions that do not say which schema
# they write (postgres._WRITER): a replica of an older release, still running while another
# replica migrates, cannot write with the rules the new schema left behind. Its writes fail
# (it answers 503, like a store outage) and it cannot start again (the schema is newer than
# it); its reads still work. A later migration may raise the number, or leave it where it
# is to let the release before keep writing.
POSTGRES_WRITER_LOCKOUT = {3: [
    """CREATE OR REPLACE FUNCTION heartbeat_bridge_check_writer() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF COALESCE(NULLIF(current_setting('heartbeat_bridge.writer_schema', true), ''),
                    '0')::integer < 3 THEN
            RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = 'this heartbeat-bridge store is at schema 3 (release 0.2.0); '
                          'a bridge of an older release may not write it: upgrade it';
        END IF;
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER heartbeat_bridge_writer BEFORE INSERT OR UPDATE OR DELETE ON servers "
    "FOR EACH STATEMENT EXECUTE PROCEDURE heartbeat_bridge_check_writer()",
    "CREATE TRIGGER heartbeat_bridge_writer BEFORE INSERT OR UPDATE OR DELETE ON rejections "
    "FOR EACH STATEMENT EXECUTE PROCEDURE heartbeat_bridge_check_writer()",
]}


# SQLite has no session settings: each connection of this release defines the function
# WRITER_FUNCTION (the schema its code writes), and triggers refuse writes where it is
# missing (0.1: "no such function") or lower than the schema's (a later release's lockout).
WRITER_FUNCTION = "heartbeat_bridge_writer_schema"
SQLITE_WRITER_LOCKOUT = {3: [
    f"CREATE TRIGGER heartbeat_bridge_writer_{table}_{event.lower()} BEFORE {event} ON {table} "
    f"WHEN {WRITER_FUNCTION}() < 3 BEGIN SELECT RAISE(ABORT, 'this heartbeat-bridge store "
    "is at schema 3 (release 0.2.0); a bridge of an older release may not write it: "
    "upgrade it'); END"
    for table in ("servers", "rejections") for event in ("INSERT", "UPDATE", "DELETE")]}


def stored_version(url: str) -> Optional[int]:
    """The schema version of the store at `url`, or None when there is none yet; reads only
    (no file, table or row is created). StoreUnavailableError when it cannot be read."""
    path = sqlite_path(url)
    if path:
        return _sqlite_version(path)
    return _postgres_version(url)


def connected_releases(url: str) -> List[Tuple[str, int]]:
    """(application_name, connections) of the bridges connected to this PostgreSQL database
    now, in any schema, this session left out; [] for SQLite. 0.1 connected as
    `heartbeat-bridge`, later releases as `heartbeat-bridge/VERSION`."""
    if sqlite_path(url):
        return []
    require_postgres_driver()
    from bridge.store.postgres import read_only_rows
    rows = read_only_rows(url, "SELECT application_name, COUNT(*) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                               "AND (application_name = 'heartbeat-bridge' OR "
                               "application_name LIKE 'heartbeat-bridge/%') "
                               "GROUP BY application_name ORDER BY application_name")
    return [(name, int(count)) for name, count in rows]


def plan(version: Optional[int], url: str) -> str:
    """What `serve` would do with a store at `version` (None: no store yet), in words."""
    if version is None:
        return f"create the store at schema {SCHEMA_VERSION}"
    if version > SCHEMA_VERSION:
        return (f"refuse to start: the store's schema {version} is newer than this bridge's "
                f"({SCHEMA_VERSION}); upgrade the bridge")
    if version == SCHEMA_VERSION:
        return "use the store as it is"
    migrate = f"migrate the store from schema {version} to {SCHEMA_VERSION}"
    path = sqlite_path(url)
    if path:
        backup = backup_path(os.path.abspath(path), version)
        return f"back the store up to {backup}, then {migrate}"
    return (f"{migrate}; back it up with pg_dump first, there is no way back without it "
            "(docs/upgrading.md)")


def backup_path(path: str, version: int, now: Optional[datetime.datetime] = None) -> str:
    """Where the copy of a SQLite store at `version` goes: next to it, named for the time."""
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return f"{path}.schema{version}-{stamp}.bak"


def back_up_sqlite(conn: sqlite3.Connection, path: str, version: int) -> str:
    """Copy the database behind `conn` with SQLite's online backup API; return the copy's
    path. The copy is a consistent snapshot even while others write."""
    target = backup_path(path, version)
    try:
        with sqlite3.connect(target) as copy:
            conn.backup(copy)
        copy.close()
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"cannot back up {path} to {target} before migrating: "
                                    f"{exc}") from exc
    log.warning("backed up the store to %s before migrating it", target)
    return target


def log_start(version: int) -> None:
    log.warning("migrating the store from schema %d to %d", version, SCHEMA_VERSION)


def log_result(cur: Any, version: int) -> None:
    """One line on what the migrated store holds: the decisions it read from `version`."""
    cur.execute("SELECT COUNT(*), "
                "SUM(CASE WHEN paused <> 0 AND paused_by = 'host' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN paused <> 0 AND paused_by = 'operator' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN retired_at IS NOT NULL THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN token_hash IS NOT NULL THEN 1 ELSE 0 END) FROM servers")
    servers, host, operator, retired, tokens = (n or 0 for n in cur.fetchone())
    log.warning("migrated the store from schema %d to %d: %d servers; pauses read as a "
                "host's window %d, as an operator's %d; retirements kept as an operator's %d; "
                "servers with their own token (now enrolled) %d",
                version, SCHEMA_VERSION, servers, host, operator, retired, tokens)


def _sqlite_version(path: str) -> Optional[int]:
    if not os.path.isfile(path):
        return None
    # With no -wal file no process has the store open (the last to close removes it): read it
    # as immutable then, which leaves no -wal or -shm file behind as a read-only open would.
    flags = "mode=ro" if os.path.exists(f"{path}-wal") else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?{flags}", uri=True)
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"sqlite {path}: {exc}") from exc
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                            "AND name = 'meta'").fetchone():
            return None
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return None if row is None else int(row[0])
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"sqlite {path}: {exc}") from exc
    finally:
        conn.close()


def _postgres_version(url: str) -> Optional[int]:
    require_postgres_driver()
    from bridge.store.postgres import read_only_rows
    if read_only_rows(url, "SELECT to_regclass('meta')")[0][0] is None:
        return None
    rows = read_only_rows(url, "SELECT value FROM meta WHERE key = 'schema_version'")
    return int(rows[0][0]) if rows else None
