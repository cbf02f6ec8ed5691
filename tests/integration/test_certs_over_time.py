"""Certificates over time, in the sandbox: a PKI made a year ago (the clock injected into
kubeplat's own PKI code) is renewed by `up` and by `certs renew`, and `certs --check` says so.

The real Terraform and AWS provider against moto's server, started by kubeplat itself.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import boto3
import pytest

from kubeplat import config, pki, render
from kubeplat.pkistore import LocalStore
from tests.integration.sandbox_user import kubeplat

pytestmark = pytest.mark.integration

YEAR_AGO = dt.datetime.now(dt.UTC) - dt.timedelta(days=350)  # leaves: 15 days left


def environment(user: dict[str, str]) -> config.Environment:
    return config.load_file(Path(user["CHECKOUT"]) / "environments/example.tfvars")


def sandbox_s3(user: dict[str, str], env: config.Environment) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=kubeplat(user, "sandbox", "status").stdout.strip(),
        region_name=env.aws_region,
        aws_access_key_id="sandbox",
        aws_secret_access_key="sandbox",
    )


def bucket_pki(user: dict[str, str], env: config.Environment) -> dict[str, bytes]:
    s3 = sandbox_s3(user, env)
    found = {}
    prefix = f"{env.environment}/pki/"
    for item in s3.list_objects_v2(Bucket=env.secrets_bucket_name, Prefix=prefix)["Contents"]:
        name = item["Key"][len(prefix) :]
        found[name] = s3.get_object(Bucket=env.secrets_bucket_name, Key=item["Key"])["Body"].read()
    return found


def test_a_year_old_pki_is_renewed_by_up_and_by_certs_renew(user: dict[str, str]) -> None:
    env = environment(user)
    old = pki.ensure(env, {}, now=YEAR_AGO).files
    LocalStore(env.workdir / "pki").save(old)  # `kubeplat certs` run a year ago

    red = kubeplat(user, "certs", "-e", "example", "--check")
    assert red.returncode == 1
    assert re.search(
        r"Error: certificates expire within 90 days: apiserver \(1[45] days\)", red.stderr
    )

    early = kubeplat(user, "certs", "renew", "-e", "example")
    assert early.returncode == 1 and "Traceback" not in early.stderr
    assert "Error: the secrets bucket kubeplat-example-secrets does not exist yet" in early.stderr
    assert "Hint: the first kubeplat up -e example creates it" in early.stderr

    up = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert up.returncode == 0, up.stderr[-3000:]
    assert re.search(r"PKI: issued apiserver \(expires in 1[45] days\)", up.stderr)
    stored = bucket_pki(user, env)
    for name, data in render.pki_layout(env, old).items():
        if name.endswith("ca.crt") or name.endswith("ca.key"):
            assert stored[name] == data, name  # the CAs are kept: nodes keep trusting them
    assert stored["secure/apiserver.crt"] != old["apiserver.crt"]
    assert kubeplat(user, "certs", "-e", "example", "--check").returncode == 0

    # Nothing to renew now; then one leaf that the bucket holds is near its end again.
    again = kubeplat(user, "certs", "renew", "-e", "example")
    assert again.returncode == 0, again.stderr
    assert "nothing to renew: no certificate expires within 90 days" in again.stderr
    near = pki.ensure(env, {**pki.ensure(env, old).files}, now=YEAR_AGO, rotate="scheduler")
    s3 = sandbox_s3(user, env)
    for name in ("scheduler.crt", "scheduler.key"):
        key = f"example/pki/secure/{name}"
        s3.put_object(Bucket=env.secrets_bucket_name, Key=key, Body=near.files[name])
    renewed = kubeplat(user, "certs", "renew", "-e", "example")
    assert renewed.returncode == 0, renewed.stderr
    assert re.search(r"PKI: issued scheduler \(expires in 1[45] days\)", renewed.stderr)
    assert "renewed scheduler" in renewed.stderr
    assert bucket_pki(user, env)["secure/scheduler.crt"] != near.files["scheduler.crt"]
    assert kubeplat(user, "certs", "-e", "example", "--check").returncode == 0

    # A rotation sticks: in the bucket (where nodes read it), and a later `up` keeps it.
    before = bucket_pki(user, env)
    rotated = kubeplat(user, "certs", "-e", "example", "--rotate", "apiserver")
    assert rotated.returncode == 0, rotated.stderr
    assert "issued apiserver (rotated)" in rotated.stderr
    after = bucket_pki(user, env)
    assert LocalStore(env.workdir / "pki").load()["apiserver.crt"] == after["secure/apiserver.crt"]
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed == {"secure/apiserver.crt", "secure/apiserver.key"}
    second = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "no changes" in second.stderr and "PKI: issued" not in second.stderr
    assert bucket_pki(user, env) == after
    # A CA of a running environment is not replaced at once (nodes would trust only one): the
    # new one is only added beside it (test_ca_rotation.py takes all the steps).
    staged = kubeplat(user, "certs", "-e", "example", "--rotate", "etcd/ca")
    assert staged.returncode == 0, staged.stderr
    assert "rotation of etcd/ca: now at step 1 of 3" in staged.stderr
    now = bucket_pki(user, env)
    assert now["secure/etcd/server.crt"] == after["secure/etcd/server.crt"]
    assert now["common/etcd/ca.crt"] == after["common/etcd/ca.crt"] + now["locked/etcd/ca.next.crt"]
    assert now["locked/etcd/ca.key"] == after["locked/etcd/ca.key"]


def test_a_topology_switch_removes_the_pki_it_no_longer_uses_after_the_apply(
    user: dict[str, str],
) -> None:
    env_file = Path(user["CHECKOUT"]) / "environments/example.tfvars"
    stacked = env_file.read_text()
    assert 'topology                 = "stacked"' in stacked
    env_file.write_text(stacked.replace('"stacked"', '"separate"'))
    separate = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert separate.returncode == 0, separate.stderr[-3000:]
    held = bucket_pki(user, environment(user))
    assert "control-plane/apiserver.key" in held and "secure/apiserver.key" not in held
    # Said in the plan, done after Terraform's last change.
    err = separate.stderr
    said = [line for line in err.splitlines() if "no longer used, removed once" in line]
    assert len(said) == 1 and "pki/secure/apiserver.crt" in said[0], err
    removal = err.index("removed pki/secure/apiserver.key (no longer used)")
    assert removal > err.rindex('created aws_autoscaling_group.node["control-plane"]')

    env_file.write_text(stacked)
    back = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert back.returncode == 0, back.stderr[-3000:]
    held = bucket_pki(user, environment(user))
    assert not [n for n in held if n.startswith("control-plane/")], sorted(held)
    assert "secure/apiserver.key" in held
    assert "removed pki/control-plane/apiserver.key (no longer used)" in back.stderr
