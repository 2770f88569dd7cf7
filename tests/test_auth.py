"""The Authenticator: one constant-time matcher for every token (fleet, server, admin, status)."""
import ast

import pytest

from bridge.auth import Authenticator, hash_token
from tests.tools import ROOT

STATUS, ADMIN, FLEET = "status-token-0123", "admin-token-0123", "fleet-token-0123"


@pytest.mark.parametrize("token, allowed", [(STATUS, True), (ADMIN, True), (FLEET, False),
                                            ("status-token-012", False), ("", False),
                                            (None, False)])
def test_the_status_page_takes_the_status_or_the_admin_token_only(token, allowed):
    auth = Authenticator([FLEET], ADMIN, status_token=STATUS)
    assert auth.status_enabled
    assert auth.check_status(token) is allowed


def test_without_status_and_admin_tokens_the_status_page_cannot_be_opened():
    auth = Authenticator([FLEET])
    assert not auth.status_enabled
    assert auth.check_status(FLEET) is False
    assert Authenticator([FLEET], status_token=STATUS).check_status(STATUS) is True


def test_tokens_are_kept_only_as_hashes():
    auth = Authenticator([FLEET], ADMIN, status_token=STATUS)
    kept = repr(vars(auth))
    assert not any(secret in kept for secret in (STATUS, ADMIN, FLEET))
    assert hash_token(STATUS) in kept


def test_only_the_store_package_names_a_backend_class():
    """The app, the CLI and the views hold a `Store` (the Protocol), never a backend."""
    backends = {"SQLStore", "SQLiteStore", "PostgresStore"}
    for path in (ROOT / "bridge").rglob("*.py"):
        if path.parent.name == "store":
            continue
        names = {node.id for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Name)}
        names |= {alias.name for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.ImportFrom) for alias in node.names}
        assert not names & backends, path
