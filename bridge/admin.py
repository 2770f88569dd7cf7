"""Server lifecycle operations shared by the admin HTTP API and the CLI (no Flask here).

Each function validates raw input (as it comes from JSON or the command line), makes
one store call and returns the result; errors are InvalidInputError or the store's.
"""
from bridge.auth import hash_token, new_token
from bridge.validate import (InvalidInputError, check_interval, check_labels, check_server_id,
                             check_text, parse_duration)

MAX_REASON = 256


def register(store, settings, server_id, interval=None, labels=None, with_token=False):
    """Register a server; return (server, token) where token is None unless asked for."""
    check_server_id(server_id)
    interval = None if interval is None else check_interval(interval)
    labels = check_labels(labels or {})
    token = new_token() if with_token else None
    server = store.register(server_id, interval=interval, labels=labels,
                            token_hash=hash_token(token) if token else None,
                            max_servers=settings.max_servers)
    return server, token


def relabel(store, server_id, labels):
    """Replace a server's operator labels."""
    return store.update(check_server_id(server_id), labels=check_labels(labels))


def set_interval(store, server_id, interval):
    """Pin the interval (None: follow what the agent declares)."""
    return store.update(check_server_id(server_id),
                        interval=None if interval is None else check_interval(interval))


def pause(store, server_id, duration=None, until=None, reason=None):
    """Pause alerting, for a duration ('2h'), until a Unix time, or until resumed."""
    check_server_id(server_id)
    if duration is not None and until is not None:
        raise InvalidInputError("invalid_field", "give either a duration or an end time", 422)
    if duration is not None:
        until = store.clock() + parse_duration(duration, "for")
    elif until is not None:
        if isinstance(until, bool) or not isinstance(until, (int, float)):
            raise InvalidInputError("invalid_field", "until must be a Unix time", 422)
        if until <= store.clock():
            raise InvalidInputError("invalid_field", "until must be in the future", 422)
    if reason is not None:
        check_text("reason", MAX_REASON)(reason)
    return store.pause(server_id, until=until, reason=reason)


DEFAULT_BACK_WITHIN = 900.0
MAX_BACK_WITHIN = 7 * 86400.0


def goodbye(store, server_id, back_within=None, retire=False):
    """A clean stop announced by the host; return the time it promised to be back by."""
    check_server_id(server_id)
    seconds = DEFAULT_BACK_WITHIN if back_within is None else parse_duration(back_within,
                                                                            "back_within")
    if seconds > MAX_BACK_WITHIN:
        raise InvalidInputError("invalid_field", "back_within must be at most 7 days; use "
                                "maintenance or retirement for longer absences", 422)
    if not isinstance(retire, bool):
        raise InvalidInputError("invalid_field", "retire must be true or false", 422)
    return store.goodbye(server_id, seconds, retire=retire)


def retire(store, server_id, retired=True):
    """Retire a server (it stops alerting and is forgotten later), or bring it back."""
    return store.set_retired(check_server_id(server_id), retired)


def resume(store, server_id):
    return store.resume(check_server_id(server_id))


def remove(store, server_id):
    store.remove(check_server_id(server_id))


def rotate_token(store, server_id, keep_previous_for=None):
    """Give a server a new token; the old one may stay valid for a grace period."""
    check_server_id(server_id)
    grace = 0.0 if keep_previous_for is None else parse_duration(keep_previous_for,
                                                                 "keep_previous_for")
    token = new_token()
    store.set_token(server_id, hash_token(token), keep_previous_for=grace)
    return token


def revoke_token(store, server_id):
    return store.set_token(check_server_id(server_id), None)


def forget_silent(store, days):
    """Remove servers silent for `days` days; return how many."""
    if isinstance(days, bool) or not isinstance(days, (int, float)) or days <= 0:
        raise InvalidInputError("invalid_field", "days must be a positive number", 422)
    return store.forget_silent(days * 86400)


class StoreAdmin:
    """The operations `heartbeat-bridge` offers, on a store it opened itself.

    bridge.remote.RemoteAdmin offers the same methods through a bridge's admin API. Both
    return servers as the admin API shows them (Server.as_dict) and raise the same errors,
    so each CLI command is written once.
    """

    def __init__(self, store, settings):
        self.store = store
        self.settings = settings

    def _shown(self, server):
        return server.as_dict(self.store.clock(), self.settings.default_interval)

    def list(self):
        return [self._shown(s) for s in self.store.list()]

    def get(self, server_id):
        return self._shown(self.store.get(server_id))

    def register(self, server_id, interval=None, labels=None, with_token=False):
        server, token = register(self.store, self.settings, server_id, interval=interval,
                                 labels=labels, with_token=with_token)
        return self._shown(server), token

    def relabel(self, server_id, labels):
        return self._shown(relabel(self.store, server_id, labels))

    def set_interval(self, server_id, interval):
        return self._shown(set_interval(self.store, server_id, interval))

    def pause(self, server_id, duration=None, until=None, reason=None):
        return self._shown(pause(self.store, server_id, duration=duration, until=until,
                                 reason=reason))

    def resume(self, server_id):
        return self._shown(resume(self.store, server_id))

    def retire(self, server_id, retired=True):
        return self._shown(retire(self.store, server_id, retired))

    def remove(self, server_id):
        remove(self.store, server_id)

    def rotate_token(self, server_id, keep_previous_for=None):
        return rotate_token(self.store, server_id, keep_previous_for)

    def revoke_token(self, server_id):
        revoke_token(self.store, server_id)

    def forget_silent(self, days):
        return forget_silent(self.store, days)
