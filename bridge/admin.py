"""Server lifecycle operations shared by the admin HTTP API and the CLI (no Flask here).

Each function validates raw input (as it comes from JSON or the command line), makes
one store call and returns the result; errors are InvalidInputError or the store's.
"""
from typing import Any, Dict, List, Optional, Protocol, Tuple

from bridge.auth import enrolled_error, hash_token, new_token
from bridge.config import Settings
from bridge.store import BeatPolicy, Server, Store
from bridge.validate import (
    MAX_DURATION,
    InvalidInputError,
    check_interval,
    check_labels,
    check_server_id,
    check_text,
    check_until,
    parse_duration,
)

MAX_REASON = 256


class Admin(Protocol):
    """The operations `heartbeat-bridge` offers on servers and tokens, wherever they run:
    StoreAdmin on a store it opened, bridge.remote.RemoteAdmin through a bridge's admin API.

    Unless a method says otherwise: a server comes back as a store's Server (showing it is
    the caller's: bridge.server_view); a bad argument raises InvalidInputError and an
    unknown id UnknownServerError, both before anything changes; a store that cannot be
    reached raises
    StoreUnavailableError (locally) or RemoteError (through the API: also a refused admin
    token), having changed nothing. Each call is one store transaction.
    """

    default_interval: float  # what a server that neither pinned nor declared one is held to

    def list(self) -> List[Server]:
        """Every server, ordered by id."""

    def get(self, server_id: str) -> Server:
        """One server."""

    def register(self, server_id: str, interval: Optional[float] = None,
                 labels: Optional[Dict[str, str]] = None, with_token: bool = False
                 ) -> Tuple[Server, Optional[str]]:
        """Register a server; (server, its new token or None unless `with_token`). Raises
        ServerExistsError for a known id, ServerLimitError at the server cap."""

    def relabel(self, server_id: str, labels: Dict[str, str]) -> Server:
        """Replace the server's operator labels."""

    def set_interval(self, server_id: str, interval: Optional[float]) -> Server:
        """Pin the interval (None: follow what the agent declares)."""

    def pause(self, server_id: str, duration: Optional[str] = None,
              until: Optional[float] = None, reason: Optional[str] = None) -> Server:
        """Pause alerting for a duration ('2h'), until a Unix time, or (neither) until
        resumed; at most one of the two."""

    def resume(self, server_id: str) -> Server:
        """End a pause, whoever started it."""

    def retire(self, server_id: str, retired: bool = True) -> Server:
        """Retire the server (no alerts; forgotten later), or bring it back."""

    def remove(self, server_id: str) -> None:
        """Forget the server and its token."""

    def rotate_token(self, server_id: str, keep_previous_for: Optional[str] = None) -> str:
        """A new token for the server (only its hash is kept); the old one stays valid for
        `keep_previous_for` ('10m'), else ends now."""

    def revoke_token(self, server_id: str) -> None:
        """Drop the server's own token: the fleet token may enrol it again."""

    def forget_silent(self, days: float) -> int:
        """Remove servers silent for `days` days; how many. RemoteError through the API,
        which has no such operation."""


def register(store: Store, settings: Settings, server_id: Any, interval: Any = None,
             labels: Any = None, with_token: bool = False) -> Tuple[Server, Optional[str]]:
    """Register a server; return (server, token) where token is None unless asked for."""
    check_server_id(server_id)
    interval = None if interval is None else check_interval(interval)
    labels = check_labels(labels or {})
    token = new_token() if with_token else None
    server = store.register(server_id, interval=interval, labels=labels,
                            token_hash=hash_token(token) if token else None,
                            max_servers=settings.max_servers)
    return server, token


def update(store: Store, server_id: Any, **changes: Any) -> Server:
    """Replace the labels and/or the interval given (keys 'labels', 'interval') in one store
    call. An unknown server is a 404 even when the fields are invalid too."""
    check_server_id(server_id)
    try:
        fields: Dict[str, Any] = {}
        if "labels" in changes:
            fields["labels"] = check_labels(changes["labels"])
        if "interval" in changes:
            interval = changes["interval"]
            fields["interval"] = None if interval is None else check_interval(interval)
    except InvalidInputError:
        store.get(server_id)  # UnknownServerError first
        raise
    return store.update(server_id, **fields)


def relabel(store: Store, server_id: Any, labels: Any) -> Server:
    """Replace a server's operator labels."""
    return update(store, server_id, labels=labels)


def set_interval(store: Store, server_id: Any, interval: Any) -> Server:
    """Pin the interval (None: follow what the agent declares)."""
    return update(store, server_id, interval=interval)


def pause(store: Store, server_id: Any, duration: Any = None, until: Any = None,
          reason: Any = None) -> Server:
    """An operator pauses alerting, for a duration ('2h'), until a Unix time, or until
    resumed; no host can end or shorten it."""
    check_server_id(server_id)
    until = _pause_end(store.clock(), duration, until, maximum=None)
    _check_reason(reason)
    return store.pause(server_id, until=until, reason=reason)


def host_maintenance(store: Store, server_id: Any, policy: BeatPolicy, max_silence: float,
                     duration: Any = None, until: Any = None, reason: Any = None) -> Server:
    """A host pauses its own alerts, always with an end at most `max_silence` s away."""
    check_server_id(server_id)
    if duration is None and until is None:
        raise InvalidInputError("invalid_field", "give 'for' (e.g. \"2h\") or 'until' (Unix "
                                "time): maintenance from the host always has an end", 422)
    until = _pause_end(store.clock(), duration, until, maximum=max_silence)
    _check_reason(reason)
    return store.host_pause(server_id, until, reason, policy)


def host_resume(store: Store, server_id: Any, policy: BeatPolicy) -> Server:
    """A host ends its own maintenance (never an operator's pause)."""
    return store.host_resume(check_server_id(server_id), policy)


def _pause_end(now: float, duration: Any, until: Any, maximum: Optional[float]
               ) -> Optional[float]:
    """The Unix time a pause ends (None: when resumed), from 'for' or 'until'."""
    if duration is not None and until is not None:
        raise InvalidInputError("invalid_field", "give either a duration or an end time", 422)
    if duration is not None:
        return now + parse_duration(duration, "for",
                                    MAX_DURATION if maximum is None else maximum)
    if until is not None:
        return check_until(until, now, maximum)
    return None


def _check_reason(reason: Any) -> None:
    if reason is not None:
        check_text("reason", MAX_REASON)(reason)


DEFAULT_BACK_WITHIN = 900.0


def goodbye(store: Store, server_id: Any, policy: BeatPolicy, max_silence: float,
            back_within: Any = None, retire: Any = False) -> float:
    """A clean stop announced by the host; return the time it promised to be back by."""
    check_server_id(server_id)
    seconds = min(DEFAULT_BACK_WITHIN, max_silence) if back_within is None else parse_duration(
        back_within, "back_within", maximum=max_silence)
    if not isinstance(retire, bool):
        raise InvalidInputError("invalid_field", "retire must be true or false", 422)
    return store.goodbye(server_id, seconds, retire=retire, policy=policy)


def retire(store: Store, server_id: Any, retired: bool = True) -> Server:
    """Retire a server (it stops alerting and is forgotten later), or bring it back."""
    return store.set_retired(check_server_id(server_id), retired)


def resume(store: Store, server_id: Any) -> Server:
    return store.resume(check_server_id(server_id))


def remove(store: Store, server_id: Any) -> None:
    store.remove(check_server_id(server_id))


def enrol(store: Store, server_id: str, keep_pending_for: float) -> str:
    """A fresh token for a server that asked with the fleet token; unconfirmed until used.
    A token issued before and not yet used stays valid `keep_pending_for` s more, so a
    fleet-token request racing a host's first use of its token never locks the host out.
    Returns the token (only its hash is kept); AuthError 'enrolled' if the server's own
    token was confirmed meanwhile."""
    token = new_token()
    if not store.enrol(server_id, hash_token(token), keep_pending_for):
        raise enrolled_error()
    return token


def rotate_token(store: Store, server_id: Any, keep_previous_for: Any = None) -> str:
    """An operator gives a server a new token; the old one may stay valid for a grace
    period."""
    check_server_id(server_id)
    grace = 0.0 if keep_previous_for is None else parse_duration(keep_previous_for,
                                                                 "keep_previous_for")
    token = new_token()
    store.set_token(server_id, hash_token(token), keep_previous_for=grace)
    return token


def revoke_token(store: Store, server_id: Any) -> Server:
    return store.set_token(check_server_id(server_id), None)


def forget_silent(store: Store, days: Any) -> int:
    """Remove servers silent for `days` days; return how many."""
    if isinstance(days, bool) or not isinstance(days, (int, float)) or days <= 0:
        raise InvalidInputError("invalid_field", "days must be a positive number", 422)
    return store.forget_silent(days * 86400)


class StoreAdmin:
    """Admin on a store the CLI opened itself (the type checker holds it to Admin)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.default_interval = settings.default_interval

    def list(self) -> List[Server]:
        return self.store.list()

    def get(self, server_id: str) -> Server:
        return self.store.get(server_id)

    def register(self, server_id: str, interval: Optional[float] = None,
                 labels: Optional[Dict[str, str]] = None, with_token: bool = False
                 ) -> Tuple[Server, Optional[str]]:
        server, token = register(self.store, self.settings, server_id, interval=interval,
                                 labels=labels, with_token=with_token)
        return server, token

    def relabel(self, server_id: str, labels: Dict[str, str]) -> Server:
        return relabel(self.store, server_id, labels)

    def set_interval(self, server_id: str, interval: Optional[float]) -> Server:
        return set_interval(self.store, server_id, interval)

    def pause(self, server_id: str, duration: Optional[str] = None,
              until: Optional[float] = None, reason: Optional[str] = None) -> Server:
        return pause(self.store, server_id, duration=duration, until=until, reason=reason)

    def resume(self, server_id: str) -> Server:
        return resume(self.store, server_id)

    def retire(self, server_id: str, retired: bool = True) -> Server:
        return retire(self.store, server_id, retired)

    def remove(self, server_id: str) -> None:
        remove(self.store, server_id)

    def rotate_token(self, server_id: str, keep_previous_for: Optional[str] = None) -> str:
        return rotate_token(self.store, server_id, keep_previous_for)

    def revoke_token(self, server_id: str) -> None:
        revoke_token(self.store, server_id)

    def forget_silent(self, days: float) -> int:
        return forget_silent(self.store, days)

