"""Bootstrap tokens: the environment's own (in the secrets bucket, with an expiry, renewed by
`up`, replaced by `kubeplat token rotate`), and extra short-lived ones that `kubeplat token
create` gives the cluster through its API, for a machine kubeplat does not launch."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import ssl
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeplat import pki
from kubeplat.errors import KubeplatError

TTL = re.compile(r"(\d+)([mhd])")
UNITS = {"m": "minutes", "h": "hours", "d": "days"}
MAX_TTL = dt.timedelta(days=30)


def parse_ttl(text: str) -> dt.timedelta:
    """`30m`, `24h`, `7d` (at most 30 days): a token for a hand-joined machine is short-lived."""
    found = TTL.fullmatch(text.strip())
    if not found or int(found.group(1)) == 0:
        raise KubeplatError(
            f"--ttl {text!r} is not a duration", "write it as minutes, hours or days: 30m, 24h, 7d"
        )
    try:
        ttl = dt.timedelta(**{UNITS[found.group(2)]: int(found.group(1))})
    except OverflowError:
        ttl = MAX_TTL + MAX_TTL
    if ttl > MAX_TTL:
        raise KubeplatError(
            f"--ttl {text} is longer than 30 days",
            "an extra token is for joining a machine now; nodes kubeplat launches use the "
            "environment's own token (kubeplat token -e ENV)",
        )
    return ttl


@dataclass(frozen=True)
class Created:
    """An extra token the cluster now accepts."""

    token: str
    expires: dt.datetime
    server: str


def create(
    kubeconfig: Path, ttl: dt.timedelta, description: str, now: dt.datetime | None = None
) -> Created:
    """Give the cluster a new bootstrap token Secret through its API (the admin kubeconfig)."""
    import yaml

    now = now or dt.datetime.now(dt.UTC)
    try:
        document = yaml.safe_load(kubeconfig.read_text())
        cluster = document["clusters"][0]["cluster"]
        user = document["users"][0]["user"]
        server = str(cluster["server"]).rstrip("/")
        material = {
            "ca": cluster["certificate-authority-data"],
            "crt": user["client-certificate-data"],
            "key": user["client-key-data"],
        }
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        raise KubeplatError(
            f"no usable admin kubeconfig at {kubeconfig}",
            "write it (the environment must run): kubeplat kubeconfig -e ENV",
        ) from None
    token = pki.new_bootstrap_token()
    token_id, secret = token.split(".")
    expires = (now + ttl).replace(microsecond=0)
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "bootstrap.kubernetes.io/token",
        "metadata": {
            "name": f"bootstrap-token-{token_id}",
            "namespace": "kube-system",
            "labels": {"kubeplat.io/bootstrap-token": "extra"},
        },
        "stringData": {
            "token-id": token_id,
            "token-secret": secret,
            "expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": "system:bootstrappers:kubeplat",
            "description": description,
        },
    }
    url = f"{server}/api/v1/namespaces/kube-system/secrets"
    _post(url, body, material)
    return Created(token, expires, server)


def _post(url: str, body: dict[str, Any], material: dict[str, str]) -> None:
    import base64
    import binascii

    with tempfile.TemporaryDirectory(prefix="kubeplat-token-") as folder:
        paths = {}
        try:
            for name, data in material.items():
                path = Path(folder) / name
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(base64.b64decode(str(data), validate=True))
                paths[name] = str(path)
            context = ssl.create_default_context(cafile=paths["ca"])
            context.load_cert_chain(paths["crt"], paths["key"])
        except (binascii.Error, ValueError, ssl.SSLError):
            raise KubeplatError(
                "the admin kubeconfig's CA, certificate or key is not usable",
                "write it again: kubeplat kubeconfig -e ENV",
            ) from None
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=15, context=context) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            raise KubeplatError(
                f"the API server at {url.split('/api/')[0]} refused the token (HTTP {exc.code} "
                f"{exc.reason})",
                "the admin kubeconfig may be out of date: kubeplat kubeconfig -e ENV",
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise KubeplatError(
                f"cannot reach the API server at {url.split('/api/')[0]}: {reason}",
                "it must answer from here (kubeapi_access_list names who may reach it)",
            ) from None
