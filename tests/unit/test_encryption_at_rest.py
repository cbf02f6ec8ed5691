"""Secrets encrypted in etcd, and the API server's audit log.

The EncryptionConfiguration kubeplat renders is exercised with libsodium's secretbox, as the
API server would use it (tests/secretbox_store.py: a STAND-IN, kube-apiserver cannot run
here): a Secret written under one configuration must read under every configuration an API
server may hold at the same time, through every step of a key rotation."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
import yaml

from kubeplat import config, pki, render
from kubeplat.store import pki_files
from tests import secretbox_store as apiserver

NOW = dt.datetime.now(dt.UTC)
SECRET = b'{"kind":"Secret","data":{"password":"aHVudGVyMg=="}}'


@pytest.fixture
def env(environments: Path) -> config.Environment:
    return config.load("example")


def placed(env: config.Environment, files: dict[str, bytes]) -> dict[str, bytes]:
    return render.pki_layout(env, files)


def encryption_config(env: config.Environment, files: dict[str, bytes]) -> bytes:
    return placed(env, files)["secure/encryption-config.yaml"]


def test_the_api_servers_encrypt_secrets_with_a_key_only_they_and_the_operator_read(
    env: config.Environment,
) -> None:
    files = pki.ensure(env, {}, now=NOW).files
    layout = placed(env, files)
    where = sorted(n for n in layout if "encryption" in n)
    # The config on the control plane's own prefix, the raw key locked; compute gets nothing.
    assert where == ["locked/encryption/secretbox.key", "secure/encryption-config.yaml"]
    assert pki.is_private("secure/encryption-config.yaml")
    written = apiserver.store(layout["secure/encryption-config.yaml"], SECRET)
    assert written.startswith(apiserver.PREFIX) and SECRET not in written
    assert apiserver.load(layout["secure/encryption-config.yaml"], written) == SECRET
    # Another environment's key cannot read it.
    other = pki.ensure(env, {}, now=NOW).files
    with pytest.raises(apiserver.Unreadable):
        apiserver.load(encryption_config(env, other), written)


def test_a_separate_control_plane_gets_the_config_and_the_etcd_boxes_do_not(
    env: config.Environment,
) -> None:
    separate = dataclasses.replace(env, topology="separate")
    layout = placed(separate, pki.ensure(separate, {}, now=NOW).files)
    assert sorted(n for n in layout if n.endswith("encryption-config.yaml")) == [
        "control-plane/encryption-config.yaml"
    ]


def test_the_config_is_derived_never_read_back_and_the_same_every_run(
    env: config.Environment,
) -> None:
    files = pki.ensure(env, {}, now=NOW).files
    bucket = {f"pki/{k}": v for k, v in placed(env, files).items()}
    again = pki.ensure(env, pki_files(bucket), now=NOW)
    assert not again.issued
    assert "encryption-config.yaml" not in again.files
    assert encryption_config(env, again.files) == encryption_config(env, files)


def test_secrets_written_before_encryption_still_read_and_new_ones_are_encrypted(
    env: config.Environment,
) -> None:
    """A cluster built before this setting (or with it off) has plaintext Secrets in etcd."""
    files = pki.ensure(env, {}, now=NOW).files
    plaintext_before = SECRET  # what an API server without the config wrote
    on = encryption_config(env, files)
    assert apiserver.load(on, plaintext_before) == SECRET
    encrypted = apiserver.store(on, SECRET)
    # Turned off: new Secrets are stored as they are, those encrypted before still read.
    off = encryption_config(dataclasses.replace(env, secrets_encryption=False), files)
    assert apiserver.store(off, SECRET) == SECRET
    assert apiserver.load(off, encrypted) == SECRET


def test_every_step_of_a_key_rotation_reads_what_every_other_step_wrote(
    env: config.Environment,
) -> None:
    """API servers take a step one at a time: at any moment two neighbouring steps run side by
    side, and each must read what the other writes. Only the last step drops the old key, and
    the rotation holds before it (Secrets must be rewritten)."""
    before = pki.ensure(env, {}, now=NOW).files
    trust = pki.begin(env, before, ["encryption"], NOW).files
    assert pki.staged(trust) == {"encryption": pki.TRUST}
    reissue = pki.advance(env, trust, NOW).files
    assert pki.staged(reissue) == {"encryption": pki.REISSUE}
    done = pki.advance(env, reissue, NOW).files
    assert pki.staged(done) == {}
    steps = [encryption_config(env, f) for f in (before, trust, reissue, done)]
    old_key = pki.encryption_key_name(before[pki.ENCRYPTION_KEY])
    new_key = pki.encryption_key_name(done[pki.ENCRYPTION_KEY])
    assert old_key != new_key
    for index in range(len(steps) - 1):
        a, b = steps[index], steps[index + 1]
        for writer, reader in ((a, b), (b, a)):
            assert apiserver.load(reader, apiserver.store(writer, SECRET)) == SECRET
    # Until step 2 the old key encrypts; from step 2 the new one.
    assert apiserver.store(steps[1], SECRET).startswith(apiserver.PREFIX + old_key.encode())
    assert apiserver.store(steps[2], SECRET).startswith(apiserver.PREFIX + new_key.encode())
    # After the last step, what only the old key encrypted no longer reads: rewritten in step 2.
    with pytest.raises(apiserver.Unreadable):
        apiserver.load(steps[3], apiserver.store(steps[0], SECRET))


def test_the_encryption_key_rotates_at_once_where_no_cluster_runs(
    env: config.Environment,
) -> None:
    files = pki.ensure(env, {}, now=NOW).files
    rotated = pki.ensure(env, files, now=NOW, rotate="encryption")
    assert rotated.reasons["encryption"] == "rotated"
    assert rotated.files[pki.ENCRYPTION_KEY] != files[pki.ENCRYPTION_KEY]


def control_plane_files(env: config.Environment) -> dict[str, str]:
    layer = render.layers(env)[0]
    return {f["path"]: f["content"] for f in render._node_files(env, layer)}


def apiserver_command(env: config.Environment) -> list[str]:
    layer = render.layers(env)[0]
    text = render.manifests(env, layer)["manifests/secure/kube-apiserver.yaml"]
    pod = yaml.safe_load(text)
    return list(pod["spec"]["containers"][0]["command"])


def test_the_api_server_reads_the_config_and_writes_a_rotated_audit_log(
    env: config.Environment,
) -> None:
    command = apiserver_command(env)
    assert "--encryption-provider-config=/etc/kubernetes/pki/encryption-config.yaml" in command
    assert "--audit-policy-file=/etc/kubernetes/audit-policy.yaml" in command
    assert "--audit-log-path=/var/log/kubernetes/audit/audit.log" in command
    assert {"--audit-log-maxage=30", "--audit-log-maxbackup=10", "--audit-log-maxsize=100"} <= set(
        command
    )
    assert "/etc/kubernetes/audit-policy.yaml" in control_plane_files(env)
    # The agent restarts the API server when a rotation step changes the config.
    layer = render.layers(env)[0]
    text = render.manifests(env, layer)["manifests/secure/kube-apiserver.yaml"].decode()
    assert "encryption-config.yaml" in text.split("@PKI:", 1)[1].split("@", 1)[0]
    # Compute nodes get neither.
    compute = render.layers(env)[-1]
    assert not any("audit" in f["path"] for f in render._node_files(env, compute))


def test_audit_settings_from_the_environment_and_off(env: config.Environment) -> None:
    tuned = dataclasses.replace(
        env, audit_log_max_age_days=7, audit_log_max_backups=3, audit_log_max_size_mb=50
    )
    assert {"--audit-log-maxage=7", "--audit-log-maxbackup=3", "--audit-log-maxsize=50"} <= set(
        apiserver_command(tuned)
    )
    off = dataclasses.replace(env, audit_log=False)
    assert not [flag for flag in apiserver_command(off) if flag.startswith("--audit")]
    assert "/etc/kubernetes/audit-policy.yaml" not in control_plane_files(off)
    layer = render.layers(off)[0]
    pod = yaml.safe_load(render.manifests(off, layer)["manifests/secure/kube-apiserver.yaml"])
    assert not [v for v in pod["spec"]["volumes"] if v["name"].startswith("audit")]


def first_rule(policy: dict, user: str, verb: str, group: str, resource: str) -> dict:
    """The audit policy rule the API server applies to a request: the first that matches
    (audit.k8s.io/v1 semantics for the fields this policy uses)."""
    for rule in policy["rules"]:
        if "users" in rule and user not in rule["users"]:
            continue
        if "userGroups" in rule and not (
            {"system:nodes"} & set(rule["userGroups"]) and user.startswith("system:node:")
        ):
            continue
        if "verbs" in rule and verb not in rule["verbs"]:
            continue
        if "nonResourceURLs" in rule:
            continue
        if "resources" in rule and not any(
            r["group"] == group and ("resources" not in r or resource in r["resources"])
            for r in rule["resources"]
        ):
            continue
        return dict(rule)
    raise AssertionError("no rule matches")


def test_the_audit_policy_never_logs_a_secrets_contents(env: config.Environment) -> None:
    policy = yaml.safe_load(control_plane_files(env)["/etc/kubernetes/audit-policy.yaml"])
    assert policy["apiVersion"] == "audit.k8s.io/v1" and policy["kind"] == "Policy"
    for user in ("alice", "system:serviceaccount:default:app", "system:node:ip-10-0-0-1"):
        for verb in ("get", "list", "create", "update", "patch", "delete"):
            for resource in ("secrets", "configmaps"):
                assert first_rule(policy, user, verb, "", resource)["level"] == "Metadata"
    # Other changes are logged with what was asked and answered; reads with what was asked.
    assert first_rule(policy, "alice", "create", "apps", "deployments")["level"] == (
        "RequestResponse"
    )
    assert first_rule(policy, "alice", "get", "", "pods")["level"] == "Request"
    levels = {rule["level"] for rule in policy["rules"]}
    assert levels <= {"None", "Metadata", "Request", "RequestResponse"}
