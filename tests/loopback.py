"""Raw TCP servers on loopback for tests of what a client does when a server misbehaves:
one that hangs up at once (refused service, counted) and one that never answers."""

from __future__ import annotations

import socket
import threading


class LoopbackSocketServer:
    """Accepts connections on 127.0.0.1 and either closes each at once (``hang_up=True``:
    a server that cannot be reached, but says how often it was tried) or keeps it open and
    silent (``hang_up=False``: a client waits until its own time-out)."""

    def __init__(self, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0  # how many were accepted
        self.called = threading.Event()  # set at the first connection
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections += 1
            if self.hang_up:
                connection.close()
            else:
                self._open.append(connection)
            self.called.set()

    def close(self) -> None:
        self.socket.close()
        for connection in self._open:
            connection.close()


def hang_up_server() -> LoopbackSocketServer:
    return LoopbackSocketServer(hang_up=True)


def silent_server() -> LoopbackSocketServer:
    return LoopbackSocketServer(hang_up=False)


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(process, port: int, what: str = "the MCP server", timeout: float = 120) -> None:
    """Return once ``port`` accepts connections; fail the test if ``process`` exits or
    does not get there within ``timeout`` seconds."""
    import time

    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited: {process.stderr.read() if process.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{what} did not start")


class DrippingOpenAIServer:
    """An OpenAI-compatible server that lists its model at once but answers every chat
    request with ``200``, ``Content-Length: 100000`` and then one byte a second: a client
    whose timeout bounds only each read waits for as long as the server likes. ``chats``
    counts the chat requests it began to answer."""

    def __init__(self, model: str = "drip") -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.chats = 0
        self.stopping = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                body = ('{"object": "list", "data": [{"id": "%s", "object": "model"}]}' % model).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.chats += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(120):  # bounded: two minutes at most
                    if outer.stopping.wait(1.0):
                        return
                    try:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    except OSError:
                        return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
