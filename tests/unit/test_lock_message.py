"""The held-lock error names its holder and a release command that works as printed: with the
environment's path when `-e NAME` would not find it, and with `--sandbox` when the run was put
in the sandbox by that option (without it, the printed command would go to AWS)."""

from __future__ import annotations

from kubeplat import terraform

LOCKED = """
Error: Error acquiring the state lock

Error message: operation error S3: PutObject, https response error StatusCode: 412
Lock Info:
  ID:        0f3e2c1d-5a6b-4c7d-8e9f-0a1b2c3d4e5f
  Path:      bucket/eu-west-1/dev/terraform.tfstate
  Operation: OperationTypeApply
  Who:       alice@laptop
  Version:   1.11.4
  Created:   2026-12-03 12:03:00.123456 +0000 UTC
  Info:
"""


def test_the_lock_error_names_the_holder_and_the_command_as_it_must_be_typed() -> None:
    plain = terraform.failure("plan", LOCKED, env="dev")
    assert plain.message == (
        "the environment's state is locked by alice@laptop (apply since 2026-12-03 12:03:00 UTC, "
        "lock ID 0f3e2c1d-5a6b-4c7d-8e9f-0a1b2c3d4e5f)"
    )
    assert plain.hint.endswith(
        "release the lock with: kubeplat unlock -e dev 0f3e2c1d-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
    )
    forced = terraform.failure(
        "plan", LOCKED, env="/srv/platform/environments/dev.tfvars", program="kubeplat --sandbox"
    )
    assert forced.hint.endswith(
        "release the lock with: kubeplat --sandbox unlock -e "
        "/srv/platform/environments/dev.tfvars 0f3e2c1d-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
    )
