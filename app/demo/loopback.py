"""A threaded HTTP server on 127.0.0.1 that runs in the background, for the local fakes."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _QuietServer(ThreadingHTTPServer):
    # Connections waiting to be accepted. The default, 5, is overrun by a worker's calls
    # to one target at once while the accepting thread waits for the interpreter: the kernel
    # drops the connection and the client tries again a second later.
    request_queue_size = 128

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gave up (a time-out under test) is expected; anything else is shown.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class LoopbackServer:
    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None

    def _serve(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self._server = _QuietServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        # A short poll interval: stop() returns in tens of milliseconds, not half a second.
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"
