"""Everything that runs on a node: shipped by `render` as files, run by systemd.

The modules here import only the standard library, boto3 (the distribution's package) and each
other (relatively), and stay valid Python 3.9 (Amazon Linux 2023's python3): no operator module
is imported, so a reader can tell at a glance what runs where. On a node the package lives at
`/opt/kubeplat/lib/kubeplat_node/` and `/opt/kubeplat/bin/kubeplat-node` runs its commands.

Every program honours `AWS_ENDPOINT_URL` (passed to boto3 explicitly: the botocore of Debian 12
predates the variable) and `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
"""
