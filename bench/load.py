"""A bounded prefill over kept-alive connections: each request sent once, then stop.

wrk cannot send a fixed set of requests once, so this small asyncio client does it.
Requests are raw bytes built by the peer (bench/peers.py). Bounded in count and time.
"""
import asyncio
import time


async def _read_response(reader):
    """Read one response with a Content-Length (or until EOF); return its status."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    length = None
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length is None:
        await reader.read()
    elif length:
        await reader.readexactly(length)
    return status


async def _prefill(host, port, requests, concurrency, time_limit):
    """Send every request once over kept-alive connections; return how many got 2xx."""
    deadline = time.monotonic() + time_limit
    pending = iter(requests)
    done = 0

    async def worker():
        nonlocal done
        reader = writer = None
        for raw in pending:
            if time.monotonic() > deadline:
                return
            for _attempt in range(3):
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write(raw)
                    if 200 <= await asyncio.wait_for(_read_response(reader), 10) < 300:
                        done += 1
                    break
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                    if writer is not None:
                        writer.close()
                    reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def prefill(host, port, requests, concurrency=16, time_limit=120.0):
    """Send each raw request once (kept-alive connections), at most time_limit seconds."""
    return asyncio.run(_prefill(host, port, requests, concurrency, time_limit))
