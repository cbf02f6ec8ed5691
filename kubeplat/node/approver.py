"""kubeplat CSR approver: kubelet serving certificates for the environment's own nodes only.

Kubelets ask for their serving certificate through the CSR API (`serverTLSBootstrap: true`,
signer `kubernetes.io/kubelet-serving`); the controller-manager signs only what is approved, and
nothing in Kubernetes approves these (a node could otherwise claim any name or address). This
program, on every control-plane node (`kubeplat-csr-approver.service`), approves a request when:

- it comes from a node (`system:node:NAME`, group `system:nodes`), and the request's subject is
  that node (CN `system:node:NAME`, O `system:nodes`);
- it asks for the serving usages only (digital signature, server auth, key encipherment) and
  names no e-mail address or URI;
- NAME is a running instance of this environment (the EC2 API, tag `Environment`: so no
  instance outside the environment may carry that tag), and every
  DNS name and IP address the request names is that instance's own (its private and public
  DNS names and addresses, or NAME itself).

A request that fails a check of its identity, usages or names is denied, with the reason (seen
in `kubectl get csr`); one whose node is not (yet) a running instance is left pending (the
cluster removes it after a day). Other signers' requests are never touched. Several approvers
may run: the API server takes the first approval and refuses a second (a conflict, ignored).
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import der

SIGNER = "kubernetes.io/kubelet-serving"
USAGES = frozenset({"digital signature", "server auth", "key encipherment"})
PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
log = logging.getLogger("kubeplat-csr-approver")

# Object identifiers, DER-encoded (without tag and length).
_CN = bytes([0x55, 0x04, 0x03])  # 2.5.4.3
_O = bytes([0x55, 0x04, 0x0A])  # 2.5.4.10
_EXTENSION_REQUEST = bytes.fromhex("2a864886f70d01090e")  # 1.2.840.113549.1.9.14
_SAN = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17


# A certificate request that cannot be read.
BadRequest = der.DerError


@dataclass
class Request:
    """What a PKCS#10 certificate request says about its subject."""

    common_names: list[str] = field(default_factory=list)
    organizations: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)
    other_names: int = 0  # e-mail addresses, URIs and the like


def parse_request(pem: bytes) -> Request:
    """The subject and subject alternative names of a PEM certificate request."""
    # Exactly one PEM block and nothing else: what the signer decodes (Go's pem.Decode takes the
    # first well-formed block, wherever it starts) must be what was checked here.
    text = pem.decode("ascii", errors="replace").strip()
    begin, end = "-----BEGIN CERTIFICATE REQUEST-----", "-----END CERTIFICATE REQUEST-----"
    if not (text.startswith(begin) and text.endswith(end)) or text.count("-----") != 4:
        raise BadRequest("not exactly one PEM certificate request")
    body = text[len(begin) : -len(end)]
    try:
        encoded = base64.b64decode("".join(body.split()), validate=True)
    except ValueError:
        raise BadRequest("not base64") from None
    tag, outer, after = der.read(encoded, 0)
    if tag != 0x30 or after != len(encoded):
        raise BadRequest("not a certificate request")
    tag, info, _ = der.read(outer, 0)
    parts = list(der.children(info))
    if tag != 0x30 or len(parts) < 3:
        raise BadRequest("not a certificate request")
    found = Request()
    for rdn_tag, rdn in der.children(parts[1][1]):  # Name: SEQUENCE OF SET OF AttributeTypeAndValue
        for _, pair in der.children(rdn):
            items = list(der.children(pair))
            if rdn_tag != 0x31 or len(items) != 2 or items[0][0] != 0x06:
                raise BadRequest("bad subject")
            value = items[1][1].decode("utf-8", errors="replace")
            if items[0][1] == _CN:
                found.common_names.append(value)
            elif items[0][1] == _O:
                found.organizations.append(value)
    for attr_tag, attributes in parts[3:]:
        if attr_tag != 0xA0:
            continue
        for _, attribute in der.children(attributes):
            items = list(der.children(attribute))
            if len(items) != 2 or items[0][1] != _EXTENSION_REQUEST:
                continue
            for _, extensions in der.children(items[1][1]):
                for _, extension in der.children(extensions):
                    fields = list(der.children(extension))
                    if fields and fields[0][1] == _SAN:
                        _names(fields[-1][1], found)
    return found


def _names(octets: bytes, found: Request) -> None:
    tag, names, _ = der.read(octets, 0)
    if tag != 0x30:
        raise BadRequest("bad subject alternative names")
    for name_tag, value in der.children(names):
        if name_tag == 0x82:  # dNSName
            found.dns.append(value.decode("ascii", errors="replace"))
        elif name_tag == 0x87:  # iPAddress
            try:
                found.ips.append(str(ipaddress.ip_address(value)))
            except ValueError:
                raise BadRequest("bad IP address") from None
        else:
            found.other_names += 1


@dataclass(frozen=True)
class Instance:
    """A running instance of the environment: the names and addresses it may claim."""

    instance_id: str
    dns: frozenset[str]
    ips: frozenset[str]

    def named(self, node: str) -> bool:
        return node in self.dns or any(node == d.split(".", 1)[0] for d in self.dns)


@dataclass(frozen=True)
class Decision:
    verdict: str  # "approve", "deny" or "wait"
    reason: str


def decide(csr: dict[str, Any], instances: Callable[[], list[Instance]]) -> Decision | None:
    """What to do with one CSR (None: not ours to judge — another signer, or already decided)."""
    spec, status = csr.get("spec") or {}, csr.get("status") or {}
    if spec.get("signerName") != SIGNER:
        return None
    if any(
        c.get("type") in ("Approved", "Denied", "Failed") for c in status.get("conditions") or []
    ):
        return None
    username = str(spec.get("username", ""))
    if not username.startswith("system:node:") or "system:nodes" not in (spec.get("groups") or []):
        return Decision("deny", f"asked for by {username!r}, not by a node")
    node = username[len("system:node:") :]
    usages = set(spec.get("usages") or [])
    if not usages <= USAGES or "server auth" not in usages:
        return Decision("deny", f"usages {sorted(usages)} are not a serving certificate's")
    try:
        request = parse_request(base64.b64decode(str(spec.get("request", ""))))
    except (BadRequest, ValueError) as exc:
        return Decision("deny", f"the request cannot be read: {exc}")
    if request.common_names != [username] or request.organizations != ["system:nodes"]:
        return Decision(
            "deny",
            f"its subject (CN {request.common_names}, O {request.organizations}) is not "
            f"{username} in system:nodes",
        )
    if request.other_names:
        return Decision("deny", "it names e-mail addresses or URIs")
    if not request.dns and not request.ips:
        return Decision("deny", "it names no DNS name or IP address")
    matches = [i for i in instances() if i.named(node)]
    if len(matches) != 1:
        return Decision("wait", f"no running instance of this environment is named {node}")
    instance = matches[0]
    allowed_dns = instance.dns | {node}
    foreign = [d for d in request.dns if d not in allowed_dns]
    foreign += [ip for ip in request.ips if ip not in instance.ips]
    if foreign:
        return Decision("deny", f"{', '.join(foreign)} are not {instance.instance_id}'s")
    return Decision("approve", f"{node} is {instance.instance_id}, and names only its own")


def ec2_instances(ec2: Any, environment: str) -> list[Instance]:
    """The environment's running instances, with their DNS names and addresses."""
    found = []
    filters = [
        {"Name": "tag:Environment", "Values": [environment]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ]
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for item in reservation["Instances"]:
                dns = {item.get("PrivateDnsName"), item.get("PublicDnsName")}
                ips = {item.get("PrivateIpAddress"), item.get("PublicIpAddress")}
                found.append(
                    Instance(
                        item["InstanceId"],
                        frozenset(d for d in dns if d),
                        frozenset(i for i in ips if i),
                    )
                )
    return found


class Api:
    """The API server, as the control plane's addons identity (a client certificate)."""

    def __init__(self, url: str, ca: str, cert: str, key: str) -> None:
        self.url = url.rstrip("/")
        self.context = ssl.create_default_context(cafile=ca)
        self.context.load_cert_chain(cert, key)

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=30, context=self.context) as answer:
            return json.loads(answer.read() or b"null")


def approve_once(api: Api, instances: Callable[[], list[Instance]]) -> list[str]:
    """One pass over the CSRs; what it did, as lines."""
    done = []
    listed: list[Instance] | None = None

    def cached() -> list[Instance]:  # one EC2 call a pass, and only when a CSR needs it
        nonlocal listed
        if listed is None:
            listed = instances()
        return listed

    for csr in api.call("GET", PATH).get("items") or []:
        decision = decide(csr, cached)
        if decision is None:
            continue
        name = csr["metadata"]["name"]
        if decision.verdict == "wait":
            done.append(f"{name}: pending, {decision.reason}")
            continue
        kind = "Approved" if decision.verdict == "approve" else "Denied"
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = csr.setdefault("status", {})
        status["conditions"] = [
            *(status.get("conditions") or []),
            {
                "type": kind,
                "status": "True",
                "reason": f"Kubeplat{kind}",
                "message": decision.reason,
                "lastUpdateTime": now,
            },
        ]
        try:
            api.call("PUT", f"{PATH}/{name}/approval", csr)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # 409: another approver was first, or it changed: next pass
                done.append(f"{name}: not {kind.lower()}: the API server answered {exc.code}")
            continue
        done.append(f"{name}: {kind.lower()}, {decision.reason}")
    return done


def main(argv: list[str] | None = None) -> int:
    from . import aws
    from .passes import arguments, forever, parse

    args = parse(
        arguments(
            "kubeplat-node csr-approver",
            "Approve kubelet serving certificates of the environment's own nodes.",
            interval=10.0,
        ),
        argv,
    )

    ec2: list[Any] = []

    def do_pass() -> list[str]:
        if not ec2:  # the instance role's credentials may take a while at boot
            ec2.append(aws.client("ec2", args.region or aws.Identity.read().region))
        # Certificates are read each pass: the agent renews them in place.
        api = Api(args.api, args.ca, args.cert, args.key)
        return approve_once(api, functools.partial(ec2_instances, ec2[0], args.environment))

    return forever(do_pass, log, args.interval, args.once)
