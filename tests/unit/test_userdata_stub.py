"""The user-data stub every instance boots with (templates/userdata/stub.sh.j2), run as rendered
by `sh`, its paths moved into a temporary root, against a real S3 API (moto's server on
loopback, a versioned bucket). The commands it calls that would change this machine are
RECORDING STAND-INS on PATH: cloud-init, systemctl, poweroff, apt-get, dnf and sleep (which
returns at once); python3 is the real interpreter with `time.sleep` made instant, so the
stub's bounded waits end in moments. The node-boot tier runs the same stub for real.

What a user would notice: a node that gets its configuration and PKI (and only its own), starts
its bootstrap, waits for a configuration not uploaded yet, keeps the configuration its launch
template names when a newer one is in the
bucket, retries a package install that fails, and powers itself off (so that its group
replaces it) when it cannot get what it needs, saying why."""

from __future__ import annotations

import hashlib
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from kubeplat import config, pki, render

BUCKET = "kubeplat-example-secrets"
RECORDER = '#!/bin/sh\necho "$(basename "$0") $*" >> "$STUB_LOG"\n'
# python3's sleeps: recorded, and instant.
# At the STUB_PUBLISH_AT-th sleep, what waits under STUB_PENDING is uploaded (a bucket that gets
# the configuration only while the node waits for it).
SITE = """import os, time
_slept = [0]
def _sleep(seconds):
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write("python sleep %g\\n" % seconds)
    _slept[0] += 1
    if str(_slept[0]) == os.environ.get("STUB_PUBLISH_AT"):
        import boto3
        s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="eu-west-1")
        pending = os.environ["STUB_PENDING"]
        for folder, _dirs, names in os.walk(pending):
            for name in names:
                path = os.path.join(folder, name)
                key = os.path.relpath(path, pending)
                with open(path, "rb") as handle:
                    s3.put_object(Bucket=os.environ["STUB_BUCKET"], Key=key, Body=handle.read())
time.sleep = _sleep
"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The example environment's bundle and PKI layout (rendered once for the module)."""
    folder = tmp_path_factory.mktemp("render")
    (folder / "environments").mkdir()
    repo = Path(__file__).resolve().parents[2]
    source = (repo / "environments" / "example.tfvars").read_text()
    (folder / "environments" / "example.tfvars").write_text(source)
    env = config.load_file(folder / "environments" / "example.tfvars")
    files = pki.ensure(env, {}).files
    out = render.bundle(env, files)
    out.update({f"layout/{k}": v for k, v in render.pki_layout(env, files).items()})
    return out


class Node:
    """A temporary root, the stand-ins and the bucket one run of the stub sees."""

    def __init__(self, root: Path, endpoint: str, bundle: dict[str, bytes]) -> None:
        self.root, self.endpoint, self.bundle = root, endpoint, bundle
        self.environ: dict[str, str] = {}
        self.log = root / "calls.log"
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        for name in ("cloud-init", "systemctl", "poweroff", "apt-get", "dnf", "sleep"):
            self.stand_in(name, RECORDER)
        sitedir = root / "site"
        sitedir.mkdir()
        (sitedir / "sitecustomize.py").write_text(SITE)
        self.python(sys.executable)
        self.s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="eu-west-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        bucket = "stub-" + hashlib.sha256(str(root).encode()).hexdigest()[:16]
        self.bucket = bucket
        self.s3.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        self.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    def stand_in(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)

    def python(self, real: str, before: str = "") -> None:
        """python3: the real interpreter (with instant sleeps), after `before` (shell)."""
        self.stand_in("python3", f'#!/bin/sh\n{before}\nexec "{real}" "$@"\n')

    def put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=f"example/{key}", Body=body)

    def publish(self) -> None:
        """What `kubeplat up` leaves in the bucket: the configuration and every layer's PKI."""
        self.put("cloudconfig/worker", self.bundle["cloudconfig/worker"])
        self.put("cloudconfig/master", self.bundle["cloudconfig/master"])
        for name, data in self.bundle.items():
            if name.startswith("layout/") and not name.startswith("layout/locked/"):
                self.put("pki/" + name.removeprefix("layout/"), data)

    def publish_while_waiting(self, at_sleep: int) -> None:
        """Publish only at the stub's `at_sleep`-th wait: the node booted before `up` had
        uploaded its configuration (an instance launched early, an upload still under way)."""
        pending = self.root / "pending"
        put, self.put = self.put, lambda key, body: self._pend(pending, key, body)
        try:
            self.publish()
        finally:
            self.put = put  # type: ignore[method-assign]
        self.environ.update({"STUB_PUBLISH_AT": str(at_sleep), "STUB_PENDING": str(pending)})

    @staticmethod
    def _pend(pending: Path, key: str, body: bytes) -> None:
        path = pending / "example" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)

    def run(self) -> subprocess.CompletedProcess[str]:
        text = self.bundle["userdata/compute"].decode()
        text = text.replace(BUCKET, self.bucket)
        for path in ("/var/lib/kubeplat", "/etc/kubernetes/pki"):
            text = text.replace(path, str(self.root) + path)
        program = self.root / "stub.sh"
        program.write_text(text)
        environment = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.root),
            "STUB_LOG": str(self.log),
            "PYTHONPATH": str(self.root / "site"),
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "STUB_BUCKET": self.bucket,
            **self.environ,
        }
        return subprocess.run(
            ["sh", str(program)], env=environment, capture_output=True, text=True, timeout=120
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")


@pytest.fixture
def node(tmp_path: Path, s3_endpoint: str, rendered: dict[str, bytes]) -> Node:
    return Node(tmp_path, s3_endpoint, rendered)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_node_gets_its_configuration_and_its_own_pki_then_starts_its_bootstrap(
    node: Node,
) -> None:
    node.publish()
    done = node.run()
    assert done.returncode == 0, done.stdout + done.stderr
    config_file = node.file("/var/lib/kubeplat/cloud-config.yaml")
    assert config_file.read_bytes() == node.bundle["cloudconfig/worker"]
    assert mode(config_file) == 0o600
    digest = hashlib.sha256(node.bundle["cloudconfig/worker"]).hexdigest()
    assert node.file("/var/lib/kubeplat/config-sha256").read_text() == digest + "\n"
    pki_dir = node.file("/etc/kubernetes/pki")
    token = pki_dir / "bootstrap-token"
    assert token.read_bytes() == node.bundle["layout/compute/bootstrap-token"]
    assert mode(token) == 0o600
    assert mode(pki_dir / "ca.crt") == 0o644
    written = {str(p.relative_to(pki_dir)) for p in pki_dir.rglob("*") if p.is_file()}
    own = {
        name.split("/", 2)[2]
        for name in node.bundle
        if name.startswith(("layout/common/", "layout/compute/"))
    }
    assert written == own  # the secure layer's keys never reach a compute node
    configured = f"--file {config_file}"
    assert node.calls() == [
        f"cloud-init {configured} single --name users_groups --frequency always",
        f"cloud-init {configured} single --name write_files --frequency always",
        "systemctl daemon-reload",
        "systemctl enable kubeplat-bootstrap.service",
        "systemctl start --no-block kubeplat-bootstrap.service",
    ]
    assert "kubeplat: bootstrap started" in done.stdout


def test_a_node_keeps_the_configuration_its_launch_template_names(node: Node) -> None:
    """A newer configuration is in the bucket (a roll under way): the node booting from the
    older launch template takes the version whose sha256 its user data names."""
    node.publish()
    node.put("cloudconfig/worker", b"#cloud-config\n# a newer configuration\n")
    done = node.run()
    assert done.returncode == 0, done.stdout + done.stderr
    written = node.file("/var/lib/kubeplat/cloud-config.yaml").read_bytes()
    assert written == node.bundle["cloudconfig/worker"]


def test_a_node_that_boots_before_its_configuration_is_uploaded_waits_for_it(node: Node) -> None:
    """The bucket answers NoSuchKey at first: the node says what it waits for, waits, and boots
    once the configuration and its PKI are there."""
    node.publish_while_waiting(at_sleep=3)
    done = node.run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.count("kubeplat: waiting for cloudconfig/worker:") == 3
    assert "NoSuchKey" in done.stderr
    assert node.calls().count("python sleep 10") == 3
    assert "poweroff " not in node.calls()
    written = node.file("/var/lib/kubeplat/cloud-config.yaml").read_bytes()
    assert written == node.bundle["cloudconfig/worker"]
    assert (
        node.file("/etc/kubernetes/pki/ca.crt").read_bytes()
        == (node.bundle["layout/common/ca.crt"])
    )
    assert "systemctl start --no-block kubeplat-bootstrap.service" in node.calls()


def test_a_node_whose_configuration_never_comes_powers_off(node: Node) -> None:
    node.put("cloudconfig/worker", b"#cloud-config\n# not the one it names\n")
    done = node.run()
    assert done.returncode == 1
    assert "never matched sha256" in done.stderr
    assert "powering off so that the autoscaling group replaces this instance" in done.stdout
    assert node.calls()[-1] == "poweroff "
    assert node.calls().count("python sleep 10") == 90  # 15 minutes of waiting, then it gives up
    assert not any(c.startswith(("cloud-init", "systemctl")) for c in node.calls())
    assert not node.file("/var/lib/kubeplat/cloud-config.yaml").exists()


def test_a_failed_package_install_is_retried(node: Node) -> None:
    """No boto3 on the image: apt-get installs it; two failed attempts are retried."""
    marker = node.root / "boto3-installed"
    node.python(sys.executable, f'[ "$1" = -c ] && [ ! -e "{marker}" ] && exit 1')
    node.stand_in(
        "apt-get",
        RECORDER + f'[ "$1" = install ] || exit 0\n'
        f'n=$(grep -c "^apt-get install" "$STUB_LOG")\n'
        f'[ "$n" -ge 3 ] && touch "{marker}" && exit 0\nexit 100\n',
    )
    node.publish()
    done = node.run()
    assert done.returncode == 0, done.stdout + done.stderr
    installs = [c for c in node.calls() if c.startswith("apt-get install")]
    assert installs == ["apt-get install -y -q --no-install-recommends python3-boto3"] * 3
    assert "installing python3-boto3 failed (attempt 1); retrying in 20s" in done.stdout
    assert "installing python3-boto3 failed (attempt 2); retrying in 20s" in done.stdout
    assert node.calls()[-1] == "systemctl start --no-block kubeplat-bootstrap.service"


def test_a_package_that_never_installs_powers_the_node_off(node: Node) -> None:
    node.python(sys.executable, '[ "$1" = -c ] && exit 1')
    node.stand_in("apt-get", RECORDER + "exit 100\n")
    done = node.run()
    assert done.returncode == 1
    # apt-get update fails each time, so no install is tried: 30 attempts, then it gives up.
    assert node.calls().count("apt-get update -q") == 30
    assert not [c for c in node.calls() if c.startswith("apt-get install")]
    assert "installing python3-boto3 failed (attempt 30); retrying in 20s" in done.stdout
    assert "python3-boto3 could not be installed; powering off" in done.stdout
    assert node.calls()[-1] == "poweroff "


def test_files_that_cannot_be_written_power_the_node_off(node: Node) -> None:
    node.stand_in("cloud-init", RECORDER + 'case "$*" in *write_files*) exit 1;; esac\n')
    node.publish()
    done = node.run()
    assert done.returncode == 1
    assert "writing the files of cloudconfig/worker failed; powering off" in done.stdout
    assert node.calls()[-1] == "poweroff "
    assert not any(c.startswith("systemctl") for c in node.calls())


def test_a_failed_user_creation_is_said_and_the_boot_goes_on(node: Node) -> None:
    node.stand_in("cloud-init", RECORDER + 'case "$*" in *users_groups*) exit 1;; esac\n')
    node.publish()
    done = node.run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "creating the node user failed; SSH as" in done.stdout
    assert node.calls()[-1] == "systemctl start --no-block kubeplat-bootstrap.service"
