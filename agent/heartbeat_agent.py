#!/usr/bin/env python3
"""heartbeat-agent: POST a tiny heartbeat to a heartbeat-bridge every interval.

One file, Python >= 3.8 standard library only: copy it to a server and run it as a
systemd service (the loop), from a systemd timer or from cron (`--once`). It also says
what the host plans: `--goodbye` (a clean stop) and `--maintenance 2h` / `end`.
Settings: INI file < HEARTBEAT_* environment < flags; see docs/agent.md.
Exit codes: 0 accepted / stopped by a signal, 1 refused or not delivered, 2 bad configuration.
"""
import argparse
import configparser
import email.utils
import json
import os
import random
import re
import select
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections import namedtuple
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

# http.client imports ssl (about 4 MB of resident memory) even for http:// URLs. It is
# written to work on Pythons built without ssl, so the agent run as a program shows it
# one while it loads (imported as a module, it leaves http.client whole for its host);
# the agent makes its own TLS connections and imports ssl only for an https:// URL.
_SSL_ABSENT = __name__ == "__main__" and "ssl" not in sys.modules
if _SSL_ABSENT:
    sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` raise ImportError
try:
    import http.client
finally:
    if _SSL_ABSENT:
        del sys.modules["ssl"]

VERSION = "0.2.0"
DEFAULT_CONFIG = "/etc/heartbeat-agent.conf"
DEFAULT_STATE_DIR = "/var/lib/heartbeat-agent"
MAX_PAYLOAD = 200
MAX_ANSWER = 4096
JITTER = 0.05  # a beat lands up to 5% of the interval after its slot: no fleet-wide bursts
FIRST_BACKOFF = 1.0
GOODBYE_TIMEOUT = 3.0  # per step of the goodbye the loop sends as it stops
SERVER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
TOKEN = re.compile(r"[\x21-\x7e]+\Z")  # printable ASCII, no spaces: safe in a header
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)\Z")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_BACK_WITHIN = 7 * 86400  # the bridge's limit: a goodbye never hides an outage for long
MAX_MAINTENANCE = 366 * 86400
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

Config = namedtuple("Config", "url server_id token interval timeout ca_file initial_delay "
                              "context token_source back_within state_dir")
Outcome = namedtuple("Outcome", "ok status reason retry_after answer")


class ConfigError(ValueError):
    """A setting the agent cannot run with; the message starts with the setting's name."""


# --- configuration ---------------------------------------------------------------------

def _number(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:  # NaN fails too
            raise ValueError(f"must be a number between {low:g} and {high:g}, got {text!r}")
        return value
    return parse


def _duration(high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        match = DURATION.match(text.strip())
        seconds = float(match.group(1)) * UNITS[match.group(2)] if match else 0.0
        if not 1 <= seconds <= high:
            raise ValueError(f"must be seconds or a duration like 30s, 15m, 2h or 1d, from 1s to "
                             f"{_human(high)}, got {text!r}")
        return int(seconds) if seconds == int(seconds) else seconds
    return parse


def _human(seconds: float) -> str:
    """604800 -> '7d', 5400 -> '90m', 45.5 -> '45.5s'."""
    for unit in "dhm":
        if seconds >= UNITS[unit] and seconds % UNITS[unit] == 0:
            return f"{seconds // UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


def _url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {text!r}")
    if parts.username or parts.query or parts.fragment:
        raise ValueError(f"must be a plain base URL without user, query or fragment, got {text!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"has an invalid port: {text!r}") from None
    return text.rstrip("/")


def _server_id(text: str) -> str:
    if not SERVER_ID.match(text):
        raise ValueError("must be 1-128 characters of letters, digits, '.', '_' or '-', "
                         f"starting with a letter or digit, got {text!r}")
    return text


def _token(text: str) -> str:
    if not TOKEN.match(text):
        raise ValueError("must be printable ASCII without spaces")
    return text


# setting: (environment variable, flag, parser); every one may also be an INI key
SETTINGS: Dict[str, Tuple[str, Optional[str], Callable[[str], Any]]] = {
    "url": ("HEARTBEAT_URL", "--url", _url),
    "server_id": ("HEARTBEAT_SERVER_ID", "--server-id", _server_id),
    "token": ("HEARTBEAT_TOKEN", None, _token),  # no flag: argv is visible to every user
    "token_file": ("HEARTBEAT_TOKEN_FILE", "--token-file", str),
    "interval": ("HEARTBEAT_INTERVAL", "--interval", _number(1, 86400)),
    "timeout": ("HEARTBEAT_TIMEOUT", "--timeout", _number(0.1, 300)),
    "ca_file": ("HEARTBEAT_CA_FILE", "--ca-file", str),
    "back_within": ("HEARTBEAT_BACK_WITHIN", "--back-within", _duration(MAX_BACK_WITHIN)),
    # where the agent keeps the token the bridge issues it on enrolment
    "state_dir": ("HEARTBEAT_STATE_DIR", "--state-dir", str),
}
DEFAULT_BACK_WITHIN = 900  # a reboot that never comes back still pages, 15 minutes later


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            # argparse lists the words it did not take; one may be a token typed as a value
            names = [w.split("=")[0] for w in message.split(":", 1)[1].split()
                     if w.startswith("-")]
            message = (f"unknown option {' '.join(names)}" if names else "unexpected value") \
                + " (values are not repeated: one may be a secret; see --help)"
        raise ConfigError(message)


def _arguments() -> argparse.ArgumentParser:
    # allow_abbrev=False: '--token SECRET' must not be taken as '--token-file SECRET'
    parser = _Parser(prog="heartbeat-agent", description="Send heartbeats to a heartbeat-bridge.",
                     allow_abbrev=False)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="send one beat; exit 0 if accepted")
    mode.add_argument("--check", action="store_true",
                      help="validate the settings, send one beat, show request and answer")
    mode.add_argument("--goodbye", action="store_true",
                      help="tell the bridge this host stops cleanly and is back within "
                           "HEARTBEAT_BACK_WITHIN (15m); exit 0 if accepted")
    mode.add_argument("--maintenance", metavar="DURATION|end",
                      help="pause alerting for this host (e.g. 2h), or end the pause early")
    parser.add_argument("--goodbye-on-exit", action="store_true",
                        help="the loop, stopped by SIGTERM or SIGINT, says goodbye before it "
                             "exits (the systemd service does)")
    parser.add_argument("--retire", action="store_true",
                        help="with --goodbye: the host is gone for good, never page for it")
    parser.add_argument("--reason", help="with --maintenance: why, shown to on-call")
    parser.add_argument("--config", help=f"INI file with an [agent] section ({DEFAULT_CONFIG})")
    for name, (env, flag, _) in SETTINGS.items():
        if flag:
            parser.add_argument(flag, dest=name, metavar=name.upper(), help=f"overrides {env}")
    parser.add_argument("--initial-delay", metavar="SECONDS",
                        help="the loop waits a random time up to this before its first beat "
                             "(default: one interval; 0: beat at once)")
    parser.add_argument("--version", action="version", version=f"heartbeat-agent {VERSION}")
    return parser


def _file_layer(path: str, explicit: bool) -> Dict[str, Tuple[str, str]]:
    """{setting: (value, where)} from the [agent] section; a missing default file is fine."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"--config: {path}: no such file") from None
        return {}
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
    if parser.sections() and not parser.has_section("agent"):
        raise ConfigError(f"{path}: no [agent] section")
    layer = {}
    for key, value in parser.items("agent") if parser.sections() else ():
        if key not in SETTINGS:
            raise ConfigError(f"{path}: unknown key {key!r} in [agent] "
                              f"(known: {', '.join(SETTINGS)})")
        if value.strip():
            layer[key] = (value.strip(), f"{path}: {key}")
    return layer


def _merge(layers: List[Dict[str, Tuple[Any, str]]]
           ) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Later layers win; a token and a token file in one layer is a mistake."""
    merged: Dict[str, Tuple[Any, str]] = {}
    for layer in layers:
        if "token" in layer and "token_file" in layer:
            raise ConfigError(f"{layer['token'][1]} and {layer['token_file'][1]}: set only one")
        if "token" in layer or "token_file" in layer:
            merged.pop("token", None)
            merged.pop("token_file", None)
        merged.update(layer)
    values = {}
    for name, (value, where) in merged.items():
        try:
            values[name] = SETTINGS[name][2](value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return values, {name: where for name, (_, where) in merged.items()}


def _shown_path(path: str) -> str:
    """A path as error messages show it: a name without a '/' may be a token typed by mistake
    where a file was meant, so it is not repeated."""
    return path if os.sep in path else "the file named there"


def _read_token(path: str, where: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(4096).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {_shown_path(path)}: "
                          f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    if not text:
        raise ConfigError(f"{where}: {_shown_path(path)} is empty")
    try:
        return _token(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: the token in {_shown_path(path)} {exc}") from None


def _token_from(values: Dict[str, Any], where: Dict[str, str], environ: Mapping[str, str]
                ) -> Tuple[str, str]:
    """(token, where it came from): token file, token, else the systemd credential."""
    if "token_file" in values:
        return _read_token(values["token_file"], where["token_file"]), where["token_file"]
    if "token" in values:
        return values["token"], where["token"]
    directory = environ.get("CREDENTIALS_DIRECTORY")
    credential = os.path.join(directory or "", "heartbeat-token")
    if directory and os.path.exists(credential):
        return _read_token(credential, "systemd credential"), "systemd credential"
    return "", ""


def _tls_context(url: str, ca_file: Optional[str], where: str) -> Any:
    """A verifying client context for https:// URLs (None for http://)."""
    if not url.startswith("https:"):
        return None
    import ssl  # only here: see the import of http.client
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"{where}: cannot load {ca_file}: {reason}") from None


def load_config(argv: Optional[Sequence[str]] = None,
                environ: Optional[Mapping[str, str]] = None) -> Tuple[Config, argparse.Namespace]:
    """(Config, args) from INI file < environment < flags; raises ConfigError."""
    environ = os.environ if environ is None else environ
    args = _arguments().parse_args(argv)
    layers = [_file_layer(args.config or DEFAULT_CONFIG, explicit=bool(args.config))]
    layers.append({name: (environ[env].strip(), env) for name, (env, _, _) in SETTINGS.items()
                   if environ.get(env, "").strip()})
    layers.append({name: (getattr(args, name), flag) for name, (_, flag, _) in SETTINGS.items()
                   if flag and getattr(args, name) is not None})
    values, where = _merge(layers)
    if "url" not in values:
        raise ConfigError("HEARTBEAT_URL: not set (the bridge's base URL, e.g. "
                          "https://heartbeat.example.org)")
    if "server_id" not in values:
        try:
            values["server_id"] = _server_id(socket.gethostname())
        except ValueError as exc:
            raise ConfigError(f"HEARTBEAT_SERVER_ID: not set, and the host name {exc}") from None
    token, source = _token_from(values, where, environ)
    interval = values.get("interval", 30.0)
    initial_delay = interval  # a fleet started at once (after a power cut) spreads out
    if args.initial_delay is not None:
        try:
            initial_delay = _number(0, 86400)(args.initial_delay)
        except ValueError as exc:
            raise ConfigError(f"--initial-delay: {exc}") from None
    _check_mode(args)
    context = _tls_context(values["url"], values.get("ca_file"),
                           where.get("ca_file", "HEARTBEAT_CA_FILE"))
    config = Config(values["url"], values["server_id"], token, interval,
                    values.get("timeout", 10.0), values.get("ca_file"), initial_delay, context,
                    source, values.get("back_within", DEFAULT_BACK_WITHIN),
                    values.get("state_dir", DEFAULT_STATE_DIR))
    return config, args


def _check_mode(args: argparse.Namespace) -> None:
    """Flags that belong to one mode only; --maintenance's value, in seconds, when not 'end'."""
    if args.goodbye_on_exit and (args.once or args.check or args.goodbye
                                 or args.maintenance is not None):
        raise ConfigError("--goodbye-on-exit: only for the loop")
    if args.retire and not args.goodbye:
        raise ConfigError("--retire: only with --goodbye")
    if args.reason is not None and (args.maintenance is None or args.maintenance == "end"):
        raise ConfigError("--reason: only with --maintenance DURATION")
    if args.maintenance is not None and args.maintenance != "end":
        try:
            args.maintenance = _duration(MAX_MAINTENANCE)(args.maintenance)
        except ValueError as exc:
            raise ConfigError(f"--maintenance: {exc} (or 'end')") from None


# --- one beat --------------------------------------------------------------------------

def boot_time() -> Optional[int]:
    """The kernel's boot time in Unix seconds (Linux), else None."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def build_payload(seq: int, interval: float, hostname: str, booted: Optional[int],
                  sent_at: float) -> bytes:
    """Compact JSON of at most MAX_PAYLOAD bytes; the hostname is trimmed to fit."""
    fields: Dict[str, Any] = {"interval": int(interval) if interval == int(interval) else interval,
                              "seq": seq}
    if booted is not None:
        fields["boot_time"] = booted
    fields["sent_at"] = round(sent_at, 3)
    fields["hostname"] = "".join(c for c in hostname[:255] if 32 <= ord(c) != 127)
    fields["agent_version"] = VERSION
    body = json.dumps(fields, separators=(",", ":")).encode()
    while len(body) > MAX_PAYLOAD and fields["hostname"]:
        fields["hostname"] = fields["hostname"][:-(len(body) - MAX_PAYLOAD)]
        body = json.dumps(fields, separators=(",", ":")).encode()
    return body


def _resolve(host: str, port: int, timeout: Optional[float]) -> List[Any]:
    """getaddrinfo in a helper thread, so a hung resolver is bounded and a signal stops us."""
    result: List[Any] = []

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as exc:  # OSError, or UnicodeError for a bad IDNA name
            result.append(exc)
    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise socket.timeout(f"DNS lookup of {host}: no answer within {timeout:g}s")
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        error = OSError(f"no address for {self.host}")
        for family, kind, proto, _, address in _resolve(self.host, self.port, self.timeout):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(self.timeout)
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sock = sock
                return
            except OSError as exc:
                sock.close()
                error = exc
        raise error


class _HTTPSConnection(_HTTPConnection):
    default_port = 443

    def __init__(self, host: str, port: int, timeout: float, context: Any) -> None:
        super().__init__(host, port, timeout=timeout)
        self.context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


def _dropped(sock: socket.socket) -> bool:
    """True if an idle kept-alive socket was closed by the server (readable means EOF)."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class Client:
    """POSTs beats over one kept-alive connection, re-opened when the server closed it."""

    def __init__(self, config: Config) -> None:
        parts = urllib.parse.urlsplit(config.url)
        self.path = f"{parts.path}/api/heartbeat/{config.server_id}/"
        self.headers = [("Content-Type", "application/json"),
                        ("User-Agent", f"heartbeat-agent/{VERSION}")]
        self.set_token(config.token)
        self.sent = False  # whether the last request reached the wire whole
        port = parts.port or (443 if config.context else 80)  # explicit: "::1" has colons
        self.conn: _HTTPConnection
        if config.context:
            self.conn = _HTTPSConnection(parts.hostname, port, config.timeout, config.context)
        else:
            self.conn = _HTTPConnection(parts.hostname, port, timeout=config.timeout)

    def set_token(self, token: Optional[str]) -> None:
        """Send `token` (none if empty) from the next request on."""
        self.headers = [h for h in self.headers if h[0] != "Authorization"]
        if token:
            self.headers.insert(0, ("Authorization", f"Bearer {token}"))

    def post(self, body: bytes, action: str = "", method: str = "POST"
             ) -> Tuple[int, Any, bytes]:
        """(status, headers, answer bytes) of METHOD .../<server_id>/<action>; raises OSError
        or http.client.HTTPException."""
        self.sent = False
        reused = self.conn.sock is not None
        if reused and _dropped(self.conn.sock):
            self.conn.close()
            reused = False
        request = (method, self.path + action, body)
        try:
            return self._exchange(*request)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()
            if not reused:
                raise
        except BaseException:
            self.conn.close()
            raise
        try:  # the server closed the idle connection as we sent: once more on a new one
            return self._exchange(*request)
        except BaseException:
            self.conn.close()
            raise

    def _exchange(self, method: str, path: str, body: bytes) -> Tuple[int, Any, bytes]:
        self.conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in self.headers:
            self.conn.putheader(name, value)
        self.conn.putheader("Content-Length", str(len(body)))
        self.conn.endheaders(body)
        self.sent = True
        response = self.conn.getresponse()
        answer = response.read(MAX_ANSWER)
        if not response.isclosed():  # an answer too big to drain: start afresh next time
            self.conn.close()
        return response.status, response.headers, answer

    def close(self) -> None:
        self.conn.close()


def _retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def _describe(exc: Exception, host: str, timeout: Optional[float]) -> str:
    """A short, stable reason for a failed exchange."""
    ssl = sys.modules.get("ssl")  # not loaded: no TLS, no TLS errors
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host}: {exc.strerror}"
    if ssl and isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message}"
    if ssl and isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.timeout):
        text = str(exc)
        if text.startswith("DNS"):
            return text
        return f"no {'TLS handshake' if 'handshake' in text else 'answer'} within {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the bridge closed the connection without answering"
    if isinstance(exc, http.client.HTTPException):
        return f"bad answer ({type(exc).__name__})"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def classify(status: int, headers: Any, answer: bytes) -> Outcome:
    """Outcome of one HTTP answer."""
    if 200 <= status < 300:
        return Outcome(True, status, "", None, answer)
    try:
        data = json.loads(answer)
        reason = f"{data['error']}: {data.get('message', '')}"
    except (ValueError, TypeError, KeyError):
        reason = http.client.responses.get(status, "unexpected answer")
    if 300 <= status < 400:
        reason += f" (redirect to {headers.get('Location')}; set the final URL)"
    retry = _retry_after(headers.get("Retry-After")) if status in (429, 503) else None
    return Outcome(False, status, f"HTTP {status} {_one_line(reason)}", retry, answer)


def exchange(client: Client, body: bytes, action: str = "", method: str = "POST") -> Outcome:
    """One request; an Outcome, never an exception (bar KeyboardInterrupt)."""
    try:
        return classify(*client.post(body, action, method))
    except (OSError, http.client.HTTPException) as exc:
        reason = _describe(exc, client.conn.host, client.conn.timeout)
    except Exception as exc:  # the edge: a beat must never kill the agent
        reason = f"unexpected {type(exc).__name__}: {exc}"
    return Outcome(False, None, reason, None, b"")


class Identity:
    """The token the agent speaks with: its own once the bridge issued one (enrolment), kept
    in the state directory; until then the configured (fleet) token."""

    def __init__(self, config: Config, log: Optional[Callable[[str], None]] = None) -> None:
        self.configured = config.token
        self.log = log or _log
        self.path = os.path.join(config.state_dir, f"{config.server_id}.token")
        self.own = self._load()
        self.warned = False

    @property
    def token(self) -> Optional[str]:
        return self.own or self.configured

    @property
    def source(self) -> Optional[str]:
        return f"state file {self.path}" if self.own else None

    def _load(self) -> Optional[str]:
        try:
            with open(self.path, encoding="ascii") as f:
                return _token(f.read(4096).strip())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.log(f"ignoring {self.path}: {getattr(exc, 'strerror', None) or 'not a token'}")
            return None

    def adopt(self, answer: Any) -> bool:
        """Keep a token the bridge issued; True when the agent now speaks with it. A token
        that cannot be kept is not used: after a restart the agent would have lost it."""
        token = answer.get("token")
        if not isinstance(token, str) or not TOKEN.match(token) or token == self.own:
            return False
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            temporary = f"{self.path}.{os.getpid()}.tmp"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, token.encode("ascii") + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)  # atomic: a crash leaves the old file or the new
        except OSError as exc:
            if not self.warned:
                self.log(f"warning: cannot keep the token the bridge issued in "
                         f"{os.path.dirname(self.path)} ({exc.strerror}); going on with the "
                         "configured token (set HEARTBEAT_STATE_DIR to a writable directory)")
                self.warned = True
            return False
        self.own = token
        return True

    def drop(self) -> None:
        """The bridge refused our own token (an operator revoked it): enrol again."""
        self.own = None
        try:
            os.unlink(self.path)
        except OSError:
            pass


def send(client: Client, identity: Identity, body: bytes, action: str = "",
         method: str = "POST") -> Outcome:
    """One request with the agent's token: adopts a token the bridge issues, and enrols
    again with the configured token when an operator revoked its own. An Outcome."""
    outcome = exchange(client, body, action, method)
    if outcome.ok:
        if identity.adopt(_answer(outcome)):
            client.set_token(identity.token)
        return outcome
    if outcome.status == 401 and identity.own and identity.configured \
            and _answer(outcome).get("error") == "invalid_token":
        identity.log("the bridge refused this host's own token (revoked?); enrolling again")
        identity.drop()
        client.set_token(identity.token)
        return send(client, identity, body, action, method)  # once: no own token now
    return outcome


def _one_line(text: str, limit: int = 200) -> str:
    """Text from the other end, made safe for one log line."""
    return "".join(c if c.isprintable() else " " for c in text[:limit])


class Agent:
    """Beats on a drift-free monotonic schedule; logs state changes, never a line per beat."""

    def __init__(self, config: Config, log: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.config = config
        self.log = log or _log
        self.identity = Identity(config, self.log)
        self.client = Client(config)
        self.client.set_token(self.identity.token)
        self.clock, self.wall, self.sleep, self.uniform = clock, wall, sleep, uniform
        self.seq, self.last_body = 0, b""
        self.hostname = socket.gethostname()
        self.booted = boot_time()

    def beat(self) -> Outcome:
        """Send one beat; an Outcome, never an exception (bar KeyboardInterrupt)."""
        body = build_payload(self.seq, self.config.interval, self.hostname, self.booted,
                             self.wall())
        self.seq += 1
        self.last_body = body
        return send(self.client, self.identity, body)

    def run(self, max_beats: Optional[int] = None) -> None:
        """Beat until interrupted (or max_beats attempts, for measurements)."""
        interval = self.config.interval
        delay = self.uniform(0, self.config.initial_delay) if self.config.initial_delay else 0
        self.log(f"starting: beating {self.config.url} as {self.config.server_id} every "
                 f"{interval:g}s (agent {VERSION})"
                 + (f", first beat in {delay:.1f}s" if delay else ""))
        slot = self.clock() + delay
        due, failures, last_reason = slot, 0, None
        while max_beats is None or self.seq < max_beats:
            self._sleep_until(due)
            outcome = self.beat()
            now = self.clock()
            if outcome.ok:
                if failures:
                    self.log(f"recovered after {failures} failed beat(s)")
                elif last_reason is None:
                    self.log("up: the bridge accepted the first beat")
                failures, last_reason = 0, ""
                slot = _next_slot(slot, now, interval)
                due = slot + self.uniform(0, JITTER * interval)
                continue
            failures += 1
            if outcome.reason != last_reason:
                self.log(f"failing: {outcome.reason}")
                last_reason = outcome.reason
            if outcome.retry_after is not None:
                due = now + min(max(outcome.retry_after, FIRST_BACKOFF), max(interval, 3600))
            elif outcome.status is not None and 400 <= outcome.status < 500 \
                    and outcome.status not in (408, 429):
                # retrying sooner cannot fix a refused token or id: keep the schedule
                slot = _next_slot(slot, now, interval)
                due = slot + self.uniform(0, JITTER * interval)
            else:
                ceiling = min(interval, FIRST_BACKOFF * 2 ** min(failures - 1, 20))
                due = now + self.uniform(ceiling / 2, ceiling)

    def goodbye(self, timeout: float = GOODBYE_TIMEOUT) -> Outcome:
        """After a clean stop: tell the bridge, from the same process, so no later beat of
        ours can cancel it; one line either way. Bounded, so a stop stays quick."""
        conn = self.client.conn
        conn.timeout = min(self.config.timeout, timeout)
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        try:
            outcome = send(self.client, self.identity, goodbye_body(self.config), "goodbye")
        except KeyboardInterrupt:  # a second signal: stop now
            outcome = Outcome(False, None, "interrupted", None, b"")
        if outcome.ok:
            self.log(_accepted(self.config.server_id, "goodbye", _answer(outcome)))
        else:
            self.log(f"goodbye failed: {outcome.reason}")
        return outcome

    def _sleep_until(self, deadline: float) -> None:
        while True:
            left = deadline - self.clock()
            if left <= 0:
                return
            self.sleep(left)


def _next_slot(slot: float, now: float, interval: float) -> float:
    """The first slot of the grid slot + k * interval (k >= 1) not before now."""
    return slot + max(1, -(-(now - slot) // interval)) * interval


def _log(message: str) -> None:
    try:
        sys.stderr.write(f"heartbeat-agent: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # no stderr (journald restarting): keep beating
        pass


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _check(agent: "Agent") -> int:
    """Settings, then each step of one beat as it happened; never a token's characters."""
    config, identity = agent.config, agent.identity
    source = identity.source or config.token_source
    token = f"{len(identity.token)} characters from {source}" if identity.token else "none"
    print(f"config: url={config.url} server_id={config.server_id} interval={config.interval:g}s "
          f"timeout={config.timeout:g}s ca_file={config.ca_file or '(system)'} token={token} "
          f"state_dir={config.state_dir}")
    was_own = identity.own
    started = time.monotonic()
    outcome = agent.beat()
    took = (time.monotonic() - started) * 1000
    target = f"POST {config.url}/api/heartbeat/{config.server_id}/"
    if not agent.client.sent:
        print(f"not sent: {target}: {outcome.reason} after {took:.0f} ms")
        print(f"failed: {outcome.reason}")
        return EXIT_FAILED
    print(f"sent: {target} {agent.last_body.decode()}")
    answer = _answer(outcome)
    if outcome.status is None:
        print(f"answered: nothing ({outcome.reason}) after {took:.0f} ms")
    else:
        shown = dict(answer, token="(issued, not shown)") if "token" in answer else answer
        print(f"answered: HTTP {outcome.status} in {took:.0f} ms: "
              + (json.dumps(shown) if shown else _one_line(
                  outcome.answer.decode("utf-8", "replace").strip())))
    if identity.own and identity.own != was_own:
        print(f"enrolled: the bridge issued this host's own token, kept in {identity.path}")
    elif "token" in answer:
        print("not enrolled: the bridge issued a token the agent could not keep (see above)")
    print("ok: the bridge accepted the beat" if outcome.ok else f"failed: {outcome.reason}")
    return EXIT_OK if outcome.ok else EXIT_FAILED


def goodbye_body(config: Config, retire: bool = False) -> bytes:
    return json.dumps({"back_within": config.back_within, "retire": retire},
                      separators=(",", ":")).encode()


def _announce(config: Config, args: argparse.Namespace) -> int:
    """--goodbye and --maintenance: one request, one line; the exit code."""
    if args.goodbye:
        what, action, method = "goodbye", "goodbye", "POST"
        body = goodbye_body(config, args.retire)
    elif args.maintenance == "end":
        what, action, method, body = "ending maintenance", "maintenance", "DELETE", b""
    else:
        what, action, method = "maintenance", "maintenance", "POST"
        fields = {"for": args.maintenance}
        if args.reason is not None:
            fields["reason"] = args.reason
        body = json.dumps(fields, separators=(",", ":")).encode()
    identity = Identity(config)
    client = Client(config)
    client.set_token(identity.token)
    try:
        outcome = send(client, identity, body, action, method)
    finally:
        client.close()
    if not outcome.ok:
        _log(f"{what} failed: {outcome.reason}")
        return EXIT_FAILED
    if args.goodbye and args.retire:
        what = "retire"
    elif args.maintenance == "end":
        what = "end"
    _log(_accepted(config.server_id, what, _answer(outcome)))
    return EXIT_OK


def _answer(outcome: Outcome) -> Dict[str, Any]:
    """The bridge's JSON answer as a dict ({} if it is not one)."""
    try:
        answer = json.loads(outcome.answer)
    except (ValueError, RecursionError):
        return {}
    return answer if isinstance(answer, dict) else {}


def _accepted(server_id: str, what: str, answer: Dict[str, Any]) -> str:
    """The line that confirms what the bridge accepted."""
    def at(key: str) -> str:
        when = answer.get(key)
        if isinstance(when, (int, float)) and not isinstance(when, bool):
            try:
                return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(when))
            except (ValueError, OverflowError, OSError):  # NaN, or past the platform's range
                pass
        return "(time not given)"
    if what == "retire":
        return f"goodbye: {server_id} is retired; no alert for it until it beats again"
    if what == "goodbye":
        return f"goodbye: {server_id} is expected back by {at('expected_back')}; silent " \
               "past that, it pages"
    if what == "end":
        return f"maintenance ended: alerts for {server_id} are live again"
    return f"maintenance: alerts for {server_id} paused until {at('paused_until')}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit code."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    agent: Optional[Agent] = None
    args: Optional[argparse.Namespace] = None
    try:
        config, args = load_config(argv)
        if args.goodbye or args.maintenance is not None:
            return _announce(config, args)
        agent = Agent(config)
        if args.check:
            return _check(agent)
        if args.once:
            outcome = agent.beat()
            if not outcome.ok:
                _log(f"beat failed: {outcome.reason}")
            return EXIT_OK if outcome.ok else EXIT_FAILED
        agent.run()
    except ConfigError as exc:
        _log(str(exc))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        if args and (args.once or args.check or args.goodbye or args.maintenance is not None):
            return EXIT_FAILED  # a one-shot command cut short: nothing confirmed
        if args:
            _log("stopped")
        if agent and args and args.goodbye_on_exit:  # a clean stop: a crash never gets here
            agent.goodbye()
    finally:
        if agent:
            agent.client.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
