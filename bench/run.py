"""kubeplat's cost over bare Terraform, cold start, PKI, render and listing at scale.

Usage: python bench/run.py [--json] [--runs N]

Everything runs in the sandbox (moto's server on 127.0.0.1), in one run of this script:
  cold_start_s            median wall time of `kubeplat --help` (a new process each time)
  pki_s                   generating a whole PKI in-process (ECDSA)
  render_s                rendering the example environment in-process
  up_total_s              a first `kubeplat up -e example --auto-approve` in a fresh sandbox
  up_terraform_s          the time its Terraform child processes took
  bare_s                  `terraform init` + `apply` of the same module and variables, fresh sandbox
  up_overhead_ratio       up_total_s / bare_s
  noop_up_s, bare_plan_s  a second `up` (nothing changed), and a bare `terraform plan`
  noop_up_vs_plan_ratio   noop_up_s / bare_plan_s
  instances_1000_s        `kubeplat instances -o json` with 1,000 instances in the emulator
  instances_1000_raw_boto3_s  the same DescribeInstances straight from boto3 (the emulator's floor)
Terraform needs the AWS provider: from the registry, or a mirror named by KUBEPLAT_TF_MIRROR.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GOALS = {
    "cold_start_s": ("<", 0.3),
    "pki_s": ("<", 0.2),
    "up_overhead_ratio": ("<=", 1.10),
    "noop_up_vs_plan_ratio": ("<=", 1.25),
    "instances_1000_s": ("<", 3.0),
}


def timed(argv: list[str], **kwargs: object) -> float:
    start = time.perf_counter()
    result = subprocess.run(  # type: ignore[call-overload]
        argv, capture_output=True, text=True, check=False, **kwargs
    )
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed:\n{result.stderr[-3000:]}")
    return took


def client(service: str, endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )


def kubeplat_binary() -> list[str]:
    script = Path(sys.executable).parent / "kubeplat"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kubeplat"]


def moto_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubeplat.sandbox_world", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    raise SystemExit("moto server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    figures: dict[str, float] = {}

    from kubeplat import config, pki, render, terraform

    env_file = REPO / "environments" / "example.tfvars"
    cli = kubeplat_binary()
    figures["cold_start_s"] = statistics.median(timed([*cli, "--help"]) for _ in range(args.runs))
    example = config.load_file(env_file)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        files = pki.ensure(example, {}).files
        times.append(time.perf_counter() - start)
    figures["pki_s"] = statistics.median(times)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        bundle = render.bundle(example, files)
        times.append(time.perf_counter() - start)
    figures["render_s"] = statistics.median(times)

    with tempfile.TemporaryDirectory(prefix="kubeplat-bench-") as scratch:
        from tests.integration.sandbox_user import make_user

        home = Path(scratch)
        env = make_user(home)
        checkout = Path(env["CHECKOUT"])
        timings = home / "timings.jsonl"
        try:
            up = [*cli, "up", "-e", "example", "--auto-approve"]
            figures["up_total_s"] = timed(
                up, cwd=checkout, env={**env, "KUBEPLAT_TIMINGS": str(timings)}
            )
            figures["up_terraform_s"] = sum(
                json.loads(line)["seconds"] for line in timings.read_text().splitlines()
            )
            figures["noop_up_s"] = timed(up, cwd=checkout, env=env)

            # The floor: plain Terraform, same module and variables, a fresh emulator.
            proc, endpoint = moto_server()
            try:
                bare_env = {
                    **env,
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_REGION": "eu-west-1",
                }
                kms = client("kms", endpoint)
                key = kms.create_key()["KeyMetadata"]["KeyId"]
                kms.create_alias(AliasName=example.kms_master_id, TargetKeyId=key)
                module = home / "bare"
                shutil.copytree(REPO / "terraform", module)
                (module / "backend_override.tf").write_text(
                    'terraform {\n  backend "local" {}\n}\n'
                )
                inputs = terraform.variables(example, bundle, files["ssh/id_ed25519.pub"])
                (module / "bench.auto.tfvars.json").write_text(json.dumps(inputs))
                tf = ["terraform", f"-chdir={module}"]
                figures["bare_s"] = timed(
                    [*tf, "init", "-input=false", "-no-color"], env=bare_env
                ) + timed(
                    [*tf, "apply", "-auto-approve", "-input=false", "-no-color"], env=bare_env
                )
                figures["bare_plan_s"] = timed(
                    [*tf, "plan", "-input=false", "-no-color"], env=bare_env
                )
            finally:
                proc.terminate()

            # 1,000 instances in the sandbox for the listing.
            sandbox = subprocess.run(
                [*cli, "sandbox", "status"], env=env, capture_output=True, text=True
            )
            ec2 = client("ec2", sandbox.stdout.strip())
            listing = [*cli, "instances", "-e", "example", "-o", "json"]

            def listed() -> int:
                out = subprocess.run(listing, cwd=checkout, env=env, capture_output=True, text=True)
                return len(json.loads(out.stdout))

            present = listed()
            tags = [{"ResourceType": "instance", "Tags": [
                {"Key": "Environment", "Value": "example"}, {"Key": "Layer", "Value": "compute"},
                {"Key": "Name", "Value": "example-compute"}]}]  # fmt: skip
            remaining = 1000 - present
            while remaining > 0:
                batch = min(100, remaining)
                ec2.run_instances(
                    ImageId=example.coreos_image,
                    MinCount=batch,
                    MaxCount=batch,
                    TagSpecifications=tags,
                )
                remaining -= batch
            runs = [timed(listing, cwd=checkout, env=env) for _ in range(3)]
            figures["instances_1000_s"] = statistics.median(runs)
            assert listed() == 1000
            # The floor: the same filtered, paginated DescribeInstances straight from boto3.
            raw = []
            for _ in range(3):
                start = time.perf_counter()
                pages = ec2.get_paginator("describe_instances").paginate(
                    Filters=[{"Name": "tag:Environment", "Values": ["example"]}],
                    PaginationConfig={"PageSize": 1000},
                )
                assert sum(len(r["Instances"]) for p in pages for r in p["Reservations"]) == 1000
                raw.append(time.perf_counter() - start)
            figures["instances_1000_raw_boto3_s"] = statistics.median(raw)
        finally:
            subprocess.run([*cli, "sandbox", "stop"], env=env, capture_output=True)

    figures["up_overhead_ratio"] = figures["up_total_s"] / figures["bare_s"]
    figures["noop_up_vs_plan_ratio"] = figures["noop_up_s"] / figures["bare_plan_s"]
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in figures.items()}, sort_keys=True))
        return
    print(f"{'figure':<24} {'value':>10}  goal")
    for name, value in figures.items():
        goal = GOALS.get(name)
        mark = ""
        if goal:
            ok = value < goal[1] if goal[0] == "<" else value <= goal[1]
            mark = f"{goal[0]} {goal[1]}  {'met' if ok else 'MISSED'}"
        print(f"{name:<24} {value:>10.3f}  {mark}")


if __name__ == "__main__":
    main()
