"""The sandbox's emulator, with the public world every AWS account sees.

A real account can read the operating-system publishers' images and the public SSM parameters
that name their latest ones (`/aws/service/debian/…`, `/aws/service/canonical/…`). The emulator
(moto) knows Amazon Linux's but not Debian's or Ubuntu's, and refuses to create parameters under
`/aws/`, so this module adds them before it serves: an environment that names `node_os` resolves
its image in the sandbox exactly as it does on AWS. The images are records (nothing boots in the
emulator); their ids are kubeplat's own, recognisable by their `0deb12…` and `0ab2404…` digits.
Where moto refuses a call AWS accepts and kubeplat makes, it is made to accept it here, each
with its reason (`all_ports_need_no_range`).

Run by `kubeplat.sandbox` as `python -m kubeplat.sandbox_world --port-file PATH`: it listens on
a loopback port the kernel picks (bound here, in the process that serves it, so that no other
program can take it between a choice and a bind, and no caller mistakes another emulator that
answers on a port it chose for its own) and writes that port to PATH once it listens. With
other arguments, moto's server's own (`-H 127.0.0.1 -p PORT`).
"""

from __future__ import annotations

import sys
from datetime import UTC
from pathlib import Path
from typing import Any

# (SSM parameter, image): the publishers' naming, kubeplat's ids.
PUBLISHED: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "/aws/service/debian/release/12/latest/amd64",
        {
            "ami_id": "ami-0deb1200000000a64",
            "owner_id": "136693071363",
            "name": "debian-12-amd64-20261101-2000",
            "description": "Debian 12 (20261101-2000) (kubeplat sandbox record)",
            "architecture": "x86_64",
            "root_device_name": "/dev/xvda",
        },
    ),
    (
        "/aws/service/debian/release/12/latest/arm64",
        {
            "ami_id": "ami-0deb1200000000a32",
            "owner_id": "136693071363",
            "name": "debian-12-arm64-20261101-2000",
            "description": "Debian 12 (20261101-2000) (kubeplat sandbox record)",
            "architecture": "arm64",
            "root_device_name": "/dev/xvda",
        },
    ),
    (
        "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id",
        {
            "ami_id": "ami-0ab24040000000a64",
            "owner_id": "099720109477",
            "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261101",
            "description": "Canonical, Ubuntu, 24.04, amd64 noble image (kubeplat sandbox record)",
            "architecture": "x86_64",
            "root_device_name": "/dev/sda1",
        },
    ),
    (
        "/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id",
        {
            "ami_id": "ami-0ab24040000000a32",
            "owner_id": "099720109477",
            "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20261101",
            "description": "Canonical, Ubuntu, 24.04, arm64 noble image (kubeplat sandbox record)",
            "architecture": "arm64",
            "root_device_name": "/dev/sda1",
        },
    ),
)


def publish() -> None:
    """Add the images and parameters to moto's backends (every account and region)."""
    from datetime import datetime

    from moto.ec2.models import amis
    from moto.ssm import models as ssm

    released = datetime(2026, 11, 1, tzinfo=UTC)

    for _, image in PUBLISHED:
        amis.AMIS.append(
            {
                **image,
                "state": "available",
                "public": True,
                "image_location": "kubeplat-sandbox",
                "root_device_type": "ebs",
                "image_type": "machine",
                "platform": None,
                "virtualization_type": "hvm",
                "hypervisor": "xen",
                "sriov": "simple",
            }
        )
    original = ssm.ParameterDict._check_loading_status

    def check_loading_status(self: Any, key: str) -> None:
        original(self, key)
        if str(key or "").startswith(("/aws/service/debian", "/aws/service/canonical")):
            for name, image in PUBLISHED:
                if not dict.__contains__(self, name):  # moto's own `in` would come back here
                    dict.__getitem__(self, name).append(
                        ssm.Parameter(  # type: ignore[abstract]
                            account_id=self.account_id,
                            name=name,
                            value=image["ami_id"],
                            parameter_type="String",
                            description=None,
                            allowed_pattern=None,
                            keyid=None,
                            last_modified_date=released,
                            version=1,
                            data_type="aws:ec2:image",
                        )
                    )

    ssm.ParameterDict._check_loading_status = check_loading_status  # type: ignore[method-assign]


def all_ports_need_no_range() -> None:
    """Let ModifySecurityGroupRules change a rule of every protocol (-1) without a port range,
    as AWS does (the ports of such a rule are ignored). moto asks for both ports, so Terraform's
    change of such a rule's description fails in the sandbox: it does when kubeplat adopts the
    allow-all egress rule AWS gives every new group (a run killed between AWS making a group
    and Terraform revoking that rule leaves it)."""
    from moto.ec2.models.security_groups import SecurityGroupBackend

    original = SecurityGroupBackend.modify_security_group_rules

    def modify(self: Any, group_id: str, rules: dict[str, dict[str, Any]]) -> None:
        for rule in rules.values():
            if str(rule.get("IpProtocol")) in ("-1", "all"):
                for port in ("FromPort", "ToPort"):
                    if rule.get(port) is None:
                        rule[port] = -1
        original(self, group_id, rules)

    SecurityGroupBackend.modify_security_group_rules = modify  # type: ignore[method-assign]


def serve(port_file: Path) -> None:
    """moto's server (as `moto.server.main` serves it) on a loopback port of the kernel's
    choosing; the port is written to `port_file` (whole, atomically) once it listens."""
    import os
    import signal

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # type: ignore[attr-defined]
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    os.environ["MOTO_PORT"] = str(server.port)  # what moto's own URLs name
    # SIGTERM (`kubeplat sandbox stop`, a test's terminate) ends the serving loop like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    partial = port_file.with_name(port_file.name + ".partial")
    partial.write_text(f"{server.port}\n")
    partial.replace(port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    """moto's server, after `publish` and `all_ports_need_no_range`."""
    from moto import server

    args = sys.argv[1:] if argv is None else argv
    publish()
    all_ports_need_no_range()
    if len(args) == 2 and args[0] == "--port-file":
        serve(Path(args[1]))
        return
    server.main(args)


if __name__ == "__main__":
    main()
