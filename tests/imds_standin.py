"""An IMDSv2 stand-in on 127.0.0.1 for node programs run by the tests outside a node.

It answers the token request, `meta-data/<path>` from a dict, and the instance role's
temporary credentials (any key works with moto). `credential_delay_s` and `has_role` make it
slow or empty; a request outside `/latest/` goes to `other` (a test's own endpoint).
"""

from __future__ import annotations

import http.server
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

ROLE = "kubeplat-test-node"
ACCESS_KEY = "ASIAKUBEPLATROLE0001"


class StandIn(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, meta: dict[str, str], other: Callable[[Any], None] | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.meta = meta
        self.other = other
        self.dynamic: dict[str, str] = {}  # `dynamic/<path>`: the instance identity document
        self.credential_delay_s = 0.0
        self.has_role = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args: Any) -> None:
        pass

    def answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token":
            return self.answer(200, "token")
        return self._other()

    def do_POST(self) -> None:
        self._other()

    def _other(self) -> None:
        if self.server.other is None or self.path.startswith("/latest/"):
            return self.answer(404, "")
        return self.server.other(self)

    def do_GET(self) -> None:
        roles = "/latest/meta-data/iam/security-credentials/"
        if self.path.startswith(roles):
            if not self.server.has_role:
                return self.answer(404, "")
            if self.path == roles:
                return self.answer(200, ROLE)
            time.sleep(self.server.credential_delay_s)
            now = datetime.now(UTC)
            document = {
                "Code": "Success",
                "Type": "AWS-HMAC",
                "AccessKeyId": ACCESS_KEY,
                "SecretAccessKey": "not-a-secret",
                "Token": "session-token",
                "Expiration": (now + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            return self.answer(200, json.dumps(document))
        dynamic = "/latest/dynamic/"
        if self.path.startswith(dynamic) and self.path[len(dynamic) :] in self.server.dynamic:
            return self.answer(200, self.server.dynamic[self.path[len(dynamic) :]])
        meta = "/latest/meta-data/"
        if self.path.startswith(meta) and self.path[len(meta) :] in self.server.meta:
            return self.answer(200, self.server.meta[self.path[len(meta) :]])
        return self._other()


@contextmanager
def serving(
    meta: dict[str, str] | None = None, other: Callable[[Any], None] | None = None
) -> Iterator[StandIn]:
    from tests.tls_standin import running

    with running(StandIn(meta or {}, other)) as server:
        yield server


NO_OTHER_CREDENTIALS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_EC2_METADATA_DISABLED", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_METADATA_SERVICE_TIMEOUT", "AWS_METADATA_SERVICE_NUM_ATTEMPTS",
)  # fmt: skip
