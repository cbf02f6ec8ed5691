"""Serving a test's stand-in HTTP server over TLS, as the API server does: its own certificate,
and a client certificate the cluster CA signed required."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

Server = TypeVar("Server", bound=http.server.HTTPServer)


@contextmanager
def serving(server: Server, pki_dir: Path) -> Iterator[Server]:
    """Serve `server` in a thread with `pki_dir`'s apiserver.crt/key, requiring a client
    certificate `pki_dir`/ca.crt signed; shut down on leaving."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki_dir / "apiserver.crt", pki_dir / "apiserver.key")
    context.load_verify_locations(pki_dir / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with running(server):
        yield server


@contextmanager
def running(server: Server) -> Iterator[Server]:
    """Serve `server` in a thread until leaving; then shut it down and close it."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
