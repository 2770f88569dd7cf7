"""Errors that know their answer, and the one JSON shape every error answer has (no Flask).

A BridgeError carries `reason` (one of a bounded set: it labels
heartbeat_bridge_beats_rejected_total), `status` (HTTP) and `message` (for people), as class
attributes that one instance may override. The HTTP edges (the beat endpoint, /metrics, the
Flask views) and the CLI read them; none keeps a table of its own. str(error) is the detail
for the log or the operator's terminal, which may say more than the answer does.
"""
import json
from http import HTTPStatus
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Optional, Tuple

Headers = List[Tuple[str, str]]


class BridgeError(Exception):
    """Base of errors with an answer; subclasses set the class attributes."""

    reason: str = "internal_error"
    status: int = 500
    message: str = "internal error; see the bridge log"
    exit_code: ClassVar[int] = 1  # what `heartbeat-bridge` exits with

    def __init__(self, detail: Optional[str] = None, *, message: Optional[str] = None,
                 reason: Optional[str] = None, status: Optional[int] = None) -> None:
        if message is not None:
            self.message = message
        if reason is not None:
            self.reason = reason
        if status is not None:
            self.status = status
        super().__init__(detail if detail is not None else self.message)

    def headers(self) -> Headers:
        """Extra HTTP headers of the answer (Retry-After, for one)."""
        return []


def error_body(reason: str, message: str) -> Dict[str, str]:
    """The body of every error answer: {"error": reason, "message": message}."""
    return {"error": reason, "message": message}


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build one per call


def encode(body: object) -> bytes:
    """A JSON answer's bytes, compact."""
    return _ENCODER.encode(body).encode()


STATUS_LINES = {code.value: f"{code.value} {code.phrase}" for code in HTTPStatus}


def wsgi_answer(start_response: Callable[..., Any], status: int, body: object,
                headers: Iterable[Tuple[str, str]] = ()) -> List[bytes]:
    """Send a JSON answer from a plain WSGI app (the beat endpoint, /metrics)."""
    payload = encode(body)
    start_response(STATUS_LINES[status], [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(payload))),
                                          *headers])
    return [payload]
