"""The AWS session: credentials, endpoint override, the account check, and error wrapping.

boto3 and Terraform see the same account: the standard credential chain (or `aws_profile`),
and `AWS_ENDPOINT_URL` when set (the sandbox sets it). botocore's errors are turned into one-line
`KubeplatError`s here, at the edge, with bounded retries and timeouts: never an endless wait.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubeplat.errors import KubeplatError

if TYPE_CHECKING:
    import boto3

    from kubeplat.config import Environment

# Bounded: a few quick attempts, then a clear error.
_CLIENT_CONFIG = {
    "connect_timeout": 5,
    "read_timeout": 30,
    "retries": {"max_attempts": 3, "mode": "standard"},
}
_CREDENTIAL_VARIABLES = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


class AwsError(KubeplatError):
    """A call to AWS (or the sandbox) failed."""


@dataclass
class Aws:
    """A session for one environment, and the environment Terraform must run with."""

    session: boto3.Session
    region: str
    endpoint: str | None = None
    sandbox: bool = False
    # For child processes: values to set, and None for variables to remove.
    child_env: dict[str, str | None] = field(default_factory=dict)
    _clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        """A boto3 client with bounded timeouts and retries (cached)."""
        if service not in self._clients:
            from botocore.config import Config

            self._clients[service] = self.session.client(
                service,
                region_name=self.region,
                endpoint_url=self.endpoint,
                config=Config(**_CLIENT_CONFIG),
            )
        return self._clients[service]


def terraform_environ(
    env: Environment, sandbox_env: dict[str, str] | None = None
) -> dict[str, str | None]:
    """What Terraform runs with for `env` (values to set, None for variables to remove): the
    `child_env` of `connect(env, sandbox_env)`, known without a session (or boto3)."""
    if sandbox_env is not None:
        child: dict[str, str | None] = {name: None for name in _CREDENTIAL_VARIABLES}
        child.update(sandbox_env)
        return child
    child = {"AWS_REGION": env.aws_region, "AWS_DEFAULT_REGION": env.aws_region}
    if env.aws_profile:
        child["AWS_PROFILE"] = env.aws_profile
    return child


def connect(env: Environment, sandbox_env: dict[str, str] | None = None) -> Aws:
    """A session for `env`: the sandbox's when given, else the standard chain or its profile."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    child = terraform_environ(env, sandbox_env)
    if sandbox_env is not None:
        session = boto3.Session(
            aws_access_key_id=sandbox_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=sandbox_env["AWS_SECRET_ACCESS_KEY"],
            region_name=env.aws_region,
        )
        return Aws(session, env.aws_region, sandbox_env["AWS_ENDPOINT_URL"], True, child)
    try:
        session = boto3.Session(profile_name=env.aws_profile or None, region_name=env.aws_region)
    except ProfileNotFound:
        raise AwsError(
            f"AWS profile {env.aws_profile!r} (aws_profile in {env.path}) is not configured",
            'add it to ~/.aws/credentials or ~/.aws/config, or set aws_profile = ""',
        ) from None
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    return Aws(session, env.aws_region, endpoint, False, child)


# The codes AWS (and the emulator) answer "this caller may not" with.
DENIED_CODES = ("AccessDenied", "AccessDeniedException", "403", "Forbidden")


def denied(exc: Any) -> bool:
    """A ClientError that says the caller may not (by its code, or its HTTP status alone: the
    emulator answers some JSON services' denials with a bare 403)."""
    code = exc.response.get("Error", {}).get("Code")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in DENIED_CODES or status == 403


@contextlib.contextmanager
def errors(action: str, aws: Aws | None = None) -> Iterator[None]:
    """Turn botocore's exceptions raised while doing `action` into one-line AwsErrors."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ReadTimeoutError,
    )

    where = aws.endpoint if aws and aws.endpoint else "AWS"
    try:
        yield
    except NoCredentialsError:
        raise AwsError(
            f"{action}: no AWS credentials found",
            "configure credentials (aws configure, AWS_PROFILE or aws_profile in the environment "
            "file), or try the sandbox: sandbox = true",
        ) from None
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
        hint = (
            "is the sandbox running? kubeplat sandbox status"
            if aws and aws.sandbox
            else "check your network, proxy and AWS_ENDPOINT_URL"
        )
        raise AwsError(f"{action}: cannot reach {where}: {exc}", hint) from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "Unknown")
        message = error.get("Message", str(exc))
        if code in ("ExpiredToken", "ExpiredTokenException", "RequestExpired"):
            hint = "your AWS credentials have expired: log in again (aws sso login, …)"
        elif code in (
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "UnrecognizedClientException",
        ):
            hint = "your AWS credentials are not valid for this account"
        elif code in DENIED_CODES:
            hint = "the caller lacks permission for this; see README (permissions)"
        else:
            hint = "see AWS's message above"
        raise AwsError(f"{action}: {code}: {message}", hint) from None
    except NoRegionError:
        raise AwsError(f"{action}: no region", "set aws_region in the environment file") from None
    except BotoCoreError as exc:
        raise AwsError(f"{action}: {exc}", "run again with --debug for details") from None


def account(aws: Aws) -> str:
    """The caller's account id."""
    with errors("checking the caller's AWS account", aws):
        return str(aws.client("sts").get_caller_identity()["Account"])


def check_account(aws: Aws, env: Environment) -> str:
    """Refuse to act when the caller's account is not `aws_account` (an id or an alias)."""
    caller = account(aws)
    wanted = env.aws_account
    if wanted.isdigit():
        if caller != wanted:
            raise AwsError(
                f"refusing to act: the credentials are for account {caller}, but {env.path} "
                f"names account {wanted}",
                "use credentials (or aws_profile) for that account, or fix aws_account",
            )
        return caller
    with errors("reading the account's aliases", aws):
        aliases = aws.client("iam").list_account_aliases().get("AccountAliases", [])
    if wanted not in aliases:
        have = f"aliases {', '.join(aliases)}" if aliases else "no alias"
        raise AwsError(
            f"refusing to act: the credentials are for account {caller} ({have}), but "
            f"{env.path} names account {wanted}",
            "use credentials (or aws_profile) for that account, or fix aws_account",
        )
    return caller
