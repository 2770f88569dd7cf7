"""`python -m bench.prefill DATABASE_URL N`: import N seen servers into a bridge store.

Run as a subprocess with the measured bridge's source first on PYTHONPATH, so the store
code that writes the rows is the code under test.
"""
import sys
import time

from bridge.store import open_store
from bridge.store.sql import ALL_COLUMNS


def main(database_url, n):
    now = time.time()
    defaults = dict.fromkeys(ALL_COLUMNS)
    # What the agent's usual beat leaves: a boot time (a day ago) and a small clock skew too.
    defaults.update(labels="{}", declared_interval=30.0, last_seen=now, beats_total=1, paused=0,
                    created_at=now, hostname="bench", agent_version="bench", seq=1,
                    boot_time=now - 86400, clock_skew=0.05)
    if "token_confirmed" in defaults:  # NOT NULL since schema 3; older sources lack it
        defaults["token_confirmed"] = 0
    rows = (tuple(dict(defaults, server_id=f"srv-{i}")[c] for c in ALL_COLUMNS)
            for i in range(n))
    store = open_store(database_url, pool_size=1)
    try:
        store.import_rows(rows, {})
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
