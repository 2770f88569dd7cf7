"""Typed settings: the only module that reads the environment."""
import ipaddress
import os
import re
from dataclasses import dataclass, fields
from typing import Dict, Mapping, Optional, Sequence, Tuple

from bridge.cpus import default_workers
from bridge.store import BeatPolicy, database_kind

DEFAULT_DATABASE_URL = "sqlite:///var/heartbeat.db"
MAX_INTERVAL = 86400.0
MIN_INTERVAL = 1.0


class ConfigError(ValueError):
    """A setting has a bad value; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the bridge; build with Settings.from_env() or directly in tests."""

    bind: str = "127.0.0.1:8000"
    database_url: str = DEFAULT_DATABASE_URL
    fleet_tokens: tuple = ()
    admin_token: str = ""
    allow_unauthenticated: bool = False
    auto_register: bool = BeatPolicy.auto_register
    workers: int = 2  # from the environment: one per available CPU (bridge.cpus)
    threads: int = 4
    timeout: int = 30
    keepalive: int = 75
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    trusted_proxies: tuple = ()
    # what a beat is held to: the store's BeatPolicy defaults, written there once
    max_servers: int = BeatPolicy.max_servers
    default_interval: float = BeatPolicy.default_interval
    rate_limit_burst: int = BeatPolicy.rate_limit_burst
    enrolment: bool = True
    max_host_silence_hours: float = 72.0
    max_agent_interval: float = BeatPolicy.max_agent_interval
    forget_after_days: float = 0.0
    auto_retire_after_days: float = 0.0
    retired_retention_days: float = 7.0
    status_public: bool = False
    status_token: str = ""
    status_max_age: float = 10.0
    status_cache_dir: str = ""
    log_level: str = "info"
    pool_size: int = 4
    metrics_multiproc_dir: str = ""
    render_process: bool = True
    metric_set: str = "lean"
    started_at: float = 0.0
    heard_until: float = 0.0
    render_process_from: int = 20000
    run_dir: str = ""
    # The CLI only: manage the bridge at this URL through its admin API instead of the store.
    url: str = ""

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        """Read HEARTBEAT_* variables; raise ConfigError naming the first bad one."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        if (env.get("HEARTBEAT_WORKER_CLASS") or "uvicorn") != "uvicorn":
            raise ConfigError("HEARTBEAT_WORKER_CLASS: the threaded worker (gthread) was "
                              "removed; every worker is an event loop: unset it")
        settings = cls(
            bind=reader.bind("HEARTBEAT_BIND", cls.bind),
            database_url=reader.database_url("HEARTBEAT_DATABASE_URL", cls.database_url),
            fleet_tokens=reader.token_list("HEARTBEAT_TOKEN"),
            admin_token=reader.secret("HEARTBEAT_ADMIN_TOKEN"),
            allow_unauthenticated=reader.boolean("HEARTBEAT_ALLOW_UNAUTHENTICATED",
                                                 cls.allow_unauthenticated),
            auto_register=reader.boolean("HEARTBEAT_AUTO_REGISTER", cls.auto_register),
            # One event loop per CPU this process may use (affinity, cgroup quota), at most 8.
            workers=reader.integer("HEARTBEAT_WORKERS", default_workers(), 1, 64),
            threads=reader.integer("HEARTBEAT_THREADS", cls.threads, 1, 64),
            timeout=reader.integer("HEARTBEAT_TIMEOUT", cls.timeout, 1, 3600),
            # Above the default interval, so a 30 s agent reuses its connection.
            keepalive=reader.integer("HEARTBEAT_KEEPALIVE", cls.keepalive, 0, 3600),
            # A client must send its request line and headers, then its body, within these.
            header_timeout=reader.number("HEARTBEAT_HEADER_TIMEOUT", cls.header_timeout,
                                         0.1, 300.0),
            body_timeout=reader.number("HEARTBEAT_BODY_TIMEOUT", cls.body_timeout, 0.1, 300.0),
            # Peers whose X-Forwarded-For / -Proto are believed; none by default.
            trusted_proxies=reader.addresses("HEARTBEAT_TRUSTED_PROXIES"),
            max_servers=reader.integer("HEARTBEAT_MAX_SERVERS", cls.max_servers, 1, 10_000_000),
            default_interval=reader.number("HEARTBEAT_DEFAULT_INTERVAL", cls.default_interval,
                                           MIN_INTERVAL, MAX_INTERVAL),
            rate_limit_burst=reader.integer("HEARTBEAT_RATE_LIMIT_BURST", cls.rate_limit_burst,
                                            0, 10000),
            # The fleet token only enrols: it obtains a server's own token, then stops
            # speaking for that server. off: the fleet token speaks for every server.
            enrolment=reader.boolean("HEARTBEAT_ENROLMENT", cls.enrolment),
            # The longest silence a host may plan for itself (maintenance, goodbye); an
            # operator's pause has no such bound.
            max_host_silence_hours=reader.number("HEARTBEAT_MAX_HOST_SILENCE_HOURS",
                                                 cls.max_host_silence_hours, 0.1, 24 * 366.0),
            # The longest interval an agent may declare; an operator's set-interval may go
            # up to the bridge-wide maximum.
            max_agent_interval=reader.number("HEARTBEAT_MAX_AGENT_INTERVAL", cls.max_agent_interval,
                                             MIN_INTERVAL, MAX_INTERVAL),
            forget_after_days=reader.number("HEARTBEAT_FORGET_AFTER_DAYS", cls.forget_after_days,
                                            0.0, 36500.0),
            auto_retire_after_days=reader.number("HEARTBEAT_AUTO_RETIRE_AFTER_DAYS",
                                                 cls.auto_retire_after_days, 0.0, 36500.0),
            retired_retention_days=reader.number("HEARTBEAT_RETIRED_RETENTION_DAYS",
                                                 cls.retired_retention_days, 0.0, 36500.0),
            status_public=reader.boolean("HEARTBEAT_STATUS_PUBLIC", cls.status_public),
            # A read-only token for the status page, to share without the admin token.
            status_token=reader.secret("HEARTBEAT_STATUS_TOKEN"),
            # How old the status page's data may be: one snapshot per this many seconds,
            # shared by every viewer and worker; 0 computes one per request. Two of the
            # page's 5 s refreshes: at 100,000 servers each snapshot costs ~0.1-0.2 s of CPU.
            status_max_age=reader.number("HEARTBEAT_STATUS_MAX_AGE", cls.status_max_age,
                                         0.0, 300.0),
            # Set by `heartbeat-bridge serve` so gunicorn workers share status snapshots.
            status_cache_dir=reader.raw("HEARTBEAT_STATUS_CACHE_DIR") or "",
            log_level=reader.choice("HEARTBEAT_LOG_LEVEL", cls.log_level,
                                    ("debug", "info", "warning", "error")),
            pool_size=reader.integer("HEARTBEAT_DB_POOL_SIZE", cls.pool_size, 1, 100),
            # Set by `heartbeat-bridge serve` so gunicorn workers share request metrics.
            metrics_multiproc_dir=reader.raw("PROMETHEUS_MULTIPROC_DIR") or "",
            # Under `serve`, /metrics and /api/status of a fleet of render_process_from
            # servers or more are computed in the host's one render process
            # (bridge.render), never in a worker that answers beats; a smaller fleet's in a
            # thread of the worker (bridge.renderer).
            render_process=reader.boolean("HEARTBEAT_RENDER_PROCESS", cls.render_process),
            # lean: at most 4 series a server, what the shipped rules and dashboard need;
            # full: also the counters, flags and agent facts (docs/metrics.md).
            metric_set=reader.choice("HEARTBEAT_METRICS", cls.metric_set, ("lean", "full")),
            # Set by `heartbeat-bridge serve`: when this replica started (its serving-since).
            started_at=reader.number("HEARTBEAT_STARTED_AT", cls.started_at, 0.0, 1e11),
            # Set by `heartbeat-bridge serve`: the last beat the store held at that start.
            heard_until=reader.number("HEARTBEAT_HEARD_UNTIL", cls.heard_until, 0.0, 1e11),
            render_process_from=reader.integer("HEARTBEAT_RENDER_PROCESS_FROM",
                                               cls.render_process_from, 0, 10_000_000),
            # Set by `heartbeat-bridge serve`: where the render process's socket lives.
            run_dir=reader.raw("HEARTBEAT_RUN_DIR") or "",
            url=reader.url("HEARTBEAT_URL"),
        )
        return settings

    def describe(self) -> Dict[str, object]:
        """Settings as printable pairs, secrets masked (passwords in URLs too)."""
        secret = {"fleet_tokens", "admin_token", "status_token"}
        out: Dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in secret:
                value = f"<{len(value)} set>" if f.name == "fleet_tokens" else (
                    "<set>" if value else "<unset>")
            elif f.name in ("database_url", "url"):
                value = mask_url(value)
            out[f.name] = value
        return out


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_BIND = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+|\*)?:(?P<port>\d{1,5})$")


class _Reader:
    """Typed accessors over one environment mapping."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> Optional[str]:
        value = self.env.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
        if not low <= number <= high:
            raise ConfigError(f"{name}: must be between {low} and {high}, got {number}")
        return number

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if not low <= number <= high:  # also rejects nan
            raise ConfigError(f"{name}: must be between {low:g} and {high:g}, got {value}")
        return number

    def choice(self, name: str, default: str, options: Sequence[str]) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() not in options:
            raise ConfigError(f"{name}: expected one of {', '.join(options)}, got {value!r}")
        return value.lower()

    def bind(self, name: str, default: str) -> str:
        value = self.raw(name) or default
        match = _BIND.match(value)
        if not match or not 1 <= int(match.group("port")) <= 65535:
            raise ConfigError(f"{name}: expected host:port (for example 127.0.0.1:8000), "
                              f"got {value!r}")
        return value

    def database_url(self, name: str, default: str) -> str:
        value = self.raw(name) or default
        if database_kind(value):
            return value
        raise ConfigError(f"{name}: expected sqlite:///path or postgresql://..., "
                          f"got {mask_url(value)!r}")

    def addresses(self, name: str) -> Tuple[str, ...]:
        """Comma-separated IP addresses or networks (CIDR), or `*` for any peer."""
        value = self.raw(name)
        if value is None:
            return ()
        items = tuple(item.strip() for item in value.split(",") if item.strip())
        for item in items:
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(f"{name}: expected IP addresses or networks separated by "
                                  f"commas (or *), got {item!r}") from None
        return items

    def secret(self, name: str) -> str:
        """A secret from NAME, or read from the file named by NAME_FILE (not both)."""
        value = self.raw(name)
        path = self.raw(name + "_FILE")
        if value and path:
            raise ConfigError(f"{name} and {name}_FILE are both set; set only one")
        if path:
            value = read_secret_file(path, f"{name}_FILE")
        if value and len(value) < 8:
            raise ConfigError(f"{name}: a token must be at least 8 characters")
        return value or ""

    def url(self, name: str) -> str:
        """An http(s) URL of a bridge, without a trailing slash; "" when unset."""
        value = self.raw(name) or ""
        return check_url(value, name) if value else ""

    def token_list(self, name: str) -> Tuple[str, ...]:
        """Comma-separated tokens (several are accepted at once during a rotation)."""
        tokens = tuple(t.strip() for t in self.secret(name).split(",") if t.strip())
        if any(len(t) < 8 for t in tokens):
            raise ConfigError(f"{name}: a token must be at least 8 characters")
        return tokens


def read_secret_file(path: str, name: str) -> str:
    """The stripped contents of a secret file; ConfigError naming `name` if unreadable or empty."""
    # A name without a '/' may be a token typed where its file's path belongs: not repeated.
    shown = repr(path) if "/" in path else "the file named (not shown: no '/' in it)"
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {shown}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{name}: {shown} is empty")
    return value


def check_url(value: str, name: str) -> str:
    """A bridge's base URL (http:// or https://, a host); ConfigError naming `name` otherwise."""
    if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?\Z", value):
        raise ConfigError(f"{name}: expected http(s)://host[:port][/path], "
                          f"got {mask_url(value)!r}")
    return value.rstrip("/")


_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s\"']*?:)"
                           r"[^/?#\s\"']*(?=@)")
_QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&]password=)[^&#\s\"']*")


def mask_url(text: str) -> str:
    """`text` (a URL, or a message quoting one) as it may be printed or logged: every
    password in a URL (user:PASSWORD@host, or libpq's ?password=...) shown as ***."""
    text = _URL_PASSWORD.sub(r"\g<head>***", text)
    return _QUERY_PASSWORD.sub(r"\g<head>***", text)
