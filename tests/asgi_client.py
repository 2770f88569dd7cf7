"""The in-process test client drives the ASGI app `heartbeat-bridge serve` runs: beats in
its event loop and through its group-commit writer, everything else through a2wsgi into
Flask, exactly as under gunicorn; only the socket is left out (a2wsgi's ASGIMiddleware
turns the test client's WSGI requests into ASGI ones)."""
import asyncio
import threading

from a2wsgi import ASGIMiddleware
from werkzeug.test import Client, TestResponse

from bridge.asgi import BridgeASGI


class ServedApp:
    """A BridgeASGI on an event loop of its own (lifespan started); stop() ends both."""

    def __init__(self, asgi: BridgeASGI) -> None:
        self.asgi = asgi
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._lifespan = _Lifespan(asgi, self.loop)
        self.wsgi = ASGIMiddleware(asgi, loop=self.loop)  # type: ignore[arg-type]

    def test_client(self) -> Client:
        return Client(self.wsgi, response_wrapper=TestResponse)

    def __getattr__(self, name):
        """The Flask app's own attributes (extensions, url_map), for tests that read them."""
        return getattr(self.asgi.flask_app, name)

    def stop(self) -> None:
        self._lifespan.shutdown()
        # Flask's threads finish what they hand the loop (the loop still runs meanwhile)
        self.asgi.wsgi.executor.shutdown(wait=True)
        # a2wsgi leaves a task per answered request waiting for a disconnect that a test
        # client never sends: end them before the loop
        asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _cancel_the_rest():
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _Lifespan:
    """Runs the app's lifespan protocol on `loop`: startup now, shutdown when asked."""

    def __init__(self, asgi, loop):
        self.loop = loop
        self.inbox = asyncio.Queue()
        self.started = threading.Event()
        self.done = threading.Event()

        async def receive():
            return await self.inbox.get()

        async def send(message):
            if message["type"] == "lifespan.startup.complete":
                self.started.set()
            elif message["type"] == "lifespan.shutdown.complete":
                self.done.set()

        def begin():
            self.inbox.put_nowait({"type": "lifespan.startup"})
            loop.create_task(asgi({"type": "lifespan"}, receive, send))
        loop.call_soon_threadsafe(begin)
        if not self.started.wait(10):
            raise RuntimeError("the ASGI app did not start")

    def shutdown(self):
        self.loop.call_soon_threadsafe(self.inbox.put_nowait, {"type": "lifespan.shutdown"})
        self.done.wait(10)
