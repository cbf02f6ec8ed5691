"""`kubeplat health --all` on two sandbox environments (issue 19): a held state lock, an API
server whose served certificate is near expiry, and drift each show in the table, the JSON and
the exit code.

The real Terraform (its refresh-only plan finds the drift) and moto's S3 (the lock object, as
Terraform's S3 backend writes it). The served certificate comes from a TLS server on loopback
(a STAND-IN for the API server: none runs in the sandbox) that the environment's kubeconfig is
pointed at; the bucket's copy of the certificate stays fresh, so only a check that connects
sees the expiry.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.sandbox_user import clients, kubeplat, make_user, stop_sandbox

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    env = make_user(tmp_path_factory.mktemp("health"))
    folder = Path(env["CHECKOUT"], "environments")
    text = (folder / "example.tfvars").read_text()
    (folder / "second.tfvars").write_text(
        re.sub(r"\bexample\b", "second", text).replace("kubeplat-example", "kubeplat-second")
    )
    yield env
    stop_sandbox(env)


def health(
    user: dict[str, str], *args: str
) -> tuple[int, dict[str, dict[str, dict[str, str]]], str]:
    """Exit code, {environment: {check: item}} from `-o json`, and the table's output."""
    shown = kubeplat(user, "health", *args, "-o", "json")
    table = kubeplat(user, "health", *args)
    assert table.returncode == shown.returncode
    assert "Traceback" not in shown.stderr + table.stderr
    # The sandbox is named once per command, however often its checks read the environment.
    assert table.stderr.count("sandbox: AWS emulator at") <= 1, table.stderr
    found = {
        report["environment"]: {item["check"]: item for item in report["checks"]}
        for report in json.loads(shown.stdout)
    }
    return shown.returncode, found, table.stdout + table.stderr


@contextmanager
def serving_certificate(days: int, folder: Path) -> Iterator[int]:
    """A TLS server on loopback presenting a certificate that expires in `days` days."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=300)).not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (folder / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "c.pem", folder / "k.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_health_of_every_environment(user: dict[str, str], tmp_path: Path) -> None:
    for env in ("example", "second"):
        built = kubeplat(user, "up", "-e", env, "--auto-approve")
        assert built.returncode == 0, built.stderr[-3000:]

    # Both as `up` left them: nothing red (the sandbox's nodes report nothing: a warning).
    code, found, table = health(user, "--all")
    assert code == 0, table
    assert set(found) == {"example", "second"}
    for env in found.values():
        assert env["state lock"]["level"] == "ok" and env["state lock"]["detail"] == "free"
        assert env["drift"]["level"] == "ok"
        assert env["groups"]["level"] == "ok"
        assert env["API certificate"]["level"] == "ok"
        assert (
            "the bucket's copy (the sandbox runs no API server)" in env["API certificate"]["detail"]
        )
        assert env["nodes"]["level"] == "warn"  # no node reports in the sandbox

    # example: a lock left by a run that died two hours ago, as Terraform's S3 backend writes it.
    s3 = clients(user, "s3")["s3"]
    created = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    lock = {
        "ID": "3b0c7a6e-1111-2222-3333-444455556666", "Operation": "OperationTypeApply",
        "Info": "", "Who": "alice@laptop", "Version": "1.11.4",
        "Created": created.strftime("%Y-%m-%d %H:%M:%S.%f000 +0000 UTC"),
        "Path": "kubeplat-example-terraform/eu-west-1/example/terraform.tfstate",
    }  # fmt: skip
    s3.put_object(  # type: ignore[attr-defined]
        Bucket="kubeplat-example-terraform",
        Key="eu-west-1/example/terraform.tfstate.tflock",
        Body=json.dumps(lock).encode(),
    )
    # second: drift (its compute group's maximum changed by hand) and an API server whose
    # certificate expires in 3 days.
    autoscaling = clients(user, "autoscaling")["autoscaling"]
    autoscaling.update_auto_scaling_group(AutoScalingGroupName="second-kube-compute", MaxSize=6)  # type: ignore[attr-defined]
    kubeconfig = Path(user["CHECKOUT"], ".kubeplat", "second", "pki", "kubeconfig", "admin.conf")
    original = kubeconfig.read_text()
    with serving_certificate(3, tmp_path) as port:
        kubeconfig.write_text(re.sub(r"server: \S+", f"server: https://127.0.0.1:{port}", original))
        code, found, table = health(user, "--all")
    kubeconfig.write_text(original)

    assert code == 1
    held = found["example"]["state lock"]
    assert held["level"] == "red"
    assert held["detail"].startswith(
        f"held by alice@laptop (apply since {created:%Y-%m-%d %H:%M:%S} UTC, 2h ago, lock ID "
        "3b0c7a6e-1111-2222-3333-444455556666)"
    )
    assert found["example"]["drift"]["level"] == "ok"  # a refresh-only plan takes no lock
    assert found["second"]["state lock"]["level"] == "ok"
    drift = found["second"]["drift"]
    assert drift["level"] == "red"
    assert drift["detail"] == (
        'changed outside Terraform: aws_autoscaling_group.node["compute"] (max_size)'
    )
    served = found["second"]["API certificate"]
    assert served["level"] == "red"
    assert served["detail"].startswith(f"served by https://127.0.0.1:{port} expires ")
    assert served["detail"].endswith("(2 days left)") or served["detail"].endswith("(3 days left)")
    assert found["example"]["API certificate"]["level"] == "ok"
    # The table says the same, one environment's rows after the other's, and the exit code.
    assert re.search(r"example\s+state lock\s+RED\s+held by alice@laptop", table)
    assert re.search(r"second\s+drift\s+RED\s+changed outside Terraform", table)
    assert "Error: 2 of 2 environment(s) not well: example, second" in table

    # One environment, by name; a scale-out is not drift (its desired capacity is not the
    # module's to keep).
    autoscaling.set_desired_capacity(AutoScalingGroupName="example-kube-compute", DesiredCapacity=3)  # type: ignore[attr-defined]
    s3.delete_object(
        Bucket="kubeplat-example-terraform", Key="eu-west-1/example/terraform.tfstate.tflock"
    )  # type: ignore[attr-defined]
    code, found, table = health(user, "-e", "example")
    assert code == 0, table
    assert set(found) == {"example"}
    assert found["example"]["drift"]["level"] == "ok"
    assert found["example"]["state lock"]["detail"] == "free"


def test_health_needs_an_environment_or_all(user: dict[str, str]) -> None:
    none = kubeplat(user, "health")
    assert none.returncode == 2 and "give -e ENV (one or more) or --all" in none.stderr
    unknown = kubeplat(user, "health", "-e", "nope")
    assert unknown.returncode == 1
    assert "Error: 1 of 1 environment(s) not well: nope" in unknown.stderr
    assert "environment 'nope' not found" in unknown.stdout
