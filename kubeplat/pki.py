"""The cluster's PKI, kubeadm's set and file names, as pure functions over PEM bytes.

`ensure` takes what a store holds (a mapping of relative path → bytes, e.g. `ca.crt`,
`etcd/server.key`) and returns the complete set: it creates only what is missing, reissues
leaves within the environment's `cert_renew_days` of expiry or whose names no longer match
the environment (a changed `dns_zone_name`, say), and never silently replaces a CA. Where the bytes
come from and go to (a local cache, the secrets bucket) is the caller's business.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubeplat import cluster
from kubeplat.errors import KubeplatError

if TYPE_CHECKING:
    from kubeplat.config import Environment

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH

# kubeadm's three CAs, and kubelet-ca: it signs kubelet certificates (TLS bootstrap) on the
# control plane, so the cluster CA's key never has to leave the locked prefix.
CAS = ("ca", "front-proxy-ca", "etcd/ca", "kubelet-ca")
SA_KEY, SA_PUB = "sa.key", "sa.pub"
# A staged rotation of a CA or of the service-account key ("sa"): the new one is first only
# trusted (`X.next.*`), then signs while the old one is still trusted (`X.prev.crt`,
# `sa.prev.pub`), then the old one is dropped. The phase is read from the files themselves.
STAGED = (*CAS, "sa", "ssh", "encryption")
TRUST, REISSUE = "trust", "reissue"
# The key the API servers encrypt Secrets in etcd with (secretbox: XSalsa20-Poly1305, 32 random
# bytes, base64). It rotates in the same three steps: the new key first only decrypts, then
# encrypts while the old one still decrypts (Secrets are rewritten then), then the old one goes.
ENCRYPTION_KEY = "encryption/secretbox.key"
ENCRYPTION_NEXT, ENCRYPTION_PREV = "encryption/secretbox.next.key", "encryption/secretbox.prev.key"
# What the API servers read (`--encryption-provider-config`): made from the keys, so as secret.
ENCRYPTION_CONFIG = "encryption-config.yaml"
SSH_KEY, SSH_PUB = "ssh/id_ed25519", "ssh/id_ed25519.pub"
# The SSH key pair kubeplat made rotates the same way: the new key is first only authorized
# beside the old one (`kubeplat ssh` still uses the old), then used (the old still authorized),
# then the old one is dropped. What the node user's authorized_keys holds is `trust_bundle`.
SSH_NEXT, SSH_PREV = "ssh/id_ed25519.next.key", "ssh/id_ed25519.prev.pub"
AUTHORIZED_KEYS = "ssh/authorized_keys"
BOOTSTRAP_TOKEN = "bootstrap-token"
# When the bootstrap token stops working (RFC 3339): the control plane gives it to the cluster
# as the token Secret's `expiration`; `up` and `certs renew` replace it within cert_renew_days.
TOKEN_EXPIRATION = "bootstrap-token-expiration"


@dataclass(frozen=True)
class Leaf:
    """A certificate signed by one of the CAs."""

    name: str
    ca: str
    common_name: str
    usages: tuple[x509.ObjectIdentifier, ...]
    organization: str = ""
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()


class PKIError(KubeplatError):
    """The stored PKI is damaged in a way kubeplat must not paper over."""


def leaves(env: Environment) -> tuple[Leaf, ...]:
    """Every leaf certificate of the environment, with usages and SANs."""
    apiserver_dns = (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{cluster.CLUSTER_DOMAIN}",
        env.api_dns_name,
        # The API network load balancer's own name is only known after Terraform runs.
        f"*.elb.{env.aws_region}.amazonaws.com",
        "localhost",
    )
    localhost = ("127.0.0.1",)
    return (
        Leaf(
            "apiserver",
            "ca",
            "kube-apiserver",
            (SERVER,),
            dns=apiserver_dns,
            ips=(cluster.API_SERVICE_IP, *localhost),
        ),
        Leaf(
            "apiserver-kubelet-client",
            "ca",
            "kube-apiserver-kubelet-client",
            (CLIENT,),
            organization="system:masters",
        ),
        Leaf("admin", "ca", "kubernetes-admin", (CLIENT,), organization="system:masters"),
        Leaf("controller-manager", "ca", "system:kube-controller-manager", (CLIENT,)),
        Leaf("scheduler", "ca", "system:kube-scheduler", (CLIENT,)),
        Leaf("front-proxy-client", "front-proxy-ca", "front-proxy-client", (CLIENT,)),
        Leaf("apiserver-etcd-client", "etcd/ca", "kube-apiserver-etcd-client", (CLIENT,)),
        Leaf("etcd/healthcheck-client", "etcd/ca", "kube-etcd-healthcheck-client", (CLIENT,)),
        Leaf(
            "etcd/server",
            "etcd/ca",
            "etcd-server",
            (SERVER, CLIENT),
            dns=etcd_names(env),
            ips=localhost,
        ),
        Leaf(
            "etcd/peer",
            "etcd/ca",
            "etcd-peer",
            (SERVER, CLIENT),
            dns=etcd_names(env),
            ips=localhost,
        ),
    )


def etcd_names(env: Environment) -> tuple[str, ...]:
    """Names etcd members are reached by.

    Members find each other through the EC2 API (instances of the secure group) and address
    each other by their EC2 private DNS names, which a wildcard covers whatever instance the
    group replaces a member with; clients use the `secure.` name.
    """
    internal = (
        "ec2.internal" if env.aws_region == "us-east-1" else f"{env.aws_region}.compute.internal"
    )
    return (
        f"*.{internal}",
        f"secure.{env.environment}.{env.dns_zone_name}",
        "localhost",
    )


CA_SUBJECTS = {
    "ca": "kubernetes",
    "front-proxy-ca": "front-proxy-ca",
    "etcd/ca": "etcd-ca",
    "kubelet-ca": "kubelet-ca",
}


@dataclass
class Result:
    """The outcome of `ensure`: the complete set and what was (re)issued, with why."""

    files: dict[str, bytes]
    issued: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    def changed(self, before: Mapping[str, bytes]) -> dict[str, bytes]:
        """The files whose bytes differ from `before`."""
        return {k: v for k, v in self.files.items() if before.get(k) != v}


def ensure(
    env: Environment,
    stored: Mapping[str, bytes],
    *,
    now: dt.datetime | None = None,
    rotate: str | None = None,
    ssh_public_key: bytes | None = None,
) -> Result:
    """Complete the PKI in `stored`: create what is missing, renew what is near expiry.

    `rotate` reissues one leaf by name, one CA and everything it signed (`etcd/ca`,
    `front-proxy-ca`), or with `ca` every CA and every certificate.
    `ssh_public_key` is the environment's own public key, when it brings one.
    """
    now = now or dt.datetime.now(dt.UTC)
    files = settle(stored)
    result = Result(files)
    all_leaves = {leaf.name: leaf for leaf in leaves(env)}
    rotate_cas, forced = _rotation(rotate, all_leaves)

    cas: dict[str, tuple[x509.Certificate, PrivateKey]] = {}
    if "sa" in rotate_cas:
        files.pop(SA_KEY, None)
        files.pop(SA_PUB, None)
        rotate_cas.discard("sa")
        result.reasons["sa"] = "rotated"
    if "encryption" in rotate_cas:
        # Only where no cluster runs yet (`--rotate` on a live environment is staged): the API
        # servers could not read what the old key encrypted.
        rotate_cas.discard("encryption")
        for name in (ENCRYPTION_KEY, ENCRYPTION_NEXT, ENCRYPTION_PREV):
            files.pop(name, None)
        result.reasons["encryption"] = "rotated"
    if "ssh" in rotate_cas:
        rotate_cas.discard("ssh")
        if ssh_public_key is not None:
            raise _brought_ssh_key()
        for name in (SSH_KEY, SSH_NEXT, SSH_PREV):  # a new pair below, said as "rotated"
            files.pop(name, None)
    for name in CAS:
        signed = [leaf.name for leaf in all_leaves.values() if leaf.ca == name]
        loaded = None if name in rotate_cas else _load_ca(files, name, signed, now)
        if loaded is None:
            reason = "rotated" if name in rotate_cas else "missing"
            cas[name] = _issue_ca(env, name, now, result, reason)
            forced.update(
                {
                    leaf: f"{name} {'rotated' if reason == 'rotated' else 'is new'}"
                    for leaf in signed
                }
            )
        else:
            cas[name] = loaded

    for leaf in all_leaves.values():
        reason = forced.get(leaf.name) or _leaf_state(files, leaf, cas, now, env.cert_renew_days)
        if reason:
            _issue_leaf(env, leaf, cas[leaf.ca], now, result, reason)

    _ensure_service_account(env, files, result)
    _ensure_encryption_key(files, result)
    _ensure_ssh(files, result, ssh_public_key)
    token_reason = "rotated" if rotate == BOOTSTRAP_TOKEN else _token_state(files, now, env)
    if token_reason:
        files[BOOTSTRAP_TOKEN] = _bootstrap_token().encode()
        files[TOKEN_EXPIRATION] = _stamp(now + dt.timedelta(days=cluster.LEAF_DAYS))
        result.issued.append(BOOTSTRAP_TOKEN)
        result.reasons[BOOTSTRAP_TOKEN] = token_reason
    elif TOKEN_EXPIRATION not in files:  # a token made before tokens expired: it gets a date
        files[TOKEN_EXPIRATION] = _stamp(now + dt.timedelta(days=cluster.LEAF_DAYS))
    return result


def _stamp(moment: dt.datetime) -> bytes:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ\n").encode()


def token_expiry(files: Mapping[str, bytes]) -> dt.datetime | None:
    """When the bootstrap token expires (None: no date, or not one kubeplat wrote)."""
    try:
        text = files[TOKEN_EXPIRATION].decode().strip()
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except (KeyError, ValueError):
        return None


def _token_state(files: Mapping[str, bytes], now: dt.datetime, env: Environment) -> str:
    """Why the bootstrap token needs replacing ("" when it does not)."""
    token = files.get(BOOTSTRAP_TOKEN)
    if token is None:
        return "missing"
    if not _TOKEN.fullmatch(token.decode(errors="replace").strip()):
        return "it is not a bootstrap token"
    if TOKEN_EXPIRATION not in files:
        return ""
    expires = token_expiry(files)
    if expires is None:
        return "its expiry is unreadable"
    left = expires - now
    if left <= dt.timedelta(days=env.cert_renew_days):
        return f"expires in {max(0, left.days)} days"
    return ""


def _rotation(
    rotate: str | None, all_leaves: Mapping[str, Leaf]
) -> tuple[set[str], dict[str, str]]:
    """The CAs to reissue, and the leaves to reissue with why."""
    if rotate is None:
        return set(), {}
    if rotate == "ca":
        return set(CAS), {}
    if rotate in CAS:
        return {rotate}, {}
    if rotate in ("sa", "ssh", "encryption"):
        return {rotate}, {}
    if rotate in all_leaves:
        return set(), {rotate: "rotated"}
    if rotate == BOOTSTRAP_TOKEN:
        return set(), {}  # replaced with its expiry below
    names = ", ".join(sorted({*STAGED, *all_leaves, BOOTSTRAP_TOKEN}))
    raise KubeplatError(f"no certificate named {rotate!r}", f"one of: {names}")


def _load_ca(
    files: Mapping[str, bytes], name: str, signed: Sequence[str], now: dt.datetime
) -> tuple[x509.Certificate, PrivateKey] | None:
    crt, key = files.get(f"{name}.crt"), files.get(f"{name}.key")
    if crt is None and key is None:
        orphans = [s for s in signed if f"{s}.crt" in files]
        if orphans:
            raise PKIError(
                f"{name}.crt and {name}.key are missing but {', '.join(orphans)} exist, "
                "signed by that CA",
                f"restore {name}.crt and {name}.key, or start a new CA: kubeplat certs --rotate ca",
            )
        return None
    if crt is None or key is None:
        missing = f"{name}.crt" if crt is None else f"{name}.key"
        raise PKIError(
            f"{missing} is missing but its other half exists; kubeplat will not replace a CA "
            "silently",
            f"restore {missing}, or start a new CA (every node then needs new certificates): "
            f"kubeplat certs --rotate {name}",
        )
    cert = _parse_cert(name, crt)
    private = _parse_key(f"{name}.key", key)
    if not _same_key(cert, private):
        raise PKIError(f"{name}.key does not belong to {name}.crt", f"restore the pair: {name}")
    if cert.not_valid_after_utc <= now:
        raise PKIError(
            f"the CA {name} expired on {cert.not_valid_after_utc:%Y-%m-%d}",
            f"start a new CA: kubeplat certs --rotate {name}",
        )
    return cert, private


def _leaf_state(
    files: Mapping[str, bytes],
    leaf: Leaf,
    cas: Mapping[str, tuple[x509.Certificate, PrivateKey]],
    now: dt.datetime,
    renew_days: int,
) -> str:
    """Why a leaf needs issuing ("" when it does not); raise when it is damaged."""
    crt, key = files.get(f"{leaf.name}.crt"), files.get(f"{leaf.name}.key")
    if crt is None or key is None:
        return "missing"
    cert = _parse_cert(leaf.name, crt)
    private = _parse_key(f"{leaf.name}.key", key)
    if not _same_key(cert, private):
        # A run stopped between writing a reissued leaf's two halves (or a file swapped by
        # hand): a leaf is only ever reissued, never repaired.
        return "its key did not match its certificate"
    if not _signed_by(cert, cas[leaf.ca][0]):
        previous = files.get(f"{leaf.ca}.prev.crt")
        if previous is not None and _signed_by(cert, _parse_cert(f"{leaf.ca}.prev", previous)):
            return f"{leaf.ca} rotated"  # a staged rotation: the new CA signs now
        raise PKIError(
            f"{leaf.name}.crt is not signed by {leaf.ca}.crt",
            f"reissue it: kubeplat certs --rotate {leaf.name}",
        )
    left = cert.not_valid_after_utc - now
    if left <= dt.timedelta(days=renew_days):
        return f"expires in {max(0, left.days)} days"
    if _names(cert) != _wanted_names(leaf):
        return "its names changed"
    return ""


def _names(cert: x509.Certificate) -> tuple[str, str, frozenset[str]]:
    """A certificate's common name, organization and subject alternative names."""

    def first(oid: x509.ObjectIdentifier) -> str:
        found = cert.subject.get_attributes_for_oid(oid)
        return str(found[0].value) if found else ""

    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        alternative = {f"DNS:{d}" for d in extension.get_values_for_type(x509.DNSName)}
        alternative |= {f"IP:{i}" for i in extension.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        alternative = set()
    return first(NameOID.COMMON_NAME), first(NameOID.ORGANIZATION_NAME), frozenset(alternative)


def _wanted_names(leaf: Leaf) -> tuple[str, str, frozenset[str]]:
    alternative = {f"DNS:{d}" for d in leaf.dns}
    alternative |= {f"IP:{ipaddress.ip_address(i)}" for i in leaf.ips}
    return leaf.common_name, leaf.organization, frozenset(alternative)


def _issue_ca(
    env: Environment, name: str, now: dt.datetime, result: Result, reason: str
) -> tuple[x509.Certificate, PrivateKey]:
    key = new_key(env.key_algorithm)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_SUBJECTS[name])])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(subject, subject, key, now, cluster.CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=True, rsa_key=isinstance(key, rsa.RSAPrivateKey)), critical=True
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _store(result, name, cert, key, reason)
    return cert, key


def _issue_leaf(
    env: Environment,
    leaf: Leaf,
    ca: tuple[x509.Certificate, PrivateKey],
    now: dt.datetime,
    result: Result,
    reason: str,
) -> None:
    ca_cert, ca_key = ca
    key = new_key(env.key_algorithm)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, leaf.common_name)]
    if leaf.organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, leaf.organization))
    days = min(
        cluster.LEAF_DAYS, max(1, (ca_cert.not_valid_after_utc - now).days)
    )  # never outlive the CA
    builder = (
        _builder(x509.Name(attributes), ca_cert.subject, key, now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=False, rsa_key=isinstance(key, rsa.RSAPrivateKey)), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage(list(leaf.usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in leaf.dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in leaf.ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    _store(result, leaf.name, builder.sign(ca_key, hashes.SHA256()), key, reason)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: PrivateKey, now: dt.datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated a little so a node whose clock lags a few minutes accepts it.
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(*, ca: bool, rsa_key: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=rsa_key and not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _store(result: Result, name: str, cert: x509.Certificate, key: PrivateKey, reason: str) -> None:
    result.files[f"{name}.crt"] = cert.public_bytes(serialization.Encoding.PEM)
    result.files[f"{name}.key"] = private_pem(key)
    result.issued.append(name)
    result.reasons[name] = reason


def new_key(algorithm: str) -> PrivateKey:
    """A fresh private key: ECDSA P-256 or RSA 2048."""
    if algorithm == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: PrivateKey) -> bytes:
    """PEM of a private key, PKCS#8 (what Kubernetes and etcd read)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ensure_service_account(env: Environment, files: dict[str, bytes], result: Result) -> None:
    key_pem = files.get(SA_KEY)
    if key_pem is None:
        if SA_PUB in files:
            raise PKIError(
                f"{SA_KEY} is missing but {SA_PUB} exists",
                f"restore {SA_KEY}; a new key would invalidate every service account token",
            )
        key = new_key(env.key_algorithm)
        files[SA_KEY] = private_pem(key)
        result.issued.append("sa")
        result.reasons["sa"] = result.reasons.get("sa", "missing")
    else:
        key = _parse_key(SA_KEY, key_pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if files.get(SA_PUB) != public:
        files[SA_PUB] = public  # derived from the key: recreating it changes nothing


def _ensure_encryption_key(files: dict[str, bytes], result: Result) -> None:
    if ENCRYPTION_KEY in files:
        return
    files[ENCRYPTION_KEY] = new_encryption_key()
    result.issued.append("encryption")
    result.reasons["encryption"] = result.reasons.get("encryption", "missing")


def new_encryption_key() -> bytes:
    """A secretbox key as the API server reads it: 32 random bytes, base64."""
    return base64.b64encode(secrets.token_bytes(32)) + b"\n"


def encryption_key_name(key: bytes) -> str:
    """A key's name in the EncryptionConfiguration (the API server writes it into every value
    it encrypts, `k8s:enc:secretbox:v1:NAME:`): from the key's digest, so stable and distinct."""
    return "key-" + hashlib.sha256(key.strip()).hexdigest()[:16]


def encryption_config(files: Mapping[str, bytes], *, encrypt: bool = True) -> bytes:
    """The API servers' EncryptionConfiguration for Secrets: the encrypting key first, then the
    keys that only decrypt (the one being introduced or retired). With `encrypt` off, `identity`
    comes first: new Secrets are stored as they are, and those encrypted before still read."""
    import yaml

    keys = [files[ENCRYPTION_KEY]]
    if ENCRYPTION_NEXT in files:
        keys.append(files[ENCRYPTION_NEXT])
    elif ENCRYPTION_PREV in files:
        keys.append(files[ENCRYPTION_PREV])
    secretbox = {
        "secretbox": {
            "keys": [
                {"name": encryption_key_name(k), "secret": k.strip().decode("ascii")} for k in keys
            ]
        }
    }
    providers = [secretbox, {"identity": {}}] if encrypt else [{"identity": {}}, secretbox]
    document = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{"resources": ["secrets"], "providers": providers}],
    }
    return yaml.safe_dump(document, sort_keys=False).encode()


def _ensure_ssh(files: dict[str, bytes], result: Result, given: bytes | None) -> None:
    if given is not None:
        if files.get(SSH_PUB) != given.strip() + b"\n":
            files[SSH_PUB] = given.strip() + b"\n"
        for name in (SSH_KEY, SSH_NEXT, SSH_PREV):  # kubeplat's own key pair is not used
            files.pop(name, None)
        return
    if SSH_KEY in files:
        files[SSH_PUB] = _ssh_public(_load_ssh_key(SSH_KEY, files[SSH_KEY]))
        return
    rotated = SSH_PUB in files
    files[SSH_KEY] = _new_ssh_key()
    files[SSH_PUB] = _ssh_public(_load_ssh_key(SSH_KEY, files[SSH_KEY]))
    files.pop(SSH_NEXT, None)
    files.pop(SSH_PREV, None)
    result.issued.append("ssh")
    result.reasons["ssh"] = "rotated" if rotated else "missing"


def _brought_ssh_key() -> KubeplatError:
    return KubeplatError(
        "this environment brings its own SSH key (ssh_public_key): kubeplat holds no private "
        "key to rotate",
        "put the new public key in the file ssh_public_key names; kubeplat up installs it on "
        "every node",
    )


def _new_ssh_key() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _load_ssh_key(name: str, data: bytes) -> ed25519.Ed25519PrivateKey | PrivateKey:
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except ValueError:
        raise PKIError(
            f"{name} is not an OpenSSH private key", f"restore it, or delete {name}"
        ) from None
    if not isinstance(
        key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ):
        raise PKIError(f"{name} is not a key kubeplat uses", f"restore it, or delete {name}")
    return key


def _ssh_public(key: ed25519.Ed25519PrivateKey | PrivateKey) -> bytes:
    """One authorized_keys line for a private key."""
    public = key.public_key()
    return (
        public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + b"\n"
    )


_TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")


def new_bootstrap_token() -> str:
    """A new kubelet TLS bootstrap token."""
    return _bootstrap_token()


def _bootstrap_token() -> str:
    """A kubelet TLS bootstrap token: `[a-z0-9]{6}.[a-z0-9]{16}`."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

    def pick(count: int) -> str:
        return "".join(secrets.choice(alphabet) for _ in range(count))

    return f"{pick(6)}.{pick(16)}"


def _parse_cert(name: str, data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        if name.endswith((".prev", ".next")):  # a CA's staged copy: `--rotate` takes no such name
            hint = f"restore it: the secrets bucket keeps earlier versions of ENV/pki/…/{name}.crt"
        else:
            hint = f"reissue it: kubeplat certs --rotate {name}"
        raise PKIError(f"{name}.crt is not a PEM certificate", hint) from None


def _parse_key(filename: str, data: bytes, hint: str = "") -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PKIError(
            f"{filename} is not a PEM private key",
            hint
            or f"restore it, or reissue it: kubeplat certs --rotate {filename.rsplit('.', 1)[0]}",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PKIError(f"{filename} is neither ECDSA nor RSA", "reissue it")
    return key


def _same_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) == key.public_key().public_bytes(serialization.Encoding.DER, spki)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    public = ca.public_key()
    assert cert.signature_hash_algorithm is not None
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(
                cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
            )
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(
                cert.signature,
                cert.tbs_certificate_bytes,
                padding.PKCS1v15(),
                cert.signature_hash_algorithm,
            )
        else:
            return False
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class CertInfo:
    """One row of `kubeplat certs`."""

    name: str
    subject: str
    issuer: str
    expires: dt.datetime
    days_left: int
    fingerprint: str


def describe(files: Mapping[str, bytes], now: dt.datetime | None = None) -> list[CertInfo]:
    """Every certificate in `files`, CAs first, in kubeadm's order."""
    now = now or dt.datetime.now(dt.UTC)
    order = [
        *(f"{ca}{stage}" for ca in CAS for stage in ("", ".next", ".prev")),
        *_LEAF_ORDER,
    ]
    rows = []
    for name in order:
        data = files.get(f"{name}.crt")
        if data is None:
            continue
        cert = _parse_cert(name, data)
        rows.append(
            CertInfo(
                name=name,
                subject=cert.subject.rfc4514_string(),
                issuer=cert.issuer.rfc4514_string(),
                expires=cert.not_valid_after_utc,
                days_left=(cert.not_valid_after_utc - now).days,
                fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
            )
        )
    expires = token_expiry(files)
    if expires is not None and BOOTSTRAP_TOKEN in files:
        token_id = files[BOOTSTRAP_TOKEN].decode(errors="replace").split(".", 1)[0]
        rows.append(
            CertInfo(
                name=BOOTSTRAP_TOKEN,
                subject=f"token id {token_id}",
                issuer="-",
                expires=expires,
                days_left=(expires - now).days,
                fingerprint="",
            )
        )
    return rows


_LEAF_ORDER = (
    "apiserver",
    "apiserver-kubelet-client",
    "apiserver-etcd-client",
    "front-proxy-client",
    "etcd/server",
    "etcd/peer",
    "etcd/healthcheck-client",
    "admin",
    "controller-manager",
    "scheduler",
)

PRIVATE_FILES = frozenset(
    [f"{n}.key" for n in (*CAS, *_LEAF_ORDER)] + [SA_KEY, SSH_KEY, SSH_NEXT, BOOTSTRAP_TOKEN]
)


def is_private(name: str) -> bool:
    """Whether a PKI file is secret (keys, the bootstrap token): 0600, never in logs."""
    return name in PRIVATE_FILES or name.endswith((".key", ENCRYPTION_CONFIG))


def _public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def first_certificate(data: bytes) -> bytes:
    """The first PEM block of a bundle (the bucket's trust bundles list the signing CA first)."""
    return _first_block(data, b"-----END CERTIFICATE-----")


def first_public_key(data: bytes) -> bytes:
    """The first public key of a bundle (the service-account keys: the signing one first)."""
    return _first_block(data, b"-----END PUBLIC KEY-----")


def _first_block(data: bytes, end: bytes) -> bytes:
    at = data.find(end)
    return data if at < 0 else data[: at + len(end)] + b"\n"


def staged(files: Mapping[str, bytes]) -> dict[str, str]:
    """The staged rotations the files are in: name → `trust` (the new one trusted, the old one
    still signing) or `reissue` (the new one signing, the old one still trusted)."""
    found = {}
    for name in CAS:
        if f"{name}.next.crt" in files:
            found[name] = TRUST
        elif f"{name}.prev.crt" in files:
            found[name] = REISSUE
    if "sa.next.key" in files:
        found["sa"] = TRUST
    elif "sa.prev.pub" in files:
        found["sa"] = REISSUE
    if SSH_NEXT in files:
        found["ssh"] = TRUST
    elif SSH_PREV in files:
        found["ssh"] = REISSUE
    if ENCRYPTION_NEXT in files:
        found["encryption"] = TRUST
    elif ENCRYPTION_PREV in files:
        found["encryption"] = REISSUE
    return found


def trust_bundle(files: Mapping[str, bytes], name: str) -> bytes:
    """What nodes trust for one CA (`ca`, `etcd/ca`…), for the service-account key (`sa`) or
    for SSH (`ssh`, the node user's authorized_keys): the current one first, then the one
    being introduced or retired."""
    if name == "ssh":
        keys = files[SSH_PUB]
        if SSH_NEXT in files:
            keys += _ssh_public(_load_ssh_key(SSH_NEXT, files[SSH_NEXT]))
        return keys + files.get(SSH_PREV, b"")
    if name == "sa":
        pub = files[SA_PUB]
        if "sa.next.key" in files:
            # Staged, not yet signing: no node can have trusted it damaged.
            staged_key = _parse_key(
                "sa.next.key",
                files["sa.next.key"],
                "restore it (ENV/pki/locked/sa.next.key in the secrets bucket keeps its versions), "
                "or delete it there and stage the rotation again: kubeplat certs --rotate sa",
            )
            return pub + _public_pem(staged_key)
        return pub + files.get("sa.prev.pub", b"")
    crt = files[f"{name}.crt"]
    return crt + files.get(f"{name}.next.crt", files.get(f"{name}.prev.crt", b""))


def settle(stored: Mapping[str, bytes]) -> dict[str, bytes]:
    """The files, with a step of a staged rotation that an interrupted run left half-written
    completed or undone (kubeplat writes the old one's `prev` copy first, then the new
    certificate, then its key, and removes `next` last), so every run resumes where the last
    one stopped and never loses the CA that nodes still trust."""
    files = dict(stored)
    for name in CAS:
        crt, nxt = files.get(f"{name}.crt"), files.get(f"{name}.next.crt")
        nkey = files.get(f"{name}.next.key")
        if nxt is not None and nkey is not None:
            if crt == nxt:  # promoted, `next` not yet removed
                files[f"{name}.key"] = nkey
                del files[f"{name}.next.crt"], files[f"{name}.next.key"]
            elif files.get(f"{name}.prev.crt") == crt:  # promotion had only begun
                del files[f"{name}.prev.crt"]
        elif nxt is not None or nkey is not None:  # half of a pair: a begin or a removal
            files.pop(f"{name}.next.crt", None)
            files.pop(f"{name}.next.key", None)
        if files.get(f"{name}.prev.crt") is not None and files.get(f"{name}.prev.crt") == crt:
            del files[f"{name}.prev.crt"]
    ssh = files.get(SSH_KEY)
    if ssh is not None and files.get(SSH_NEXT) == ssh:  # promoted, `next` not yet removed
        del files[SSH_NEXT]
    if ssh is not None and files.get(SSH_PREV) == _ssh_public(_load_ssh_key(SSH_KEY, ssh)):
        del files[SSH_PREV]  # promotion had only begun
    secret = files.get(ENCRYPTION_KEY)
    if secret is not None and files.get(ENCRYPTION_NEXT) == secret:  # promoted, not yet removed
        del files[ENCRYPTION_NEXT]
    if secret is not None and files.get(ENCRYPTION_PREV) == secret:  # promotion had only begun
        del files[ENCRYPTION_PREV]
    key = files.get(SA_KEY)
    if key is not None and files.get("sa.next.key") == key:
        del files["sa.next.key"]
    if (
        key is not None
        and "sa.prev.pub" in files
        and files["sa.prev.pub"] == _public_pem(_parse_key(SA_KEY, key))
    ):
        del files["sa.prev.pub"]
    return files


def begin(
    env: Environment, stored: Mapping[str, bytes], names: Sequence[str], now: dt.datetime
) -> Result:
    """Step 1 of a staged rotation: a new CA (or service-account key) that nodes trust beside
    the old one, which keeps signing."""
    files = settle(stored)
    result = Result(files)
    busy = staged(files)
    if busy:
        raise KubeplatError(
            "a rotation is already in progress: "
            + ", ".join(f"{n} ({busy[n]})" for n in sorted(busy)),
            "finish it first: kubeplat certs rotation -e ENV",
        )
    for name in names:
        if name == "ssh":
            if SSH_KEY not in files:
                raise _brought_ssh_key()
            files[SSH_NEXT] = _new_ssh_key()
            result.issued.append("ssh.next")
            result.reasons["ssh.next"] = "new, authorized beside the old one"
            continue
        if name == "encryption":
            files[ENCRYPTION_NEXT] = new_encryption_key()
            result.issued.append("encryption.next")
            result.reasons["encryption.next"] = "new, decrypts beside the old one"
            continue
        if name == "sa":
            files["sa.next.key"] = private_pem(new_key(env.key_algorithm))
            result.issued.append("sa.next")
            result.reasons["sa.next"] = "new, trusted beside the old one"
            continue
        cert, key = _issue_ca(env, name, now, Result({}), "")
        files[f"{name}.next.crt"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{name}.next.key"] = private_pem(key)
        result.issued.append(f"{name}.next")
        result.reasons[f"{name}.next"] = "new, trusted beside the old one"
    return result


def advance(env: Environment, stored: Mapping[str, bytes], now: dt.datetime) -> Result:
    """The next step of every staged rotation in the files: `trust` → the new one signs
    (the old one kept as `prev`, still trusted; every leaf it signed reissued); `reissue` →
    the old one dropped."""
    files = settle(stored)
    phases = staged(files)
    # Names a stopped run left a step behind the others catch up first.
    earliest = TRUST if TRUST in phases.values() else REISSUE
    for name, phase in phases.items():
        if phase != earliest:
            continue
        if name == "ssh":
            if phase == TRUST:
                files[SSH_PREV] = files[SSH_PUB]
                files[SSH_KEY] = files.pop(SSH_NEXT)
                files.pop(SSH_PUB, None)
            else:
                del files[SSH_PREV]
        elif name == "encryption":
            if phase == TRUST:
                files[ENCRYPTION_PREV] = files[ENCRYPTION_KEY]
                files[ENCRYPTION_KEY] = files.pop(ENCRYPTION_NEXT)
            else:
                del files[ENCRYPTION_PREV]
        elif name == "sa":
            if phase == TRUST:
                files["sa.prev.pub"] = _public_pem(_parse_key(SA_KEY, files[SA_KEY]))
                files[SA_KEY] = files.pop("sa.next.key")
                files.pop(SA_PUB, None)
            else:
                del files["sa.prev.pub"]
        elif phase == TRUST:
            files[f"{name}.prev.crt"] = files[f"{name}.crt"]
            files[f"{name}.crt"] = files.pop(f"{name}.next.crt")
            files[f"{name}.key"] = files.pop(f"{name}.next.key")
        else:
            del files[f"{name}.prev.crt"]
    # An environment that brings its own SSH key keeps it (there is no private key here).
    given = files.get(SSH_PUB) if SSH_KEY not in files else None
    return ensure(env, files, now=now, ssh_public_key=given)
