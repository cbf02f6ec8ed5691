"""The CSR approver's decisions (kubeplat/node/approver.py), on requests made the way kubelets
make them (`cryptography`, and `openssl req` as a second real producer): the
node programs read them with their own small DER reader, which these tests hold to what
OpenSSL and cryptography wrote."""

from __future__ import annotations

import base64
import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubeplat.node import approver

NODE = "ip-10-0-1-5.ec2.internal"
ME = approver.Instance(
    "i-0me",
    frozenset({NODE, "ec2-3-4-5-6.compute-1.amazonaws.com"}),
    frozenset({"10.0.1.5", "3.4.5.6"}),
)
OTHER = approver.Instance(
    "i-0other", frozenset({"ip-10-0-1-9.ec2.internal"}), frozenset({"10.0.1.9"})
)


def request(
    cn: str = f"system:node:{NODE}",
    orgs: tuple[str, ...] = ("system:nodes",),
    dns: tuple[str, ...] = (NODE,),
    ips: tuple[str, ...] = ("10.0.1.5",),
    email: str = "",
) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    names.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if email:
        alt.append(x509.RFC822Name(email))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def csr(
    pem: bytes,
    username: str = f"system:node:{NODE}",
    groups: tuple[str, ...] = ("system:nodes", "system:authenticated"),
    usages: tuple[str, ...] = ("digital signature", "server auth"),
    signer: str = approver.SIGNER,
    conditions: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "csr-1"},
        "spec": {
            "request": base64.b64encode(pem).decode(),
            "signerName": signer,
            "usages": list(usages),
            "username": username,
            "groups": list(groups),
        },
        "status": {"conditions": conditions or []},
    }


def decide(item: dict[str, Any]) -> approver.Decision | None:
    return approver.decide(item, lambda: [ME, OTHER])


def test_the_reader_sees_what_cryptography_and_openssl_wrote(tmp_path: Path) -> None:
    read = approver.parse_request(request(dns=(NODE, "ip-10-0-1-5"), ips=("10.0.1.5", "::1")))
    assert read.common_names == [f"system:node:{NODE}"]
    assert read.organizations == ["system:nodes"]
    assert read.dns == [NODE, "ip-10-0-1-5"] and read.ips == ["10.0.1.5", "::1"]
    assert read.other_names == 0
    key = tmp_path / "key.pem"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    made = subprocess.run(
        [
            "openssl", "req", "-new", "-key", str(key), "-subj",
            f"/O=system:nodes/CN=system:node:{NODE}",
            "-addext", f"subjectAltName=DNS:{NODE},IP:10.0.1.5,URI:spiffe://x/y",
        ],
        capture_output=True, check=True,
    )  # fmt: skip
    read = approver.parse_request(made.stdout)
    assert read.common_names == [f"system:node:{NODE}"] and read.organizations == ["system:nodes"]
    assert read.dns == [NODE] and read.ips == ["10.0.1.5"] and read.other_names == 1
    for damaged in (
        b"",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ):
        with pytest.raises(approver.BadRequest):
            approver.parse_request(damaged)


def test_a_node_asking_for_its_own_names_is_approved() -> None:
    assert decide(csr(request())) == approver.Decision(
        "approve", f"{NODE} is i-0me, and names only its own"
    )
    # Its short hostname, its public name and address, key encipherment (RSA keys) too.
    short = "ip-10-0-1-5"
    item = csr(
        request(
            cn=f"system:node:{short}",
            dns=(short, "ec2-3-4-5-6.compute-1.amazonaws.com"),
            ips=("3.4.5.6",),
        ),
        username=f"system:node:{short}",
        usages=("key encipherment", "digital signature", "server auth"),
    )
    verdict = decide(item)
    assert verdict is not None and verdict.verdict == "approve", verdict


@pytest.mark.parametrize(
    ("item", "why"),
    [
        (csr(request(ips=("10.0.1.9",))), "10.0.1.9 are not i-0me's"),
        (csr(request(dns=("kubernetes.default",))), "kubernetes.default are not i-0me's"),
        (csr(request(), username="alice", groups=("system:authenticated",)), "not by a node"),
        (csr(request(), groups=("system:authenticated",)), "not by a node"),
        (csr(request(cn="system:node:ip-10-0-1-9.ec2.internal")), "is not system:node:"),
        (csr(request(orgs=("system:masters",))), "is not system:node:"),
        (csr(request(), usages=("digital signature", "client auth")), "not a serving"),
        (csr(request(), usages=("digital signature", "server auth", "cert sign")), "not a serving"),
        (csr(request(email="a@example.com")), "e-mail addresses or URIs"),
        (csr(request(dns=(), ips=())), "names no DNS name or IP address"),
        (csr(b"not a request"), "cannot be read"),
    ],
)
def test_anything_else_is_denied_with_the_reason(item: dict[str, Any], why: str) -> None:
    verdict = decide(item)
    assert verdict is not None and verdict.verdict == "deny" and why in verdict.reason, verdict


def test_an_unknown_node_waits_and_others_requests_are_left_alone() -> None:
    stranger = "ip-10-0-7-7.ec2.internal"
    item = csr(
        request(cn=f"system:node:{stranger}", dns=(stranger,), ips=("10.0.7.7",)),
        username=f"system:node:{stranger}",
    )
    assert decide(item) == approver.Decision(
        "wait", f"no running instance of this environment is named {stranger}"
    )
    assert decide(csr(request(), signer="kubernetes.io/kube-apiserver-client-kubelet")) is None
    decided = [{"type": "Denied", "status": "True"}]
    assert decide(csr(request(), conditions=decided)) is None


def test_a_request_hiding_a_second_one_is_denied() -> None:
    """What the signer decodes must be what was checked: a first block that names only the
    node's own address followed by another that names someone else's, or text before the
    block (Go's PEM decoder would skip it and sign the second), is not approved."""
    good = request()
    evil = request(ips=("10.0.1.9",))
    for pem in (
        good + evil,
        b"x" + good + evil,
        good.replace(b"-----\n", b"----- junk\n", 1) + evil,
    ):
        verdict = decide(csr(pem))
        assert verdict is not None and verdict.verdict == "deny", verdict
        assert "cannot be read" in verdict.reason
    assert decide(csr(b"\n" + good + b"\n")) == decide(csr(good))  # surrounding whitespace is fine
