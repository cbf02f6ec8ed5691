"""`kubeplat token`: the environment's bootstrap token (id and expiry, never the secret),
`rotate`, and `create`, which gives the cluster an extra token through its API.

No Kubernetes API server can be had here: `create` is checked against a stand-in on 127.0.0.1
that speaks TLS with the environment's own API server certificate, requires the admin client
certificate (verified against the cluster CA, as the API server does) and records what it was
sent."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kubeplat import config, render
from kubeplat.pkistore import LocalStore
from tests import tls_standin

pytestmark = pytest.mark.integration


class StandIn(http.server.ThreadingHTTPServer):
    requests: list[dict[str, Any]]
    status: int


class Handler(http.server.BaseHTTPRequestHandler):
    server: StandIn

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = dict(item[0] for item in peer["subject"])
        self.server.requests.append(
            {"path": self.path, "body": json.loads(body), "client": subject}
        )
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def api_server(pki_dir: Path, status: int = 201) -> Iterator[StandIn]:
    server = StandIn(("127.0.0.1", 0), Handler)
    server.requests, server.status = [], status
    with tls_standin.serving(server, pki_dir):
        yield server


@pytest.fixture
def on_aws(environments: Path) -> Path:
    """The example environment as if it ran on AWS (no sandbox)."""
    path = environments / "aws" / "example.tfvars"
    path.parent.mkdir()
    text = (environments / "example.tfvars").read_text()
    path.write_text(
        text.replace("sandbox                  = true", "sandbox                  = false")
    )
    assert "sandbox                  = false" in path.read_text()
    return path


def test_the_token_is_shown_and_rotated_never_its_secret(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    missing = kubeplat("token", "-e", "example")
    assert missing.code == 1
    assert "Error: no bootstrap token in" in missing.err
    assert "Hint: create the PKI: kubeplat certs -e example" in missing.err
    assert kubeplat("certs", "-e", "example").code == 0
    cache = Path(".kubeplat/example/pki")
    token = (cache / "bootstrap-token").read_text().strip()
    shown = kubeplat("token", "-e", "example")
    assert shown.code == 0, shown.err
    found = re.fullmatch(
        r"bootstrap token ([a-z0-9]{6}), expires (\d{4}-\d\d-\d\d \d\d:\d\d) UTC\n", shown.out
    )
    assert found and found.group(1) == token.split(".")[0]
    expires = dt.datetime.strptime(found.group(2), "%Y-%m-%d %H:%M").replace(tzinfo=dt.UTC)
    assert 364 <= (expires - dt.datetime.now(dt.UTC)).days <= 365
    assert token.split(".")[1] not in shown.out + shown.err

    rotated = kubeplat("token", "rotate", "-e", "example")
    assert rotated.code == 0, rotated.err
    new = (cache / "bootstrap-token").read_text().strip()
    assert new != token and new.split(".")[0] in rotated.out
    assert "issued bootstrap-token (rotated)" in rotated.err
    assert new.split(".")[1] not in rotated.out + rotated.err


def test_create_gives_the_cluster_an_extra_token_through_its_api(  # type: ignore[no-untyped-def]
    kubeplat, on_aws: Path
) -> None:
    env = config.load_file(on_aws)
    assert kubeplat("certs", "-e", str(on_aws)).code == 0
    pki_dir = LocalStore(env.workdir / "pki").root
    files = LocalStore(pki_dir).load()

    no_kubeconfig = kubeplat("token", "create", "-e", str(on_aws))
    assert no_kubeconfig.code == 1
    assert f"Error: no usable admin kubeconfig at {env.kubeconfig_path}" in no_kubeconfig.err

    with api_server(pki_dir) as server:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        env.kubeconfig_path.parent.mkdir(parents=True, exist_ok=True)
        env.kubeconfig_path.write_bytes(render.admin_kubeconfig(env, files, url))
        created = kubeplat("token", "create", "-e", str(on_aws), "--ttl", "2h")
        assert created.code == 0, created.err
        (request,) = server.requests
    token = created.out.strip()
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token)
    assert request["path"] == "/api/v1/namespaces/kube-system/secrets"
    assert request["client"]["commonName"] == "kubernetes-admin"
    body = request["body"]
    token_id, secret = token.split(".")
    assert body["type"] == "bootstrap.kubernetes.io/token"
    assert body["metadata"]["name"] == f"bootstrap-token-{token_id}"
    # Not the environment's own token: apply-addons deletes only `environment` ones.
    assert body["metadata"]["labels"] == {"kubeplat.io/bootstrap-token": "extra"}
    data = body["stringData"]
    assert (data["token-id"], data["token-secret"]) == (token_id, secret)
    assert data["auth-extra-groups"] == "system:bootstrappers:kubeplat"
    expires = dt.datetime.strptime(data["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert dt.timedelta(minutes=119) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=2)
    assert f"the cluster at {url} accepts it until" in created.err
    assert token != files["bootstrap-token"].decode().strip()

    # The API server says no; nobody answers: one line each, no traceback.
    with api_server(pki_dir, status=403) as server:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        env.kubeconfig_path.write_bytes(render.admin_kubeconfig(env, files, url))
        refused = kubeplat("token", "create", "-e", str(on_aws))
    assert refused.code == 1
    assert f"Error: the API server at {url} refused the token (HTTP 403 Forbidden)" in refused.err
    gone = kubeplat("token", "create", "-e", str(on_aws))  # that server is closed now
    assert gone.code == 1 and f"Error: cannot reach the API server at {url}" in gone.err
    # A kubeconfig whose key is damaged: said, no connection made.
    text = env.kubeconfig_path.read_text()
    damaged = re.sub(r"client-key-data: \S+", "client-key-data: bm90IGEga2V5", text)
    env.kubeconfig_path.write_text(damaged)
    broken = kubeplat("token", "create", "-e", str(on_aws))
    assert broken.code == 1
    assert "Error: the admin kubeconfig's CA, certificate or key is not usable" in broken.err
    assert "Traceback" not in refused.err + gone.err + broken.err


def test_create_refuses_bad_durations_and_the_sandbox(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    for ttl, message in (
        ("soon", "Error: --ttl 'soon' is not a duration"),
        ("0h", "Error: --ttl '0h' is not a duration"),
        ("31d", "Error: --ttl 31d is longer than 30 days"),
        ("99999999999d", "Error: --ttl 99999999999d is longer than 30 days"),
    ):
        result = kubeplat("token", "create", "-e", "example", "--ttl", ttl)
        assert result.code == 1 and message in result.err, result.err
    sandboxed = kubeplat("token", "create", "-e", "example")
    assert sandboxed.code == 1
    assert "runs no Kubernetes API server to give a token to" in sandboxed.err
    misplaced = kubeplat("token", "-e", "example", "rotate")
    assert misplaced.code == 2 and "give the options after the subcommand" in misplaced.err
