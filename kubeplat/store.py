"""The secrets bucket: `s3://<secrets_bucket_name>/<environment>/`, every object SSE-KMS.

It holds the PKI (the source of truth; `.kubeplat/ENV/pki/` is a cache) and the rendered node
configuration. Objects carry their sha256 in metadata, so an upload sends only what changed.
New PKI files are written with a conditional put (`If-None-Match: *`): when two operators race
to create a CA, exactly one write lands and the other reloads and uses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kubeplat.aws import Aws, errors
from kubeplat.errors import KubeplatError

if TYPE_CHECKING:
    from kubeplat.config import Environment

WORKERS = 8
# Derived from other PKI files, never loaded back as one.
_DERIVED = {
    "client-ca-bundle.crt",
    "kubelet-serving-ca.crt",
    "ssh/authorized_keys",
    "encryption-config.yaml",
}


class Conflict(KubeplatError):
    """Another operator created the same object first."""


def sha256(data: bytes) -> str:
    """The digest kubeplat stores with every object."""
    return hashlib.sha256(data).hexdigest()


def environments_in(aws: Aws, bucket: str) -> list[str]:
    """The environments whose PKI a secrets bucket holds (its top-level `NAME/pki/` prefixes);
    none when the caller may not list the bucket's root."""
    from botocore.exceptions import ClientError

    s3 = aws.client("s3")
    found = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/"):
            for prefix in page.get("CommonPrefixes", []):
                name = prefix["Prefix"].rstrip("/")
                held = s3.list_objects_v2(Bucket=bucket, Prefix=f"{name}/pki/", MaxKeys=1)
                if held.get("KeyCount", 0):
                    found.append(name)
    except ClientError:
        # An operator allowed only their environment's prefix: nothing to say about others.
        return []
    return sorted(found)


def pki_files(objects: Mapping[str, bytes]) -> dict[str, bytes]:
    """The PKI files (kubeadm names) from the bucket's `pki/<prefix>/<file>` objects."""
    from kubeplat.pki import first_certificate, first_public_key

    files: dict[str, bytes] = {}
    for name, data in sorted(objects.items()):
        relative = name.split("/", 2)[2]
        if relative in _DERIVED:
            continue
        # A CA's object in common/ is what nodes trust: during a staged rotation the signing CA
        # followed by the other one (kept in locked/ as `.next` or `.prev`); the same for the
        # service-account key's public half, the signing key's first.
        if relative.endswith(".crt"):
            data = first_certificate(data)
        elif relative == "sa.pub":
            data = first_public_key(data)
        files[relative] = data
    return files


@dataclass
class BucketStore:
    """One environment's prefix of the secrets bucket."""

    aws: Aws
    bucket: str
    prefix: str
    key_arn: str

    @classmethod
    def of(cls, aws: Aws, env: Environment, key_arn: str) -> BucketStore:
        return cls(aws, env.secrets_bucket_name, env.environment, key_arn)

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def names(self, under: str = "") -> list[str]:
        """Names (relative to the environment's prefix) of every object under `under`."""
        s3 = self.aws.client("s3")
        names = []
        with errors(f"listing s3://{self.bucket}/{self.prefix}/{under}", self.aws):
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key(under)
            ):
                names += [item["Key"][len(self.prefix) + 1 :] for item in page.get("Contents", [])]
        return names

    def get(self, name: str) -> bytes:
        with errors(f"reading s3://{self.bucket}/{self.key(name)}", self.aws):
            body = self.aws.client("s3").get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
            return bytes(body.read())

    def load_pki(self) -> dict[str, bytes]:
        """The PKI files (kubeadm names) the bucket holds, from every pki/<prefix>/."""
        names = [n for n in self.names("pki/") if n.count("/") >= 2]
        with ThreadPoolExecutor(WORKERS) as pool:
            return pki_files(dict(zip(names, pool.map(self.get, names), strict=True)))

    def digests(self, names: Iterable[str]) -> dict[str, str | None]:
        """The stored sha256 of each object (None when missing or written by something else)."""
        from botocore.exceptions import ClientError

        s3 = self.aws.client("s3")

        def head(name: str) -> str | None:
            try:
                meta = s3.head_object(Bucket=self.bucket, Key=self.key(name))
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            return str(meta.get("Metadata", {}).get("sha256")) or None

        names = list(names)
        with (
            errors(f"reading s3://{self.bucket}/{self.prefix}/", self.aws),
            ThreadPoolExecutor(WORKERS) as pool,
        ):
            return dict(zip(names, pool.map(head, names), strict=True))

    def changed(self, objects: Mapping[str, bytes]) -> list[str]:
        """The names whose bytes differ from what the bucket holds (by digest)."""
        stored = self.digests(objects)
        return sorted(n for n, data in objects.items() if stored[n] != sha256(data))

    def put(self, name: str, data: bytes, *, only_if_new: bool = False) -> None:
        """Write one object, SSE-KMS, with its digest; `only_if_new` makes it conditional."""
        from botocore.exceptions import ClientError

        args = {
            "Bucket": self.bucket,
            "Key": self.key(name),
            "Body": data,
            "ServerSideEncryption": "aws:kms",
            "SSEKMSKeyId": self.key_arn,
            "Metadata": {"sha256": sha256(data)},
        }
        if only_if_new:
            args["IfNoneMatch"] = "*"
        with errors(f"writing s3://{self.bucket}/{self.key(name)}", self.aws):
            try:
                self.aws.client("s3").put_object(**args)
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("PreconditionFailed", "412"):
                    raise Conflict(f"{name} was created by someone else first", "") from None
                if exc.response["Error"]["Code"] == "ConditionalRequestConflict":
                    raise Conflict(f"{name} is being written by someone else", "") from None
                raise

    def promote(self, staged: str, name: str, data: bytes) -> None:
        """Make `name` hold `data`, copied inside the bucket from `staged` (named by the digest
        of `data`, so it holds those bytes), or written when another run removed that copy."""
        from botocore.exceptions import ClientError

        with errors(f"copying s3://{self.bucket}/{self.key(staged)} to {name}", self.aws):
            try:
                self.aws.client("s3").copy_object(
                    Bucket=self.bucket,
                    Key=self.key(name),
                    CopySource={"Bucket": self.bucket, "Key": self.key(staged)},
                    MetadataDirective="COPY",
                    ServerSideEncryption="aws:kms",
                    SSEKMSKeyId=self.key_arn,
                )
            except ClientError as exc:
                if exc.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
                    raise
                self.put(name, data)  # another run removed the staged copy

    def upload(
        self, objects: Mapping[str, bytes], changed: Iterable[str] | None = None
    ) -> list[str]:
        """Write the objects whose digest changed, in parallel; the names written.

        `changed` names the objects already known to differ (no second round of HEADs).
        """
        changed = sorted(changed) if changed is not None else self.changed(objects)
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda n: self.put(n, objects[n]), changed))
        return changed

    def purge(self, under: str = "") -> int:
        """Delete every object under the environment's prefix (or its folder `under`), every
        version of it and every delete marker (so no key stays recoverable from the versioned
        bucket); the number of object names removed. Safe to run again: a stopped purge is
        finished by the next."""
        s3 = self.aws.client("s3")
        names: set[str] = set()
        where = f"s3://{self.bucket}/{self.key(under)}"
        with errors(f"purging {where}", self.aws):
            pages = s3.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=self.key(under)
            )
            for page in pages:
                found = [
                    {"Key": item["Key"], "VersionId": item["VersionId"]}
                    for kind in ("Versions", "DeleteMarkers")
                    for item in page.get(kind, [])
                ]
                names.update(item["Key"] for item in page.get("Versions", []))
                for at in range(0, len(found), 1000):
                    answer = s3.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": found[at : at + 1000], "Quiet": True}
                    )
                    if answer.get("Errors"):
                        first = answer["Errors"][0]
                        raise KubeplatError(
                            f"could not delete s3://{self.bucket}/{first['Key']}: "
                            f"{first.get('Message', first.get('Code'))}",
                            "run the same command again; it continues where it stopped",
                        )
        return len(names)

    def delete(self, names: Iterable[str]) -> None:
        s3 = self.aws.client("s3")
        for name in names:
            with errors(f"deleting s3://{self.bucket}/{self.key(name)}", self.aws):
                s3.delete_object(Bucket=self.bucket, Key=self.key(name))
