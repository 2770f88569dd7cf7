"""Input rules shared by the beat endpoint, the admin API and the CLI (no Flask here)."""
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

from bridge.config import MAX_INTERVAL, MIN_INTERVAL
from bridge.errors import BridgeError

MAX_BODY_BYTES = 4096
MAX_LABELS = 16
MAX_LABEL_VALUE = 256
MAX_HOSTNAME = 255
MAX_AGENT_VERSION = 64
# \Z, not $: `$` also matches before a trailing newline, and an id or label name ending in
# one would be written raw into /metrics, breaking the exposition for the whole fleet.
SERVER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}\Z")
RESERVED_LABELS = frozenset({"server_id", "job", "instance", "le", "quantile", "hostname",
                             "agent_version", "reason", "version", "python_version"})
# ASCII digits only (\d takes every script's digits, and float() reads them) and \Z (`$`
# allows a trailing newline); no space around it either.
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw]?)\Z")
T = TypeVar("T")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class InvalidInputError(BridgeError, ValueError):
    """Input that the bridge refuses; `reason` is one of the bounded rejection reasons."""

    status = 400
    exit_code = 2

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message, message=message, reason=reason, status=status)


@dataclass(frozen=True)
class Beat:
    """The optional facts an agent reports with a beat; None where not reported."""

    interval: Optional[float] = None
    seq: Optional[int] = None
    boot_time: Optional[float] = None
    sent_at: Optional[float] = None
    hostname: Optional[str] = None
    agent_version: Optional[str] = None


def check_server_id(server_id: Any) -> str:
    """Raise InvalidInputError unless server_id is 1-128 of [A-Za-z0-9._-], letter/digit first."""
    if not isinstance(server_id, str) or not SERVER_ID.match(server_id):
        raise InvalidInputError(
            "invalid_server_id",
            "server_id must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return server_id


def finite_number(value: Any) -> Optional[float]:
    """value as a finite float, or None: not a number, a bool, NaN, an infinity, or an
    integer too large for a float (JSON allows 400 digits; float() would raise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def check_interval(value: Any, field: str = "interval") -> float:
    """A number of seconds between MIN_INTERVAL and MAX_INTERVAL."""
    value = finite_number(value)
    if value is None:
        raise InvalidInputError("invalid_field", f"{field} must be a number of seconds", 422)
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise InvalidInputError("invalid_field", f"{field} must be between {MIN_INTERVAL:g} "
                                f"and {MAX_INTERVAL:g} s", 422)
    return float(value)


def check_labels(labels: Any) -> Dict[str, str]:
    """Operator labels: a small dict of Prometheus label names to string values."""
    if not isinstance(labels, dict):
        raise InvalidInputError("invalid_field", "labels must be an object of name: value", 422)
    if len(labels) > MAX_LABELS:
        raise InvalidInputError("invalid_field", f"at most {MAX_LABELS} labels", 422)
    for name, value in labels.items():
        if not LABEL_NAME.match(name) or name.startswith("__"):
            raise InvalidInputError(
                "invalid_field", f"label name {name!r} must match [a-zA-Z_][a-zA-Z0-9_]* "
                "(at most 64 characters) and not start with '__'", 422)
        if name in RESERVED_LABELS:
            raise InvalidInputError("invalid_field", f"label name {name!r} is reserved", 422)
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE or _has_control(value):
            raise InvalidInputError(
                "invalid_field", f"label {name!r} must be a string of at most "
                f"{MAX_LABEL_VALUE} printable characters", 422)
    return dict(sorted(labels.items()))


MAX_DURATION = 366 * 86400.0
# Unix times the bridge takes (pause ends): before 2242, so every one fits a float, a date
# and the store exactly.
MAX_TIMESTAMP = 2.0 ** 33


def parse_duration(value: Any, field: str = "duration", maximum: float = MAX_DURATION) -> float:
    """Seconds, more than 0 and at most `maximum`, from a number or a string such as '90',
    '15m', '2h', '1d'."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match:
        number, unit = match.groups()
        seconds = finite_number(float(number) * _UNITS[unit])
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = finite_number(value)
    else:
        raise InvalidInputError("invalid_field",
                                f"{field} must be seconds or a duration like 15m, 2h, 1d", 422)
    if seconds is None or not 0 < seconds <= maximum:
        raise InvalidInputError("invalid_field",
                                f"{field} must be more than 0 s and at most {_human(maximum)}",
                                422)
    return seconds


def check_until(value: Any, now: float, maximum: Optional[float] = None,
                field: str = "until") -> float:
    """A Unix time after `now` and, when `maximum` is given, at most `maximum` s after it."""
    until = finite_number(value)
    if until is None or not 0 <= until < MAX_TIMESTAMP:
        raise InvalidInputError("invalid_field", f"{field} must be a Unix time in seconds", 422)
    if until <= now:
        raise InvalidInputError("invalid_field", f"{field} must be in the future", 422)
    if maximum is not None and until - now > maximum:
        raise InvalidInputError("invalid_field",
                                f"{field} must be at most {_human(maximum)} from now", 422)
    return until


def _human(seconds: float) -> str:
    """'72 h', '7 days', '90 s': a bound as people read it."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def parse_object(body: bytes, content_type: Optional[str]) -> Dict[str, Any]:
    """A JSON object from a small body (bytes, already size-checked); {} when empty."""
    if not body.strip():
        return {}
    mimetype = (content_type or "").split(";")[0].strip().lower()
    if mimetype != "application/json":
        raise InvalidInputError("unsupported_media_type",
                                "the body must be JSON (Content-Type: application/json)", 415)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInputError("invalid_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidInputError("invalid_json", "the body must be a JSON object")
    return data


def parse_beat(body: bytes, content_type: Optional[str]) -> Beat:
    """Validate a beat body; unknown fields are ignored."""
    data = parse_object(body, content_type)
    values: Dict[str, Any] = {name: None if data.get(name) is None else check(data[name])
                              for name, check in _BEAT_FIELDS}
    return Beat(**values)


def _optional(data: Dict[str, Any], name: str, check: Callable[[Any], T]) -> Optional[T]:
    value = data.get(name)
    return None if value is None else check(value)


def _check_seq(value: Any) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # JSON has one number type: 7.0 and 1e3 are integers too
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise InvalidInputError("invalid_field", "seq must be a non-negative integer", 422)
    return value


def _check_timestamp(name: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        number = finite_number(value)
        if number is None or not 0 <= number < MAX_TIMESTAMP:
            raise InvalidInputError("invalid_field", f"{name} must be a Unix time in seconds", 422)
        return number
    return check


def check_text(name: str, limit: int) -> Callable[[Any], str]:
    """A checker for an optional text field (a host name, a reason): a string of at most
    `limit` printable characters, none a control or a format character."""
    def check(value: Any) -> str:
        if (not isinstance(value, str) or len(value) > limit or _has_control(value)
                or _has_format(value)):
            raise InvalidInputError(
                "invalid_field", f"{name} must be a string of at most {limit} printable "
                "characters (no control or format characters such as bidi overrides)", 422)
        return value
    return check


def _has_format(text: str) -> bool:
    """Any format character (Unicode category Cf: bidi overrides and isolates, zero-width
    characters): each could make a status row read differently from its data."""
    return not text.isascii() and any(unicodedata.category(c) == "Cf" for c in text)


# Control characters, or lone surrogates: JSON's "\\ud800" decodes to one, and no UTF-8
# encoder accepts it (the store write or every later /metrics would fail).
_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


# Beat's fields and their checks (parse_beat); unknown fields are ignored.
_BEAT_FIELDS: Tuple[Tuple[str, Callable[[Any], Any]], ...] = (
    ("interval", check_interval),
    ("seq", _check_seq),
    ("boot_time", _check_timestamp("boot_time")),
    ("sent_at", _check_timestamp("sent_at")),
    ("hostname", check_text("hostname", MAX_HOSTNAME)),
    ("agent_version", check_text("agent_version", MAX_AGENT_VERSION)),
)
