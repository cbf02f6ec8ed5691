"""Shared fixtures: every test runs in its own directory with a clean environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubeplat import sandbox, terraform
from kubeplat.cli import main

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Clear AWS_*, KUBEPLAT_* and TF_* variables and work in a fresh directory.

    KUBEPLAT_TF_MIRROR (an offline provider mirror for the integration tier) is kept aside
    for the `terraform_cli_config` fixture.
    """
    for name in list(os.environ):
        if name.startswith(("AWS_", "KUBEPLAT_", "TF_")) or name == "NO_COLOR":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def environments(isolated: Path) -> Path:
    """A copy of the repository's environments/ folder in the test's directory."""
    target = isolated / "environments"
    shutil.copytree(REPO / "environments", target)
    return target


@dataclass
class Outcome:
    """What a kubeplat run left: exit code, stdout, stderr."""

    code: int
    out: str
    err: str


@pytest.fixture
def kubeplat(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """Run the CLI in-process through its real exit point."""

    def run(*args: str) -> Outcome:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        captured = capsys.readouterr()
        code = exit_info.value.code
        return Outcome(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run


_ORIGINAL_MIRROR = os.environ.get("KUBEPLAT_TF_MIRROR")


@pytest.fixture
def terraform_cli_config(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point Terraform at the offline provider mirror when KUBEPLAT_TF_MIRROR names one.

    Without it, Terraform installs providers from the registry as it does for users.
    """
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not installed")
    config = isolated / "terraform.rc"
    mirror = _ORIGINAL_MIRROR
    config.write_text(terraform.mirror_config(mirror) if mirror else "")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(config))
    yield config


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's server in this process, on a free loopback port, for a module's tests: S3 and
    the rest of the emulated APIs, without the sandbox's publishers' images."""
    server_module = pytest.importorskip(
        "moto.server", reason="the sandbox extra (moto[server]) is not installed"
    )
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def start_emulator(log: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """The sandbox's emulator (moto's server with the publishers' images) on a free loopback
    port, answering; (its process, its endpoint). The caller terminates it."""
    pytest.importorskip("moto.server", reason="the sandbox extra (moto[server]) is not installed")
    folder = Path(tempfile.mkdtemp(prefix="kubeplat-emulator-"))
    try:
        with open(log or os.devnull, "wb") as handle:
            server, port = sandbox.launch(folder / "port", handle, detached=False)
    except sandbox.NotStarted:
        output = log.read_text()[-2000:] if log else ""
        raise RuntimeError(f"moto server did not start: {output}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return server, f"http://127.0.0.1:{port}"


def emulator_clients(
    endpoint: str, region: str, names: tuple[str, ...] = ("s3", "ec2", "autoscaling")
) -> dict[str, Any]:
    """boto3 clients of `names` (by default the services the node tests look at), against the
    emulator."""
    import boto3

    return {
        name: boto3.client(
            name,
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        for name in names
    }


def enforce_iam(endpoint: str, user: str, allowed: list[str]) -> dict[str, str]:
    """Create an IAM user who may do only `allowed`, then make the emulator enforce IAM (for
    the whole server, from now on); the user's access key."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id="a",
        aws_secret_access_key="b",
    )
    iam.create_user(UserName=user)
    statement = {"Effect": "Allow", "Action": allowed, "Resource": "*"}
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    iam.put_user_policy(UserName=user, PolicyName="limited", PolicyDocument=json.dumps(policy))
    keys = iam.create_access_key(UserName=user)["AccessKey"]
    enforce = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(enforce)
    return {"id": keys["AccessKeyId"], "secret": keys["SecretAccessKey"]}


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real moto server (the sandbox's AWS emulator) on 127.0.0.1, for the whole session."""
    server, endpoint = start_emulator(tmp_path_factory.mktemp("moto") / "moto.log")
    yield endpoint
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 (and Terraform) at the moto server with dummy credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    return moto_endpoint


@contextmanager
def local_zone(zone: str) -> Iterator[None]:
    """This process's local time in `zone` (a POSIX TZ value, e.g. "LINT-14" for UTC+14), so
    that a stamp meant in UTC but made in local time shows; the zone before is put back."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def fill_disk(folder: Path) -> None:
    """Fill the file system holding `folder` (a small tmpfs of the test's own) to the last byte."""
    with open(folder / "filler", "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass


def ssh_identity(command: str) -> Path:
    """The key file a `kubeplat ssh --print` command line names (`-o IdentityFile="…"`)."""
    import shlex

    word = next(w for w in shlex.split(command) if w.startswith("IdentityFile="))
    return Path(word.partition("=")[2].strip('"'))


# -- skips ------------------------------------------------------------------------------------
# A skipped test proves nothing, so CI (.ci/run sets KUBEPLAT_SKIPS=strict) fails on any skip
# whose reason is not here, with why it may stand. Every run lists its skips at the end.
ALLOWED_SKIPS = {
    "root reads any file; the check cannot be provoked as root": (
        "as root (CI) no file is unreadable; the same error path runs as any other user"
    ),
}
_STRICT = os.environ.get("KUBEPLAT_SKIPS") == "strict"
_skipped: list[tuple[str, str]] = []


def skip_reason(report: pytest.TestReport) -> str:
    """The reason a skipped report gives ("Skipped: " and the location taken away)."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append((report.nodeid, skip_reason(report)))


def unallowed_skips(skipped: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(test, reason) for test, reason in skipped if reason not in ALLOWED_SKIPS]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _skipped:
        return
    terminalreporter.section("skips")
    for test, reason in _skipped:
        why = ALLOWED_SKIPS.get(reason)
        mark = f"allowed: {why}" if why else "NOT ALLOWED" if _STRICT else "not in ALLOWED_SKIPS"
        terminalreporter.write_line(f"{test}: {reason} ({mark})")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller judges
        return
    if _STRICT and unallowed_skips(_skipped) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
