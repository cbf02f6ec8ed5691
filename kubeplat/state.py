"""Bootstrap what Terraform's remote state and the node configuration live in.

The state and secrets buckets are created when missing — versioned, SSE-KMS with
`kms_master_id`, public access blocked — and said so. The KMS key must be usable first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kubeplat.aws import Aws, AwsError, errors

if TYPE_CHECKING:
    from kubeplat.config import Environment


@dataclass(frozen=True)
class Bootstrap:
    """What the bootstrap found or did."""

    key_arn: str
    created: list[str]


def kms_key(aws: Aws, env: Environment) -> str:
    """The ARN of `kms_master_id`, which must exist and be enabled for encryption.

    In the sandbox the key is created (with its alias) when missing.
    """
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
    return str(metadata["Arn"])


def ensure_bucket(aws: Aws, name: str, key_arn: str) -> bool:
    """Create `name` when missing: versioned, SSE-KMS with the key, public access blocked.

    True when it was created; an existing bucket is left as its owner set it up.
    """
    from botocore.exceptions import ClientError

    s3 = aws.client("s3")
    created = False
    with errors(f"checking the bucket {name}", aws):
        try:
            s3.head_bucket(Bucket=name)
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
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise
            created = True
    if not created:
        return False  # an existing bucket's settings are its owner's
    with errors(f"creating the bucket {name}", aws):
        args: dict[str, object] = {"Bucket": name}
        if aws.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
        try:
            s3.create_bucket(**args)
        except ClientError as exc:
            # Another operator created it a moment ago: theirs is as good as ours.
            if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise
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
    return True


def bootstrap(aws: Aws, env: Environment) -> Bootstrap:
    """The KMS key, then both buckets."""
    key_arn = kms_key(aws, env)
    created = [
        name
        for name in (env.terraform_bucket_name, env.secrets_bucket_name)
        if ensure_bucket(aws, name, key_arn)
    ]
    return Bootstrap(key_arn, created)
