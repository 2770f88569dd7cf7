"""The store's semantics in portable SQL; backends supply connections, locking and errors.

SQL here uses `?` placeholders and types both SQLite and PostgreSQL accept, so the two
backends share one schema and one implementation of every operation.
"""
import json
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from bridge.config import Settings
from bridge.store import (
    SCHEMA_VERSION,
    UNSET,
    BeatPolicy,
    Clock,
    Credentials,
    IntervalTooLongError,
    OperatorPausedError,
    RateLimitedError,
    Server,
    ServerExistsError,
    ServerLimitError,
    Snapshot,
    StoreError,
    UnknownServerError,
    rate_limit,
    upgrade,
)
from bridge.validate import Beat

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS servers (
        server_id TEXT PRIMARY KEY,
        labels TEXT NOT NULL DEFAULT '{}',
        registered_interval DOUBLE PRECISION,
        declared_interval DOUBLE PRECISION,
        last_seen DOUBLE PRECISION NOT NULL DEFAULT 0,
        beats_total BIGINT NOT NULL DEFAULT 0,
        paused INTEGER NOT NULL DEFAULT 0,
        paused_until DOUBLE PRECISION,
        pause_reason TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        hostname TEXT,
        agent_version TEXT,
        boot_time DOUBLE PRECISION,
        clock_skew DOUBLE PRECISION,
        seq BIGINT,
        token_hash TEXT,
        prev_token_hash TEXT,
        prev_token_until DOUBLE PRECISION,
        rl_tat DOUBLE PRECISION
    )""",
    "CREATE TABLE IF NOT EXISTS rejections (reason TEXT PRIMARY KEY, count BIGINT NOT NULL)",
]
# Upgrades from the version before; SCHEMA above is version 1 and never changes. Each
# says how it reads the data of the version before. A `?` in a statement is the latest end
# a host's maintenance window could have at the moment of the upgrade (now plus
# HEARTBEAT_MAX_HOST_SILENCE_HOURS).
MIGRATIONS: Dict[int, List[str]] = {
    # Goodbyes and retirement; no server had either before.
    2: ["ALTER TABLE servers ADD COLUMN expected_back DOUBLE PRECISION",
        "ALTER TABLE servers ADD COLUMN retired_at DOUBLE PRECISION"],
    # Enrolment, and who paused or retired a server (a host cannot undo an operator).
    3: ["ALTER TABLE servers ADD COLUMN token_confirmed INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE servers ADD COLUMN paused_by TEXT",
        "ALTER TABLE servers ADD COLUMN retired_by TEXT",
        # Tokens set before enrolment existed were all given out by an operator: confirmed,
        # so the fleet token no longer speaks for those servers.
        "UPDATE servers SET token_confirmed = 1 WHERE token_hash IS NOT NULL",
        # Schema 2 stored a host's window and an operator's pause alike. One ending within
        # the bound a host may ask for may be a host's window: read as the host's, so that
        # host can still end it early. One with no end (no host could ask for that) or
        # ending later stays the operator's, which no host can end.
        "UPDATE servers SET paused_by = CASE WHEN paused_until IS NOT NULL AND "
        "paused_until <= ? THEN 'host' ELSE 'operator' END WHERE paused <> 0",
        # Nor did it say who retired a server (an operator, its own goodbye, or silence):
        # every old retirement is read as an operator's, so no beat undoes it; an operator
        # brings a server back (unretire).
        "UPDATE servers SET retired_by = 'operator' WHERE retired_at IS NOT NULL"],
}
# The longest maintenance window a host may ask for unless the settings say otherwise.
DEFAULT_MAX_HOST_SILENCE = Settings.max_host_silence_hours * 3600.0

# Every column, in the order export_rows() yields and import_rows() takes them.
ALL_COLUMNS = ("server_id", "labels", "registered_interval", "declared_interval", "last_seen",
               "beats_total", "paused", "paused_until", "pause_reason", "created_at", "hostname",
               "agent_version", "boot_time", "clock_skew", "seq", "token_hash",
               "prev_token_hash", "prev_token_until", "rl_tat", "expected_back", "retired_at",
               "token_confirmed", "paused_by", "retired_by")
_SERVER_SELECT = ("SELECT server_id, labels, registered_interval, declared_interval, last_seen, "
                  "beats_total, paused, paused_until, pause_reason, created_at, hostname, "
                  "agent_version, boot_time, clock_skew, seq, token_hash, expected_back, "
                  "retired_at, "
                  "token_confirmed, paused_by, retired_by FROM servers")
# What a beat needs of its server's row, locked until the beat commits.
_BEAT_ROW = "SELECT registered_interval, declared_interval, rl_tat FROM servers WHERE server_id = ?"


class SQLStore:
    """Store operations over a DB-API connection; subclasses provide _transaction().

    The Store Protocol's contracts (bridge.store) are kept here, for both backends."""

    for_update = ""  # row lock clause for read-modify-write (PostgreSQL: " FOR UPDATE")

    where = "the database"  # backends say more: a path, a host and database
    # Statements a backend adds to a migration, after MIGRATIONS[version]: its lockout of
    # older releases' writers (bridge.store.upgrade).
    backend_migrations: Mapping[int, Sequence[str]] = {}

    def __init__(self, clock: Clock = time.time,
                 max_host_silence: float = DEFAULT_MAX_HOST_SILENCE) -> None:
        self.clock = clock
        self.max_host_silence = max_host_silence

    # -- backend hooks -------------------------------------------------------------------
    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Any]:
        """Yield a cursor inside one transaction (committed on success, rolled back on error)."""
        raise NotImplementedError

    def _lock(self, cur: Any, name: str) -> None:
        """Serialize writers that must not race across processes (schema, registration)."""

    # -- schema --------------------------------------------------------------------------
    def create_schema(self) -> None:
        """Create or upgrade tables; safe when several workers or replicas start at once.
        An upgrade is logged, with what the upgraded store holds; a failed one keeps none
        of its changes (one transaction)."""
        with self._transaction(write=True) as cur:
            self._lock(cur, "schema")
            for statement in SCHEMA:
                cur.execute(statement)
            row = _one(cur, "SELECT value FROM meta WHERE key = 'schema_version'")
            if row is None:
                cur.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
            version = 1 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise StoreError(f"the database schema is version {version}, newer than this "
                                 f"bridge understands ({SCHEMA_VERSION}); upgrade the bridge")
            if version == SCHEMA_VERSION:
                return
            if row is not None:
                upgrade.log_start(version)
            window_end = self.clock() + self.max_host_silence
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in [*MIGRATIONS[target], *self.backend_migrations.get(target, ())]:
                    cur.execute(statement, (window_end,) * statement.count("?"))
                cur.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                            (str(target),))
            if row is not None:
                upgrade.log_result(cur, version)

    def schema_version(self) -> int:
        with self._transaction(write=False) as cur:
            return int(_one(cur, "SELECT value FROM meta WHERE key = 'schema_version'")[0])

    def ping(self) -> None:
        """Raise StoreUnavailableError unless the database answers."""
        with self._transaction(write=False) as cur:
            cur.execute("SELECT 1")

    # -- beats ---------------------------------------------------------------------------
    def record_beat(self, server_id: str, beat: Beat, policy: BeatPolicy
                    ) -> Tuple[float, float]:
        """Commit one accepted beat; return (received_at, interval). Safe concurrently."""
        now = self.clock()
        with self._transaction(write=True) as cur:
            row = _one(cur, _BEAT_ROW + self.for_update, (server_id,))
            if row is None:
                if not policy.auto_register:
                    raise UnknownServerError(server_id, _NOT_REGISTERED)
                # Another replica may register it between that look and the lock: then its
                # row (interval, rate-limit state) is the one this beat must use.
                self._lock(cur, "register")
                row = _one(cur, _BEAT_ROW + self.for_update, (server_id,))
                if row is None:
                    self._insert_locked(cur, server_id, now, policy.max_servers)
                    row = (None, None, None)
            registered, declared, tat = row
            declaring = beat.interval
            if declaring and declaring > policy.max_agent_interval:
                if not registered:
                    raise IntervalTooLongError(declaring, policy.max_agent_interval)
                # Pinned by an operator: the beat counts, but a declaration over the cap is
                # not kept (it would take effect the day the operator unpins).
                declaring = None
            interval = registered or declaring or declared or policy.default_interval
            tat, retry_after = rate_limit(tat, now, interval, policy.rate_limit_burst)
            if retry_after is not None:
                raise RateLimitedError(retry_after)
            skew = None if beat.sent_at is None else beat.sent_at - now
            cur.execute(
                "UPDATE servers SET last_seen = ?, beats_total = beats_total + 1, rl_tat = ?, "
                "declared_interval = COALESCE(?, declared_interval), "
                "hostname = COALESCE(?, hostname), agent_version = COALESCE(?, agent_version), "
                "boot_time = COALESCE(?, boot_time), clock_skew = COALESCE(?, clock_skew), "
                "seq = COALESCE(?, seq), expected_back = NULL, " + _UNLESS_OPERATOR_RETIRED +
                "WHERE server_id = ?",
                (now, tat, declaring, beat.hostname, beat.agent_version, beat.boot_time,
                 skew, beat.seq, server_id))
        return now, interval

    def add_rejections(self, counts: Mapping[str, int]) -> None:
        """Add {reason: n} to the shared rejection counters."""
        if not counts:
            return
        with self._transaction(write=True) as cur:
            for reason, n in sorted(counts.items()):
                cur.execute("INSERT INTO rejections (reason, count) VALUES (?, ?) "
                            "ON CONFLICT (reason) DO UPDATE SET "
                            "count = rejections.count + excluded.count",
                            (reason, n))

    # -- reads ---------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """All servers and counters, from one transaction."""
        with self._transaction(write=False) as cur:
            cur.execute(_SERVER_SELECT + " ORDER BY server_id")
            rows = cur.fetchall()
            cur.execute("SELECT reason, count FROM rejections")
            rejected = dict(cur.fetchall())
        labels_cache: Dict[str, Dict[str, str]] = {}
        return Snapshot([_server(r, labels_cache) for r in rows], rejected, self.clock())

    def list(self) -> List[Server]:
        return self.snapshot().servers

    def count(self) -> int:
        with self._transaction(write=False) as cur:
            return int(_one(cur, "SELECT COUNT(*) FROM servers")[0])

    def list_unsettled(self, now: float, silent_intervals: float, default_interval: float
                       ) -> Tuple[int, List[Server]]:
        """(count of all servers, the Servers that may not be up at `now`), from one read.

        Those are the retired, paused, away and never seen servers, and those silent for
        more than `silent_intervals` of their interval less a second: a superset, scanned
        in the database, that leaves out the settled majority of a large fleet. Unordered.
        """
        interval = ("COALESCE(CASE WHEN registered_interval <> 0 THEN registered_interval END, "
                    "CASE WHEN declared_interval <> 0 THEN declared_interval END, ?)")
        with self._transaction(write=False) as cur:
            (count,) = _one(cur, "SELECT COUNT(*) FROM servers")
            cur.execute(_SERVER_SELECT + " WHERE retired_at IS NOT NULL OR paused <> 0 "
                        "OR expected_back IS NOT NULL OR last_seen = 0 OR CASE WHEN "
                        f"last_seen > ? - ? * {interval} + 1 THEN 0 ELSE 1 END = 1",
                        (now, silent_intervals, default_interval))
            rows = cur.fetchall()
        labels_cache: Dict[str, Dict[str, str]] = {}
        return count, [_server(r, labels_cache) for r in rows]

    def get(self, server_id: str) -> Server:
        with self._transaction(write=False) as cur:
            row = _one(cur, _SERVER_SELECT + " WHERE server_id = ?", (server_id,))
        if row is None:
            raise UnknownServerError(server_id)
        return _server(row, {})

    def credentials(self, server_id: str) -> Credentials:
        """The per-server token hashes valid now (current, and the previous during a rotation
        or while an enrolment is pending) and whether the current one is confirmed; no hashes
        for an unknown server. Read under the row's lock: inside a batch, what is decided on
        it holds until the batch commits (two replicas cannot both enrol one id)."""
        with self._transaction(write=True) as cur:
            row = _one(cur, "SELECT token_hash, prev_token_hash, prev_token_until, "
                            "token_confirmed FROM servers WHERE server_id = ?"
                       + self.for_update, (server_id,))
        if row is None:
            return Credentials([], False)
        current, previous, until, confirmed = row
        valid = [current] if current else []
        if previous and until and until > self.clock():
            valid.append(previous)
        return Credentials(valid, bool(current and confirmed))

    def token_hashes(self, server_id: str) -> List[str]:
        """The per-server token hashes valid now."""
        return self.credentials(server_id).hashes

    # -- lifecycle -----------------------------------------------------------------------
    def register(self, server_id: str, interval: Optional[float] = None,
                 labels: Optional[Dict[str, str]] = None, token_hash: Optional[str] = None,
                 max_servers: int = BeatPolicy.max_servers) -> Server:
        """Add a server that has never beaten; raise ServerExistsError if it is known."""
        now = self.clock()
        with self._transaction(write=True) as cur:
            self._lock(cur, "register")  # before the check: a racing replica's insert is seen
            if _one(cur, "SELECT 1 FROM servers WHERE server_id = ?", (server_id,)):
                raise ServerExistsError(server_id)
            self._insert_locked(cur, server_id, now, max_servers, explain=True)
            # an operator's token is confirmed: the fleet token never speaks for this server
            cur.execute("UPDATE servers SET registered_interval = ?, labels = ?, token_hash = ?, "
                        "token_confirmed = ? WHERE server_id = ?",
                        (interval, _dump_labels(labels or {}), token_hash,
                         1 if token_hash else 0, server_id))
        return self.get(server_id)

    def update(self, server_id: str, labels: Dict[str, str] = UNSET,
               interval: Optional[float] = UNSET) -> Server:
        """Replace a server's operator labels and/or registered interval (None: agent's)."""
        sets: List[str] = []
        params: List[Any] = []
        if labels is not UNSET:
            sets.append("labels = ?")
            params.append(_dump_labels(labels))
        if interval is not UNSET:
            sets.append("registered_interval = ?")
            params.append(interval)
        if not sets:
            return self.get(server_id)
        return self._update(server_id, ", ".join(sets), params)

    def pause(self, server_id: str, until: Optional[float] = None,
              reason: Optional[str] = None) -> Server:
        """An operator pauses alerting, until a Unix time or (until=None) until resumed."""
        return self._update(server_id, "paused = 1, paused_until = ?, pause_reason = ?, "
                                       "paused_by = 'operator'", [until, reason])

    def resume(self, server_id: str) -> Server:
        """An operator ends any pause."""
        return self._update(server_id, _RESUME, [])

    def host_pause(self, server_id: str, until: float, reason: Optional[str],
                   policy: BeatPolicy) -> Server:
        """A host's maintenance until `until`; raises OperatorPausedError while an operator's
        pause holds, RateLimitedError past the server's rate limit (shared with beats)."""
        with self._transaction(write=True) as cur:
            self._host_row(cur, server_id, policy, refuse_if_operator_paused=True)
            cur.execute("UPDATE servers SET paused = 1, paused_until = ?, pause_reason = ?, "
                        "paused_by = 'host' WHERE server_id = ?", (until, reason, server_id))
        return self.get(server_id)

    def host_resume(self, server_id: str, policy: BeatPolicy) -> Server:
        """A host ends its own maintenance; never an operator's pause (OperatorPausedError)."""
        with self._transaction(write=True) as cur:
            self._host_row(cur, server_id, policy, refuse_if_operator_paused=True)
            cur.execute(f"UPDATE servers SET {_RESUME} WHERE server_id = ?", (server_id,))
        return self.get(server_id)

    def goodbye(self, server_id: str, back_within: float, retire: bool = False,
                policy: Optional[BeatPolicy] = None) -> float:
        """A host's clean stop: alive now, back within `back_within` s (or retired by itself).
        Charged to the rate limit beats use; an operator's retirement stays as it is."""
        now = self.clock()
        with self._transaction(write=True) as cur:
            self._host_row(cur, server_id, policy or BeatPolicy())
            cur.execute("UPDATE servers SET last_seen = ?, expected_back = ?, "
                        "retired_at = CASE WHEN retired_by = 'operator' THEN retired_at ELSE ? "
                        "END, retired_by = CASE WHEN retired_by = 'operator' THEN retired_by "
                        "ELSE ? END WHERE server_id = ?",
                        (now, now + back_within, now if retire else None,
                         "host" if retire else None, server_id))
        return now + back_within

    def set_retired(self, server_id: str, retired: bool) -> Server:
        """An operator retires a server (no alerts, forgotten later; a host cannot undo it)
        or brings it back."""
        return self._update(server_id, "retired_at = ?, retired_by = ?",
                            [self.clock(), "operator"] if retired else [None, None])

    def retire_silent(self, silent_for: float) -> int:
        """Retire servers not heard from for `silent_for` seconds; count them."""
        now = self.clock()
        with self._transaction(write=True) as cur:
            cur.execute("UPDATE servers SET retired_at = ?, retired_by = 'silence' "
                        "WHERE retired_at IS NULL AND "
                        "CASE WHEN last_seen > created_at THEN last_seen ELSE created_at END < ?",
                        (now, now - silent_for))
            return cur.rowcount

    def forget_retired(self, retired_for: float) -> int:
        """Remove servers retired more than `retired_for` seconds ago; count them."""
        with self._transaction(write=True) as cur:
            cur.execute("DELETE FROM servers WHERE retired_at < ?", (self.clock() - retired_for,))
            return cur.rowcount

    def set_token(self, server_id: str, token_hash: Optional[str],
                  keep_previous_for: float = 0.0, confirmed: bool = True) -> Server:
        """Set (or with None, revoke and so re-open enrolment) a server's token; the old one
        may stay valid a while. An operator's token is confirmed; one issued on enrolment is
        not, until its first use (confirm_token)."""
        flag = 1 if confirmed and token_hash else 0
        if keep_previous_for:
            return self._update(server_id, "prev_token_hash = token_hash, prev_token_until = ?, "
                                           "token_hash = ?, token_confirmed = ?",
                                [self.clock() + keep_previous_for, token_hash, flag])
        return self._update(server_id, "prev_token_hash = NULL, prev_token_until = NULL, "
                                       "token_hash = ?, token_confirmed = ?", [token_hash, flag])

    def enrol(self, server_id: str, token_hash: str, keep_pending_for: float) -> bool:
        """Issue an unconfirmed token to a server that has no confirmed one; a token issued
        before and not yet used stays valid `keep_pending_for` s (its host may be about to
        use it). False, changing nothing, when the server's current token is confirmed."""
        with self._transaction(write=True) as cur:
            cur.execute("UPDATE servers SET prev_token_hash = token_hash, "
                        "prev_token_until = CASE WHEN token_hash IS NULL THEN NULL ELSE ? END, "
                        "token_hash = ?, token_confirmed = 0 "
                        "WHERE server_id = ? AND token_confirmed = 0",
                        (self.clock() + keep_pending_for, token_hash, server_id))
            return cur.rowcount == 1

    def confirm_token(self, server_id: str, token_hash: str) -> None:
        """The first use of an issued token: if `token_hash` is the current token, or a
        pending one still valid, it becomes the server's confirmed token and every other is
        dropped; from then on the fleet token no longer speaks for the server. Nothing
        changes once a token is confirmed."""
        with self._transaction(write=True) as cur:
            cur.execute("UPDATE servers SET token_hash = ?, token_confirmed = 1, "
                        "prev_token_hash = NULL, prev_token_until = NULL "
                        "WHERE server_id = ? AND token_confirmed = 0 AND (token_hash = ? OR "
                        "(prev_token_hash = ? AND prev_token_until > ?))",
                        (token_hash, server_id, token_hash, token_hash, self.clock()))

    def remove(self, server_id: str) -> None:
        with self._transaction(write=True) as cur:
            cur.execute("DELETE FROM servers WHERE server_id = ?", (server_id,))
            if cur.rowcount == 0:
                raise UnknownServerError(server_id)

    def forget_silent(self, silent_for: float) -> int:
        """Remove servers not heard from (nor registered) for `silent_for` seconds; count them."""
        cutoff = self.clock() - silent_for
        with self._transaction(write=True) as cur:
            cur.execute("DELETE FROM servers WHERE CASE WHEN last_seen > created_at "
                        "THEN last_seen ELSE created_at END < ?", (cutoff,))
            return cur.rowcount

    # -- moving state between stores -----------------------------------------------------
    def export_rows(self) -> Tuple[List[Sequence[Any]], Dict[str, int]]:
        """Every server row as a tuple in ALL_COLUMNS order, and the rejection counters."""
        with self._transaction(write=False) as cur:
            cur.execute(f"SELECT {', '.join(ALL_COLUMNS)} FROM servers ORDER BY server_id")
            rows = cur.fetchall()
            cur.execute("SELECT reason, count FROM rejections")
            return rows, dict(cur.fetchall())

    def import_rows(self, rows: Sequence[Sequence[Any]], rejected: Mapping[str, int]) -> None:
        """Insert or overwrite servers from export_rows(); counters are added."""
        placeholders = ", ".join("?" for _ in ALL_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in ALL_COLUMNS[1:])
        with self._transaction(write=True) as cur:
            for row in rows:
                cur.execute(f"INSERT INTO servers ({', '.join(ALL_COLUMNS)}) VALUES "
                            f"({placeholders}) ON CONFLICT (server_id) DO UPDATE SET {updates}",
                            tuple(row))
        self.add_rejections(rejected)

    # -- helpers -------------------------------------------------------------------------
    def _insert_locked(self, cur: Any, server_id: str, now: float, max_servers: int,
                       explain: bool = False) -> None:
        """Insert a server known to be absent, under the registration lock, within the cap.
        `explain`: an operator registering is told the counts; an agent, only the limit."""
        (count,) = _one(cur, "SELECT COUNT(*) FROM servers")
        if count >= max_servers:
            detail = f"{count} servers registered, limit {max_servers}"
            raise ServerLimitError(detail, message=detail if explain else None)
        cur.execute("INSERT INTO servers (server_id, created_at) VALUES (?, ?)", (server_id, now))

    def _host_row(self, cur: Any, server_id: str, policy: BeatPolicy,
                  refuse_if_operator_paused: bool = False) -> None:
        """Lock a server's row for a host's goodbye or maintenance and charge it to the
        server's one rate limit, the beats' own."""
        now = self.clock()
        row = _one(cur, "SELECT registered_interval, declared_interval, rl_tat, paused, "
                        "paused_until, paused_by FROM servers WHERE server_id = ?"
                   + self.for_update, (server_id,))
        if row is None:
            raise UnknownServerError(server_id, _NOT_REGISTERED)
        registered, declared, tat, paused, paused_until, paused_by = row
        if refuse_if_operator_paused and paused and paused_by == "operator" and (
                paused_until is None or paused_until > now):
            raise OperatorPausedError(server_id)
        interval = registered or declared or policy.default_interval
        tat, retry_after = rate_limit(tat, now, interval, policy.rate_limit_burst)
        if retry_after is not None:
            raise RateLimitedError(retry_after)
        cur.execute("UPDATE servers SET rl_tat = ? WHERE server_id = ?", (tat, server_id))

    def _update(self, server_id: str, assignments: str, params: List[Any]) -> Server:
        """Change one server's row and read it back, in one transaction."""
        with self._transaction(write=True) as cur:
            cur.execute(f"UPDATE servers SET {assignments} WHERE server_id = ?",
                        (*params, server_id))
            if cur.rowcount == 0:
                raise UnknownServerError(server_id)
            row = _one(cur, _SERVER_SELECT + " WHERE server_id = ?", (server_id,))
        return _server(row, {})


# What the beat path says of an unknown server (a beat, goodbye or maintenance).
_NOT_REGISTERED = "this server is not registered and auto-registration is off"
_RESUME = "paused = 0, paused_until = NULL, pause_reason = NULL, paused_by = NULL"
# A beat or goodbye brings back a server retired by itself or by silence, not by an operator.
_UNLESS_OPERATOR_RETIRED = ("retired_at = CASE WHEN retired_by = 'operator' THEN retired_at "
                            "END, retired_by = CASE WHEN retired_by = 'operator' THEN "
                            "retired_by END ")


def _one(cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
    cur.execute(sql, params)
    return cur.fetchone()


def _dump_labels(labels: Mapping[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def _server(row: Sequence[Any], labels_cache: Dict[str, Dict[str, str]]) -> Server:
    (server_id, labels, registered, declared, last_seen, beats, paused, paused_until, reason,
     created, hostname, agent_version, boot_time, skew, seq, token_hash, expected_back,
     retired_at, token_confirmed, paused_by, retired_by) = row
    parsed = labels_cache.get(labels)
    if parsed is None:
        parsed = labels_cache[labels] = json.loads(labels)
    return Server(server_id, parsed, registered, declared, last_seen, beats, bool(paused),
                  paused_until, reason, created, hostname, agent_version, boot_time, skew, seq,
                  token_hash is not None, expected_back, retired_at, bool(token_confirmed),
                  paused_by, retired_by)
