"""Bootstrap what Terraform's remote state and the node configuration live in.

The state and secrets buckets are created when missing — versioned, SSE-KMS with
`kms_master_id`, public access blocked — and said so. The KMS key must be usable first, and,
since it also encrypts the nodes' volumes, usable by the Auto Scaling service that creates them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubeplat.aws import Aws, AwsError, denied, errors

if TYPE_CHECKING:
    from kubeplat.config import Environment


@dataclass(frozen=True)
class Bootstrap:
    """What the bootstrap found or did."""

    key_arn: str
    created: list[str]
    plain_http: tuple[str, ...] = ()  # existing buckets that do not refuse plain HTTP


AUTOSCALING_ROLE = "AWSServiceRoleForAutoScaling"
# What Auto Scaling needs of a customer-managed key to launch instances with volumes encrypted
# by it (AWS: "Required AWS KMS key policy for use with encrypted volumes").
VOLUME_OPERATIONS = (
    "Encrypt",
    "Decrypt",
    "ReEncryptFrom",
    "ReEncryptTo",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "DescribeKey",
    "CreateGrant",
)
GRANT_NAME = "kubeplat-autoscaling-volumes"


def kms_key(aws: Aws, env: Environment) -> str:
    """The ARN of `kms_master_id`, which must exist and be enabled for encryption.

    In the sandbox the key is created (with its alias) when missing.
    """
    return str(_kms_metadata(aws, env)["Arn"])


def _kms_metadata(aws: Aws, env: Environment) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    kms = aws.client("kms")
    with errors(f"using the KMS key {env.kms_master_id}", aws):
        try:
            metadata = kms.describe_key(KeyId=env.kms_master_id)["KeyMetadata"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "NotFoundException" or not aws.sandbox:
                if exc.response["Error"]["Code"] == "NotFoundException":
                    raise AwsError(
                        f"the KMS key {env.kms_master_id} (kms_master_id in {env.path}) does not "
                        f"exist in {env.aws_region}",
                        "create it (aws kms create-key) or fix kms_master_id",
                    ) from None
                raise
            metadata = kms.create_key(Description=f"kubeplat sandbox key for {env.environment}")[
                "KeyMetadata"
            ]
            if env.kms_master_id.startswith("alias/"):
                try:
                    kms.create_alias(AliasName=env.kms_master_id, TargetKeyId=metadata["KeyId"])
                except ClientError as race:
                    if race.response["Error"]["Code"] != "AlreadyExistsException":
                        raise
                    # Another command created it first: use theirs.
                    metadata = kms.describe_key(KeyId=env.kms_master_id)["KeyMetadata"]
        if not metadata.get("Enabled", True) or metadata.get("KeyState") not in (None, "Enabled"):
            raise AwsError(
                f"the KMS key {env.kms_master_id} is {metadata.get('KeyState', 'disabled')}",
                "enable it, or point kms_master_id at an enabled key",
            )
        if metadata.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT":
            raise AwsError(
                f"the KMS key {env.kms_master_id} is not an encryption key",
                "use a symmetric ENCRYPT_DECRYPT key",
            )
        # Prove the caller may use it, not just see it.
        kms.generate_data_key(KeyId=metadata["Arn"], KeySpec="AES_256")
    return dict(metadata)


def bucket_exists(aws: Aws, name: str) -> bool:
    """Whether `name` exists; 403 is an error that says what it may mean."""
    from botocore.exceptions import ClientError

    with errors(f"checking the bucket {name}", aws):
        try:
            aws.client("s3").head_bucket(Bucket=name)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in ("403", "AccessDenied", "Forbidden"):
                # AWS answers 403 both for a bucket another account owns and for one this
                # caller may not look at (missing or not); say both.
                raise AwsError(
                    f"cannot use the bucket {name}: another account owns it, or this caller may "
                    "not read it",
                    "bucket names are global: pick another name, or give the caller s3:ListBucket "
                    "and s3:CreateBucket",
                ) from None
            if code in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise
    return True


def ensure_bucket(aws: Aws, name: str, key_arn: str) -> bool:
    """Create `name` when missing: versioned, SSE-KMS with the key, public access blocked,
    plain HTTP refused (on AWS).

    True when it was created; an existing bucket is left as its owner set it up.
    """

    s3 = aws.client("s3")
    created = not bucket_exists(aws, name)
    if not created:
        return False  # an existing bucket's settings are its owner's
    with errors(f"creating the bucket {name}", aws):
        if not create_bucket(aws, name):
            return False
    with errors(f"securing the bucket {name}", aws):
        s3.put_public_access_block(
            Bucket=name,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_encryption(
            Bucket=name,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {
                            "SSEAlgorithm": "aws:kms",
                            "KMSMasterKeyID": key_arn,
                        },
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )
        # Refuse plain HTTP; not where kubeplat itself is told to use it (the sandbox's
        # emulator, another emulator named by AWS_ENDPOINT_URL), which the policy would lock out.
        if not (aws.endpoint or "").startswith("http://"):
            s3.put_bucket_policy(Bucket=name, Policy=json.dumps(tls_only(name, aws.region)))
    return True


def partition(region: str) -> str:
    """The AWS partition a region is in (for ARNs)."""
    return (
        "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-")
        else "aws"
    )  # fmt: skip


def create_bucket(aws: Aws, name: str) -> bool:
    """Create `name` in the session's region; False when this account made it a moment ago
    (another operator: theirs is as good as ours)."""
    from botocore.exceptions import ClientError

    args: dict[str, object] = {"Bucket": name}
    if aws.region != "us-east-1":
        args["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
    try:
        aws.client("s3").create_bucket(**args)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
        return False
    return True


def tls_only(bucket: str, region: str) -> dict[str, Any]:
    """A bucket policy that refuses every request made without TLS."""
    arn = f"arn:{partition(region)}:s3:::{bucket}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "KubeplatTLSOnly",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [arn, f"{arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def volume_key_access(aws: Aws, env: Environment, key: dict[str, Any]) -> bool:
    """Let Auto Scaling use a customer-managed key for the nodes' encrypted volumes.

    Without it, every launch fails ("Client.InternalError") and the groups stay empty. The
    service-linked role is created when the account has none yet (AWS makes it with the first
    group, too late for the grant), then a grant is added unless one exists. True when
    something was created. A caller who may not do either is told, before anything is built.
    """
    from botocore.exceptions import ClientError

    if key.get("KeyManager") == "AWS":
        return False  # an AWS managed key already serves the account's own services
    kms = aws.client("kms")
    key_arn = str(key["Arn"])
    partition, account = key_arn.split(":")[1], key_arn.split(":")[4]
    role_arn = (
        f"arn:{partition}:iam::{account}:role/aws-service-role/autoscaling.amazonaws.com/"
        f"{AUTOSCALING_ROLE}"
    )
    hint = (
        "ask the key's administrator to run: aws kms create-grant --key-id "
        f"{key_arn} --grantee-principal {role_arn} --operations {' '.join(VOLUME_OPERATIONS)}"
    )
    created = False
    iam = aws.client("iam")
    with errors("checking the Auto Scaling service-linked role", aws):
        try:
            iam.get_role(RoleName=AUTOSCALING_ROLE)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code == "NoSuchEntity":
                try:
                    iam.create_service_linked_role(AWSServiceName="autoscaling.amazonaws.com")
                    created = True
                except ClientError as failed:
                    if denied(failed):
                        raise AwsError(
                            f"the account has no {AUTOSCALING_ROLE} role yet and this caller "
                            "may not create it, so no node could launch with an encrypted volume",
                            "run once: aws iam create-service-linked-role --aws-service-name "
                            "autoscaling.amazonaws.com",
                        ) from None
                    if not _taken(failed):  # else another run created it meanwhile: as wanted
                        raise
            elif not denied(exc):
                raise  # may not look: the grant below still tells
    with errors(f"granting Auto Scaling the use of {env.kms_master_id}", aws):
        try:
            grants = [
                grant
                for page in kms.get_paginator("list_grants").paginate(KeyId=key_arn)
                for grant in page.get("Grants", [])
            ]
        except ClientError as exc:
            if not denied(exc):
                raise
            grants = []  # may not list: a create with our grant's name is idempotent anyway
        if any(
            g.get("GranteePrincipal") == role_arn
            and set(VOLUME_OPERATIONS) <= set(g.get("Operations", []))
            for g in grants
        ):
            return created
        try:
            kms.create_grant(
                KeyId=key_arn,
                GranteePrincipal=role_arn,
                Operations=list(VOLUME_OPERATIONS),
                Name=GRANT_NAME,
            )
        except ClientError as exc:
            if not denied(exc):
                raise
            raise AwsError(
                f"the KMS key {env.kms_master_id} does not let Auto Scaling encrypt the nodes' "
                "volumes with it, and this caller may not grant that (kms:CreateGrant)",
                hint,
            ) from None
    return True


def _taken(exc: Any) -> bool:
    """AWS's answer to creating a service-linked role that exists (AWS: InvalidInput "has been
    taken"; the emulator: EntityAlreadyExists)."""
    error = exc.response.get("Error", {})
    message = str(error.get("Message", ""))
    return error.get("Code") == "EntityAlreadyExists" or (
        error.get("Code") == "InvalidInput" and "taken" in message
    )


def bootstrap(aws: Aws, env: Environment) -> Bootstrap:
    """The KMS key (usable by the caller and by Auto Scaling), then both buckets."""
    key = _kms_metadata(aws, env)
    key_arn = str(key["Arn"])
    volume_key_access(aws, env, key)
    names = (env.terraform_bucket_name, env.secrets_bucket_name)
    created = [name for name in names if ensure_bucket(aws, name, key_arn)]
    plain = tuple(n for n in names if n not in created and accepts_plain_http(aws, n))
    return Bootstrap(key_arn, created, plain)


def accepts_plain_http(aws: Aws, name: str) -> bool:
    """Whether a bucket's policy lets requests without TLS in (a bucket made before kubeplat
    added its TLS-only policy, or by someone else). Never where kubeplat itself is told to use
    plain HTTP (the sandbox), where such a policy would lock it out."""
    if (aws.endpoint or "").startswith("http://"):
        return False
    policy = _bucket_policy(aws, name)
    return not any(_refuses_plain_http(s) for s in _statements(policy))


def add_tls_only(aws: Aws, name: str) -> bool:
    """Add kubeplat's TLS-only statement to a bucket's policy, keeping its other statements;
    False when its policy already refuses plain HTTP."""
    if not accepts_plain_http(aws, name):
        return False
    merged = with_tls_only(_bucket_policy(aws, name), name, aws.region)
    with errors(f"setting the policy of the bucket {name}", aws):
        aws.client("s3").put_bucket_policy(Bucket=name, Policy=json.dumps(merged))
    return True


def with_tls_only(policy: dict[str, Any] | None, bucket: str, region: str) -> dict[str, Any]:
    """`policy` with kubeplat's TLS-only statement (replacing one of the same Sid)."""
    ours = tls_only(bucket, region)
    if not policy:
        return ours
    kept = [s for s in _statements(policy) if s.get("Sid") != "KubeplatTLSOnly"]
    return {**policy, "Statement": [*kept, *ours["Statement"]]}


def _bucket_policy(aws: Aws, name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    with errors(f"reading the policy of the bucket {name}", aws):
        try:
            text = aws.client("s3").get_bucket_policy(Bucket=name)["Policy"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchBucketPolicy":
                return None
            raise
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _statements(policy: dict[str, Any] | None) -> list[dict[str, Any]]:
    found = (policy or {}).get("Statement", [])
    found = [found] if isinstance(found, dict) else found
    return [s for s in found if isinstance(s, dict)]


def _refuses_plain_http(statement: dict[str, Any]) -> bool:
    def listed(value: Any) -> list[Any]:
        return value if isinstance(value, list) else [value]

    principal = statement.get("Principal")
    everyone = principal == "*" or (
        isinstance(principal, dict) and "*" in listed(principal.get("AWS"))
    )
    condition = (statement.get("Condition") or {}).get("Bool") or {}
    insecure = [str(v).lower() for v in listed(condition.get("aws:SecureTransport"))]
    return (
        statement.get("Effect") == "Deny"
        and everyone
        and any(a in ("*", "s3:*") for a in listed(statement.get("Action")))
        and insecure == ["false"]
    )
