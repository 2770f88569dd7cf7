"""The previous release (0.1.0): its code, taken from this repository's history to run as
is, and the stores it wrote (tests/fixtures/v010), loaded for a test."""
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator

import pytest

from tests.fixtures.make_v010_fixtures import HERE, SCHEMA
from tests.tools import IN_CI, POSTGRES_BASE, ROOT, postgres_schema

# The commit released as 0.1.0: the last release before the schema-3 migration.
PREVIOUS_RELEASE = "aa2681d776443333d7c001af209cf1a961740abd"


def checkout(dest: Path) -> Path:
    """The previous release's tree under `dest` (its bridge/ and agent/ packages); skipped
    locally, failed under CI, when the history does not hold that commit."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE, "bridge",
                              "agent"], capture_output=True, timeout=60)
    if archive.returncode != 0:
        message = (f"the previous release {PREVIOUS_RELEASE[:7]} is not in this repository's "
                   f"history: {archive.stderr.decode().strip()}")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, timeout=60)
    return dest


def env(code: Path, **extra: str) -> Dict[str, str]:
    """An environment in which `python -m bridge` (and `import bridge`) is the previous
    release's code: its tree comes first on the path, before this checkout's install."""
    values = {k: v for k, v in os.environ.items() if not k.startswith("HEARTBEAT_")}
    values.update(PYTHONPATH=str(code), PYTHONDONTWRITEBYTECODE="1", **extra)
    return values


def run(code: Path, script: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
    """Run a Python snippet with the previous release's code; fails the test if it fails."""
    result = subprocess.run([sys.executable, "-c", script, *args], env=env(code, **extra),
                            cwd=str(code), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


@contextmanager
def v010_store(backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a store as 0.1.0 left it, on `backend` (sqlite or postgresql): a copy of
    the fixture, which itself is never changed. A PostgreSQL schema is dropped afterwards."""
    if backend == "sqlite":
        shutil.copy(HERE / "heartbeat.db", tmp_path / "heartbeat.db")
        yield f"sqlite:///{tmp_path / 'heartbeat.db'}"
        return
    with postgres_schema() as (_, schema, url):
        load_dump(schema)
        yield url


def load_dump(schema: str) -> None:
    """Load 0.1.0's pg_dump into `schema`, on a connection of its own (the dump empties
    search_path); psql's own commands (\\restrict) left out."""
    import psycopg
    lines = (HERE / "postgres.sql").read_text().splitlines()
    sql = "\n".join(line for line in lines if not line.startswith("\\")).replace(
        f"CREATE SCHEMA {SCHEMA};", "")
    with psycopg.connect(POSTGRES_BASE, autocommit=True) as conn:
        conn.execute(sql.replace(SCHEMA, schema))
