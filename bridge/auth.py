"""Tokens: stored as SHA-256 hashes, compared in constant time, never logged."""
import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

from bridge.validate import InvalidInputError

if TYPE_CHECKING:
    from bridge.store import Store

_DUMMY_HASH = hashlib.sha256(b"no server token").hexdigest()


class AuthError(InvalidInputError):
    """A request without a valid token; always 401, the reason says which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message, 401)


def enrolled_error() -> AuthError:
    """The fleet token, for a server whose own token was used."""
    return AuthError("enrolled", "this server has its own token; the fleet token only enrols "
                                 "servers that have none")


def hash_token(token: str) -> str:
    """Tokens are high-entropy random strings, so one SHA-256 is the right cost."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def bearer_token(header: Optional[str]) -> Optional[str]:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _matches(presented_hash: str, valid_hashes: Sequence[str]) -> bool:
    """Constant-time over every candidate (no early exit)."""
    found = False
    for candidate in valid_hashes:
        found |= hmac.compare_digest(presented_hash, candidate)
    return found


class Caller(NamedTuple):
    """Who a request on the beat path speaks as.

    kind: 'fleet' (the fleet token: enrols a server that has no confirmed token yet),
    'server' (the server's own token; `confirm` on the first use of an issued one) or
    'open' (no token needed, HEARTBEAT_ALLOW_UNAUTHENTICATED).
    """

    kind: str
    token_hash: Optional[str] = None
    confirm: bool = False


class Authenticator:
    """Decides who may beat for a server and who may use the admin API."""

    def __init__(self, fleet_tokens: Sequence[str] = (), admin_token: str = "",
                 allow_unauthenticated: bool = False, enrolment: bool = True,
                 status_token: str = "") -> None:
        self.fleet_hashes = [hash_token(t) for t in fleet_tokens]
        self.admin_hash = hash_token(admin_token) if admin_token else None
        # Who may read the status page: the status token, or the admin token.
        self.status_hashes = [hash_token(t) for t in (status_token, admin_token) if t]
        self.allow_unauthenticated = allow_unauthenticated
        # Enrolment: the fleet token only obtains a server's own token, then stops
        # speaking for it. Meaningless when no token is needed at all.
        self.enrolment = enrolment and not allow_unauthenticated

    @property
    def admin_enabled(self) -> bool:
        return self.admin_hash is not None

    @property
    def status_enabled(self) -> bool:
        """A status or admin token is set (a protected status page can be opened)."""
        return bool(self.status_hashes)

    def check_beat(self, store: "Store", server_id: str, header: Optional[str]) -> Caller:
        """The Caller a beat, goodbye or maintenance request speaks as; raise AuthError
        otherwise (reason 'enrolled' for the fleet token on a server with its own token).

        The store read locks the server's row, so inside a batch the decision holds until
        it commits. Every token takes the same path (one store read, comparisons against
        real or dummy hashes), so timing tells a guesser nothing.
        """
        token = bearer_token(header)
        if token is None:
            if self.allow_unauthenticated:
                return Caller("open")
            raise AuthError("missing_token", "send Authorization: Bearer <token>")
        presented = hash_token(token)
        credentials = store.credentials(server_id)
        if _matches(presented, self.fleet_hashes):
            if self.enrolment and credentials.confirmed:
                raise enrolled_error()
            return Caller("fleet")
        if _matches(presented, credentials.hashes or [_DUMMY_HASH]):
            # Unconfirmed, every valid token is one issued on enrolment: the first used wins.
            return Caller("server", presented, confirm=not credentials.confirmed)
        if self.allow_unauthenticated:
            return Caller("open")
        raise AuthError("invalid_token", "the token is not valid for this server")

    def check_admin(self, header: Optional[str]) -> bool:
        """True when the header carries the admin token."""
        token = bearer_token(header)
        return bool(token and self.admin_hash and _matches(hash_token(token), [self.admin_hash]))

    def check_status(self, token: Optional[str]) -> bool:
        """True when `token` (a bearer token, or a basic-auth password) is the status token
        or the admin token."""
        return bool(token and _matches(hash_token(token), self.status_hashes))
