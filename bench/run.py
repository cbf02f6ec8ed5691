"""kubeplat's cost over bare Terraform, cold start, PKI, render and listing at scale.

Usage: python bench/run.py [--json] [--runs N] [--noop-runs N] [--only noop]

Everything runs in the sandbox (moto's server on 127.0.0.1), in one run of this script:
  cold_start_s            median wall time of `kubeplat --help` (a new process each time)
  pki_s                   generating a whole PKI in-process (ECDSA)
  render_s                rendering the example environment in-process
  up_total_s              a first `kubeplat up -e example --auto-approve` in a fresh sandbox
  up_terraform_s          the time its Terraform child processes took
  bare_s                  `terraform init` + `apply` of the same module and variables, fresh sandbox
  up_overhead_ratio       up_total_s / bare_s
  noop_up_s, bare_plan_s  medians of --noop-runs (>= 5) alternating runs, on the environment the
                          first `up` built (same sandbox, same state, same working copy): a
                          second `up` (nothing changed), then the plain `terraform plan` a user
                          would type in that working copy (its module, TF_DATA_DIR and S3
                          backend, the same variables as a -var-file), then `up` again...;
                          each with _min_s/_max_s
  noop_up_vs_plan_ratio   noop_up_s / bare_plan_s (the ratio of the medians); the ratios of the
                          pairs (run i of each) as noop_pair_ratio_min/median/max
  noop_up_plan_child_s    median time of the `terraform plan` child inside each no-op `up`
  noop_up_own_s           median of (no-op `up` - its Terraform children): kubeplat's own time
  instances_1000_s        `kubeplat instances -o json` with 1,000 instances in the emulator
  instances_1000_raw_boto3_s  the same DescribeInstances straight from boto3 (the emulator's floor)
--only noop measures just the first `up` and the no-op figures.
Terraform needs the AWS provider: from the registry, or a mirror named by KUBEPLAT_TF_MIRROR.

Every kubeplat process runs with its bytecode cached (PYTHONPYCACHEPREFIX in the scratch
directory, PYTHONDONTWRITEBYTECODE unset), as an installed kubeplat runs: the first run of each
command fills the cache and is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GOALS = {
    "cold_start_s": ("<", 0.3),
    "pki_s": ("<", 0.2),
    "up_overhead_ratio": ("<=", 1.10),
    "noop_up_vs_plan_ratio": ("<=", 1.10),
    "instances_1000_s": ("<", 3.0),
}


def run(argv: Sequence[str], **kwargs: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time of one process, and what it left; stdin closed (as in CI)."""
    start = time.perf_counter()
    result = subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, **kwargs
    )
    return time.perf_counter() - start, result


def timed(argv: Sequence[str], ok: Sequence[int] = (0,), **kwargs: Any) -> float:
    took, result = run(argv, **kwargs)
    if result.returncode not in ok:
        raise SystemExit(
            f"{' '.join(argv[:4])} failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-3000:]}"
        )
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


def terraform_binary() -> str:
    found = os.environ.get("KUBEPLAT_TERRAFORM") or shutil.which("terraform")
    if not found:
        raise SystemExit("terraform not found (PATH or KUBEPLAT_TERRAFORM)")
    return found


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


def spread(figures: dict[str, float], name: str, values: list[float]) -> None:
    figures[name] = statistics.median(values)
    figures[name.removesuffix("_s") + "_min_s"] = min(values)
    figures[name.removesuffix("_s") + "_max_s"] = max(values)


def children(timings: Path) -> list[dict[str, Any]]:
    """The Terraform children a kubeplat run recorded (KUBEPLAT_TIMINGS)."""
    if not timings.exists():
        return []
    return [json.loads(line) for line in timings.read_text().splitlines() if line.strip()]


def bare_plan_command(
    checkout: Path, env: dict[str, str], scratch: Path
) -> tuple[list[str], dict[str, str]]:
    """The plain `terraform plan` a user would type in the environment's working copy (the
    module kubeplat staged, its TF_DATA_DIR and S3 backend), with the variables kubeplat passes
    written once to a -var-file, and the sandbox's endpoint and credentials."""
    from kubeplat import config, render, sandbox, terraform
    from kubeplat.pkistore import LocalStore

    example = config.load_file(checkout / "environments" / "example.tfvars")
    workdir = example.workdir
    # The bucket's PKI, as the local cache holds it after an `up` (the user-data stubs, the
    # only rendered input of the module, do not depend on it).
    files = LocalStore(workdir / "pki").load()
    inputs = terraform.variables(example, render.bundle(example, files))
    var_file = scratch / "bare-plan.tfvars.json"
    var_file.write_text(json.dumps(inputs, sort_keys=True))
    status = subprocess.run(
        [*kubeplat_binary(), "sandbox", "status"], env=env, capture_output=True, text=True
    )
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)", status.stdout).group(1))  # type: ignore[union-attr]
    bare_env = {**env, **sandbox.environ(sandbox.Sandbox(0, port), example.aws_region)}
    bare_env["TF_DATA_DIR"] = str(workdir / "terraform")
    command = [
        terraform_binary(),
        f"-chdir={workdir / 'module'}",
        "plan",
        "-input=false",
        "-no-color",
        "-detailed-exitcode",  # 0: nothing to change, as for the no-op `up`
        f"-var-file={var_file}",
    ]
    return command, bare_env


def noop_figures(
    cli: list[str], checkout: Path, env: dict[str, str], scratch: Path, runs: int
) -> dict[str, float]:
    """No-op `up` against a bare `terraform plan`: same sandbox, state and working copy,
    alternating (up, plan, up, plan...) after one uncounted run of each."""
    up = [*cli, "up", "-e", "example", "--auto-approve"]
    plan, plan_env = bare_plan_command(checkout, env, scratch)
    ups: list[float] = []
    plans: list[float] = []
    plan_children: list[float] = []
    own: list[float] = []
    for index in range(runs + 1):
        timings = scratch / f"noop-{index}.jsonl"
        took = timed(up, cwd=checkout, env={**env, "KUBEPLAT_TIMINGS": str(timings)})
        ran = children(timings)
        if any(c["command"] == "terraform apply" for c in ran):
            raise SystemExit("the no-op `up` applied something: the environment is not settled")
        bare = timed(plan, env=plan_env)  # exit 2 (changes) fails: not the same inputs
        plan_child = sum(c["seconds"] for c in ran if c["command"] == "terraform plan")
        print(
            f"no-op pair {index}{' (warm-up)' if index == 0 else ''}: up {took:.2f} s "
            f"(its plan {plan_child:.2f} s), bare plan {bare:.2f} s",
            file=sys.stderr,
            flush=True,
        )
        if index == 0:
            continue  # the warm-up (bytecode cache, file cache)
        ups.append(took)
        plans.append(bare)
        plan_children.append(plan_child)
        own.append(took - sum(c["seconds"] for c in ran))
    figures: dict[str, float] = {}
    spread(figures, "noop_up_s", ups)
    spread(figures, "bare_plan_s", plans)
    figures["noop_up_plan_child_s"] = statistics.median(plan_children)
    figures["noop_up_own_s"] = statistics.median(own)
    figures["noop_up_vs_plan_ratio"] = figures["noop_up_s"] / figures["bare_plan_s"]
    pairs = [u / p for u, p in zip(ups, plans, strict=True)]
    figures["noop_pair_ratio_min"] = min(pairs)
    figures["noop_pair_ratio_median"] = statistics.median(pairs)
    figures["noop_pair_ratio_max"] = max(pairs)
    figures["noop_runs"] = len(ups)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--noop-runs", type=int, default=7, help="pairs counted (at least 5)")
    parser.add_argument("--only", choices=["noop"], help="just the first up and the no-op pairs")
    args = parser.parse_args()
    if args.noop_runs < 5:
        parser.error("--noop-runs: at least 5")
    figures: dict[str, float] = {}

    from kubeplat import config, pki, render

    env_file = REPO / "environments" / "example.tfvars"
    cli = kubeplat_binary()
    with tempfile.TemporaryDirectory(prefix="kubeplat-bench-") as scratch:
        from tests.integration.sandbox_user import make_user

        home = Path(scratch)
        env = make_user(home)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(home / "pycache")
        checkout = Path(env["CHECKOUT"])
        if args.only is None:
            timed([*cli, "--help"], env=env)  # fills the bytecode cache
            figures["cold_start_s"] = statistics.median(
                timed([*cli, "--help"], env=env) for _ in range(args.runs)
            )
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
        timings = home / "timings.jsonl"
        try:
            up = [*cli, "up", "-e", "example", "--auto-approve"]
            figures["up_total_s"] = timed(
                up, cwd=checkout, env={**env, "KUBEPLAT_TIMINGS": str(timings)}
            )
            figures["up_terraform_s"] = sum(c["seconds"] for c in children(timings))
            figures.update(noop_figures(cli, checkout, env, home, args.noop_runs))
            if args.only is None:
                figures.update(bare_apply(home, env, example, bundle, files))
                figures.update(listing(cli, checkout, env, example))
        finally:
            subprocess.run([*cli, "sandbox", "stop"], env=env, capture_output=True)

    if "bare_s" in figures:
        figures["up_overhead_ratio"] = figures["up_total_s"] / figures["bare_s"]
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in figures.items()}, sort_keys=True))
        return
    print(f"{'figure':<28} {'value':>10}  goal")
    for name, value in figures.items():
        goal = GOALS.get(name)
        mark = ""
        if goal:
            ok = value < goal[1] if goal[0] == "<" else value <= goal[1]
            mark = f"{goal[0]} {goal[1]}  {'met' if ok else 'MISSED'}"
        print(f"{name:<28} {value:>10.3f}  {mark}")


def bare_apply(
    home: Path, env: dict[str, str], example: Any, bundle: dict[str, bytes], files: Any
) -> dict[str, float]:
    """The floor of a first `up`: plain Terraform, same module and variables, a fresh emulator
    (an apply needs an empty world)."""
    from kubeplat import terraform

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
        (module / "backend_override.tf").write_text('terraform {\n  backend "local" {}\n}\n')
        inputs = terraform.variables(example, bundle)
        (module / "bench.auto.tfvars.json").write_text(json.dumps(inputs))
        tf = [terraform_binary(), f"-chdir={module}"]
        return {
            "bare_s": timed([*tf, "init", "-input=false", "-no-color"], env=bare_env)
            + timed([*tf, "apply", "-auto-approve", "-input=false", "-no-color"], env=bare_env)
        }
    finally:
        proc.terminate()
        proc.wait()


def listing(cli: list[str], checkout: Path, env: dict[str, str], example: Any) -> dict[str, float]:
    """`kubeplat instances` with 1,000 instances in the sandbox, and the emulator's floor."""
    figures: dict[str, float] = {}
    sandbox = subprocess.run([*cli, "sandbox", "status"], env=env, capture_output=True, text=True)
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
            ImageId=example.coreos_image, MinCount=batch, MaxCount=batch, TagSpecifications=tags
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
    return figures


if __name__ == "__main__":
    main()
