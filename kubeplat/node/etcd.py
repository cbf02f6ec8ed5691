"""kubeplat etcd discovery: join or form the secure layer's etcd cluster as the group changes.

Runs on each secure-layer instance before etcd starts (python3 and boto3 from the distribution).
Members are the running instances of the environment's secure autoscaling group, found through
the EC2 API by tag, and are addressed by their EC2 private DNS names (covered by the etcd
certificates' wildcard SAN).

- If an existing member answers, this instance joins it: members whose instance is gone are
  removed first (so a replaced instance never breaks quorum accounting), then this one is added,
  and etcd starts with `initial-cluster-state: existing`.
- Otherwise, once as many instances run as the group wants, they form a new cluster together.
- After a reboot (a data directory exists) nothing changes: etcd restarts as the member it was.

It writes /etc/etcd/etcd.conf.yml from the rendered template, replacing @NAME@, @HOST@,
@INITIAL_CLUSTER@ and @STATE@.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from . import aws


def live_members(ec2: Any, environment: str) -> dict[str, str]:
    """Instance id → private DNS name of the environment's running secure instances."""
    members: dict[str, str] = {}
    paginator = ec2.get_paginator("describe_instances")
    filters = [
        {"Name": "tag:Environment", "Values": [environment]},
        {"Name": "tag:Layer", "Values": ["secure"]},
        {"Name": "instance-state-name", "Values": ["pending", "running"]},
    ]
    for page in paginator.paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                if instance.get("PrivateDnsName"):
                    members[instance["InstanceId"]] = instance["PrivateDnsName"]
    return members


def etcdctl(endpoints: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    pki = "/etc/kubernetes/pki"
    return subprocess.run(
        [
            "etcdctl",
            f"--endpoints={','.join(endpoints)}",
            f"--cacert={pki}/etcd/ca.crt",
            f"--cert={pki}/etcd/healthcheck-client.crt",
            f"--key={pki}/etcd/healthcheck-client.key",
            "--dial-timeout=3s",
            "--command-timeout=10s",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def plan(
    me: str, host: str, live: dict[str, str], existing: list[dict[str, Any]] | None
) -> tuple[str, str, list[str], list[str]]:
    """Decide how to start: (state, initial-cluster, member ids to remove, names to add).

    Pure, so it is tested without AWS: `existing` is the member list of a running cluster,
    or None when no member answered.
    """
    if existing is None:
        cluster = ",".join(f"{iid}=https://{dns}:2380" for iid, dns in sorted(live.items()))
        return "new", cluster, [], []
    live_hosts = set(live.values()) | {host}
    mine = f"https://{host}:2380"

    def is_me(member: dict[str, Any]) -> bool:
        # A member started by this instance has its name; one that another member added for
        # it (listed in the cluster it formed, not started yet) has no name but its peer URL.
        return member.get("name") == me or (
            not member.get("name") and mine in member.get("peerURLs", [])
        )

    remove = [
        m["ID"]
        for m in existing
        if not is_me(m)
        and not any(f"//{h}:" in url for h in live_hosts for url in m.get("peerURLs", []))
    ]
    kept = [m for m in existing if m["ID"] not in remove and not is_me(m)]
    entries = [f"{m['name']}={m['peerURLs'][0]}" for m in kept if m.get("name")]
    entries.append(f"{me}={mine}")
    add = [] if any(is_me(m) for m in existing) else [me]
    return "existing", ",".join(sorted(entries)), remove, add


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--environment", required=True)
    parser.add_argument("--template", type=Path, default=Path("/etc/etcd/etcd.conf.yml.tmpl"))
    parser.add_argument("--output", type=Path, default=Path("/etc/etcd/etcd.conf.yml"))
    parser.add_argument("--data-dir", type=Path, default=Path("/var/lib/etcd"))
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    if (args.data_dir / "member").is_dir() and args.output.exists():
        print("etcd-discover: data directory exists; restarting as the same member")
        return 0
    identity = aws.Identity.read()
    region, me, host = identity.region, identity.instance_id, identity.hostname
    ec2 = aws.client("ec2", region)
    deadline = time.monotonic() + args.timeout
    while True:
        live = live_members(ec2, args.environment)
        others = [f"https://{dns}:2379" for iid, dns in sorted(live.items()) if iid != me]
        existing = None
        if others:
            listed = etcdctl(others, "member", "list", "-w", "json")
            if listed.returncode == 0:
                existing = json.loads(listed.stdout).get("members", [])
                for member in existing:
                    member["ID"] = format(int(member["ID"]), "x")
        wanted = _desired(aws.client("autoscaling", region), me)
        if existing is not None or len(live) >= wanted:
            break
        if time.monotonic() > deadline:
            print(f"etcd-discover: only {len(live)} of {wanted} members after {args.timeout}s")
            return 1
        time.sleep(5)
    state, cluster, remove, add = plan(me, host, live, existing)
    for member_id in remove:
        etcdctl(others, "member", "remove", member_id)
    for name in add:
        added = etcdctl(others, "member", "add", name, f"--peer-urls=https://{host}:2380")
        if added.returncode != 0:
            print(f"etcd-discover: member add failed: {added.stderr.strip()}")
            return 1
    text = args.template.read_text()
    for key, value in (
        ("@NAME@", me),
        ("@HOST@", host),
        ("@INITIAL_CLUSTER@", cluster),
        ("@STATE@", state),
    ):
        text = text.replace(key, value)
    args.output.write_text(text)
    print(f"etcd-discover: {state} cluster {cluster}")
    return 0


def _desired(autoscaling: Any, instance_id: str) -> int:
    found = autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id])
    groups = [i["AutoScalingGroupName"] for i in found.get("AutoScalingInstances", [])]
    if not groups:
        return 1
    group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=groups[:1])
    return int(group["AutoScalingGroups"][0]["DesiredCapacity"])
