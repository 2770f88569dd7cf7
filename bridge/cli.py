"""`heartbeat-bridge`: serve, and manage servers and tokens in the store, or through a
bridge's admin API with --url (HEARTBEAT_URL)."""
import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from bridge import __version__, admin, logs
from bridge.arguments import QuietParser
from bridge.config import ConfigError, Settings, check_url, read_secret_file
from bridge.errors import BridgeError
from bridge.remote import RemoteError
from bridge.server_view import server_json
from bridge.serving import last_beat
from bridge.store import Server, Store, StoreUnavailableError, database_kind, sqlite_path
from bridge.validate import InvalidInputError

GUNICORN_CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn.conf.py")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
        if getattr(args, "database_url", None):
            settings = _with(settings, database_url=args.database_url, url="")
        settings = _remote(args, settings)
        return args.func(args, settings) or 0
    except (ConfigError, RemoteError) as exc:
        return _fail(str(exc), 2 if isinstance(exc, ConfigError) else 1)
    except BridgeError as exc:  # the store's and the validators' errors: their own words
        return _fail(str(exc), exc.exit_code)


def _fail(line: str, code: int) -> int:
    """What ends a command early: one line on stderr, and the exit code."""
    print(f"heartbeat-bridge: {line}", file=sys.stderr)
    return code


def _with(settings: Settings, **changes: Any) -> Settings:
    from dataclasses import replace
    probe = dict(os.environ, HEARTBEAT_DATABASE_URL=changes.get("database_url", ""))
    Settings.from_env(probe)  # validate the URL the same way as the variable
    return replace(settings, **changes)


def _store(settings: Settings) -> Store:
    from bridge.store import open_store
    return open_store(settings.database_url, pool_size=1,
                      max_host_silence=settings.max_host_silence_hours * 3600.0)


def _remote(args: argparse.Namespace, settings: Settings) -> Settings:
    """--url wins over HEARTBEAT_URL; --database-url over HEARTBEAT_URL; never both flags."""
    from dataclasses import replace
    url, token_file = getattr(args, "url", None), getattr(args, "admin_token_file", None)
    if url and getattr(args, "database_url", None):
        raise ConfigError("give --url (a bridge) or --database-url (a store), not both")
    if url:
        settings = replace(settings, url=check_url(url, "--url"))
    if token_file and not settings.url:
        raise ConfigError("--admin-token-file needs --url (or HEARTBEAT_URL)")
    return settings


def _admin(args: argparse.Namespace, settings: Settings) -> admin.Admin:
    """Where the servers and tokens commands act: the store, or a bridge's admin API."""
    if not settings.url:
        return admin.StoreAdmin(_store(settings), settings)
    from bridge.remote import RemoteAdmin
    token = (read_secret_file(args.admin_token_file, "--admin-token-file")
             if args.admin_token_file else settings.admin_token)
    if not token:
        raise ConfigError(f"{settings.url} needs the admin token: set HEARTBEAT_ADMIN_TOKEN_FILE "
                          "(or HEARTBEAT_ADMIN_TOKEN), or give --admin-token-file")
    return RemoteAdmin(settings.url, token)


# -- serve -----------------------------------------------------------------------------------
def serve(args: argparse.Namespace, settings: Settings) -> None:
    """Exec gunicorn with the project's config; every worker reads the same settings."""
    logs.setup(settings.log_level)
    if settings.allow_unauthenticated:
        print("WARNING: HEARTBEAT_ALLOW_UNAUTHENTICATED is on: anyone who can reach "
              f"{settings.bind} can send beats for any server id.", file=sys.stderr)
    elif not settings.fleet_tokens:
        print("heartbeat-bridge: no HEARTBEAT_TOKEN set: only servers registered with their "
              "own token can beat", file=sys.stderr)
    store = _store(settings)  # create the schema once, and fail here rather than per worker
    try:  # the last beat heard before this start: the rules excuse the gap since
        heard_until = last_beat(store.snapshot())
    except StoreUnavailableError:  # the workers start anyway and take it from their store
        heard_until = None
    store.close()
    env = dict(os.environ)
    env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="heartbeat-bridge-metrics-")
    # The workers share status snapshots there (bridge/status_cache.py).
    env["HEARTBEAT_STATUS_CACHE_DIR"] = tempfile.mkdtemp(prefix="heartbeat-bridge-status-")
    # One start for the whole replica (heartbeat_bridge_serving_since_seconds): a worker
    # that restarts alone must not excuse silence the other workers heard.
    env["HEARTBEAT_STARTED_AT"] = repr(store.clock())
    env["HEARTBEAT_HEARD_UNTIL"] = repr(heard_until or 0.0)
    # The host's render process listens there (bridge/render.py).
    env["HEARTBEAT_RUN_DIR"] = tempfile.mkdtemp(prefix="heartbeat-bridge-run-")
    argv = [sys.executable, "-m", "gunicorn", "--config", GUNICORN_CONF,
            "bridge.asgi:create_asgi_app()"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 when the local bridge answers /healthz (for container HEALTHCHECK, no curl)."""
    import urllib.request
    host, _, port = settings.bind.rpartition(":")
    host = {"": "127.0.0.1", "*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(
        host, host)
    url = f"http://{host}:{port}{args.path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            ok = response.status == 200
    except OSError as exc:
        print(f"heartbeat-bridge: {url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: {'ok' if ok else 'not ok'}")
    return 0 if ok else 1


def check_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print the settings, the store's schema and what `serve` would do with it; exit 1 if
    serve would refuse the store. Changes nothing: no file, table or row is created."""
    from bridge.store import SCHEMA_VERSION
    from bridge.store.upgrade import connected_releases, plan, stored_version
    for name, value in settings.describe().items():
        print(f"{name} = {value}")
    url = settings.database_url
    version = stored_version(url)
    path = sqlite_path(url)
    if version is None and path:
        print(f"store: {os.path.abspath(path)} does not exist yet")
    else:
        print("store: reachable")
    print(f"store schema: {'none yet' if version is None else version} "
          f"(this bridge: {SCHEMA_VERSION})")
    print(f"serve would: {plan(version, url)}")
    for name, count in connected_releases(url):
        older = " (a release before 0.2: its writes are refused once the schema is 3)" if (
            name == "heartbeat-bridge") else ""
        print(f"connected: {name}, {count} connection{'s' if count > 1 else ''}{older}")
    return 1 if version is not None and version > SCHEMA_VERSION else 0


# -- servers ---------------------------------------------------------------------------------
def _print_server(adm: admin.Admin, server: Server, as_json: bool = False) -> None:
    """One server as the admin API shows it (server_json), as JSON or one field a line."""
    data = server_json(server, time.time(), adm.default_interval)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key in ("last_seen", "registered_at", "paused_until", "boot_time") and value:
            value = f"{value:.3f} ({_iso(value)})"
        print(f"{key:20} {value}")


def _iso(ts: float) -> str:
    """ISO 8601 in UTC; any stored value prints, even one past the calendar's range."""
    try:
        return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(
            timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return "out of the calendar's range"


def servers_list(args: argparse.Namespace, settings: Settings) -> None:

    from bridge.server_list import select_servers
    from bridge.status_query import parse_query
    # The filters of /api/status and the status page (bridge/status_query.py).
    given = {"state": args.state, "q": args.filter, "sort": args.sort, "order": args.order,
             "page": args.page, "per_page": args.per_page}
    query = parse_query({k: v for k, v in given.items() if v is not None},
                        per_page=None, max_per_page=10**9)
    adm = _admin(args, settings)
    now = time.time()
    servers = [dict(server_json(server, now, adm.default_interval), state=state)
               for server, state in select_servers(adm.list(), query, now, adm.default_interval)]
    if args.json:
        print(json.dumps(servers, indent=2))
        return
    print(f"{'SERVER_ID':32} {'STATE':10} {'LAST_SEEN':25} {'INTERVAL':>8} {'BEATS':>8} "
          f"{'PAUSED':6} {'ENROLMENT':9} LABELS")
    for s in servers:
        seen = _iso(s["last_seen"]) if s["last_seen"] else "never"
        labels = ",".join(f"{k}={v}" for k, v in s["labels"].items())
        print(f"{s['server_id']:32} {s['state']:10} {seen:25} {s['interval']:>8g} "
              f"{s['beats_total']:>8} {'yes' if s['paused'] else 'no':6} {s['enrolment']:9} "
              f"{labels}")


def servers_show(args: argparse.Namespace, settings: Settings) -> None:
    adm = _admin(args, settings)
    _print_server(adm, adm.get(args.server_id), args.json)


def servers_register(args: argparse.Namespace, settings: Settings) -> None:
    adm = _admin(args, settings)
    server, token = adm.register(args.server_id, interval=args.interval,
                                 labels=_labels(args.label), with_token=args.token)
    _print_server(adm, server)
    if token:
        print(f"token                {token}")


def servers_relabel(args: argparse.Namespace, settings: Settings) -> None:
    adm = _admin(args, settings)
    _print_server(adm, adm.relabel(args.server_id, _labels(args.label)))


def servers_set_interval(args: argparse.Namespace, settings: Settings) -> None:
    interval = None if args.interval == "agent" else _number(args.interval, "interval")
    adm = _admin(args, settings)
    _print_server(adm, adm.set_interval(args.server_id, interval))


def servers_pause(args: argparse.Namespace, settings: Settings) -> None:
    until = None if args.until is None else _number(args.until, "--until")
    adm = _admin(args, settings)
    _print_server(adm, adm.pause(args.server_id, duration=args.for_, until=until,
                                 reason=args.reason))


def servers_resume(args: argparse.Namespace, settings: Settings) -> None:
    adm = _admin(args, settings)
    _print_server(adm, adm.resume(args.server_id))


def servers_retire(args: argparse.Namespace, settings: Settings) -> None:
    adm = _admin(args, settings)
    _print_server(adm, adm.retire(args.server_id))


def servers_unretire(args: argparse.Namespace, settings: Settings) -> None:
    adm = _admin(args, settings)
    _print_server(adm, adm.retire(args.server_id, retired=False))


def servers_remove(args: argparse.Namespace, settings: Settings) -> None:
    _admin(args, settings).remove(args.server_id)
    print(f"removed {args.server_id}")


def servers_forget(args: argparse.Namespace, settings: Settings) -> None:
    count = _admin(args, settings).forget_silent(_number(args.silent_days, "--silent-days"))
    print(f"forgot {count} servers")


def tokens_rotate(args: argparse.Namespace, settings: Settings) -> None:
    print(_admin(args, settings).rotate_token(args.server_id, args.keep_previous_for))


def tokens_revoke(args: argparse.Namespace, settings: Settings) -> None:
    _admin(args, settings).revoke_token(args.server_id)
    print(f"revoked the token of {args.server_id}")


# -- migrate ---------------------------------------------------------------------------------
def migrate(args: argparse.Namespace, settings: Settings) -> None:
    """Copy every server and counter from a SQLite file into PostgreSQL; safe to re-run."""
    from bridge.store import open_store, require_postgres_driver
    path = sqlite_path(args.source)
    if not path or not os.path.isfile(path):
        raise ConfigError(f"--from: expected sqlite:///PATH of an existing file, "
                          f"got {args.source!r}")
    if database_kind(args.target) != "postgresql":
        raise ConfigError(f"--to: expected postgresql://..., got {args.target!r}")
    require_postgres_driver()
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict
    try:
        conninfo_to_dict(args.target)
    except ProgrammingError as exc:
        raise ConfigError(f"--to: unusable URL: {str(exc).strip()}") from None
    bound = settings.max_host_silence_hours * 3600.0  # for a source still at schema 2
    source = open_store(args.source, max_host_silence=bound)
    target = open_store(args.target, pool_size=1, max_host_silence=bound)
    try:
        rows, rejected = source.export_rows()
        _, already = target.export_rows()
        # Counters only grow: add what the target lacks, so a second run adds nothing.
        missing = {r: n - already.get(r, 0) for r, n in rejected.items() if n > already.get(r, 0)}
        target.import_rows(rows, missing)
    finally:
        source.close()
        target.close()
    print(f"copied {len(rows)} servers and {len(rejected)} rejection counters "
          f"from {path} to PostgreSQL {target.where}")


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidInputError("invalid_field", f"{name} must be a number, got {text!r}") from None


def _labels(pairs: Optional[List[str]]) -> Dict[str, str]:
    labels = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInputError("invalid_field", f"--label takes name=value, got {pair!r}")
        labels[name] = value
    return labels


def _parser() -> argparse.ArgumentParser:
    # No abbreviations: `--admin-token SECRET` must not pass for --admin-token-file.
    parser = QuietParser(prog="heartbeat-bridge", description=__doc__, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"heartbeat-bridge {__version__}")
    parser.add_argument("--database-url", help="overrides HEARTBEAT_DATABASE_URL")
    parser.add_argument("--url", help="manage the bridge at this URL through its admin API "
                        "(overrides HEARTBEAT_URL); the admin token comes from "
                        "HEARTBEAT_ADMIN_TOKEN_FILE, HEARTBEAT_ADMIN_TOKEN or --admin-token-file")
    parser.add_argument("--admin-token-file", metavar="PATH",
                        help="read the admin token for --url from this file")
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(parent: Any, name: str, func: Callable[..., Optional[int]], help_text: str
                ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    command(sub, "serve", serve, "run the bridge under gunicorn (settings from HEARTBEAT_*)")
    command(sub, "check-config", check_config, "print the settings, the store's schema and "
            "what serve would do with it (changes nothing)")
    p = command(sub, "healthcheck", healthcheck, "ask the local bridge's /healthz (exit 0 if ok)")
    p.add_argument("--path", default="/healthz", choices=["/healthz", "/readyz"])
    p.add_argument("--timeout", type=float, default=3.0)

    servers = sub.add_parser("servers", help="register, label, pause and remove servers")
    ssub = servers.add_subparsers(metavar="ACTION", required=True)
    p = command(ssub, "list", servers_list, "list servers (filters as on the status page)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--state", metavar="STATES",
                   help="all (default), problems (not up), or a comma-separated list of "
                        "down, late, never_seen, away, paused, up, retired")
    p.add_argument("--filter", metavar="TEXT",
                   help="space-separated terms, all must match: name=value matches a label "
                        "exactly, other text the id, state, host, agent version, reason, labels")
    p.add_argument("--sort", default="server_id", choices=["server_id", "state", "last_seen"])
    p.add_argument("--order", default="asc", choices=["asc", "desc"])
    p.add_argument("--page", metavar="N", help="with --per-page: which page (from 1)")
    p.add_argument("--per-page", metavar="N", help="servers per page (default: all)")
    p = command(ssub, "show", servers_show, "show one server")
    p.add_argument("server_id")
    p.add_argument("--json", action="store_true")
    p = command(ssub, "register", servers_register, "register a server before its first beat")
    p.add_argument("server_id")
    p.add_argument("--interval", type=float, help="pin the interval in seconds")
    p.add_argument("--label", action="append", metavar="NAME=VALUE")
    p.add_argument("--token", action="store_true", help="create a per-server token")
    p = command(ssub, "relabel", servers_relabel, "replace a server's operator labels")
    p.add_argument("server_id")
    p.add_argument("--label", action="append", metavar="NAME=VALUE", default=[])
    p = command(ssub, "set-interval", servers_set_interval,
                "pin the interval, or 'agent' to follow the agent's")
    p.add_argument("server_id")
    p.add_argument("interval")
    p = command(ssub, "pause", servers_pause, "pause alerting (maintenance)")
    p.add_argument("server_id")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--for", dest="for_", metavar="DURATION", help="e.g. 30m, 2h, 1d")
    group.add_argument("--until", metavar="UNIX_TIME")
    p.add_argument("--reason")
    p = command(ssub, "resume", servers_resume, "end a pause")
    p.add_argument("server_id")
    p = command(ssub, "retire", servers_retire,
                "retire a server: no alerts; forgotten after HEARTBEAT_RETIRED_RETENTION_DAYS")
    p.add_argument("server_id")
    p = command(ssub, "unretire", servers_unretire, "bring a retired server back")
    p.add_argument("server_id")
    p = command(ssub, "remove", servers_remove, "remove a server and its series")
    p.add_argument("server_id")
    p = command(ssub, "forget", servers_forget, "remove servers silent for N days")
    p.add_argument("--silent-days", required=True)

    tokens = sub.add_parser("tokens", help="per-server tokens")
    tsub = tokens.add_subparsers(metavar="ACTION", required=True)
    p = command(tsub, "rotate", tokens_rotate, "create a new token for a server and print it")
    p.add_argument("server_id")
    p.add_argument("--keep-previous-for", metavar="DURATION",
                   help="the old token stays valid this long (e.g. 1h)")
    p = command(tsub, "revoke", tokens_revoke, "remove a server's token")
    p.add_argument("server_id")

    p = command(sub, "migrate", migrate,
                "copy every server from a SQLite file into PostgreSQL (re-runnable)")
    p.add_argument("--from", dest="source", required=True, metavar="sqlite:///PATH")
    p.add_argument("--to", dest="target", required=True, metavar="postgresql://...")
    return parser


if __name__ == "__main__":
    sys.exit(main())
