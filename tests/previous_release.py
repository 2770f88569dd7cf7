"""The previous release's code (0.1.0), taken from this repository's history, to run as is."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from tests.tools import IN_CI, ROOT

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
