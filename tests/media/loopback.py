"""A loopback-only HTTP(S) server that serves an image, redirects and misbehaves, and a fake DNS resolver: the
media fetch tests' network."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.images import encode, photo

PNG_BYTES = encode(photo(64, 48), "PNG")


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host", "")))
        url = urlparse(self.path)
        query = parse_qs(url.query)
        route = url.path
        if route == "/img.png":
            self._send(200, PNG_BYTES, "image/png")
        elif route == "/redirect":
            self._redirect(query["to"][0])
        elif route == "/loop":
            self._redirect("/loop")
        elif route == "/html":
            self._send(200, b"<html><body>not an image</body></html>", "text/html")
        elif route == "/missing":
            self._send(404, b"no", "text/plain")
        elif route == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG_BYTES)))
            self.end_headers()
            time.sleep(2.0)
        elif route == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            chunk = b"\x00" * 65536
            try:
                for _ in range(1024):  # 64 MiB at most, should the client fail to stop
                    self.wfile.write(chunk)
            except OSError:
                pass
            self.close_connection = True
        elif route == "/huge-declared":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(10**10))
            self.end_headers()
            self.close_connection = True
        else:
            self._send(404, b"unknown route", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, host: str, tls: ssl.SSLContext | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        assert host in ("127.0.0.1", "::1"), "test servers live on loopback only"
        super().__init__((host, 0), _Handler)
        self.seen: list[tuple[str, str]] = []
        self.sni: list[str | None] = []
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)  # type: ignore[assignment,misc]
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def base(self, host: str | None = None, scheme: str = "http") -> str:
        name = host or (f"[{self.server_address[0]}]" if self.address_family == socket.AF_INET6 else "127.0.0.1")
        return f"{scheme}://{name}:{self.port}"

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


Resolve = Callable[[str, int], Awaitable[list[str]]]


def resolver_of(answers: dict[str, list[str]], calls: list[str] | None = None) -> Resolve:
    """A resolver that answers from ``answers`` (a name it lacks: OSError, as getaddrinfo), noting each name asked."""

    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in answers:
            raise OSError("name not known")
        return list(answers[host])

    return resolve
