"""`heartbeat-bridge serve` (gunicorn) started for real on a reserved loopback port."""
import os
import sys
from typing import Any, Dict, Optional

import requests

from harness.ports import free_port, listener_inodes, socket_inodes
from harness.process import ROOT, GiveUp, Process, wait_until

FOREIGN_POLLS = 5  # polls in a row a listener must stay not the bridge's to be another's


def bridge_env(database_url: str, port: int, **settings: Any) -> Dict[str, str]:
    """Environment for a bridge: only HEARTBEAT_* settings given here, plus the rest (PATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTBEAT_")}
    env.update({
        "HEARTBEAT_BIND": f"127.0.0.1:{port}",
        "HEARTBEAT_DATABASE_URL": database_url,
        "HEARTBEAT_WORKERS": "2",
    })
    env.update({k: str(v) for k, v in settings.items()})
    return env


class Bridge(Process):
    """`heartbeat-bridge serve` (gunicorn) on a loopback port."""

    env: Dict[str, str]

    def __init__(self, database_url: str, port: Optional[int] = None, **settings: Any):
        self.port = port or free_port()
        self._foreign: Dict[int, int] = {}  # listeners on the port not the bridge's: polls seen
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, "-m", "bridge", "serve"],
                         env=bridge_env(database_url, self.port, **settings), cwd=ROOT,
                         name="bridge")

    def start(self, timeout: float = 20.0) -> "Bridge":
        super().start()
        try:
            wait_until(self._ready, timeout=timeout, what=f"bridge on port {self.port}")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"bridge did not start ({exc}):\n{self.log()}") from None
        return self

    def _ready(self) -> bool:
        """Every worker is listening (each has its own SO_REUSEPORT socket, bound when it
        has booted: until then connections only reach the others) and the store answers.
        A listener that stays not the bridge's own means another program shares the port:
        never wait on that, connections would silently reach either."""
        if not self.running():
            raise GiveUp(f"bridge exited with {self.proc and self.proc.returncode}")
        listening = listener_inodes(self.port)
        own = socket_inodes(self.pid)  # the bridge leads its own session
        # read again: a socket closed during the scan of /proc is gone from the second read
        foreign = (listening & listener_inodes(self.port)) - own
        # and seen in several polls: one a worker was handed as its parent closed it may
        # escape a single scan
        self._foreign = {inode: self._foreign.get(inode, 0) + 1 for inode in foreign}
        if any(seen >= FOREIGN_POLLS for seen in self._foreign.values()):
            raise GiveUp(f"{len(foreign)} socket(s) of another program listen on port "
                         f"{self.port}: the port is shared")
        if foreign or len(listening) < int(self.env["HEARTBEAT_WORKERS"]):
            return False
        return requests.get(self.url + "/readyz", timeout=1).status_code == 200

    def beat(self, server_id: str, token: Optional[str] = None, json: Any = None,
             **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.post(f"{self.url}/api/heartbeat/{server_id}/", json=json,
                             headers=headers, timeout=5, **kwargs)

    def metrics(self, **kwargs: Any) -> str:
        response = requests.get(self.url + "/metrics", timeout=10, **kwargs)
        response.raise_for_status()
        return response.text
