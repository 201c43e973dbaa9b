"""A TCP relay on loopback between real processes, for the fault tests: what a load balancer, a
network or a database outage does to WardKey, without touching the shared servers."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections import Counter
from collections.abc import Sequence


class Relay:
    """Listens on a loopback port (`port`) and relays each connection it takes to a backend:
    to the next one in turn when there are several (`connections` counts each one's), as a
    Kubernetes Service or a load balancer spreads requests over the web pods.

    It can be `cut()` (every connection dropped and each new one hung up on at once, as when a
    database or the network goes away) and `restore()`d, or frozen (`freeze()`: connections
    stay open and nothing passes either way, as with a hung server or a link that drops
    packets) and thawed (`thaw()`). A connection a backend refuses is closed at once."""

    def __init__(self, *backends: tuple[str, int]) -> None:
        assert backends, "a relay needs somewhere to relay to"
        self.backends: Sequence[tuple[str, int]] = backends
        self.connections: Counter[int] = Counter()
        self._turn = itertools.cycle(range(len(backends)))
        self._flowing = threading.Event()
        self._flowing.set()
        self._cut = False
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Drop every open connection and hang up on new ones until `restore()`. Nothing
        passes from the moment it is called: no answer slips through while connections drop."""
        flowing = self._flowing.is_set()
        self._flowing.clear()
        with self._lock:
            self._cut = True
            dropping, self._open = self._open, []
        for s in dropping:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        if flowing:
            self._flowing.set()

    def restore(self) -> None:
        """Relay new connections again."""
        with self._lock:
            self._cut = False

    def freeze(self) -> None:
        """From now on nothing passes either way; connections stay open."""
        self._flowing.clear()

    def thaw(self) -> None:
        """What was held back passes, and everything after it."""
        self._flowing.set()

    def close(self) -> None:
        self.thaw()
        self.cut()
        with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client = self._listener.accept()[0]
            except OSError:
                return
            with self._lock:
                cut = self._cut
                if not cut:
                    n = next(self._turn)
                    self.connections[n] += 1
            if cut:
                client.close()
                continue
            try:
                server = socket.create_connection(self.backends[n])
            except OSError:
                client.close()
                continue
            with self._lock:
                cut = self._cut  # cut while this one was connecting to the backend
                if not cut:
                    self._open += [client, server]
            if cut:
                for s in (client, server):
                    s.close()
                continue
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            source.close()
