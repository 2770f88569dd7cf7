"""A real program started on loopback, and polling for a condition instead of sleeping."""
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, TypeVar

import requests

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class GiveUp(AssertionError):
    """Raised by a polled predicate when waiting longer cannot help (the process died)."""


class MissingProgramError(LookupError):
    """A program the caller needs is not installed; the message says how to install it."""


def find_binary(name: str) -> str:
    """Path of an installed program, or MissingProgramError."""
    path = shutil.which(name)
    if not path:
        raise MissingProgramError(
            f"{name} is not installed (make test installs it from Debian's packages)")
    return path


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll predicate() until it returns a truthy value, or fail after timeout seconds.

    A predicate raising GiveUp ends the wait at once with that error.
    """
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except GiveUp:
            raise
        except Exception as exc:  # the thing polled may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                         f"(last error: {last_error!r})")


def wait_http(url: str, timeout: float = 15.0, status: int = 200) -> bool:
    """Wait until GET url answers the given status."""
    return wait_until(lambda: requests.get(url, timeout=1).status_code == status,
                      timeout=timeout, what=f"GET {url} -> {status}")


class Process:
    """A real program, stopped by its own PID (and its session's), output kept in a log file."""

    def __init__(self, argv: Sequence[Any], env: Optional[Dict[str, str]] = None,
                 cwd: Any = None, name: Optional[str] = None):
        self.argv = [str(a) for a in argv]
        self.env = env
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self.log_path = Path(tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")[1])
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Process":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send_signal(self, sig: int) -> None:
        if self.running():
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> Optional[int]:
        """Stop the program (and the children of its session) and wait for it."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> Optional[int]:
        """SIGKILL the whole process group at once: a crash, not a shutdown."""
        return self.stop(sig=signal.SIGKILL)
